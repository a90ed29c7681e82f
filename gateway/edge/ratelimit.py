"""The REST adapter of the rate-limit policy (:mod:`gateway.ratelimit`): two pure ASGI middlewares.

::

    RateLimitMiddleware (by: ip; starts the call's Verdict; adds the headers to the response)
      └─ AuthMiddleware
           └─ KeyRateLimitMiddleware (by: key, from scope["room_gateway.principal"])
                └─ routes → Dispatcher.call (by: room, through RateLimiter.check_room)

Every response of a call that a limit applied to carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds) of the tightest limit (draft-ietf-httpapi-ratelimit-headers); a 429 adds
``Retry-After`` (RFC 9110 §10.2.3, whole seconds) and the native error body (RESOURCE_EXHAUSTED).
``/healthz`` and ``/readyz`` are not limited (probes, like authentication).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import orjson
from starlette._utils import get_route_path  # where it is defined; starlette.routing does not re-export it
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.policy import Principal
from gateway.edge.auth import PUBLIC_PATHS
from gateway.edge.responses import send_error
from gateway.edge.routing import PRINCIPAL
from gateway.errors import GatewayError, PermissionDenied, error_body
from gateway.ratelimit import RateLimiter, Verdict, begin_call, current_verdict, end_call

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def rate_limit_headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """The ``RateLimit-*`` (and, when refused, ``Retry-After``) headers of ``verdict``."""
    usage = verdict.usage
    if usage is None:
        return []
    headers = [
        (b"ratelimit-limit", b"%d" % usage.limit),
        (b"ratelimit-remaining", b"%d" % usage.remaining),
        (b"ratelimit-reset", b"%d" % math.ceil(usage.reset)),
    ]
    if verdict.limited is not None:
        headers.append((b"retry-after", b"%d" % verdict.limited.retry_after))
    return headers


class RateLimitMiddleware:
    """The ``by: ip`` limits, before authentication; renders every limit's verdict as headers.

    :param app: the wrapped ASGI app (authentication and what follows).
    :param limiter: the policy.
    :param exempt_paths: route paths never limited.
    """

    def __init__(
        self, app: ASGIApp, limiter: RateLimiter, exempt_paths: Collection[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or get_route_path(scope) in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        verdict, token = begin_call()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and verdict.usage is not None:
                headers = message.get("headers", [])
                if isinstance(headers, list):  # ours to extend, as Starlette's own middlewares do
                    headers.extend(rate_limit_headers(verdict))
                else:
                    message["headers"] = [*headers, *rate_limit_headers(verdict)]
            await send(message)

        try:
            limiter = self.limiter
            if limiter.by_ip:
                try:
                    if limiter.local:
                        limiter.check_now(limiter.by_ip, self._client_ip(scope), verdict)
                    else:
                        await limiter.check(limiter.by_ip, self._client_ip(scope), verdict)
                except GatewayError as exc:
                    await send_error(send_with_headers, exc)
                    return
            await self.app(scope, receive, send_with_headers)
        finally:
            end_call(token)

    def _client_ip(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = client[0] if client else None
        if not self.limiter.trusted_proxies:
            return peer or ""
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        return self.limiter.client_ip(peer, forwarded)


class KeyRateLimitMiddleware:
    """The ``by: key`` limits, after authentication (the principal's key name).

    :param app: the wrapped ASGI app (the routes).
    :param limiter: the policy (its ``by_key`` limits must not be empty).
    """

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get(PRINCIPAL)
        if isinstance(principal, Principal):
            try:
                await self.limiter.check(self.limiter.by_key, principal.name, current_verdict())
            except GatewayError as exc:
                await send_error(send, exc)
                return
        await self.app(scope, receive, send)


def ip_stage(limiter: RateLimiter | None) -> list[Middleware]:
    """The middleware to put before authentication (none when nothing is limited)."""
    if limiter is None or not limiter.quotas:
        return []
    return [Middleware(RateLimitMiddleware, limiter=limiter)]


def key_stage(limiter: RateLimiter | None) -> list[Middleware]:
    """The middleware to put after authentication (none without ``by: key`` limits)."""
    if limiter is None or not limiter.by_key:
        return []
    return [Middleware(KeyRateLimitMiddleware, limiter=limiter)]


def metrics_routes(limiter: RateLimiter | None) -> list[BaseRoute]:
    """``GET /metrics``: the limiter's counters in the Prometheus text format.

    The counters are deployment-wide, so, like the global InvalidateConnections, they need an API key
    without room patterns: a room token or a key limited to some rooms gets PERMISSION_DENIED.
    """
    if limiter is None:
        return []

    async def metrics(request: Request) -> Response:
        principal = request.scope.get(PRINCIPAL)
        if not isinstance(principal, Principal) or principal.token is not None or principal.rooms:
            denied = PermissionDenied("/metrics needs an API key that is not limited to some rooms")
            return Response(
                orjson.dumps(error_body(denied.code, denied.message)),
                status_code=denied.http_status,
                media_type="application/json",
            )
        return Response(limiter.metrics(), media_type=PROMETHEUS_TYPE)

    return [Route("/metrics", metrics, methods=["GET"])]
