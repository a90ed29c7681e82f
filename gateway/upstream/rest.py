"""REST/JSON for an upstream's methods, from its descriptors: the native API's bindings, proto3 JSON by
``google.protobuf.json_format`` on dynamic messages.

Each method gets the bindings of its ``google.api.http`` rule when the upstream's proto has one
(:func:`gateway.edge.http_rules.binding`: the same grammar, templates and body rules as the native
routes), else ``POST /{package}.{Service}/{Method}`` with the whole request as the body (Envoy's
``grpc_json_transcoder`` auto mapping). A server stream also answers ``GET`` on the auto-mapped path, its
request fields as query parameters (for ``EventSource``), and streams as the native ones do
(:func:`gateway.edge.streams.pump`: SSE, or NDJSON on ``Accept: application/x-ndjson``). Client- and
bidi-streaming methods are gRPC only.

The request is built as a proto3 JSON object — the body, the path variables at their field paths, the
query parameters at theirs — and parsed strictly into the method's request type by ``json_format``
(unknown fields are errors); only its bytes go upstream, through the same channel and checks as a gRPC
call (:class:`~gateway.upstream.proxy.UpstreamProxy`). The reply is written back with
``MessageToDict`` (lowerCamel names, fields without presence included, as the native API). Errors are
in the native error shape, the upstream's status mapped to its HTTP status.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.routing import Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from gateway import schema
from gateway.core.service import ListenStream
from gateway.dispatch import Method
from gateway.edge.http_rules import Binding, binding, parse_template, rule_of
from gateway.edge.responses import (
    ClientDisconnected,
    RequestHeaders,
    internal_error,
    read_body,
    send_error,
    send_json,
)
from gateway.edge.routing import CountedStream, PathRoute, raw_route_path
from gateway.edge.streams import StreamFormat, negotiate, pump
from gateway.edge.transcoder import parse_json, query_fields, query_pairs
from gateway.errors import Code, GatewayError, InvalidArgument
from gateway.observability.calls import MethodRecorder
from gateway.surfaces import caller
from gateway.upstream.connection import Call
from gateway.upstream.descriptors import UpstreamMethod
from gateway.upstream.flat_reply import FlatReply
from gateway.upstream.proxy import UpstreamProxy

log = logging.getLogger(__name__)

_MATCH = "room_gateway.upstream_match"


def upstream_bindings(method: UpstreamMethod) -> list[Binding]:
    """The HTTP bindings of one upstream method: its HttpRule's, else the auto-mapped ones; none for a
    client- or bidi-streaming method (one JSON body is one message)."""
    if method.client_streaming:
        return []
    native = Method(
        name=method.name,
        python_name=method.name,
        input=method.input,
        output=method.output,
        server_streaming=method.server_streaming,
        permission=method.permission,
    )
    rule = rule_of(method.descriptor)
    if rule is not None:
        return [binding(native, one) for one in (rule, *rule.additional_bindings)]
    template = parse_template(method.path)
    found = [Binding(native, "POST", template, "*", "")]
    if method.server_streaming:
        found.append(Binding(native, "GET", template, "", ""))
    return found


class Binder:
    """Builds one binding's request message from a REST call (and documents it: :attr:`binding`,
    :attr:`query`).

    :param binding: the HTTP binding.
    :param method: the upstream method it calls.
    """

    def __init__(self, binding: Binding, method: UpstreamMethod) -> None:
        self.binding = binding
        self.method = method
        self.tag = method.descriptor.containing_service.full_name
        self.request_class = message_factory.GetMessageClass(method.input)
        self.reply_class = message_factory.GetMessageClass(method.output)
        self._flat_request = _flat_request(method.input)
        self._flat_reply = _flat_reply(method.output)
        self._path = [
            (v.field_path, schema.field_at(method.input, v.field_path)) for v in binding.template.variables
        ]
        bound = {v.field_path for v in binding.template.variables}
        #: query parameter name (proto or JSON field path) → (field path, field, repeated)
        self.query: dict[str, tuple[tuple[str, ...], Any, bool]] = {}
        if binding.body != "*":
            for path, json_path, field in query_fields(method.input, (), (), bound, binding.body):
                entry = (path, field, field.is_repeated)
                self.query[".".join(path)] = entry
                self.query[".".join(json_path)] = entry

    def bind(
        self, match: re.Match[str] | None, query_string: bytes, body: bytes, content_type: str | None
    ) -> bytes:
        """The request message's bytes (``match``: the path's, ``None`` for a template without variables).

        :raises InvalidArgument: bad input of any kind (415 for a non-JSON body).
        """
        binding = self.binding
        request: dict[str, Any] = {}
        if body:
            if not binding.body:
                raise InvalidArgument(f"{binding.http_method} {binding.template.template} takes no body")
            parsed = parse_json(body, content_type)
            if binding.body == "*":
                if type(parsed) is not dict:
                    raise InvalidArgument("the request body must be a JSON object")
                request = parsed
            else:
                request = {binding.body: parsed}
        if match is not None:  # ``None``: an exact path, no variables
            try:
                values = binding.template.decode(match)
            except UnicodeDecodeError:
                raise InvalidArgument("the URL path is not valid UTF-8") from None
            for field_path, field in self._path:
                _put(request, field_path, _scalar(field, values[field_path]))
        if query_string:
            self._bind_query(request, query_string)
        flat = self._flat_request
        if flat is not None:
            data = _flat_message(self.request_class, flat, request)
            if data is not None:
                return data
        message: Message = self.request_class()
        try:
            json_format.ParseDict(request, message)
        except json_format.ParseError as exc:
            raise InvalidArgument(
                f"the request is not a valid {self.method.input.full_name}: {exc}"
            ) from None
        return message.SerializeToString()

    def _bind_query(self, request: dict[str, Any], query_string: bytes) -> None:
        given: set[tuple[str, ...]] = set()
        for key, value in query_pairs(query_string):
            if key == "access_token":  # API.md "Browsers": the edge's credential (RFC 6750 §2.3), no field
                continue
            entry = self.query.get(key)
            if entry is None:
                raise InvalidArgument(f"unknown query parameter {key!r}")
            path, field, repeated = entry
            scalar = _scalar(field, value)
            container = _container(request, path)
            if repeated:
                container.setdefault(path[-1], []).append(scalar)
            elif path in given:
                raise InvalidArgument(f"query parameter {key!r} is given more than once")
            else:
                given.add(path)
                container[path[-1]] = scalar

    def reply(self, data: bytes) -> Any:
        """A reply message's bytes as proto3 JSON."""
        flat = self._flat_reply
        if flat is not None:
            found = flat.read(data)
            if found is not None:
                return found
        message: Message = self.reply_class.FromString(data)
        return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


# Flat messages: json_format walks every field and value in Python (~5 us a request, ~2.5 us a reply, the
# largest part of a REST call's own work here). For a message whose fields are all singular strings, bools
# and integers without presence (most requests and replies), the same conversion is a dict of names: the
# request built by the message's constructor, the reply read from its bytes (:mod:`flat_reply`). Anything
# else — another type, a value of another JSON type, a nested object, a null, a constructor's refusal (a lone
# surrogate, an integer out of range) — goes through json_format as before, so its results and error texts
# stay its own.
_FLAT_TYPES: dict[int, type] = {
    FieldDescriptor.CPPTYPE_STRING: str,
    FieldDescriptor.CPPTYPE_BOOL: bool,
    FieldDescriptor.CPPTYPE_INT32: int,
    FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT64: int,
}


def _flat_fields(descriptor: Descriptor) -> list[FieldDescriptor] | None:
    """``descriptor``'s fields when each is a flat scalar (see above); ``None`` otherwise."""
    if descriptor.full_name.startswith("google.protobuf."):  # well-known types have JSON forms of their own
        return None
    fields = list(descriptor.fields)
    for field in fields:
        if (
            field.is_repeated
            or field.has_presence
            or field.cpp_type not in _FLAT_TYPES
            or field.type == FieldDescriptor.TYPE_BYTES
        ):
            return None
    return fields


def _flat_request(descriptor: Descriptor) -> dict[str, tuple[str, type]] | None:
    """JSON key (lowerCamel and proto name, as json_format accepts both) → (field name, JSON value type)."""
    fields = _flat_fields(descriptor)
    if fields is None:
        return None
    keys: dict[str, tuple[str, type]] = {}
    for field in fields:
        keys[field.name] = keys[field.json_name] = (field.name, _FLAT_TYPES[field.cpp_type])
    return keys


def _flat_message(
    message_class: Any, keys: dict[str, tuple[str, type]], request: dict[str, Any]
) -> bytes | None:
    """A flat request's bytes, as json_format would give them; ``None``: json_format's way."""
    values: dict[str, Any] = {}
    for key, value in request.items():
        entry = keys.get(key)
        if entry is None or type(value) is not entry[1]:  # ``is``: a bool is no integer in proto3 JSON
            return None
        values[entry[0]] = value  # a field given by both its names: the last wins, as in json_format
    try:
        data: bytes = message_class(**values).SerializeToString()
    except Exception:  # json_format's own error text for it
        return None
    return data


def _flat_reply(descriptor: Descriptor) -> FlatReply | None:
    """A flat reply's reader, from its wire bytes (:mod:`gateway.upstream.flat_reply`)."""
    fields = _flat_fields(descriptor)
    return FlatReply(fields) if fields is not None else None


def _scalar(field: FieldDescriptor, text: str) -> Any:
    """A path or query string as the JSON value of ``field`` (``json_format`` takes numbers as strings)."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise InvalidArgument(f"{field.json_name} must be true or false")
        return text == "true"
    return text


def _container(request: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    container = request
    for name in path[:-1]:
        inner = container.setdefault(name, {})
        if not isinstance(inner, dict):
            raise InvalidArgument(f"{'.'.join(path)} conflicts with the body")
        container = inner
    return container


def _put(request: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    container = _container(request, path)
    name = path[-1]
    for key in (name, schema.camel_case(name)):
        if key in container and container[key] != value:
            raise InvalidArgument(f"{'.'.join(path)} differs between the URL path and the body")
    container[name] = value


class UpstreamRoute(PathRoute):
    """One HTTP binding of an upstream method (matched on the raw path, as the native routes).

    :param binder: builds its requests.
    :param proxy: the upstream's proxy: its channel, permissions and room checks.
    :param max_body_bytes: the request body limit (413 beyond).
    :param keepalive_seconds: SSE/NDJSON keep-alive interval.
    :param recorder: the method's metrics, to count its streams open and their messages (as the native
        routes do); ``None``: not counted.
    """

    def __init__(
        self,
        binder: Binder,
        proxy: UpstreamProxy,
        *,
        max_body_bytes: int,
        keepalive_seconds: float,
        recorder: MethodRecorder | None = None,
    ):
        self.binder = binder
        self.method = binder.method
        self.proxy = proxy
        template = binder.binding.template
        self.template = template.template
        self.exact_path = template.fixed_path
        # The edge's observer labels a surface's route by its ``path``: an upstream's calls are counted
        # and logged under the proto method's name, as the native API's are (API.md, "Operability"), for
        # every binding of the method alike.
        self.path = self.method.name
        self.name = self.method.name
        self._recorder = recorder
        self.methods = {binder.binding.http_method}
        self._verb = ":" + template.verb if template.verb else ""
        self._max_body = max_body_bytes
        self._keepalive = keepalive_seconds
        self._seconds = proxy.timeout  # a REST call's deadline: the proxy's, fixed at its creation

    def __repr__(self) -> str:
        return f"UpstreamRoute({self.binder.binding.http_method} {self.template} → {self.method.path})"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path = raw_route_path(scope)
        match: re.Match[str] | None = None
        if self.exact_path is not None:  # the one path its pattern matches (auto-mapped): nothing to bind
            if path != self.exact_path:
                return Match.NONE, {}
        else:
            if self._verb and not path.endswith(self._verb):
                return Match.NONE, {}
            match = self.binder.binding.template.pattern.fullmatch(path)
            if match is None:
                return Match.NONE, {}
        return (Match.FULL if scope["method"] in self.methods else Match.PARTIAL), {_MATCH: match}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in self.methods:
            allowed = ", ".join(sorted(self.methods))
            error = GatewayError(
                f"method {scope['method']} is not allowed on {self.template}; allowed: {allowed}",
                code=Code.UNIMPLEMENTED,
                http_status=405,
            )
            await send_error(send, error, [(b"allow", allowed.encode("ascii"))])
            return
        headers = RequestHeaders(scope)
        try:
            principal = caller(scope)
            rooms = self.proxy.authorize(principal, self.method)
            body = await read_body(receive, headers, self._max_body)
            request = self.binder.bind(scope[_MATCH], scope["query_string"], body, headers.content_type)
            if rooms:
                await self.proxy.check_room(principal, self.method, request)
            if self.method.server_streaming:
                replies = await UpstreamReplies.open(self, request, self._client(scope))
            else:  # the upstream call here, not in a coroutine of its own: one frame less to suspend
                proxy = self.proxy
                try:
                    metadata = proxy.upstream_metadata(self._client(scope))
                    reply = await proxy.channel.unary(
                        self.method.path, metadata, request, seconds=self._seconds
                    )
                except Exception as exc:
                    raise proxy.error(exc) from None
                if reply is None:
                    raise GatewayError(f"upstream {proxy.name!r} sent no reply", code=Code.INTERNAL)
                payload = orjson.dumps(self.binder.reply(reply))
        except ClientDisconnected:
            return
        except GatewayError as exc:
            await send_error(send, exc)
            return
        except Exception:
            log.exception("%s %s failed", scope["method"], self.template)
            await send_error(send, internal_error())
            return
        if self.method.server_streaming:
            fmt = StreamFormat(negotiate(headers.accept), None)
            recorder = self._recorder
            if recorder is None:
                await pump(replies, _same, fmt, receive, send, self._keepalive, self.method.name)
                return
            recorder.streams.inc()
            try:
                counted = CountedStream(replies, recorder.messages)
                await pump(counted, _same, fmt, receive, send, self._keepalive, self.method.name)
            finally:
                recorder.streams.dec()
            return
        await send_json(send, 200, payload)

    def _client(self, scope: Scope) -> _Headers | None:
        """The client's headers the proxy forwards (``None``: none of them, mostly)."""
        names = self.proxy.forwarded_names
        forwarded = None
        for name, value in scope["headers"]:  # (a loop, not a comprehension: one frame a call less)
            if name.lower() in names:
                if forwarded is None:
                    forwarded = []
                forwarded.append((name, value))
        return _Headers(forwarded) if forwarded else None


class UpstreamReplies(ListenStream[Any]):
    """An upstream server stream as the edge's stream pump reads it (``__anext__``, ``aclose``,
    ``position``): each reply as proto3 JSON; an upstream error as a :class:`GatewayError`."""

    def __init__(self, route: UpstreamRoute, upstream: Call) -> None:  # no subscription
        self.position = None
        self._route = route
        self._upstream = upstream
        self._closed = False

    @classmethod
    async def open(cls, route: UpstreamRoute, request: bytes, client: _Headers | None) -> UpstreamReplies:
        """Open the call upstream and send its request; an error before the first reply is raised here,
        so that it is answered with its HTTP status rather than inside a 200 stream."""
        proxy = route.proxy
        try:
            metadata = proxy.upstream_metadata(client)
            upstream = await proxy.channel.call(route.method.path, metadata, message=request)
        except Exception as exc:
            raise proxy.error(exc) from None
        replies = cls(route, upstream)
        try:
            await upstream.recv_initial_metadata()
        except Exception as exc:
            await replies.aclose()
            raise proxy.error(exc) from None
        return replies

    def __aiter__(self) -> UpstreamReplies:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        try:
            reply = await self._upstream.recv_message()
            if reply is None:
                await self._upstream.recv_trailing_metadata()
                raise StopAsyncIteration
        except StopAsyncIteration:
            raise
        except Exception as exc:
            if self._closed:
                raise StopAsyncIteration from None
            raise self._route.proxy.error(exc) from None
        return self._route.binder.reply(reply)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._upstream.close()  # RST_STREAM when it has not ended: the upstream stops sending


class _Headers:
    """A REST call's forwarded headers with the metadata interface the proxy reads (``getall``): only the
    values of the few keys it forwards are kept and decoded (decoding every header was ~1 us a call, and
    sorting them all by name half of that)."""

    __slots__ = ("_by_name",)

    def __init__(self, forwarded: list[tuple[bytes, bytes]]) -> None:
        self._by_name: dict[bytes, list[bytes]] = {}
        for name, value in forwarded:
            self._by_name.setdefault(name.lower(), []).append(value)

    def getall(self, key: str, default: Any = ()) -> list[str]:
        found = self._by_name.get(key.encode("latin-1"))
        return [v.decode("latin-1") for v in found] if found else list(default)


def _same(item: Any) -> Any:
    return item
