"""Starlette routes derived from the HttpRules: one :class:`TranscodedRoute` per binding.

A route matches the **raw** path (``scope["raw_path"]``) against its template, so a room id sent
percent-encoded (``https%3A%2F%2Fplay.example.com%2F_%2Fglobal%2Fx``) stays one segment; variables are
decoded after matching. Routes with a custom verb come first: ``…/variables/x:listen`` must reach
ListenVariable before GetVariable's ``{name}`` takes ``x:listen`` as a name (grpc-gateway tries the verb
first the same way). A path that matches with another HTTP method is a Starlette ``Match.PARTIAL``, which
the router turns into our 405.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import orjson
from prometheus_client import Counter
from starlette.routing import BaseRoute, Match, Mount, NoMatchFound, Route, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send

from gateway.auth.policy import Principal
from gateway.core.service import ListenStream
from gateway.dispatch import Dispatcher
from gateway.edge.http_rules import Binding
from gateway.edge.responses import (
    ClientDisconnected,
    RequestHeaders,
    internal_error,
    read_body,
    send_error,
    send_json,
)
from gateway.edge.streams import StreamFormat, negotiate, pump, resume_position
from gateway.edge.transcoder import Transcoder
from gateway.errors import Code, GatewayError, Unauthenticated
from gateway.observability.calls import MethodRecorder

log = logging.getLogger(__name__)

PRINCIPAL = "room_gateway.principal"
#: The template's ``re.Match`` of the path, put in the scope by whoever matched the route.
MATCH = "room_gateway.match"
_RAW_PATH = "room_gateway.raw_path"
#: The route serving the call (Starlette's own key, which its router sets for its routes).
ROUTE = "route"


def route_path(scope: Scope) -> str:
    """The request's (decoded) path below the app's mount point, ``scope["root_path"]``: what a route
    matches, as Starlette's router computes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return _below_root(path, root) if root else path  # once per call: no function call when not mounted


def raw_route_path(scope: Scope) -> str:
    """The request's path as sent (percent-encoding intact), without the query string and root path.

    Computed once per request and kept in the scope: every route asks for it.
    """
    cached = scope.get(_RAW_PATH)
    if cached is not None:
        return str(cached)
    raw = scope.get("raw_path")
    if raw is None:  # the server does not provide it: the best we can do is the decoded path
        path = str(scope["path"])
    else:
        # Some clients' raw_path carries the query string (httpx's ASGITransport does).
        path = raw.partition(b"?")[0].decode("latin-1")
    root: str = scope.get("root_path", "")
    if root:
        path = _below_root(path, root)
    scope[_RAW_PATH] = path
    return path


def _below_root(path: str, root: str) -> str:
    """``path`` without the mount point ``root`` when it lies below it (``/api/v1`` below ``/api``; not
    ``/apiv1``), as Starlette's ``get_route_path`` does; ``""`` for the mount point itself."""
    if not path.startswith(root):
        return path
    if len(path) == len(root):
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


class PathRoute(BaseRoute):
    """A route of the gateway's own, matched by its path template and HTTP method alone (``matches`` reads
    nothing else of the scope, and a path it does not match is ``Match.NONE`` whatever the method), and
    answering every outcome itself, errors included (so the edge may call it without Starlette's error
    middleware, as it always has the native routes).

    :ivar exact_path: the one raw path the route matches, when its template has no variable or wildcard.
    """

    exact_path: str | None = None


class TranscodedRoute(PathRoute):
    """One HTTP binding of a native method.

    :param binding: the parsed HttpRule binding.
    :param transcoder: binds its requests.
    :param dispatcher: runs the calls.
    :param routes: every transcoded route (to list the allowed methods of a path in a 405).
    :param max_body_bytes: the request body limit (413 beyond).
    :param keepalive_seconds: SSE/NDJSON keep-alive interval.
    :param recorder: counts a server stream's time open and its messages (``None``: not counted).
    """

    def __init__(
        self,
        binding: Binding,
        transcoder: Transcoder,
        dispatcher: Dispatcher,
        routes: Sequence[TranscodedRoute],
        *,
        max_body_bytes: int,
        keepalive_seconds: float,
        recorder: MethodRecorder | None = None,
    ) -> None:
        self.binding = binding
        self._recorder = recorder
        self.name = binding.method.name
        self.methods = {binding.http_method}
        self.path = binding.template.template
        self._pattern: re.Pattern[str] = binding.template.pattern
        self.exact_path = binding.template.fixed_path
        self._verb_suffix = ":" + binding.template.verb if binding.template.verb else ""
        self._http_method = binding.http_method
        self.transcoder = transcoder
        self._call = dispatcher.call
        self._method = binding.method.name
        self._streaming = binding.method.server_streaming
        fields = binding.method.input.fields_by_name
        #: Whether ``Last-Event-ID`` resumes the stream (its request has the log position's fields).
        self._resumable = self._streaming and "after_seq" in fields and "epoch" in fields
        self._routes = routes
        self._max_body = max_body_bytes
        self._keepalive = keepalive_seconds
        id_field = "version" if "version" in transcoder.output.fields else None
        self._id_field = transcoder.output.fields[id_field].json_name if id_field else None

    def __repr__(self) -> str:
        return f"TranscodedRoute({self._http_method} {self.path} → {self._method})"

    @property
    def http_method(self) -> str:
        return self._http_method

    @property
    def streaming(self) -> bool:
        """Whether the method is a server stream."""
        return self._streaming

    def match_path(self, path: str) -> re.Match[str] | None:
        """The template's match of a raw route path (:func:`raw_route_path`), whatever the HTTP method."""
        if self._verb_suffix and not path.endswith(self._verb_suffix):
            return None
        return self._pattern.fullmatch(path)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        match = self.match_path(raw_route_path(scope))
        if match is None:
            return Match.NONE, {}
        child = {MATCH: match}
        return (Match.FULL if scope["method"] == self._http_method else Match.PARTIAL), child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != self._http_method:
            await self._method_not_allowed(scope, send)
            return
        try:
            principal = scope.get(PRINCIPAL)
            if not isinstance(principal, Principal):
                raise Unauthenticated("missing credentials")
            headers = RequestHeaders(scope)
            body = await read_body(receive, headers, self._max_body)
            try:
                path_values = self.binding.template.decode(scope[MATCH])
            except UnicodeDecodeError:
                raise GatewayError("the URL path is not valid UTF-8", code=Code.INVALID_ARGUMENT) from None
            request = self.transcoder.bind(path_values, scope["query_string"], body, headers.content_type)
            if self._resumable and headers.last_event_id:
                # A reconnecting EventSource: its last id wins over the URL's afterSeq, which it repeats.
                request.update(resume_position(headers.last_event_id))
            result = await self._call(self._method, principal, request)
        except ClientDisconnected:
            return
        except GatewayError as exc:
            await send_error(send, exc)
            return
        except Exception:
            log.exception("%s %s failed", self._http_method, self.path)
            await send_error(send, internal_error())
            return
        if self._streaming:
            fmt = StreamFormat(negotiate(headers.accept), self._id_field, resumable=self._resumable)
            recorder = self._recorder
            if recorder is None:
                await pump(
                    result, self.transcoder.output.encode, fmt, receive, send, self._keepalive, self._method
                )
                return
            recorder.streams.inc()
            try:
                await pump(
                    CountedStream(result, recorder.messages),
                    self.transcoder.output.encode,
                    fmt,
                    receive,
                    send,
                    self._keepalive,
                    self._method,
                )
            finally:
                recorder.streams.dec()
            return
        try:
            payload = orjson.dumps(self.transcoder.output.encode(result))
        except Exception:
            log.exception("%s %s: encoding the result failed", self._http_method, self.path)
            await send_error(send, internal_error())
            return
        await send_json(send, 200, payload)

    async def _method_not_allowed(self, scope: Scope, send: Send) -> None:
        path = raw_route_path(scope)
        allowed = sorted({r._http_method for r in self._routes if r.match_path(path) is not None})
        error = GatewayError(
            f"method {scope['method']} is not allowed on {path}; allowed: {', '.join(allowed)}",
            code=Code.UNIMPLEMENTED,
            http_status=405,
        )
        await send_error(send, error, [(b"allow", ", ".join(allowed).encode("ascii"))])

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # transcoded routes are not reversed by name


class CountedStream(ListenStream[Any]):
    """A :class:`~gateway.core.service.ListenStream` counting the notifications read from it (each is sent
    as one message); anything else is the wrapped stream's."""

    def __init__(self, stream: ListenStream[Any], counter: Counter) -> None:  # wraps one: no state of its own
        self._stream = stream
        self._counter = counter

    async def __anext__(self) -> Any:
        item = await self._stream.__anext__()
        self._counter.inc()
        return item

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def route_order(route: TranscodedRoute) -> tuple[int, int]:
    """Custom verbs first, then the most literal segments first (more specific templates win)."""
    template = route.binding.template
    return (0 if template.verb else 1, -template.literal_count)


# Routes whose matching is known to be by path (and HTTP method) only: the exact-path table may probe them.
# Anything else (a ``Host``, a plugin's own ``BaseRoute``) may match on anything: the table stops before it.
_PATH_MATCHED = (Route, Mount, WebSocketRoute)


def _exact_path(route: BaseRoute) -> str | None:
    """The one path ``route`` matches, when it has one (a template or path without parameters)."""
    if isinstance(route, PathRoute):
        return route.exact_path
    if type(route) is Route and not route.param_convertors:
        return route.path
    return None


def _matches_by_path(route: BaseRoute) -> bool:
    return isinstance(route, PathRoute) or type(route) in _PATH_MATCHED


class ExactRoutes:
    """The routes of fixed paths (``/healthz``, ``/openapi.json``, an upstream's auto-mapped ``POST
    /{package}.{Service}/{Method}``, ``POST /v1/rooms``) found by one dict lookup, where Starlette's router
    tries every route in order: a proxied REST call came after ~30 routes' regular expressions (~220k
    instructions of its ~740k, bench/RESULTS.md).

    Starlette serves the first route that matches fully (path and method), else the first that matches
    the path only (its 405). The table keeps, for each fixed path, the routes that match it in order, up
    to the first one that is not that path's own (a parameterised route, a mount, a route whose matching
    is unknown): from there only the full scan knows. :meth:`find` answers the first full match among
    them, and nothing when there is none (a wrong method, HEAD or OPTIONS on a POST route: the caller's
    scan then gives today's 404/405) — so whatever it finds is what the scan would have found. A fixed path
    that a parameterised route (or a route of unknown matching) reaches first is left out altogether
    (:attr:`shadowed`).

    Keys are route paths as sent; a request whose path decodes to something else (``%`` escapes) is not
    looked up, since raw-path routes and Starlette's decoded-path ones would see different strings.

    :param routes: every route, in the router's order.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        #: Fixed path → the routes the scan would try for it, in order (read it to skip :meth:`find`'s call).
        self.paths: dict[str, tuple[BaseRoute, ...]] = {}
        #: Fixed paths left to the scan: another route reaches them first.
        self.shadowed: set[str] = set()
        paths = dict.fromkeys(path for route in routes if (path := _exact_path(route)) is not None)
        for path in paths:
            found: list[BaseRoute] = []
            for route in routes:
                if not _matches_by_path(route):
                    break
                if route.matches(_probe(path))[0] is Match.NONE:
                    continue
                if _exact_path(route) != path:
                    break  # a parameterised route (or a mount) takes the path from here on
                found.append(route)
            if found:
                self.paths[path] = tuple(found)
            else:
                self.shadowed.add(path)

    def __contains__(self, path: str) -> bool:
        return path in self.paths

    def find(self, scope: Scope) -> tuple[BaseRoute, Scope] | None:
        """The route the router would serve an HTTP request with, and its child scope (what Starlette's
        router adds to the scope), when the request's path is a fixed one and a route of it takes its
        method; ``None``: scan."""
        path = raw_route_path(scope)
        routes = self.paths.get(path)
        if routes is None or path != route_path(scope):
            return None
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route, child
        return None


def _probe(path: str) -> Scope:
    """A request for ``path`` (whose method does not matter for ``Match.NONE``: see :class:`PathRoute`)."""
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }


class ExactRouter(Router):
    """Starlette's router with the :class:`ExactRoutes` lookup first (its routes are fixed at creation)."""

    def __init__(self, routes: Sequence[BaseRoute], *, redirect_slashes: bool = True) -> None:
        super().__init__(routes, redirect_slashes=redirect_slashes)
        self.exact = ExactRoutes(self.routes)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.exact.find(scope)
            if found is not None:
                route, child = found
                if "router" not in scope:
                    scope["router"] = self
                scope[ROUTE] = route
                scope.update(child)
                await route.handle(scope, receive, send)
                return
        await super().app(scope, receive, send)
