"""The upstream's pooled HTTP/2 connection: a lean gRPC client of our own, bytes in and bytes out.

A proxied call went through grpclib's client (its ``Stream``, events, metadata codecs, deadline wrappers)
over h2's state machine (header validation, HPACK with a dynamic table, frame objects): instructions
counted by valgrind (bench/proxy.py instructions) put that side of the gateway at about as much as the
upstream's whole call. The proxy needs far less: open a stream with headers it mostly knows in advance,
send message bytes it already has, and read back headers, messages and trailers. So this module speaks
HTTP/2 (RFC 9113) itself, only as a gRPC client needs it:

- **headers** are written as HPACK literals *without indexing* (RFC 7541 §6.2.2; *never indexed* for
  metadata, which carries the upstream's key, §6.2.3): no dynamic table on our side, so each method's
  fixed headers are encoded once (:class:`Headers`) and a call adds only its timeout and metadata. Answers
  are decoded by ``hpack``'s decoder (the upstream's table), through a cache of the blocks the upstream
  repeats (:class:`gateway.rpc.headerblocks.CachingDecoder`);
- **writes** of one turn of the event loop go out as one ``send``
  (:class:`gateway.coalesce.CoalescingTransport`): a unary call is one write (HEADERS, DATA with
  END_STREAM), and many calls in one turn share it;
- **flow control** both ways: a message is sent as the peer's windows allow (waiting for WINDOW_UPDATE),
  and what the upstream sends is credited back only once the caller has taken it (:meth:`Call.recv_message`),
  so a slow reader stops the upstream at its window, and nothing piles up here;
- **streams**: the peer's ``SETTINGS_MAX_CONCURRENT_STREAMS`` is respected (a call waits for a slot); a
  call's deadline is sent as ``grpc-timeout`` and kept here too, on one timer per connection armed for the
  nearest deadline (its stream is reset when it passes: ``TimeoutError``); a call left early (the client
  cancelled) resets its stream (RST_STREAM CANCEL);
- **unary answers** (REST's calls) are read whole (:meth:`UpstreamConnection.unary`): the caller is woken
  once, when the stream ends, not at each frame, and the request goes out with its HEADERS in one write;
  the answer's header blocks, which the upstream repeats, are decoded and checked once (:class:`Block`), and
  a DATA frame holding a whole message is taken as it is;
- **the connection** is made on the first call and made again on the next call after it is lost or the
  upstream sends GOAWAY; the calls it carried fail with ``StreamTerminatedError`` (UNAVAILABLE), as do
  streams the upstream resets. PINGs are answered; TLS negotiates ``h2`` by ALPN.

Errors are grpclib's (:class:`~grpclib.exceptions.GRPCError` for an upstream's status,
:class:`~grpclib.exceptions.StreamTerminatedError`), so :func:`gateway.upstream.proxy.failure` maps them as
before; the texts of the answers without a gRPC status are grpclib's too (``Missing content-type header``,
which :mod:`gateway.upstream.health` reads).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl as ssl_module
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import decode_grpc_message, encode_timeout
from hpack.exceptions import HPACKError

from gateway.coalesce import CoalescingTransport
from gateway.rpc.headerblocks import (
    DECODED_BLOCKS,
    FRAME,
    CachingDecoder,
    integer,
    literal_field,
    string,
)
from gateway.rpc.wire import RawDetails, RawMessage

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
_PADDED_OR_PRIORITY = _PADDED | _PRIORITY_FLAG
_NO_ERROR, _PROTOCOL_ERROR, _CANCEL = 0x0, 0x1, 0x8
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
_INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE, _MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
_DEFAULT_WINDOW = 65_535
_DEFAULT_FRAME = 16_384
#: The most of the upstream's HPACK table this client uses (RFC 7541's default, which every peer allows).
TABLE_SIZE = 4096

#: The windows this client gives the upstream: what one stream, and the connection, may have in flight.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
#: How early the deadlines' timer may fire and still expire a call: the event loop's timers are kept in
#: milliseconds (uvloop's, libuv's) and may run a fraction of one before the time asked, as a timer per call
#: did; without it a timer due within the millisecond would be armed again and again until it passed.
_TIMER_SLACK = 0.001
#: The largest header list accepted from the upstream (bytes, as RFC 9113 counts them).
MAX_HEADER_LIST = 64 * 1024
USER_AGENT = "room-gateway"
#: Answer headers that are not metadata (grpclib's ``decode_metadata`` leaves out the same).
_NOT_METADATA = frozenset({"te", "content-type", "user-agent"})
#: HTTP statuses of an answer that is not gRPC, as grpclib's client maps them (gRPC's
#: http-grpc-status-mapping.md).
_HTTP_STATUS = {
    "400": Status.INTERNAL,
    "401": Status.UNAUTHENTICATED,
    "403": Status.PERMISSION_DENIED,
    "404": Status.UNIMPLEMENTED,
    "429": Status.UNAVAILABLE,
    "502": Status.UNAVAILABLE,
    "503": Status.UNAVAILABLE,
    "504": Status.UNAVAILABLE,
}

Metadata = list[tuple[str, str | bytes]]


def literal(name: str, value: bytes, *, never_indexed: bool = False) -> bytes:
    """One header as an HPACK literal that leaves the decoder's table alone (RFC 7541 §6.2.2, §6.2.3)."""
    return literal_field(name.encode("ascii"), value, never_indexed=never_indexed)


def encode_metadata(metadata: Sequence[tuple[str, str | bytes]]) -> bytes:
    """Metadata as HPACK literals, never indexed (``-bin`` values base64 without padding, as gRPC sends
    them). Keys and values are what grpclib accepted from a client, or the configuration's."""
    out = []
    for key, value in metadata:
        data = base64.b64encode(value).rstrip(b"=") if isinstance(value, bytes) else value.encode("ascii")
        out.append(literal(key, data, never_indexed=True))
    return b"".join(out)


class HeaderTable:
    """This client's view of the upstream's HPACK dynamic table (RFC 7541 §2.3.2, §4), one per connection.

    Only the calls' fixed fields — ``:path``, ``:authority``, ``te``, ``content-type``, ``user-agent``: no
    secrets — are ever inserted; metadata stays never indexed, the timeout a literal. The first call of a
    method sends them as literals with incremental indexing, the next ones as indices: a literal costs the
    upstream's decoder several times an index (hpack's: ~57k instructions of a proxied call's 96k extra).
    The table follows the upstream's ``SETTINGS_HEADER_TABLE_SIZE`` (:meth:`resize`), evicting as its
    decoder will.
    """

    __slots__ = ("_entries", "_inserted", "_max", "_numbers", "_size", "_updates", "changes")

    def __init__(self) -> None:
        self._max = TABLE_SIZE
        self._size = 0
        self._entries: deque[tuple[tuple[bytes, bytes], int, int]] = deque()  # oldest first: field, size, №
        self._numbers: dict[tuple[bytes, bytes], int] = {}  # field → its insertion number, while held
        self._inserted = 0
        self._updates: list[int] = []  # size updates due at the start of the next block (§4.2)
        #: Counts what moves indices: a block encoded before another change is still right.
        self.changes = 0

    def resize(self, allowed: int) -> None:
        """The upstream's ``SETTINGS_HEADER_TABLE_SIZE`` (acknowledged at once: the next block may use it)."""
        size = min(allowed, TABLE_SIZE)
        if size == self._max and not self._updates:
            return
        # A size lowered then raised before the next block: both are announced, the smallest first (§4.2).
        self._updates = [min(size, *self._updates)] if self._updates else [size]
        if size != self._updates[0]:
            self._updates.append(size)
        self._max = size
        self._evict(self._updates[0])
        self.changes += 1

    def updates(self) -> bytes:
        """The size updates due (§6.3), once; ``b""`` mostly."""
        if not self._updates:
            return b""
        out = b"".join(integer(size, 5, 0x20) for size in self._updates)
        self._updates = []
        return out

    def field(self, name: bytes, value: bytes) -> bytes:
        """One fixed field: its index when the upstream holds it, else a literal that inserts it."""
        key = (name, value)
        number = self._numbers.get(key)
        if number is not None:
            return integer(62 + self._inserted - 1 - number, 7, 0x80)  # §6.1; 62: the first dynamic index
        size = len(name) + len(value) + 32  # §4.1
        if size > self._max:
            return literal_field(name, value, never_indexed=False)
        self._evict(self._max - size)
        self._entries.append((key, size, self._inserted))
        self._numbers[key] = self._inserted
        self._inserted += 1
        self._size += size
        self.changes += 1
        return b"\x40" + string(name) + string(value)  # §6.2.1, the name as a literal

    def _evict(self, room: int) -> None:
        """Evict the oldest entries until the table holds at most ``room`` bytes (§4.3, §4.4)."""
        while self._size > room:
            key, size, number = self._entries.popleft()
            self._size -= size
            if self._numbers.get(key) == number:
                del self._numbers[key]


class Headers:
    """The HEADERS of one method's calls; :meth:`block` adds a call's timeout and metadata."""

    __slots__ = ("_fields", "_fixed", "_indexed", "_timed", "_timeout")

    def __init__(self, path: str, authority: str, tls: bool) -> None:
        self._fields = (
            (b":path", path.encode("ascii")),
            (b":authority", authority.encode("ascii")),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", USER_AGENT.encode("ascii")),
        )
        start = b"\x83" + (b"\x87" if tls else b"\x86")  # :method POST, :scheme https / http (3, 7 / 6)
        self._fixed = start + b"".join(literal_field(n, v, never_indexed=False) for n, v in self._fields)
        # The last timeout's literal: a unary call whose client sets none has the upstream's default, the
        # same on every call (REST calls always).
        self._timeout: float | None = None
        self._timed = b""
        #: The fields as indices into one connection's table, while its indices stay: (table, changes, block).
        self._indexed: tuple[HeaderTable, int, bytes] | None = None

    def block(self, timeout: float | None, metadata: bytes, table: HeaderTable | None = None) -> bytes:
        """The block of one call; with ``table`` (the connection's, just before the block is written: its
        indices hold from then on), the fixed fields indexed."""
        if table is None:
            fixed = self._fixed
        else:
            indexed = self._indexed
            if indexed is not None and indexed[0] is table and indexed[1] == table.changes:
                fixed = indexed[2]  # and no size update due: a resize counts among the changes
            else:
                updates = table.updates()
                before = table.changes
                fields = self._fixed[:2] + b"".join(table.field(n, v) for n, v in self._fields)
                if table.changes == before:  # all indices: the same bytes until the table changes
                    self._indexed = (table, before, fields)
                fixed = updates + fields
        if timeout is None:
            return fixed + metadata
        if timeout != self._timeout:
            self._timed = literal("grpc-timeout", encode_timeout(timeout).encode("ascii"))
            self._timeout = timeout
        return fixed + self._timed + metadata


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


def message_frame(message: bytes) -> bytes:
    """A gRPC message with its length prefix (not compressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class Block:
    """One header block of the upstream's answers, decoded and read once: an upstream repeats the same
    blocks (the same bytes, indices into its table) call after call, so the connection keeps them while its
    decoder's table is unchanged (:meth:`_Connection.block`) and each call checks two flags instead of
    filing and testing its headers again.

    :param headers: the block's header list.
    """

    __slots__ = ("headers", "ok_end", "plain_start", "values")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.values = dict(headers)
        #: The answer's first headers, as :meth:`Call.recv_initial_metadata` takes them without a word: no
        #: error, and not trailers-only.
        self.plain_start = _start_error(self.values) is None and "grpc-status" not in self.values
        #: Trailers of an OK call (``grpc-status: 0``).
        self.ok_end = self.values.get("grpc-status") == "0"


def _start_error(values: dict[str, str]) -> GRPCError | None:
    """What is wrong with an answer's first headers for a gRPC client (grpclib's checks and texts)."""
    status = values.get(":status")
    if status != "200":
        return GRPCError(_HTTP_STATUS.get(status or "", Status.UNKNOWN), f"Received :status = {status!r}")
    content_type = values.get("content-type")
    if content_type is None:
        return GRPCError(Status.UNKNOWN, "Missing content-type header")
    base, _, subtype = content_type.partition("+")
    if base != "application/grpc" or subtype not in ("", "proto"):
        return GRPCError(Status.UNKNOWN, f"Invalid content-type: {content_type!r}")
    return None


class Call:
    """One gRPC call on an upstream connection (made by :meth:`UpstreamConnection.call`).

    Read in order: :meth:`recv_initial_metadata`, :meth:`recv_message` until ``None``,
    :meth:`recv_trailing_metadata` (or whole, :meth:`UpstreamConnection.unary`). Leave it with :meth:`close`
    (an ``async with`` does it): a call not finished by then is reset upstream.
    """

    __slots__ = (
        "_connection",
        "_error",
        "_headers",
        "_initial",
        "_messages",
        "_pending",
        "_trailers",
        "_waiter",
        "_whole",
        "_window_event",
        "ended",
        "expires",
        "finished",
        "initial_metadata",
        "sent_end",
        "stream_id",
        "trailing_metadata",
        "unacknowledged",
        "window",
    )

    def __init__(self, connection: _Connection, stream_id: int, *, whole: bool = False) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self.window = connection.peer_window  # what we may still send on this stream
        self.unacknowledged = 0  # bytes taken by the reader, not yet credited back to the stream
        # The reader's wait for something to arrive (headers, a message, the end, an error): a bare future,
        # made only when the reader has to wait (an ``asyncio.Event`` a call was ~6 Python frames a frame).
        self._waiter: asyncio.Future[None] | None = None
        self._whole = whole  # read whole (:meth:`whole`): woken at the end only, everything credited at once
        self._window_event: asyncio.Event | None = None
        self._headers: list[Block] = []  # header blocks received, not yet read
        self._pending = bytearray()  # DATA received, not yet a whole message
        self._messages: deque[tuple[RawMessage, int]] = deque()  # whole messages, and their bytes on the wire
        self._error: BaseException | None = None
        #: The deadline, on the event loop's clock (kept by the connection: :meth:`_Connection.open`)
        self.expires: float | None = None
        self._initial: list[tuple[str, str]] | None = None
        self._trailers: list[tuple[str, str]] | None = None
        self.ended = False  # the upstream ended the stream (or it was reset, or the connection lost)
        self.sent_end = False
        self.finished = False  # the trailers were read
        self.initial_metadata: Metadata = []
        self.trailing_metadata: Metadata = []

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------------------

    async def send_message(self, message: bytes, *, end: bool = False) -> None:
        """Send one message (and end the request stream after it with ``end``), as the windows allow."""
        data = message_frame(message)
        connection = self._connection
        while True:
            self._raise_error()
            allowed = min(len(data), self.window, connection.window, connection.max_frame)
            if allowed == len(data):
                connection.send_data(self, data, end)
                if end:
                    self.sent_end = True
                return
            if allowed > 0:
                connection.send_data(self, data[:allowed], False)
                data = data[allowed:]
                continue
            event = self._window_event = asyncio.Event()
            connection.window_waiters.add(self)
            try:
                await event.wait()
            finally:
                self._window_event = None
                connection.window_waiters.discard(self)

    async def end(self) -> None:
        """End the request stream (no more messages)."""
        self._raise_error()
        if not self.sent_end:
            self.sent_end = True
            self._connection.write(_frame(_DATA, _END_STREAM, self.stream_id))

    def window_opened(self) -> None:
        if self._window_event is not None:
            self._window_event.set()

    # -- receiving -------------------------------------------------------------------------------------

    async def _next_headers(self) -> Block | None:
        while not self._headers:
            if self.ended or self._messages:
                self._raise_error()
                return None
            await self._wait()
        return self._headers.pop(0)

    async def _wait(self) -> None:
        await self.arrival()

    def arrival(self) -> asyncio.Future[None]:
        """What to await until the connection tells the call something (:meth:`_wake`). One reader at a
        time: a call's answer is read by one task (what :meth:`close` wakes, from another, is that reader)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = self._connection.loop.create_future()
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def recv_initial_metadata(self) -> None:
        """Wait for the answer's headers (:attr:`initial_metadata`).

        :raises GRPCError: a trailers-only answer (its status is not OK), or not a gRPC answer.
        """
        block = await self._next_headers()
        if block is None:
            raise StreamTerminatedError("the upstream ended the stream without headers")
        self._initial_headers(block)

    def _initial_headers(self, block: Block) -> None:
        """Check the answer's first headers (see :meth:`recv_initial_metadata`)."""
        headers = block.headers
        if not block.plain_start:
            error = _start_error(block.values)
            if error is not None:
                raise error
            # trailers-only
            self._initial = []
            self._trailers = headers
            self._finish(block)
            return
        self._initial = headers
        if not self._whole:
            self.initial_metadata = metadata_of(headers)

    async def recv_message(self) -> RawMessage | None:
        """The next reply message; ``None`` once the upstream has sent its last."""
        if self._initial is None:
            await self.recv_initial_metadata()
        while not self._messages:
            if self.ended or self._headers or self._trailers is not None:
                self._raise_error()
                if self._pending:
                    raise GRPCError(Status.INTERNAL, "the upstream ended its stream inside a message")
                return None
            await self._wait()
        message, size = self._messages.popleft()
        self._connection.consumed(self, size)  # the upstream may send that much more
        return message

    async def recv_trailing_metadata(self) -> None:
        """Wait for the trailers (:attr:`trailing_metadata`).

        :raises GRPCError: the status is not OK.
        """
        if self.finished:
            return
        while await self.recv_message() is not None:  # replies nobody asked for are dropped
            pass
        if self._trailers is None:
            block = await self._next_headers()
            if block is None:
                raise StreamTerminatedError("the upstream ended the stream without trailers")
            self._trailers = block.headers
            self._finish(block)

    def whole(self) -> None:
        """Read this call whole (:meth:`UpstreamConnection.unary`, then :meth:`reply`): the reader is woken
        once, when the stream has ended, not at each frame; what arrives is credited back at once (the
        whole answer is wanted anyway), and replies after the first are dropped as they arrive, as
        :meth:`recv_trailing_metadata` drops them, so flow control holds as the upstream sends. The
        metadata is not decoded (:attr:`initial_metadata` and :attr:`trailing_metadata` stay empty: REST
        answers carry none)."""
        self._whole = True
        messages = self._messages
        if messages:  # arrived before (the request sent as the windows allowed): not yet credited
            first = messages[0]
            for _, size in messages:
                self._connection.consumed(self, size)
            messages.clear()
            messages.append(first)

    def reply(self) -> RawMessage | None:
        """The one reply of a call read whole, once the upstream has ended its stream (:attr:`ended`), its
        status checked: what :meth:`recv_message` then :meth:`recv_trailing_metadata` answer, with the same
        errors."""
        headers = self._headers
        if self._initial is None:
            if not headers:
                self._raise_error()
                raise StreamTerminatedError("the upstream ended the stream without headers")
            block = headers.pop(0)
            if block.plain_start:  # the usual answer (:meth:`_initial_headers`'s first test)
                self._initial = block.headers
            else:
                self._initial_headers(block)
        messages = self._messages
        reply = messages[0][0] if messages else None
        if self._error is not None:
            raise self._error
        if self._trailers is None:
            if self._pending:
                raise GRPCError(Status.INTERNAL, "the upstream ended its stream inside a message")
            if not headers:
                raise StreamTerminatedError("the upstream ended the stream without trailers")
            block = headers.pop(0)
            self._trailers = block.headers
            if block.ok_end:  # the usual answer (:meth:`_finish`'s first test)
                self.finished = True
            else:
                self._finish(block)
        return reply

    def _finish(self, block: Block) -> None:
        self.finished = True
        values = block.values
        raw = values.get("grpc-status")
        if not self._whole:
            self.trailing_metadata = metadata_of(block.headers)
        if raw == "0":  # OK, the usual answer: no enum lookup
            return
        if raw is None:
            raise GRPCError(Status.UNKNOWN, "Missing grpc-status header")
        try:
            status = Status(int(raw))
        except ValueError:
            raise GRPCError(Status.UNKNOWN, f"Invalid grpc-status: {raw!r}") from None
        if status is Status.OK:
            return
        message = values.get("grpc-message")
        details = values.get("grpc-status-details-bin")
        raise GRPCError(
            status,
            decode_grpc_message(message) if message is not None else None,
            RawDetails(_unbase64(details)) if details is not None else None,
        )

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- what the connection tells the call ---------------------------------------------------------------

    def headers_received(self, block: Block, end: bool) -> None:
        self._headers.append(block)
        if end:
            self.ended = True
            self._wake()
        elif not self._whole:
            self._wake()

    def data_received(self, data: bytes | memoryview, flow: int, end: bool) -> None:
        pending = self._pending
        credit = flow  # the frame's whole length (padding included) counts against the window
        whole = self._whole
        if whole:  # taken at once (:meth:`whole`)
            self._connection.consumed(self, credit)
            credit = 0
            # The usual answer: one frame holding one whole message, taken without the pending buffer.
            if (
                not pending
                and len(data) > 4
                and not data[0]
                and int.from_bytes(data[1:5], "big") == len(data) - 5
            ):
                if not self._messages:  # a unary call's later replies are dropped
                    self._messages.append((RawMessage(data[5:]), 0))
                if end:
                    self.ended = True
                    self._wake()
                return
        pending += data
        while len(pending) >= 5:
            length = int.from_bytes(pending[1:5], "big")
            if len(pending) < 5 + length:
                break
            if pending[0]:
                self.fail(GRPCError(Status.INTERNAL, "the upstream sent a compressed message"))
                return
            if not whole or not self._messages:  # a unary call's later replies are dropped
                self._messages.append((RawMessage(pending[5 : 5 + length]), credit))
            credit = 0
            del pending[: 5 + length]
        if credit:  # part of a message: credited with the message it completes (or as soon as it ends)
            if self._messages:
                message, size = self._messages.pop()
                self._messages.append((message, size + credit))
            else:
                self._connection.consumed(self, credit)
        if end:
            self.ended = True
            self._wake()
        elif not whole:
            self._wake()

    def fail(self, error: BaseException) -> None:
        """End the call with ``error`` (a reset, a lost connection, the deadline)."""
        if self._error is None:
            self._error = error
        self.ended = True
        self._wake()
        self.window_opened()

    def close(self) -> None:
        """Leave the call: reset it upstream when it has not ended, and free its slot. A read still waiting
        (another task's) ends with ``StreamTerminatedError``."""
        self.expires = None
        self._connection.release(self, reset=not (self.ended and self.sent_end))
        if not self.ended:
            self.fail(StreamTerminatedError("the call was closed"))

    def expired(self) -> None:
        """The deadline passed (the connection's timer): fail the call with ``TimeoutError`` and reset it."""
        self.expires = None
        if not self.finished:
            self.fail(TimeoutError("the upstream call's deadline passed"))
            self._connection.release(self, reset=True)


def metadata_of(headers: list[tuple[str, str]]) -> Metadata:
    """The metadata of a header list (as grpclib's ``decode_metadata``: ``-bin`` values as bytes)."""
    found: Metadata = []
    for key, value in headers:
        if key[0] == ":" or key.startswith("grpc-") or key in _NOT_METADATA:
            continue
        found.append((key, _unbase64(value) if key.endswith("-bin") else value))
    return found


def _unbase64(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection's state (what :class:`UpstreamConnection` holds while it is up)."""

    def __init__(self, on_lost: Any) -> None:
        self._on_lost = on_lost
        self.transport: CoalescingTransport | None = None
        self.decoder = CachingDecoder()  # an upstream repeats its answers' blocks too
        # The blocks decoded without changing the decoder's table, read (:class:`Block`), while that table
        # is as it was (its count of changes): the same bytes are then the same headers.
        self._blocks: dict[bytes, Block] = {}
        self._table: Any = self.decoder.header_table  # the decoder's, which counts its changes
        self._blocks_at = 0
        self.table = HeaderTable()  # what the upstream's decoder holds of our blocks
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self.calls: dict[int, Call] = {}
        self.loop = asyncio.get_running_loop()
        # One timer for the calls' deadlines, armed for the nearest (:meth:`open`): a timer per call was a
        # uvloop timer made and cancelled every call.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.next_id = 1
        self.window = _DEFAULT_WINDOW  # the connection's send window
        self.peer_window = _DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE of the peer
        self.max_frame = _DEFAULT_FRAME
        self.max_streams = 100  # until the peer's SETTINGS say (RFC 9113 recommends at least 100)
        self.unacknowledged = 0  # bytes received, not yet credited back to the connection
        self.window_waiters: set[Call] = set()
        self.slot_waiters: deque[asyncio.Future[None]] = deque()
        self.going_away = False
        self.lost = False
        self._buffer = bytearray()
        self._block: tuple[int, int, bytearray] | None = None  # a header block awaiting CONTINUATION

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = CoalescingTransport(transport, self.loop)
        settings = struct.pack(
            ">HLHLHLHL",
            _ENABLE_PUSH, 0,
            _INITIAL_WINDOW_SIZE, STREAM_WINDOW,
            _MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST,
            _MAX_CONCURRENT_STREAMS, 0,  # the upstream may open none towards us
        )  # fmt: skip
        increment = struct.pack(">L", CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self.transport.write(
            _PREFACE + _frame(_SETTINGS, 0, 0, settings) + _frame(_WINDOW_UPDATE, 0, 0, increment)
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost(StreamTerminatedError("Connection lost"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        view = memoryview(data)
        pos, end = 0, len(data)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream_id = FRAME.unpack_from(data, pos)
                length = high << 8 | low
                if end - pos - 9 < length:
                    break
                payload = view[pos + 9 : pos + 9 + length]
                pos += 9 + length
                stream_id &= 0x7FFFFFFF
                # An answer's frames, the usual ones, read here: a HEADERS block whole in its frame, and DATA
                # of a call still open, neither padded nor with a priority (everything else: :meth:`_frame`).
                if kind <= _HEADERS and not flags & _PADDED_OR_PRIORITY and self._block is None:
                    if kind == _HEADERS:
                        if flags & _END_HEADERS:
                            self._headers(stream_id, flags, payload)
                            continue
                    else:
                        call = self.calls.get(stream_id)
                        if call is not None:
                            call.data_received(payload, length, bool(flags & _END_STREAM))
                            continue
                self._frame(kind, flags, stream_id, payload)
        except _ConnectionError as exc:
            self._close(_PROTOCOL_ERROR, str(exc))
            return
        if pos < end:
            buffer += view[pos:]

    # -- frames ----------------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._block is not None and kind != _CONTINUATION:
            raise _ConnectionError("a header block was interrupted")
        if kind == _DATA:
            call = self.calls.get(stream_id)
            size = len(payload)
            data = _unpadded(payload) if flags & _PADDED else payload
            if call is None:  # a stream we reset: its bytes still count against the connection
                self.consumed(None, size)
                return
            call.data_received(data, size, bool(flags & _END_STREAM))
        elif kind == _HEADERS:
            block = _unpadded(payload) if flags & _PADDED else payload
            if flags & _PRIORITY_FLAG:
                block = block[5:]
            if flags & _END_HEADERS:
                self._headers(stream_id, flags, block)
            else:
                self._block = (stream_id, flags, bytearray(block))
        elif kind == _CONTINUATION:
            if self._block is None or self._block[0] != stream_id:
                raise _ConnectionError("CONTINUATION without a header block")
            self._block[2].extend(payload)
            if len(self._block[2]) > MAX_HEADER_LIST:
                raise _ConnectionError("header block too large")
            if flags & _END_HEADERS:
                stream, first, whole = self._block
                self._block = None
                self._headers(stream, first, whole)
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self._settings(payload)
        elif kind == _WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.window += increment
                for call in list(self.window_waiters):
                    call.window_opened()
            else:
                call = self.calls.get(stream_id)
                if call is not None:
                    call.window += increment
                    call.window_opened()
        elif kind == _PING:
            if not flags & _ACK:
                self.write(_frame(_PING, _ACK, 0, bytes(payload)))
        elif kind == _RST_STREAM:
            call = self.calls.get(stream_id)
            if call is not None:
                code = int.from_bytes(payload[:4], "big")
                call.fail(StreamTerminatedError(f"the upstream reset the stream (error code {code})"))
                self.release(call)
        elif kind == _GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.going_away = True
            for call in [c for i, c in self.calls.items() if i > last]:
                call.fail(StreamTerminatedError("the upstream is going away (GOAWAY)"))
                self.release(call)
            self._on_lost(self)  # no new calls here
            if not self.calls:
                self._close(_NO_ERROR, "")
        elif kind == _PUSH_PROMISE:
            raise _ConnectionError("PUSH_PROMISE, which our SETTINGS refuse")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).

    def _headers(self, stream_id: int, flags: int, data: bytes | bytearray | memoryview) -> None:
        key = bytes(data)
        block = self._blocks.get(key) if self._table.changes == self._blocks_at else None
        if block is None:
            block = self.block(key)
        call = self.calls.get(stream_id)
        if call is not None:
            call.headers_received(block, bool(flags & _END_STREAM))

    def block(self, data: bytes) -> Block:
        """A header block of the upstream's, decoded and read (:class:`Block`): the one kept for these
        bytes while the decoder's table has not changed (:meth:`_headers` looks there first), else decoded
        (and kept when it did not change the table: decoding it again would give the same headers, as
        :class:`CachingDecoder` reasons)."""
        table = self._table
        changes = table.changes
        blocks = self._blocks
        if changes != self._blocks_at:  # a block changed the table (inserted, resized, failed half-way)
            blocks.clear()
            self._blocks_at = changes
        else:
            found = blocks.get(data)
            if found is not None:
                return found
        try:
            headers = self.decoder.decode(data)
        except (HPACKError, UnicodeDecodeError) as exc:  # the decoder's table is lost with either
            raise _ConnectionError(f"cannot decode a header block: {exc}") from None
        block = Block(headers)  # type: ignore[arg-type]  # str pairs
        if table.changes == changes:
            if len(blocks) >= DECODED_BLOCKS:
                blocks.clear()
            blocks[data] = block
        return block

    def _settings(self, payload: memoryview) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            code, value = struct.unpack_from(">HL", payload, offset)
            if code == _INITIAL_WINDOW_SIZE:
                delta = value - self.peer_window
                self.peer_window = value
                for call in self.calls.values():
                    call.window += delta
                    call.window_opened()
            elif code == _MAX_FRAME_SIZE:
                self.max_frame = value
            elif code == _MAX_CONCURRENT_STREAMS:
                self.max_streams = value
                self._grant_slots()
            elif code == _HEADER_TABLE_SIZE:
                self.table.resize(value)  # in force from our ACK below, before any block we write next
        self.write(_frame(_SETTINGS, _ACK, 0))

    # -- streams ---------------------------------------------------------------------------------------

    async def slot(self) -> None:
        """Wait until a stream may be opened (the peer's ``SETTINGS_MAX_CONCURRENT_STREAMS``), or the
        connection is lost."""
        while len(self.calls) >= self.max_streams and not self.lost:
            waiter = self.loop.create_future()
            self.slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self.slot_waiters.remove(waiter)

    def open(
        self,
        fixed: Headers,
        seconds: float | None,
        metadata: bytes,
        message: bytes | None,
        *,
        whole: bool = False,
    ) -> Call:
        """A new stream (a slot free: :meth:`slot`), its HEADERS written, the deadline kept (one timer per
        connection, armed for the nearest deadline: a call that expires is reset, ``TimeoutError``);
        with ``message``, the request too and the request stream ended, in the same write, when the windows
        take it whole (:attr:`Call.sent_end`; else the caller sends it as they allow); ``whole``: the call
        is read whole (:meth:`Call.whole`)."""
        if self.lost or self.going_away:
            raise StreamTerminatedError("Connection lost")
        stream_id = self.next_id
        call = Call(self, stream_id, whole=whole)
        self.next_id += 2
        self.calls[stream_id] = call
        headers = fixed.block(seconds, metadata, self.table)  # encoded as written: the table's order
        # The frames written out here, as :func:`_frame` and :func:`message_frame` write them (three
        # function calls less on every call).
        size = len(headers)
        if size <= self.max_frame:
            frames = FRAME.pack(size >> 8, size & 0xFF, _HEADERS, _END_HEADERS, stream_id) + headers
        else:
            frames = self._split_headers(stream_id, headers)
        if seconds is not None:  # the deadline kept: the timer armed when it is the nearest
            at = call.expires = self.loop.time() + seconds
            timer = self._timer
            if timer is None or at < self._timer_at:  # mostly not: a unary call's deadline is the last's
                if timer is not None:
                    timer.cancel()
                self._arm(at)
        if message is not None:
            length = len(message)
            size = length + 5
            if size <= call.window and size <= self.window and size <= self.max_frame:
                call.window -= size
                self.window -= size
                frames += FRAME.pack(size >> 8, size & 0xFF, _DATA, _END_STREAM, stream_id)
                frames += b"\x00" + length.to_bytes(4, "big") + message
                call.sent_end = True
        if self.transport is not None:  # (not lost: tested above)
            self.transport.write(frames)
        return call

    def _split_headers(self, stream_id: int, headers: bytes) -> bytes:
        size = self.max_frame
        chunks = [headers[i : i + size] for i in range(0, len(headers), size)]
        frames = [_frame(_HEADERS, 0, stream_id, chunks[0])]
        for i, chunk in enumerate(chunks[1:], 1):
            frames.append(
                _frame(_CONTINUATION, _END_HEADERS if i == len(chunks) - 1 else 0, stream_id, chunk)
            )
        return b"".join(frames)

    def _arm(self, at: float) -> None:
        self._timer = self.loop.call_at(at, self._expire)
        self._timer_at = at

    def _expire(self) -> None:
        """The nearest deadline is due: expire the calls whose deadline has passed, and arm the timer for
        the next (the calls since ended are gone from :attr:`calls`, their deadlines with them)."""
        self._timer = None
        now = self.loop.time() + _TIMER_SLACK
        nearest: float | None = None
        for call in list(self.calls.values()):
            at = call.expires
            if at is None:
                continue
            if at <= now:
                call.expired()
            elif nearest is None or at < nearest:
                nearest = at
        if nearest is not None and not self.lost:
            self._arm(nearest)

    def send_data(self, call: Call, data: bytes, end: bool) -> None:
        call.window -= len(data)
        self.window -= len(data)
        self.write(_frame(_DATA, _END_STREAM if end else 0, call.stream_id, data))

    def consumed(self, call: Call | None, size: int) -> None:
        """``size`` bytes of DATA taken by their reader: credit them back (in batches of half a window)."""
        self.unacknowledged += size
        if self.unacknowledged >= CONNECTION_WINDOW // 2:
            self.write(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">L", self.unacknowledged)))
            self.unacknowledged = 0
        if call is not None and not call.ended:
            call.unacknowledged += size
            if call.unacknowledged >= STREAM_WINDOW // 2:
                self.write(_frame(_WINDOW_UPDATE, 0, call.stream_id, struct.pack(">L", call.unacknowledged)))
                call.unacknowledged = 0

    def release(self, call: Call, *, reset: bool = False) -> None:
        """Forget ``call`` (a call of :attr:`calls`; ``reset``: RST_STREAM CANCEL it first)."""
        calls = self.calls
        if calls.get(call.stream_id) is not call:
            return
        if reset and not self.lost:
            self.write(_frame(_RST_STREAM, 0, call.stream_id, struct.pack(">L", _CANCEL)))
        del calls[call.stream_id]
        if self.window_waiters:
            self.window_waiters.discard(call)
        if self.slot_waiters:
            self._grant_slots()
        if self.going_away and not self.calls:
            self._close(_NO_ERROR, "")

    def _grant_slots(self) -> None:
        free = self.max_streams - len(self.calls)
        while free > 0 and self.slot_waiters:
            waiter = self.slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    # -- the end ---------------------------------------------------------------------------------------

    def _close(self, code: int, reason: str) -> None:
        if self.transport is not None and not self.lost:
            goaway = struct.pack(">LL", self.next_id - 2 if self.next_id > 1 else 0, code) + reason.encode()
            self.transport.write(_frame(_GOAWAY, 0, 0, goaway))
            self.transport.close()
        self._lost(StreamTerminatedError(reason or "Connection closed"))

    def close(self) -> None:
        self._close(_NO_ERROR, "")

    def _lost(self, error: BaseException) -> None:
        if self.lost:
            return
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_lost(self)
        for call in list(self.calls.values()):
            call.fail(error)
        self.calls.clear()
        for waiter in self.slot_waiters:
            if not waiter.done():
                waiter.set_result(None)


async def _send_request(call: Call, message: bytes) -> None:
    """Send a request the windows did not take whole at once, and end the request stream (the call closed
    if that fails)."""
    try:
        await call.send_message(message, end=True)
    except BaseException:
        call.close()
        raise


class _ConnectionError(Exception):
    """The upstream broke HTTP/2: the connection is closed (GOAWAY PROTOCOL_ERROR)."""


def _unpadded(payload: memoryview) -> memoryview:
    """A PADDED frame's payload without its padding."""
    if not payload:
        raise _ConnectionError("a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise _ConnectionError("padding longer than the frame")
    return payload[1 : len(payload) - pad]


class UpstreamConnection:
    """The pooled connection to one upstream: made on the first call, made again after a loss.

    :param host: the upstream's host.
    :param port: its port.
    :param ssl: TLS (ALPN ``h2``), or ``None`` for plaintext HTTP/2.
    """

    def __init__(self, host: str, port: int, *, ssl: ssl_module.SSLContext | None = None) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl
        self._authority = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._headers: dict[str, Headers] = {}

    def headers(self, path: str) -> Headers:
        """The encoded fixed headers of ``path``'s calls."""
        found = self._headers.get(path)
        if found is None:
            found = self._headers[path] = Headers(path, self._authority, self._ssl is not None)
        return found

    async def call(
        self,
        path: str,
        metadata: bytes,
        *,
        seconds: float | None = None,
        message: bytes | None = None,
    ) -> Call:
        """Open a call of ``path``; with ``message``, the request too, and the request stream ended.

        :param metadata: the call's metadata, encoded (:func:`encode_metadata`).
        :param seconds: its deadline, in seconds from now (sent, and kept here: ``TimeoutError``).
        :raises OSError: the upstream cannot be reached.
        :raises StreamTerminatedError: the connection was lost meanwhile.
        """
        connection = self._connection
        if connection is None:
            connection = await self._connect()
        if seconds is not None and seconds <= 0:
            raise TimeoutError("the deadline has passed")
        if len(connection.calls) >= connection.max_streams:
            await connection.slot()
        fixed = self._headers.get(path) or self.headers(path)
        call = connection.open(fixed, seconds, metadata, message)
        if message is not None and not call.sent_end:  # beyond a window or a frame: sent as they allow
            await _send_request(call, message)
        return call

    async def unary(
        self, path: str, metadata: bytes, message: bytes, *, seconds: float | None = None
    ) -> RawMessage | None:
        """One unary call read whole (:meth:`Call.whole`: REST's calls): its one reply, once the upstream
        has ended the stream, its status checked (:meth:`Call.reply`); the call closed (reset upstream when
        left early: cancelled, failed). The parameters and errors are :meth:`call`'s, and the upstream's
        status as :class:`~grpclib.exceptions.GRPCError`."""
        connection = self._connection
        if (
            connection is not None  # the usual case, opened at once: no coroutine, nothing to wait for
            and len(connection.calls) < connection.max_streams
            and (seconds is None or seconds > 0)
        ):
            fixed = self._headers.get(path) or self.headers(path)
            call = connection.open(fixed, seconds, metadata, message, whole=True)
            if not call.sent_end:
                await _send_request(call, message)
        else:
            call = await self.call(path, metadata, seconds=seconds, message=message)
            call.whole()
        try:
            while not call.ended:
                await call.arrival()  # mostly once: the upstream's answer comes in one read
            return call.reply()
        finally:
            call.close()

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is not None:
                return self._connection
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(
                lambda: _Connection(self._forget),
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
            if self._ssl is not None:
                tls = connection.transport.get_extra_info("ssl_object") if connection.transport else None
                protocol = tls.selected_alpn_protocol() if tls is not None else None
                if protocol != "h2":
                    connection.close()
                    raise ConnectionError(f"the upstream did not negotiate h2 over TLS (ALPN: {protocol!r})")
            if not connection.lost:
                self._connection = connection
            return connection

    def _forget(self, connection: _Connection) -> None:
        if self._connection is connection:
            self._connection = None

    def close(self) -> None:
        """Close the connection; its calls fail."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
