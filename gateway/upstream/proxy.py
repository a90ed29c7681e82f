"""gRPC through the gateway to an upstream: raw bytes, one pooled HTTP/2 connection, every RPC kind.

Each method the upstream serves gets a grpclib handler (:meth:`UpstreamProxy.__mapping__`) whose messages
are :class:`RawMessage` — the bytes as they arrived, never decoded (the gateway's codec reads a
``RawMessage`` by taking its bytes) — and are written to the upstream's
:class:`~gateway.upstream.connection.UpstreamConnection`, the pool: one HTTP/2 connection per upstream, its
streams multiplexed, made again on the next call once it is lost, so an upstream that comes back is used
again without a restart.

Per call, in this order: the gateway's listeners have authenticated the caller and applied the ``by: ip``
and ``by: key`` limits (as for every gRPC method); the handler asks for ``<upstream>:<Method>``; when the
caller is limited to rooms or ``by: room`` limits are set, each request message's ``room_field`` is read
(the only decoding) and checked; then the call is opened upstream with the deadline the client sent (or
``timeout_seconds`` for a unary call) and only ``metadata``, the request id, ``traceparent`` and the
``forward_metadata`` keys. Requests and replies are pumped one message at a time — each ``send`` waits
for the peer's HTTP/2 window, each ``recv`` gives the window back once read — so flow control holds end to
end both ways; a client that cancels cancels the handler, which resets the upstream stream.

The upstream's initial metadata, replies, status, message, ``grpc-status-details-bin`` and trailing
metadata are returned as they are. An upstream that cannot be reached is UNAVAILABLE; a deadline that
passes, DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Stream

from gateway.auth.policy import Principal
from gateway.dispatch import Dispatcher
from gateway.errors import Code, GatewayError, InvalidArgument, PermissionDenied
from gateway.observability.calls import current_request_id
from gateway.rpc.auth import current_principal
from gateway.rpc.errors import grpc_error
from gateway.rpc.headerblocks import literal_field
from gateway.rpc.wire import RawMessage
from gateway.upstream.address import parse_url
from gateway.upstream.connection import Call, UpstreamConnection, encode_metadata
from gateway.upstream.descriptors import UpstreamMethod
from gateway.upstream.permissions import may_call

log = logging.getLogger(__name__)

#: Metadata of the upstream's answer not passed back: the gateway's own request id is the client's.
_OWN_METADATA = frozenset({"x-request-id"})
#: Client metadata always passed on, besides an upstream's ``forward_metadata``.
FORWARDED = ("traceparent", "tracestate")
#: A metadata value HTTP/2 may carry to the upstream (gRPC's ASCII-Value: printable ASCII).
_VALUE = re.compile(r"[ -~]*")
_CARDINALITY = {
    (False, False): Cardinality.UNARY_UNARY,
    (False, True): Cardinality.UNARY_STREAM,
    (True, False): Cardinality.STREAM_UNARY,
    (True, True): Cardinality.STREAM_STREAM,
}


def open_channel(url: str, tls_ca: str | None) -> UpstreamConnection:
    """The pooled connection to an upstream (made on its first call, and again after a loss)."""
    address = parse_url(url)
    context: ssl.SSLContext | None = None
    if address.tls:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls_ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["h2"])
    return UpstreamConnection(address.host, address.port, ssl=context)


class UpstreamProxy:
    """The grpclib handlers of one upstream's methods (a grpclib service: ``__mapping__``).

    :param name: the upstream's name (permissions ``<name>:<Method>``, messages).
    :param methods: the methods served, by path.
    :param channel: the pooled connection to the upstream.
    :param dispatcher: the gateway's dispatcher: its rate limiter (``by: room``) and the room-token check.
    :param metadata: added to every upstream call.
    :param forward: client metadata keys passed on.
    :param timeout: the deadline of a unary call whose client sets none (seconds).
    """

    def __init__(
        self,
        name: str,
        methods: Mapping[str, UpstreamMethod],
        channel: UpstreamConnection,
        dispatcher: Dispatcher,
        *,
        metadata: Mapping[str, str],
        forward: tuple[str, ...],
        timeout: float,
    ) -> None:
        self.name = name
        self.methods = dict(methods)
        self.channel = channel
        self._dispatcher = dispatcher
        self._metadata = encode_metadata(list(metadata.items()))  # the same for every call: encoded once
        self._forward = (*FORWARDED, *forward)
        #: The forwarded keys as ASGI header names (REST calls: :class:`gateway.upstream.rest.UpstreamRoute`).
        self.forwarded_names = frozenset(key.encode("latin-1") for key in self._forward)
        self._timeout = timeout
        limiter = dispatcher.limiter
        self._room_limit = limiter.check_room if limiter is not None and limiter.by_room else None

    def __mapping__(self) -> dict[str, Handler]:
        return {
            path: Handler(
                self._handler(method),
                _CARDINALITY[method.client_streaming, method.server_streaming],
                RawMessage,
                RawMessage,
            )
            for path, method in self.methods.items()
        }

    def upstream_metadata(self, client: Any) -> bytes:
        """What the upstream receives, encoded: ``metadata``, the request id, and the forwarded client keys
        (``client``: its metadata, ``getall``; ``None`` when it carries none of them).

        :raises InvalidArgument: a forwarded value HTTP/2 cannot carry to the upstream (not printable ASCII).
        """
        encoded = self._metadata
        request_id = current_request_id()
        if request_id is not None:  # on every call: encoded as :func:`encode_metadata` does, without a list
            if _VALUE.fullmatch(request_id) is None:
                raise InvalidArgument("metadata 'x-request-id' is not printable ASCII")
            encoded += literal_field(b"x-request-id", request_id.encode("ascii"), never_indexed=True)
        if client is None:
            return encoded
        sent: list[tuple[str, str | bytes]] = []
        for key in self._forward:
            for value in client.getall(key, ()):
                sent.append((key, value))
        for key, value in sent:
            if isinstance(value, str) and _VALUE.fullmatch(value) is None:
                raise InvalidArgument(f"metadata {key!r} is not printable ASCII")
        return encoded + encode_metadata(sent)

    @property
    def timeout(self) -> float:
        """The deadline of a unary call whose client sets none (seconds)."""
        return self._timeout

    def error(self, exc: BaseException) -> GatewayError:
        """A failed upstream call as a :class:`GatewayError`: the upstream's status and message, UNAVAILABLE
        when it cannot be reached, DEADLINE_EXCEEDED when the deadline passes."""
        return failure(exc, self.name)

    def authorize(self, principal: Principal, method: UpstreamMethod) -> bool:
        """Check ``<upstream>:<Method>``; whether each request's room must be read (a caller limited to rooms,
        or ``by: room`` limits).

        :raises GatewayError: PERMISSION_DENIED.
        """
        if not may_call(principal, self.name, method.name):
            raise PermissionDenied(f"{principal.name!r} lacks the permission {method.permission!r}")
        return not principal.unrestricted or self._room_limit is not None

    async def check_room(self, principal: Principal, method: UpstreamMethod, data: bytes) -> None:
        """Check the room a request names against the caller's rooms and the ``by: room`` limits.

        :raises GatewayError: INVALID_ARGUMENT (not a request of the method), PERMISSION_DENIED,
            UNAUTHENTICATED (a room token invalidated since), RESOURCE_EXHAUSTED.
        """
        try:
            room = method.room_of(data)
        except Exception:  # any failure to read the client's bytes is the client's error
            raise InvalidArgument(f"the request is not a valid {method.input.full_name} message") from None
        if room:
            if not principal.may_access(room):
                raise PermissionDenied(f"{principal.name!r} may not access room {room!r}")
        elif not principal.unrestricted:
            raise PermissionDenied(f"{principal.name!r} is limited to some rooms: {method.name} names none")
        if principal.token is not None:
            await self._dispatcher.service.check_room_token(principal.token)
        if self._room_limit is not None and room:
            await self._room_limit(room)

    def _handler(self, method: UpstreamMethod) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
        unary_deadline = not method.client_streaming and not method.server_streaming

        async def proxy(stream: Stream[Any, Any]) -> None:
            principal = current_principal()
            try:
                rooms = self.authorize(principal, method)
                metadata = self.upstream_metadata(stream.metadata)
            except GatewayError as err:
                raise grpc_error(err) from None
            deadline = stream.deadline
            timeout = deadline.time_remaining() if deadline is not None else None
            if timeout is None and unary_deadline:
                timeout = self._timeout
            request: RawMessage | None = None
            if not method.client_streaming:
                request = await stream.recv_message()
                if request is None:
                    raise GRPCError(Status.INVALID_ARGUMENT, "the call carries no request message")
                if rooms:
                    await self._checked(principal, method, request)
            try:
                upstream = await self.channel.call(method.path, metadata, seconds=timeout, message=request)
                async with upstream:
                    if request is not None:
                        await _replies(stream, upstream)
                    else:
                        await self._both_ways(stream, upstream, principal, method, rooms)
            except UpstreamAnswer as answer:
                await _fail(stream, answer.error, answer.trailers)
            except (OSError, StreamTerminatedError) as exc:  # TimeoutError is an OSError
                raise grpc_error(self.error(exc)) from None

        return proxy

    async def _checked(self, principal: Principal, method: UpstreamMethod, request: bytes) -> None:
        try:
            await self.check_room(principal, method, request)
        except GatewayError as err:
            raise grpc_error(err) from None

    async def _both_ways(
        self,
        stream: Stream[Any, Any],
        upstream: Call,
        principal: Principal,
        method: UpstreamMethod,
        rooms: bool,
    ) -> None:
        """A client- or bidi-streaming call: requests pumped in a task of their own, replies here."""

        async def requests() -> None:
            async for request in stream:
                if rooms:
                    await self._checked(principal, method, request)
                await upstream.send_message(request)
            await upstream.end()

        sender = asyncio.create_task(requests())
        replies = asyncio.create_task(_replies(stream, upstream))
        try:
            done, _ = await asyncio.wait({sender, replies}, return_when=asyncio.FIRST_EXCEPTION)
            if sender in done and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]  # checked just above
            await replies
        finally:
            for task in (sender, replies):
                task.cancel()
            for task in (sender, replies):
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass


class UpstreamAnswer(Exception):
    """The upstream ended the call with a status other than OK: its error and trailing metadata."""

    def __init__(self, error: GRPCError, trailers: Any) -> None:
        super().__init__(error.status, error.message)
        self.error = error
        self.trailers = trailers


async def _replies(stream: Stream[Any, Any], upstream: Call) -> None:
    """Pass the upstream's headers, replies and trailers to the client.

    :raises UpstreamAnswer: the upstream answered with an error status.
    """
    try:
        await upstream.recv_initial_metadata()
    except GRPCError as err:  # a trailers-only answer
        raise UpstreamAnswer(err, upstream.trailing_metadata) from None
    await stream.send_initial_metadata(metadata=_passed(upstream.initial_metadata))
    while (reply := await upstream.recv_message()) is not None:
        await stream.send_message(reply)
    try:
        await upstream.recv_trailing_metadata()
    except GRPCError as err:
        raise UpstreamAnswer(err, upstream.trailing_metadata) from None
    await stream.send_trailing_metadata(metadata=_passed(upstream.trailing_metadata))


async def _fail(stream: Stream[Any, Any], err: GRPCError, trailers: Any) -> None:
    """Answer with the upstream's status, message, details and trailing metadata."""
    await stream.send_trailing_metadata(
        status=err.status,
        status_message=err.message,
        status_details=err.details,
        metadata=_passed(trailers),
    )


def _passed(metadata: list[tuple[str, str | bytes]]) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in metadata if k not in _OWN_METADATA]


def failure(exc: BaseException, upstream: str) -> GatewayError:
    """What a failed call to ``upstream`` answers (see :meth:`UpstreamProxy.error`)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, UpstreamAnswer):
        exc = exc.error
    if isinstance(exc, GRPCError):
        return GatewayError(exc.message or exc.status.name, code=Code(exc.status.value))
    if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
        return GatewayError(
            f"upstream {upstream!r} did not answer within the deadline", code=Code.DEADLINE_EXCEEDED
        )
    if isinstance(exc, (OSError, StreamTerminatedError)):
        reason = (
            "connection refused" if isinstance(exc, ConnectionRefusedError) else "the connection was lost"
        )
        return GatewayError(f"upstream {upstream!r} is unavailable: {reason}", code=Code.UNAVAILABLE)
    log.error("upstream %r: unexpected failure: %r", upstream, exc)
    return GatewayError("internal error", code=Code.INTERNAL)
