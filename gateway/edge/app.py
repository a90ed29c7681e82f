"""The REST/JSON edge: one ASGI app that runs the stages of a call in order, then its route.

::

    ObservedCalls (request id, metrics, span; one access line per call when access_log is on),
      which Edge is, around its stages (Edge._call):
           0. CORS (http.cors): an allowed origin's preflight answered, its answers given the CORS headers
              (gateway.edge.cors); an ?access_token= moved into the Authorization header, or refused
              off a streaming GET (gateway.edge.auth.take_access_token)
           1. rate limits by: ip, before authentication (the RateLimit-* headers go on every answer)
           2. authentication (credentials → Principal)
           3. rate limits by: key (by: room is applied in Dispatcher.call)
           4. the route: a native TranscodedRoute found by HTTP method and raw path (matched before stage 1,
              so that refused calls count by their method too)
              → Transcoder.bind (path, body, query → kwargs) → Dispatcher.call → MessageCodec.encode;
              anything else through the Starlette router: /healthz, /readyz, /openapi.json, /metrics,
              the compatibility surfaces, the console (/console/, and / for a browser), and the 404/405
              answers

Deadlines for slow clients' headers and bodies are kept by the HTTP protocol itself
(:func:`gateway.edge.timeouts.guarded_protocol`). The stages are plain calls in one coroutine, not a
middleware each: per middleware, a REST call paid a coroutine frame, and for one that watches the response
a ``send`` wrapper (Starlette adds two of its own around the router), which together cost a cheap call
about a tenth of its time (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gateway.auth.policy import AuthPolicy
from gateway.config import DEFAULT_MAX_BODY_BYTES
from gateway.dispatch import Dispatcher
from gateway.edge import health
from gateway.edge.auth import ACCESS_TOKEN_HINT, PUBLIC_PATHS, authenticate, take_access_token
from gateway.edge.console import PREFIX as CONSOLE_PREFIX
from gateway.edge.console import console_routes, wants_html
from gateway.edge.cors import Cors
from gateway.edge.http_rules import bindings
from gateway.edge.json_codec import Codecs
from gateway.edge.metrics import INFO_PATH, InfoEndpoint, metrics_routes
from gateway.edge.observe import ObservedCalls, ObservedSend
from gateway.edge.openapi import Documented, openapi_document
from gateway.edge.ratelimit import client_ip, usage_lines, with_rate_limit_headers
from gateway.edge.responses import error_response, send_error, with_headers
from gateway.edge.routing import (
    MATCH,
    PRINCIPAL,
    ROUTE,
    ExactRouter,
    ExactRoutes,
    PathRoute,
    TranscodedRoute,
    raw_route_path,
    route_order,
    route_path,
)
from gateway.edge.transcoder import Transcoder
from gateway.errors import Code, GatewayError
from gateway.observability.metrics import Metrics
from gateway.observability.observer import Observer
from gateway.ratelimit import LocalWindows, RateLimiter, Usage, Verdict, begin_call, end_call


def create_http_app(
    dispatcher: Dispatcher,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ready: Callable[[], Awaitable[None]] | None = None,
    keepalive_seconds: float = 15.0,
    extra_routes: Sequence[BaseRoute] = (),
    extra_documented: Sequence[Documented] = (),
    self_authenticated_prefixes: tuple[str, ...] = (),
    limiter: RateLimiter | None = None,
    metrics: Metrics | None = None,
    access_log: bool = True,
    observer: Observer | None = None,
    info: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    cors: Cors | None = None,
    console: bool = False,
) -> Edge:
    """The native REST API over ``dispatcher`` (its ``policy`` authenticates every call).

    :param dispatcher: authorizes and runs native calls.
    :param max_body_bytes: request bodies beyond this are refused with 413 (config ``http.max_body_bytes``).
    :param ready: awaited by ``/readyz``; a :class:`~gateway.errors.GatewayError` it raises makes a 503.
    :param keepalive_seconds: silence after which a stream sends a keep-alive.
    :param extra_routes: routes of compatibility surfaces, tried after the native ones.
    :param extra_documented: more routes for ``/openapi.json`` (the upstreams' bindings).
    :param self_authenticated_prefixes: path prefixes whose routes authenticate themselves (surfaces).
    :param limiter: the rate-limit policy (``None``: no limits).
    :param metrics: served at ``/metrics`` (``None``: the limiter's, or, without a limiter, no ``/metrics``).
    :param access_log: log one line per call (config ``access_log``), when no ``observer`` is given.
    :param observer: what every call is recorded into; default: one counting into ``metrics``.
    :param info: answers ``GET /v1/info`` (``None``: no such route).
    :param cors: the CORS rules (``None``: no origin is allowed, no CORS header is ever sent).
    :param console: serve the web console at ``/console/`` and send browsers there from ``/``.
    """
    if metrics is None and limiter is not None:
        metrics = limiter.metrics  # its counters, where the limiter was built without a gateway's Metrics
    if observer is None:
        observer = Observer(metrics if metrics is not None else Metrics(), access_log=access_log)
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
                recorder=observer.recorder("rest", "native", binding.method.name),
            )
        )
    routes.sort(key=route_order)
    document = orjson.dumps(openapi_document([*(route.transcoder for route in routes), *extra_documented]))
    all_routes: list[BaseRoute] = [
        *routes,
        Route("/healthz", health.healthz, methods=["GET"], name="healthz"),
        Route("/readyz", health.readiness(ready), methods=["GET"], name="readyz"),
        Route("/openapi.json", health.static_json(document), methods=["GET"], name="openapi"),
        *metrics_routes(metrics, dispatcher.policy),
        *(
            [Route(INFO_PATH, InfoEndpoint(info, dispatcher.policy), methods=["GET"], name="info")]
            if info
            else []
        ),
        *extra_routes,
        *(console_routes() if console else []),
    ]
    if console:  # its files are public: the console signs in with a key, as any client
        self_authenticated_prefixes = (*self_authenticated_prefixes, CONSOLE_PREFIX)
    router = Starlette(exception_handlers={HTTPException: _http_exception})
    # Fixed paths by one lookup (the surfaces' routes came after ~30 others). Transcoded routes match the
    # raw path; a slash redirect computed on the decoded one would be wrong.
    exact = ExactRouter(all_routes, redirect_slashes=False)
    router.router = exact
    return Edge(
        routes,
        router,
        exact.exact,
        dispatcher.policy,
        limiter=limiter,
        self_authenticated_prefixes=self_authenticated_prefixes,
        observer=observer,
        cors=cors,
        console=console,
    )


class Edge(ObservedCalls):
    """The stages of every REST call, then its route (see the module docstring), observed: the edge is its
    own :class:`~gateway.edge.observe.ObservedCalls` (a separate one was a coroutine layer per call).

    :param routes: the native routes, in matching order (:func:`~gateway.edge.routing.route_order`).
    :param router: every route, native ones first: what is not a native call goes there.
    :param exact: the router's fixed paths (:class:`~gateway.edge.routing.ExactRoutes`).
    :param policy: authenticates callers.
    :param limiter: the rate-limit policy (``None``: nothing is limited).
    :param self_authenticated_prefixes: path prefixes whose routes authenticate themselves (surfaces).
    :param observer: observes every call, around everything else (it sees 401s and 429s too).
    :param cors: the CORS rules (``None``: off).
    :param console: whether ``/`` sends a browser to the console (unauthenticated, then).
    """

    def __init__(
        self,
        routes: Sequence[TranscodedRoute],
        router: Starlette,
        exact: ExactRoutes,
        policy: AuthPolicy,
        *,
        limiter: RateLimiter | None,
        self_authenticated_prefixes: tuple[str, ...],
        observer: Observer,
        cors: Cors | None = None,
        console: bool = False,
    ) -> None:
        self.router = router
        self.routes: list[BaseRoute] = router.routes  # every route, for introspection
        self._exact = exact
        self._exact_paths = exact.paths
        self.policy = policy
        #: HTTP method → its routes with a custom verb (``…:listen``), and the others, in matching order.
        self._by_method: dict[str, tuple[list[TranscodedRoute], list[TranscodedRoute]]] = {}
        for route in routes:
            verbs, plain = self._by_method.setdefault(route.http_method, ([], []))
            (verbs if route.binding.template.verb else plain).append(route)
        self._limiter = limiter if limiter is not None and limiter.quotas else None
        self._key_limiter = limiter if limiter is not None and limiter.by_key else None
        #: The one limit counting a call, when it is a ``by: ip`` limit counted here (the shipped default):
        #: on the gateway's own server its lines are made as it counts, without a Verdict or a Usage.
        only = limiter.quotas[0].counter if limiter is not None and len(limiter.quotas) == 1 else None
        self._ip_window = (
            only if isinstance(only, LocalWindows) and limiter is not None and limiter.by_ip else None
        )
        self._self_authenticated = self_authenticated_prefixes
        self.observer = observer
        self._cors = cors
        self._console = console
        super().__init__(self._call, observer, routes)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.router(scope, receive, send)
            return
        path = route_path(scope)
        public = path in PUBLIC_PATHS  # probes: neither limited nor authenticated
        # Surfaces authenticate their calls themselves, in their vendor's error shape.
        prefixes = self._self_authenticated
        authenticated = not public and not (prefixes and path.startswith(prefixes))
        if path == "/" and self._console and wants_html(scope):
            authenticated = False  # a browser, sent to the console; API clients keep their JSON 401
        # Matched first, so that a call refused by a limit or by authentication is counted by its method.
        # A fixed path by one lookup: a native route, or a surface's own route (served below, after the
        # stages, as the router would: the call is counted by its route only once it reaches it).
        own: tuple[PathRoute, Scope] | None = None
        raw_path = raw_route_path(scope)
        found = self._exact.find(scope) if raw_path in self._exact_paths else None  # no call for most paths
        if found is None:
            route = self._native_route(scope, raw_path)
        elif isinstance(found[0], TranscodedRoute):
            route = found[0]
            scope.update(found[1])
            scope[ROUTE] = route
        else:
            route = None
            if isinstance(found[0], PathRoute):
                own = found[0], found[1]
        cors = self._cors
        if cors is not None:
            origin = cors.allowed(scope)
            if origin is not None:
                if isinstance(send, ObservedSend):  # always, through ObservedCalls
                    send.cors = cors.response_headers(origin)
                else:
                    send = with_headers(send, cors.response_headers(origin))
                if cors.is_preflight(scope):
                    await cors.send_preflight(send)
                    return
        query = scope["query_string"]
        if query and ACCESS_TOKEN_HINT in query:  # `in` on bytes costs a TypeError raised and cleared
            try:
                streaming_get = route is not None and route.streaming and scope["method"] == "GET"
                take_access_token(scope, streaming_get)
            except GatewayError as exc:
                await send_error(send, exc)
                return
        limiter = self._limiter if not public else None
        verdict = token = None
        window = (
            self._ip_window if limiter is not None and type(send) is ObservedSend and send.own_lines else None
        )
        if limiter is not None and window is None:  # (the one limit's lines are made as it counts, below)
            verdict = Verdict()
            if isinstance(send, ObservedSend):  # always, through ObservedCalls: one send wrapper, not two
                send.verdict = verdict
            else:
                send = with_rate_limit_headers(send, verdict)
            if limiter.by_room:  # the verdict is the task's only for them (Dispatcher.call finds it there)
                token = begin_call(verdict)[1]
        # The stages in this one coroutine: each coroutine layer a call went through was ~2k instructions.
        try:
            try:
                if limiter is not None and limiter.by_ip:
                    if limiter.trusted_proxies:
                        ip = client_ip(limiter, scope)
                    else:  # the peer, as client_ip says, without its call (no proxy to believe)
                        client = scope.get("client")
                        ip = client[0] if client else ""
                    if window is not None:  # counted here, its lines made from the count
                        allowed, remaining, reset = window.count_now(ip)
                        if allowed:
                            send.limit_lines = usage_lines(window.amount, remaining, reset)  # type: ignore[attr-defined]  # window: an ObservedSend
                        else:  # refused: a verdict and the error, as any limit's refusal
                            usage = Usage(window.amount, remaining, reset)
                            verdict = send.verdict = Verdict()  # type: ignore[attr-defined]
                            verdict.count(False, usage)
                            limiter.refuse("ip", usage, verdict)
                    elif limiter.local:  # counted here: no coroutine to await
                        limiter.check_now(limiter.by_ip, ip, verdict)
                    else:
                        await limiter.check(limiter.by_ip, ip, verdict)
                if authenticated:
                    principal = authenticate(self.policy, scope)
                    if self._key_limiter is not None:
                        await self._key_limiter.check(self._key_limiter.by_key, principal.name, verdict)
                    scope[PRINCIPAL] = principal
            except GatewayError as exc:
                await send_error(send, exc)
                return
            if route is not None:
                await route.handle(scope, receive, send)
            elif own is not None:  # it answers everything itself: no need of Starlette's error middleware
                scope[ROUTE] = own[0]
                scope.update(own[1])
                await own[0].handle(scope, receive, send)
            else:
                await self.router(scope, receive, send)
        finally:
            if token is not None:
                end_call(token)

    def _native_route(self, scope: Scope, path: str) -> TranscodedRoute | None:
        """The native route serving this method and raw route path (putting the template's match in the
        scope)."""
        by_method = self._by_method.get(scope["method"])
        if by_method is None:
            return None
        verbs, plain = by_method
        # Custom verbs first (route_order), but only for a path that can end in one: a path without a
        # colon skips them (a frame each; GetVariable came after three of them).
        for route in (*verbs, *plain) if ":" in path else plain:
            match = route.match_path(path)
            if match is not None:
                scope[MATCH] = match
                scope[ROUTE] = route  # where Starlette's router leaves its routes: observed by route
                return route
        return None


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (a plain route, wrong method) in the native error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: Code.NOT_FOUND, 405: Code.UNIMPLEMENTED}.get(status, Code.INVALID_ARGUMENT)
    message = f"no route for {request.method} {request.url.path}" if status in (404, 405) else str(exc)
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    return error_response(GatewayError(message, code=code, http_status=status), headers)
