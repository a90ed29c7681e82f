"""The gRPC wire: requests read within limits, bad ones refused as the client's error; replies encoded once.

Reading. A request whose ``grpc-timeout`` is not one (:func:`timeout_refusal`: gRPC's grammar, at most 8
digits and a unit) is answered INVALID_ARGUMENT before any handler runs, where grpclib answered UNKNOWN (or
took a deadline of any number of digits). Every request message of every service on the port (native,
compatibility surfaces, health, reflection) is read by :class:`MessageStream` and decoded by
:class:`LastMessageCodec`, so a bad message is answered in one place, as an expected outcome (a status, one
log line, no traceback):

- its length prefix announces more than ``grpc.max_message_bytes``: RESOURCE_EXHAUSTED, before the message
  is read (the rest of it never leaves HTTP/2 flow control);
- it is compressed with a ``grpc-encoding`` the server does not support (none but ``identity``):
  UNIMPLEMENTED with ``grpc-accept-encoding: identity``, as the gRPC spec says (PROTOCOL-HTTP2.md,
  "Message-Encoding"); compressed without any ``grpc-encoding``, or cut short by the end of the stream, or no
  message at all on a unary call: INVALID_ARGUMENT;
- its bytes are not a valid message of the method's type: INVALID_ARGUMENT. betterproto2 (0.10) is not a
  validating parser: it raises ``EOFError``, ``KeyError``, ``OverflowError``, ``ValueError``… on corrupt
  input, and *accepts* a field sent with the wrong wire type (an ``int`` where a message belongs), a oneof
  with two members set, or a ``google.protobuf.Value`` with no value, which break whatever reads the message
  later. So a message of our protos is first parsed by the official protobuf runtime (upb: wire types,
  UTF-8, oneofs last-one-wins, nesting depth), checked for ``Value``\\ s that hold a value (they have no JSON
  otherwise), and handed to betterproto2 re-serialized, known fields only (about 2 µs for a small message).

Passing through. An upstream's methods (:mod:`gateway.upstream`) read and write :class:`RawMessage`: the
bytes as they came, which this codec takes as they are (checked against ``grpc.max_message_bytes`` and the
other prefix rules like every request), and :class:`PassThroughDetailsCodec` returns an upstream's status
details as they came.

Writing. One write reaches every listener of a variable as the *same* message object (the stream handlers
convert each notification once, :class:`LastConversion`), so the server encodes the last message it saw once
and sends the same bytes to every stream: with 10,000 listeners, betterproto2 serialization ran 10,000 times
per write before (bench/fanout.py profile), once now.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

import betterproto2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from grpclib.const import Status
from grpclib.encoding.base import CodecBase, StatusDetailsCodecBase
from grpclib.encoding.proto import ProtoCodec, ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError
from grpclib.protocol import Stream

from gateway import schema
from gateway._gen.message_pool import default_message_pool
from gateway.coalesce import CoalescingTransport
from gateway.errors import GatewayError, InvalidArgument, ResourceExhausted, Unimplemented
from gateway.rpc.errors import grpc_error
from gateway.schema import fields

log = logging.getLogger(__name__)

#: The only message encoding served (``grpc-encoding``); grpclib implements no compression.
IDENTITY = "identity"
_PREFIX_BYTES = 5  # gRPC's length prefix: a compressed flag, then the length as 4 bytes big-endian
_MAX_REASON = 200
#: ``grpc-timeout`` (gRPC's PROTOCOL-HTTP2.md, "Requests"): at most 8 digits, then Hours, Minutes, Seconds,
#: milliseconds, microseconds or nanoseconds. grpclib takes any number of digits.
_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")
_MAX_SHOWN = 40  # characters of a bad header value shown back


def timeout_refusal(value: str) -> GatewayError | None:
    """The refusal (logged as one line) of the ``grpc-timeout`` header ``value``; ``None`` when it is one."""
    if _TIMEOUT.fullmatch(value) is not None:
        return None
    shown = repr(value[:_MAX_SHOWN]) + ("…" if len(value) > _MAX_SHOWN else "")
    error = InvalidArgument(
        f"grpc-timeout {shown} is not a timeout: at most 8 digits and a unit (H, M, S, m, u, n)"
    )
    _log_refusal(error)
    return error


class MessageStream(Stream):
    """grpclib's server-side HTTP/2 stream, reading gRPC messages within the limits of the module docstring.

    grpclib reads a message as ``recv_data(5)`` (its length prefix), then ``recv_data(length)`` (its bytes),
    and takes the prefix on trust: a compressed flag raises ``NotImplementedError`` and a stream that ends
    inside a message an ``AssertionError`` (both UNKNOWN, with a traceback), and any length is read whole.
    This class checks the prefix before grpclib sees it.

    :param max_message_bytes: the largest message read (``grpc.max_message_bytes``).
    :param encoding: the request's ``grpc-encoding`` header, if any.
    :param unary: the method takes one request message (a unary or server-streaming call).
    :param answered: called once, when the first response headers are sent (an answered stream).
    """

    def __init__(
        self,
        *args: Any,
        max_message_bytes: int,
        encoding: str | None,
        unary: bool,
        answered: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_message_bytes = max_message_bytes
        self.encoding = encoding
        self.unary = unary
        self.answered = False
        self._on_answered = answered
        self._in_message = False
        self._messages = 0
        self._accept_encoding = False

    async def recv_data(self, size: int) -> bytes:
        reading_prefix = not self._in_message
        try:
            data = await self.buffer.read(size)  # grpclib's recv_data, one frame fewer
        except AssertionError:  # grpclib's Buffer: the stream ended with fewer bytes than asked for
            raise _refused(InvalidArgument("the request stream ended inside a message")) from None
        if not reading_prefix:
            self._in_message = False
            self._messages += 1
            return data
        if not data:
            if self.unary and not self._messages:
                raise _refused(InvalidArgument("the call carries no request message"))
            return data
        flag, length = data[0], int.from_bytes(data[1:_PREFIX_BYTES], "big")
        if flag:
            self._check_compressed(flag)
        if length > self.max_message_bytes:
            raise _refused(
                ResourceExhausted(
                    f"request message of {length} bytes is larger than the limit of {self.max_message_bytes}"
                )
            )
        self._in_message = True
        return data

    def _check_compressed(self, flag: int) -> None:
        if flag != 1:
            raise _refused(InvalidArgument(f"invalid compressed flag {flag} in a message prefix"))
        if self.encoding in (None, IDENTITY):
            raise _refused(InvalidArgument("a compressed message without a grpc-encoding"))
        self._accept_encoding = True
        raise _refused(Unimplemented(f"grpc-encoding {self.encoding!r} is not supported (only identity is)"))

    async def send_headers(self, headers: list[tuple[str, str]], end_stream: bool = False) -> None:
        if not self.answered:
            self.answered = True
            self._on_answered()
            if self._accept_encoding:  # grpclib's metadata refuses grpc-* keys: added here, to the trailers
                headers = [*headers, ("grpc-accept-encoding", IDENTITY)]
        await super().send_headers(headers, end_stream)


class ReplyStream(MessageStream):
    """A :class:`MessageStream` of a server-streaming method: each message it sends is written at once.

    The connection's transport holds writes until the next turn of the loop (one send for a unary answer's
    three frames: :class:`gateway.rpc.protocol.LingeringTransport`). A write that fans out to thousands of
    streams wakes their tasks in one turn, so held messages would reach every client only after the last
    task had run (bench/fanout.py, session 16). What the connection holds goes with the message.
    """

    async def send_data(self, data: bytes, end_stream: bool = False) -> None:
        await super().send_data(data, end_stream)
        transport: CoalescingTransport = self._transport  # type: ignore[assignment]  # (no cast() call)
        transport.flush()


class LastMessageCodec(ProtoCodec):
    """grpclib's protobuf codec that refuses undecodable requests with INVALID_ARGUMENT (see the module
    docstring) and reuses the bytes of the last message when it is sent again."""

    def __init__(self) -> None:
        self._last: tuple[object, bytes] | None = None

    def encode(self, message: Any, message_type: Any) -> bytes:
        last = self._last
        if last is not None and last[0] is message:
            return last[1]
        data = super().encode(message, message_type)
        self._last = (message, data)  # the reference keeps the id from being reused while it is the key
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return _reader(message_type)(data)
        except Exception as exc:  # any failure to read the client's bytes is the client's error
            name = getattr(message_type, "__name__", str(message_type))
            reason = f"{type(exc).__name__}: {exc}"[:_MAX_REASON]
            error = InvalidArgument(f"the request is not a valid {name} message")
            raise _refused(error, f"{error.message} ({reason})") from None


def _refused(error: GatewayError, detail: str | None = None) -> GRPCError:
    """The answer to a request refused here, logged as one line (``detail``: what the log says)."""
    _log_refusal(error, detail)
    return grpc_error(error)


def _log_refusal(error: GatewayError, detail: str | None = None) -> None:
    log.info("grpc: request refused (%s): %s", error.code.name, detail or error.message)


@functools.cache
def _reader(message_type: type) -> Callable[[bytes], Any]:
    """How to decode one message type: checked by upb first when it is a betterproto2 class of our protos."""
    descriptor = _descriptor(message_type)
    if descriptor is None:
        return message_type.FromString  # type: ignore[attr-defined, no-any-return]  # protobuf's or a third party's: its own parser
    official = message_factory.GetMessageClass(descriptor)
    parse = message_type.FromString  # type: ignore[attr-defined]

    def read(data: bytes) -> Any:
        message = official.FromString(data)
        check_values(message)
        message.DiscardUnknownFields()  # the wrong wire types upb set aside, and fields we do not know
        return parse(message.SerializeToString())

    return read


def _descriptor(message_type: type) -> Descriptor | None:
    if not issubclass(message_type, betterproto2.Message):
        return None
    url = default_message_pool.type_to_url.get(message_type)
    if url is None:
        return None
    try:
        return schema.pool().FindMessageTypeByName(url.rpartition("/")[2])
    except KeyError:
        return None


def check_values(message: Message) -> None:
    """Raise ``ValueError`` when a ``google.protobuf.Value`` in ``message`` holds no value.

    The JSON mapping has no JSON for such a Value (``json_format`` refuses it too), so neither do the
    gateway's codecs: it is a malformed request, not a null.
    """
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == fields.VALUE:
        kind = message.WhichOneof("kind")
        if kind is None:
            raise ValueError("a google.protobuf.Value that holds no value")
        if kind in ("struct_value", "list_value"):
            check_values(getattr(message, kind))
        return
    names = _value_fields(descriptor)
    if not names:
        return
    for field, value in message.ListFields():
        if field.name not in names:
            continue
        if fields.is_map(field):
            items: Any = value.values()
        elif field.is_repeated:
            items = value
        else:
            items = (value,)
        for item in items:
            if isinstance(item, Message):
                check_values(item)


@functools.cache
def _value_fields(descriptor: Descriptor) -> frozenset[str]:
    """The names of the fields of ``descriptor`` that may hold a ``Value``, at any depth."""
    return frozenset(f.name for f in descriptor.fields if _may_hold_value(f.message_type, frozenset()))


def _may_hold_value(descriptor: Descriptor | None, seen: frozenset[str]) -> bool:
    if descriptor is None or descriptor.full_name in seen:
        return False
    if descriptor.full_name == fields.VALUE:
        return True
    seen = seen | {descriptor.full_name}
    return any(_may_hold_value(f.message_type, seen) for f in descriptor.fields)


class LastConversion:
    """Converts domain values to messages, returning the same message for the same value twice in a row."""

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        self._convert = convert
        self._last: tuple[object, Any] | None = None

    def __call__(self, value: Any) -> Any:
        last = self._last
        if last is not None and last[0] is value:
            return last[1]
        message = self._convert(value)
        self._last = (value, message)
        return message


# -- passing messages through undecoded (the front proxy, gateway.upstream) -------------------------------


class RawMessage(bytes):
    """A gRPC message's bytes, passed through undecoded: what the gateway's codec and the upstream channel's
    read and write for an upstream's methods."""

    __slots__ = ()

    @classmethod
    def FromString(cls, data: bytes) -> RawMessage:  # protobuf's name, which the codec calls
        return cls(data)

    def SerializeToString(self) -> bytes:  # protobuf's name, which the codec calls
        return self


class RawDetails(bytes):
    """An upstream's ``grpc-status-details-bin``, returned to the client as it came."""

    __slots__ = ()


class RawCodec(CodecBase):
    """The upstream channel's codec: bytes in, bytes out."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message) if not isinstance(message, bytes) else message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return RawMessage(data)


class PassThroughDetailsCodec(StatusDetailsCodecBase):
    """Status details as bytes: read from an upstream as :class:`RawDetails`, and written to a client as they
    came; any other details (the gateway's own) are encoded by grpclib's protobuf codec."""

    def __init__(self) -> None:
        self._proto = ProtoStatusDetailsCodec()

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        if isinstance(details, RawDetails):
            return bytes(details)
        return self._proto.encode(status, message, details)

    def decode(self, status: Status, message: str | None, data: bytes) -> Any:
        return RawDetails(data)
