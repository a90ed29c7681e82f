"""Every REST call observed: a pure ASGI middleware, outermost, so it sees 401s and 429s too.

Per call it

- takes the request id from ``X-Request-Id`` when a trusted proxy sent one, else makes one, and echoes it
  on the response (``x-request-id``); it is :data:`gateway.observability.calls.CURRENT`'s while the call
  runs, so error logs carry it too;
- counts the call in ``room_gateway_requests_total`` (and its latency) under the method of the route that
  served it — the native method's proto name, a surface's route template, the name of a built-in route
  (``healthz``, ``metrics``, …), or ``-`` for a path no route serves — and the gRPC status name it
  answered with (noted by :func:`gateway.edge.responses.send_error`, else mapped from the HTTP status);
- with tracing on, runs the call in a server span continuing the request's ``traceparent``;
- writes the access line (:func:`gateway.edge.accesslog.write_access_line`) when ``access_log`` is on.

The route's recorder is found by the route object (which the router leaves in ``scope["route"]``), bound
once per route: a call costs a dict lookup, an ``inc()`` and an ``observe()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.policy import Principal
from gateway.edge.accesslog import (
    LOGGED_PATHS,
    AccessLine,
    http_text,
    key_name,
    log,
    logged_path,
    write_access_line,
)
from gateway.edge.cycle import HEAD
from gateway.edge.ratelimit import add_rate_limit_headers, rate_limit_lines
from gateway.edge.routing import PRINCIPAL, TranscodedRoute
from gateway.logs import write_info
from gateway.observability.calls import CURRENT, Call, MethodRecorder, code_of_status
from gateway.observability.observer import Observer
from gateway.ratelimit import Verdict

if TYPE_CHECKING:  # tracing is an optional extra
    from gateway.observability.tracing import Tracing

_REQUEST_ID = b"x-request-id"
_REQUEST_ID_LINE = b"x-request-id: %s\r\n"
_TRACEPARENT = b"traceparent"
_ROUTE = "route"  # where Starlette's router (and the edge, for native routes) leaves the route served
TRANSPORT = "rest"


class ObservedSend:
    """The ``send`` of an observed call: notes the status and adds the call's headers as the response
    starts — the request id, the span's (tracing on), the ``RateLimit-*`` headers of :attr:`verdict`
    when a limit applied and the CORS headers of :attr:`cors` for an allowed origin (the edge sets both).
    One object per call instead of a closure per concern: each ``send`` wrapper was a coroutine frame per
    message (bench/RESULTS.md).

    On the gateway's own server (``own_lines``: the scope offers :data:`~gateway.edge.cycle.HEAD`) the request
    id, the ``RateLimit-*`` headers and the ``traceparent`` go as header lines it writes unchecked: all are
    made here, from a checked id, numbers and hex digits (uvicorn's checks of them per header were ~14k
    instructions of a REST GET).
    """

    __slots__ = ("cors", "echoed", "limit_lines", "own_lines", "send", "span", "status", "tracing", "verdict")

    def __init__(
        self,
        send: Send,
        echoed: tuple[bytes, bytes],
        span: Any,
        tracing: Tracing | None,
        own_lines: bool = False,
    ) -> None:
        self.send = send
        self.echoed = echoed
        self.span = span
        self.tracing = tracing
        self.own_lines = own_lines
        self.status = 0
        #: The call's rate-limit verdict, read as the response starts (``None``: no limit applied).
        self.verdict: Verdict | None = None
        #: On the gateway's own server, the ``RateLimit-*`` lines of a call that one limit alone counted and
        #: allowed, made as it was counted (:func:`gateway.edge.ratelimit.usage_lines`: no verdict made).
        self.limit_lines = b""
        #: The CORS headers of an allowed origin (the edge sets them; ``None``: not a CORS call).
        self.cors: list[tuple[bytes, bytes]] | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            verdict = self.verdict
            if self.own_lines:
                lines = self.limit_lines + _REQUEST_ID_LINE % self.echoed[1]
                if verdict is not None:
                    lines = rate_limit_lines(verdict) + lines
                if self.span is not None:  # hex digits and dashes, made by the gateway (response_line)
                    lines += self.tracing.response_line(self.span)  # type: ignore[union-attr]
                message[HEAD] = message.get(HEAD, b"") + lines
                if self.cors is None:
                    await self.send(message)
                    return
            headers = message.get("headers")
            if not isinstance(headers, list):  # a list is ours to extend, as Starlette's middlewares do
                headers = message["headers"] = list(headers or ())
            if not self.own_lines:
                if verdict is not None:
                    add_rate_limit_headers(headers, verdict)
                headers.append(self.echoed)
                if self.span is not None:
                    headers.extend(self.tracing.response_headers(self.span))  # type: ignore[union-attr]
            if self.cors is not None:
                headers.extend(self.cors)
        await self.send(message)


class ObservedCalls:
    """Observe every HTTP call of ``app`` (see the module docstring).

    :param app: the wrapped ASGI app.
    :param observer: what calls are recorded into.
    :param native_routes: the native routes (counted by their proto method).
    :param logger: where access lines go (``room_gateway.access``).
    """

    def __init__(
        self,
        app: ASGIApp,
        observer: Observer,
        native_routes: Sequence[TranscodedRoute] = (),
        logger: logging.Logger = log,
    ) -> None:
        self.app = app
        self.observer = observer
        self.logger = logger
        self._takes_request_ids = observer.takes_request_ids
        self._reads_traceparent = observer.tracing is not None
        self._unrouted = observer.recorder(TRANSPORT, "native", "-")
        #: id(route) → (its recorder, whether it streams)
        self._routes: dict[int, tuple[MethodRecorder, bool]] = {
            id(route): (
                observer.recorder(TRANSPORT, "native", route.name),
                route.binding.method.server_streaming,
            )
            for route in native_routes
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observer = self.observer
        given = traceparent = None
        if self._takes_request_ids:
            for name, value in scope["headers"]:
                if name == _REQUEST_ID:
                    given = value.decode("latin-1")
                elif name == _TRACEPARENT:
                    traceparent = value
        elif self._reads_traceparent:  # tracing alone: one comparison a header (two were ~1.2k a call)
            for name, value in scope["headers"]:
                if name == _TRACEPARENT:
                    traceparent = value
        client = scope.get("client")
        call = Call(observer.request_id(client[0] if client else None, given))
        token = CURRENT.set(call)
        tracing = observer.tracing
        span = None
        if tracing is not None:
            span = tracing.server_span(scope["method"], traceparent, call)
        extensions = scope.get("extensions")
        observed = ObservedSend(
            send,
            (_REQUEST_ID, call.request_id.encode("ascii")),
            span,
            tracing,
            extensions is not None and HEAD in extensions,
        )
        try:
            await self.app(scope, receive, observed)
        finally:
            end = time.perf_counter()
            seconds = end - start
            status = observed.status or 500  # an exception escaping the app becomes a 500 from the server
            code = call.code or code_of_status(status)
            found = self._routes.get(id(scope.get(_ROUTE)))
            recorder, streaming = found if found is not None else self._recorder(scope.get(_ROUTE))
            recorder.finish(code, seconds, streaming)
            if span is not None:
                tracing.end_server_span(span, recorder, scope, status, code)  # type: ignore[union-attr]
            if observer.access_log:
                # The line made here, not in a method (a call was ~0.3k instructions of its ~13k); the path
                # as made safe for an earlier line (a dict lookup, not a call), the key's name as its
                # principal keeps it.
                path = LOGGED_PATHS.get(scope.get("raw_path")) or logged_path(scope)  # type: ignore[arg-type]
                principal = scope.get(PRINCIPAL)
                key = principal.logged_name if type(principal) is Principal else key_name(principal)
                address = client[0] if client else "-"  # ASGI: the host is a str
                text = http_text(
                    scope["method"], path, status, key, seconds, address, call.request_id, call.trace_id
                )
                # The usual case (text, only the gateway's writer listening): the line handed over as it
                # is, no AccessLine and no record; its level, handlers and filters checked there.
                if not write_info(self.logger, text, end):
                    self._write(scope, status, code, seconds, call, recorder, (path, key, address, text))
            CURRENT.reset(token)

    def _recorder(self, route: Any) -> tuple[MethodRecorder, bool]:
        if route is None:
            return self._unrouted, False
        found = self._routes.get(id(route))
        if found is None:  # a built-in or surface route, seen for the first time
            found = self._routes[id(route)] = (self._route_recorder(route), False)
        return found

    def _route_recorder(self, route: BaseRoute) -> MethodRecorder:
        surface = self.observer.route_surfaces.get(id(route))
        if surface is None:  # a built-in route: named by its name (healthz, readyz, openapi, metrics, info)
            return self.observer.recorder(TRANSPORT, "native", str(getattr(route, "name", None) or "-"))
        return self.observer.recorder(TRANSPORT, surface, str(getattr(route, "path", None) or "-"))

    def _write(
        self,
        scope: Scope,
        status: int,
        code: str,
        seconds: float,
        call: Call,
        recorder: MethodRecorder,
        made: tuple[str, str, str, str],
    ) -> None:
        """The access line when :func:`~gateway.logs.write_info` did not write it (json, other handlers
        listening, or INFO off): a record or a json line (``made``: the path, key name, client and text
        :meth:`__call__` made)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        path, key, address, text = made
        line = AccessLine(
            "http",
            scope["method"],
            path,
            recorder.method,
            recorder.surface,
            status,
            code,
            key,
            seconds,
            address,
            call.request_id,
            call.trace_id,
        )
        write_access_line(logger, line, text)
