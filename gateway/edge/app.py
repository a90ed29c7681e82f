"""The REST/JSON edge as one Starlette app: the flow of a REST call, assembled in one place.

::

    AccessLogMiddleware (one line per call: method, path, status, key name, latency)
    BodyTimeoutMiddleware (a body not in after http.body_timeout_seconds: 408)
    RateLimitMiddleware (by: ip; RateLimit-* headers)
    AuthMiddleware (credentials → Principal)
    KeyRateLimitMiddleware (by: key; by: room is applied in Dispatcher.call)
      └─ Router: one TranscodedRoute per HttpRule binding (custom verbs first)
           └─ Transcoder.bind (path, body, query → kwargs) → Dispatcher.call → MessageCodec.encode
         + /healthz, /readyz, /openapi.json
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.config import DEFAULT_MAX_BODY_BYTES
from gateway.dispatch import Dispatcher
from gateway.edge import health
from gateway.edge.accesslog import AccessLogMiddleware
from gateway.edge.auth import AuthMiddleware
from gateway.edge.http_rules import bindings
from gateway.edge.json_codec import Codecs
from gateway.edge.openapi import openapi_document
from gateway.edge.ratelimit import ip_stage, key_stage, metrics_routes
from gateway.edge.routing import TranscodedRoute, route_order
from gateway.edge.timeouts import BodyTimeoutMiddleware
from gateway.edge.transcoder import Transcoder
from gateway.errors import Code, error_body
from gateway.ratelimit import RateLimiter


def create_http_app(
    dispatcher: Dispatcher,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ready: Callable[[], Awaitable[None]] | None = None,
    keepalive_seconds: float = 15.0,
    extra_routes: Sequence[BaseRoute] = (),
    self_authenticated_prefixes: tuple[str, ...] = (),
    body_timeout_seconds: float = 30.0,
    limiter: RateLimiter | None = None,
    access_log: bool = True,
) -> Starlette:
    """The native REST API over ``dispatcher`` (its ``policy`` authenticates every call).

    :param dispatcher: authorizes and runs native calls.
    :param max_body_bytes: request bodies beyond this are refused with 413 (config ``http.max_body_bytes``).
    :param ready: awaited by ``/readyz``; a :class:`~gateway.errors.GatewayError` it raises makes a 503.
    :param keepalive_seconds: silence after which a stream sends a keep-alive.
    :param extra_routes: routes of compatibility surfaces, tried after the native ones.
    :param self_authenticated_prefixes: path prefixes whose routes authenticate themselves (surfaces).
    :param body_timeout_seconds: a request body not complete this long after its headers is a 408.
    :param limiter: the rate-limit policy (``None``: no limits, no ``/metrics``).
    :param access_log: log one line per call (config ``access_log``).
    """
    codecs = Codecs()
    routes: list[TranscodedRoute] = []
    for binding in bindings(dispatcher.methods):
        transcoder = Transcoder(binding, codecs)
        routes.append(
            TranscodedRoute(
                binding,
                transcoder,
                dispatcher,
                routes,
                max_body_bytes=max_body_bytes,
                keepalive_seconds=keepalive_seconds,
            )
        )
    routes.sort(key=route_order)
    document = orjson.dumps(openapi_document([route.transcoder for route in routes]))
    all_routes: list[BaseRoute] = [
        *routes,
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readiness(ready), methods=["GET"]),
        Route("/openapi.json", health.static_json(document), methods=["GET"]),
        *metrics_routes(limiter),
        *extra_routes,
    ]
    app = Starlette(
        routes=all_routes,
        middleware=[
            # outermost: it sees every answer, 401s included
            *([Middleware(AccessLogMiddleware)] if access_log else []),
            *ip_stage(limiter),  # by: ip, before authentication; adds the RateLimit-* headers
            Middleware(BodyTimeoutMiddleware, timeout=body_timeout_seconds),
            Middleware(
                AuthMiddleware,
                policy=dispatcher.policy,
                self_authenticated_prefixes=self_authenticated_prefixes,
            ),
            *key_stage(limiter),  # by: key, after authentication
        ],
        exception_handlers={HTTPException: _http_exception},
    )
    # Transcoded routes match the raw path; a slash redirect computed on the decoded one would be wrong.
    app.router.redirect_slashes = False
    return app


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (a plain route, wrong method) in the native error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: Code.NOT_FOUND, 405: Code.UNIMPLEMENTED}.get(status, Code.INVALID_ARGUMENT)
    message = f"no route for {request.method} {request.url.path}" if status in (404, 405) else str(exc)
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    return Response(
        orjson.dumps(error_body(code, message, status)),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )
