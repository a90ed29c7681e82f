"""The upstream connection (:mod:`gateway.upstream.connection`) against a grpclib server in this process,
where the front-gateway tests cannot reach: small windows (sends wait for WINDOW_UPDATE), a concurrent
stream limit below the calls made, the header encoding as an HPACK decoder reads it, a reader that stops
reading (the upstream is held at its window), and a call left early (reset upstream)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Stream
from hpack import Decoder

from gateway.rpc.h2limits import Http2Limits
from gateway.rpc.headerblocks import literal_field, string
from gateway.rpc.protocol import GuardedServer
from gateway.rpc.wire import PassThroughDetailsCodec, RawCodec, RawDetails, RawMessage
from gateway.upstream import connection as upstream_connection
from gateway.upstream.connection import (
    Headers,
    HeaderTable,
    UpstreamConnection,
    encode_metadata,
    message_frame,
)

SMALL_WINDOW = 65_535  # HTTP/2's smallest initial window: a few messages fill it


class Service:
    """``/t.T/Chat`` echoes each message; ``/t.T/Slow`` answers after 0.2 s (``slow_cancelled`` when it is
    cancelled); ``/t.T/Many`` streams 200
    messages of 10 KB; ``/t.T/Fail`` answers NOT_FOUND with details and trailing metadata."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.sent = 0
        self.cancelled = asyncio.Event()
        self.slow_cancelled = asyncio.Event()

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/t.T/Chat": Handler(self.chat, Cardinality.STREAM_STREAM, RawMessage, RawMessage),
            "/t.T/Slow": Handler(self.slow, Cardinality.UNARY_UNARY, RawMessage, RawMessage),
            "/t.T/Many": Handler(self.many, Cardinality.UNARY_STREAM, RawMessage, RawMessage),
            "/t.T/Fail": Handler(self.fail, Cardinality.UNARY_UNARY, RawMessage, RawMessage),
        }

    async def chat(self, stream: Stream[Any, Any]) -> None:
        async for message in stream:
            await stream.send_message(message)

    async def slow(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            self.slow_cancelled.set()
            raise
        finally:
            self.running -= 1
        await stream.send_message(request)

    async def many(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        try:
            for _ in range(200):
                await stream.send_message(RawMessage(b"m" * 10_000))
                self.sent += 1
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def fail(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_trailing_metadata(
            status=Status.NOT_FOUND,
            status_message="no such thing: é",
            status_details=RawDetails(b"\x08\x05"),
            metadata={"why": "because", "blob-bin": b"\x00\xff"},
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[Service, int]]:
    service = Service()
    small = Configuration(http2_connection_window_size=SMALL_WINDOW, http2_stream_window_size=SMALL_WINDOW)
    server = GuardedServer(
        [service],
        codec=RawCodec(),
        status_details_codec=PassThroughDetailsCodec(),
        config=small,
        limits=Http2Limits(max_concurrent_streams=3),
    )
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield service, port
    server.close()
    await server.wait_closed()


Connect = Callable[[int], UpstreamConnection]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connections to a local port, each closed when the test ends."""
    made: list[UpstreamConnection] = []

    def make(port: int) -> UpstreamConnection:
        made.append(UpstreamConnection("127.0.0.1", port))
        return made[-1]

    yield make
    for connection in made:
        connection.close()


def test_headers_decode_as_sent() -> None:
    """Literals without indexing (never indexed for metadata), long values, ``-bin`` values in base64."""
    long = "v" * 300  # a length past the 7-bit prefix: a multi-byte HPACK integer
    metadata = encode_metadata([("x-api-key", "k"), ("long", long), ("trace-bin", b"\x00\x01\xfe")])
    block = Headers("/t.T/Chat", "up:50051", tls=False).block(1.5, metadata)
    decoder = Decoder()
    assert [tuple(h) for h in decoder.decode(block)] == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/t.T/Chat"),
        (":authority", "up:50051"),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        ("user-agent", "room-gateway"),
        ("grpc-timeout", "1500m"),
        ("x-api-key", "k"),
        ("long", long),
        ("trace-bin", base64.b64encode(b"\x00\x01\xfe").decode().rstrip("=")),
    ]
    assert len(decoder.header_table.dynamic_entries) == 0  # nothing indexed: no state between calls


def test_each_call_gets_its_own_timeout() -> None:
    """The last timeout's block is kept: a call with another timeout (or none) is not sent the kept one."""
    headers = Headers("/t.T/Chat", "up:50051", tls=False)
    sent = [headers.block(t, b"") for t in (1.5, 1.5, 0.2, None, 1.5, 30.0)]
    timeouts = [dict(Decoder().decode(block)).get("grpc-timeout") for block in sent]
    assert timeouts == ["1500m", "1500m", "200m", None, "1500m", "30S"]


def _expected(path: str, timeout: str | None, metadata: list[tuple[str, str]]) -> list[tuple[str, str]]:
    fixed = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "up:50051")]
    fixed += [("te", "trailers"), ("content-type", "application/grpc"), ("user-agent", "room-gateway")]
    return fixed + ([("grpc-timeout", timeout)] if timeout else []) + metadata


def test_indexed_blocks_decode_as_sent_through_evictions_and_resizes() -> None:
    """hpack's decoder, as the upstream's, reads every block as sent while the fixed fields are indexed, the
    table evicts (long paths), and the upstream resizes it (SETTINGS_HEADER_TABLE_SIZE, 0 included, and
    lowered then raised between two blocks); metadata is never inserted."""
    chance = random.Random(15)
    paths = [f"/t.T/{'m' * chance.randint(1, 600)}{i}" for i in range(12)]
    methods = {path: Headers(path, "up:50051", tls=False) for path in paths}
    table, decoder = HeaderTable(), Decoder()
    indexed = 0
    for _ in range(3000):
        if chance.random() < 0.02:
            for _ in range(chance.choice((1, 1, 2))):
                size = chance.choice((0, 100, 700, 2000, 4096, 8192))
                table.resize(size)
                decoder.max_allowed_table_size = size  # as h2 does on our ACK
        path = chance.choice(paths)
        metadata = [("x-api-key", "secret"), ("x-request-id", str(chance.random()))]
        block = methods[path].block(chance.choice((None, 1.5)), encode_metadata(metadata), table)
        timeout = "1500m" if b"grpc-timeout" in block else None
        assert [tuple(h) for h in decoder.decode(block)] == _expected(path, timeout, metadata)
        indexed += block.count(b"/t.T/") == 0
        assert all(b"secret" not in entry for entry in map(bytes, _entries(decoder)))
    assert indexed > 1500  # most blocks send the path as an index


def test_a_table_lowered_then_raised_announces_both() -> None:
    """RFC 7541 §4.2: the smallest size since the last block first, then the final one, once (hpack's
    decoder does not check it, so this is checked on the bytes)."""
    table = HeaderTable()
    table.resize(4096)
    assert table.updates() == b""  # no change: nothing to announce
    table.resize(100)
    table.resize(50)
    table.resize(4096)
    assert table.updates() == b"\x3f\x13" + b"\x3f\xe1\x1f"  # 50, then 4096 (5-bit prefix integers)
    assert table.updates() == b""


def _entries(decoder: Decoder) -> list[bytes]:
    return [b"".join(entry) for entry in decoder.header_table.dynamic_entries]


async def test_a_stream_far_beyond_the_windows_both_ways(
    served: tuple[Service, int], connect: Connect
) -> None:
    """200 messages of 10 KB each way through 64 KiB windows: sends wait for WINDOW_UPDATE, and the
    upstream's replies are credited back as they are read."""
    _, port = served
    upstream = connect(port)
    call = await upstream.call("/t.T/Chat", b"")
    async with call:

        async def send() -> None:
            for i in range(200):
                await call.send_message(bytes([i % 256]) * 10_000)
            await call.end()

        sender = asyncio.create_task(send())
        async with asyncio.timeout(20):  # a window never credited back would hang here
            await call.recv_initial_metadata()
            received = []
            while (message := await call.recv_message()) is not None:
                received.append(message[0])
            await call.recv_trailing_metadata()
            await sender
    assert received == [i % 256 for i in range(200)]


async def test_calls_beyond_the_concurrent_stream_limit_wait_for_a_slot(
    served: tuple[Service, int], connect: Connect
) -> None:
    service, port = served
    upstream = connect(port)

    async def one(i: int) -> bytes | None:
        async with await upstream.call("/t.T/Slow", b"", message=str(i).encode()) as call:
            reply = await call.recv_message()
            await call.recv_trailing_metadata()
            return reply

    await one(-1)  # the server's SETTINGS (3 streams at most) are read by the end of this call
    async with asyncio.timeout(20):  # a slot never given back would hang here
        replies = await asyncio.gather(*(one(i) for i in range(8)))
    assert replies == [str(i).encode() for i in range(8)]
    assert service.most <= 3  # never more open than the server allows (it would refuse them)


@pytest.fixture
def small_stream_window(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(upstream_connection, "STREAM_WINDOW", 100_000)
    return 100_000


async def test_a_reader_that_stops_holds_the_upstream_at_its_window(
    small_stream_window: int, served: tuple[Service, int], connect: Connect
) -> None:
    """Nothing is read: the upstream stops once it has filled our stream window; reading lets it go on."""
    service, port = served
    upstream = connect(port)
    async with await upstream.call("/t.T/Many", b"", message=b"go") as call:
        await asyncio.sleep(0.5)
        assert 0 < service.sent <= small_stream_window // 10_005 + 1  # the window, no more
        count = 0
        async with asyncio.timeout(20):  # a window never credited back would hang here
            while await call.recv_message() is not None:
                count += 1
            await call.recv_trailing_metadata()
    assert count == 200


async def test_a_call_left_early_is_reset_upstream(
    small_stream_window: int, served: tuple[Service, int], connect: Connect
) -> None:
    service, port = served
    upstream = connect(port)
    call = await upstream.call("/t.T/Many", b"", message=b"go")
    assert await call.recv_message() is not None
    call.close()  # RST_STREAM CANCEL: the upstream's handler is cancelled
    await asyncio.wait_for(service.cancelled.wait(), 5)


async def test_an_error_status_with_details_and_trailers(
    served: tuple[Service, int], connect: Connect
) -> None:
    _, port = served
    upstream = connect(port)
    async with await upstream.call("/t.T/Fail", b"", message=b"x") as call:
        with pytest.raises(GRPCError) as failed:
            await call.recv_initial_metadata()  # trailers-only
    assert failed.value.status is Status.NOT_FOUND
    assert failed.value.message == "no such thing: é"
    assert failed.value.details == RawDetails(b"\x08\x05")
    assert ("why", "because") in call.trailing_metadata
    assert ("blob-bin", b"\x00\xff") in call.trailing_metadata


async def test_a_deadline_resets_the_call(served: tuple[Service, int], connect: Connect) -> None:
    _, port = served
    upstream = connect(port)
    async with await upstream.call("/t.T/Slow", b"", seconds=0.05, message=b"x") as call:
        with pytest.raises(TimeoutError):
            await call.recv_message()


# -- unary: the one reply of a call, read once the stream has ended (REST's unary calls) ----------------


async def test_a_unary_reply_and_its_status(served: tuple[Service, int], connect: Connect) -> None:
    """The reply, and an error status with its message and details as the other readers raise it."""
    _, port = served
    upstream = connect(port)
    assert await upstream.unary("/t.T/Slow", b"", b"hi", seconds=5) == b"hi"
    for _ in range(2):  # the second answer's blocks are the kept ones: checked all the same
        with pytest.raises(GRPCError) as failed:
            await upstream.unary("/t.T/Fail", b"", b"x")  # trailers-only
        assert failed.value.status is Status.NOT_FOUND
        assert failed.value.message == "no such thing: é"
        assert failed.value.details == RawDetails(b"\x08\x05")
    assert await upstream.unary("/t.T/Slow", b"", b"hi", seconds=5) == b"hi"
    assert not upstream._connection.calls  # type: ignore[union-attr]  # each call closed


async def test_a_unary_reply_credits_what_arrives(
    small_stream_window: int, served: tuple[Service, int], connect: Connect
) -> None:
    """2 MB of replies through a 100 kB stream window: read at the end only, the stream would stop at the
    window unless what arrives is credited back at once; the first reply is kept, the others dropped."""
    service, port = served
    upstream = connect(port)
    async with asyncio.timeout(20):  # a window never credited back would hang here
        assert await upstream.unary("/t.T/Many", b"", b"go") == b"m" * 10_000
    assert service.sent == 200


async def test_a_cancelled_unary_reply_resets_the_call(served: tuple[Service, int], connect: Connect) -> None:
    """The reader is cancelled (a REST client gone, the edge's deadline): the stream is reset upstream,
    whose handler is cancelled, and the connection serves the next call."""
    service, port = served
    upstream = connect(port)

    async def one() -> bytes | None:
        return await upstream.unary("/t.T/Slow", b"", b"x")

    task = asyncio.create_task(one())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(service.slow_cancelled.wait(), 5)
    assert await one() == b"x"


# -- deadlines: one timer per connection, armed for the nearest ---------------------------------------


@pytest.fixture
async def silent() -> AsyncIterator[tuple[int, bytearray]]:
    """An upstream that reads and never answers (so only the client's own deadline ends a call), and what
    it has read."""
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65_536):
            received.extend(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], received
    server.close()


def _resets(data: bytes) -> dict[int, int]:
    """The RST_STREAM frames among what the client wrote: stream id → error code."""
    pos, found = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), {}
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, stream_id = data[pos + 3], int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        if kind == 0x3:
            found[stream_id] = int.from_bytes(data[pos + 9 : pos + 13], "big")
        pos += 9 + length
    return found


async def test_each_deadline_expires_its_own_call(silent: tuple[int, bytearray], connect: Connect) -> None:
    """Deadlines of 0.6, 0.2 (earlier than the timer's: it is armed again) and 0.4 s on one connection,
    and a call without one: each call with a deadline fails with TimeoutError at its own time and is
    reset (RST_STREAM CANCEL); the call without one is left alone."""
    port, received = silent
    upstream = connect(port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: dict[float | None, float] = {}

    async def one(seconds: float | None) -> None:
        try:
            with pytest.raises(TimeoutError):
                await upstream.unary("/t.T/Slow", b"", b"x", seconds=seconds)
        finally:
            ended[seconds] = loop.time() - started

    calls = [asyncio.create_task(one(s)) for s in (0.6, 0.2, 0.4)]
    endless = asyncio.create_task(one(None))
    async with asyncio.timeout(10):
        await asyncio.gather(*calls)
    await asyncio.sleep(0.1)
    assert not endless.done()
    endless.cancel()
    assert ended[0.2] < ended[0.4] < ended[0.6] < 3
    for seconds in (0.2, 0.4, 0.6):
        assert ended[seconds] >= seconds - 0.002  # the event loop's timers are kept in milliseconds
    await asyncio.sleep(0.1)
    assert _resets(bytes(received)) == {1: 0x8, 3: 0x8, 5: 0x8, 7: 0x8}  # the cancelled one too


async def test_a_deadline_after_the_timer_fired_for_none(
    silent: tuple[int, bytearray], connect: Connect
) -> None:
    """A call finished before its deadline leaves the timer armed; when it fires for nobody, a later call's
    deadline is kept all the same."""
    port, _ = silent
    upstream = connect(port)
    async with await upstream.call("/t.T/Slow", b"", seconds=0.1, message=b"x"):
        pass  # left at once: reset, its deadline gone with it
    await asyncio.sleep(0.2)  # the timer fires and finds no call
    async with asyncio.timeout(5):
        with pytest.raises(TimeoutError):
            await upstream.unary("/t.T/Slow", b"", b"x", seconds=0.2)


# -- the answer as the upstream frames it: scripted bytes ---------------------------------------------


def _h2(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


_HEADERS, _DATA, _WINDOW_UPDATE = 0x1, 0x0, 0x8
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
#: ``:status 200`` (static index 8), ``content-type: application/grpc`` (a literal without indexing).
_START = b"\x88" + literal_field(b"content-type", b"application/grpc", never_indexed=False)


def _indexed(name: bytes, value: bytes) -> bytes:
    """A literal with incremental indexing, its name a literal (RFC 7541 §6.2.1): the field becomes the
    newest entry of the decoder's table, dynamic index 62 (``\\xbe``)."""
    return b"\x40" + string(name) + string(value)


def _answer(stream_id: int, message: bytes, trailers: bytes) -> bytes:
    data = message_frame(message)
    return (
        _h2(_HEADERS, _END_HEADERS, stream_id, _START)
        + _h2(_DATA, 0, stream_id, data)
        + _h2(_HEADERS, _END_HEADERS | _END_STREAM, stream_id, trailers)
    )


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[int, dict[int, bytes]]]:
    """An upstream that answers each stream the client opens with the bytes scripted for its id (ignoring
    the rest of what it reads), and the script (filled by the test)."""
    script: dict[int, bytes] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(24)  # the preface
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readexactly(9)
                await reader.readexactly(int.from_bytes(head[:3], "big"))
                stream_id = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                if head[3] == _HEADERS and stream_id in script:
                    writer.write(script.pop(stream_id))
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], script
    server.close()


async def test_a_kept_header_block_means_what_the_table_says(
    scripted: tuple[int, dict[int, bytes]], connect: Connect
) -> None:
    """The same trailers' bytes (``\\xbe``: the newest entry of the upstream's table) mean ``grpc-status: 0``,
    then, once a later block has inserted ``grpc-status: 13``, INTERNAL: a block kept with its checks
    while the table was unchanged is read again after the table changes."""
    port, script = scripted
    upstream = connect(port)
    script[1] = _answer(1, b"a", _indexed(b"grpc-status", b"0"))
    script[3] = _answer(3, b"b", b"\xbe")
    script[5] = _answer(5, b"c", b"\xbe")  # the kept block, and its verdict
    script[7] = _answer(7, b"d", _indexed(b"grpc-message", b"no") + _indexed(b"grpc-status", b"13"))
    script[9] = _answer(9, b"e", b"\xbe")  # the kept bytes, now ``grpc-status: 13``
    script[11] = _answer(11, b"f", b"\xbe\xbf")  # and ``grpc-message: no``
    for reply in (b"a", b"b", b"c"):
        assert await upstream.unary("/t.T/Slow", b"", b"x") == reply
    for message in ("no", None, "no"):
        with pytest.raises(GRPCError) as failed:
            await upstream.unary("/t.T/Slow", b"", b"x")
        assert failed.value.status is Status.INTERNAL
        assert failed.value.message == message


async def test_a_reply_however_its_frames_cut_it(
    scripted: tuple[int, dict[int, bytes]], connect: Connect
) -> None:
    """A reply split across DATA frames (inside its length prefix and its bytes), padded, followed by a
    second reply in the same frame (dropped), trailers with a priority; a stream that ends inside a message
    is INTERNAL; headers that end the stream are no trailers; trailers without a status are UNKNOWN; an OK
    answer may hold no reply."""
    port, script = scripted
    upstream = connect(port)
    data = message_frame(b"hello world")
    trailers = literal_field(b"grpc-status", b"0", never_indexed=False)
    start = _h2(_HEADERS, _END_HEADERS, 1, _START)
    script[1] = (
        start
        + _h2(_DATA, 0, 1, data[:3])
        + _h2(_DATA, 0, 1, data[3:8])
        + _h2(_DATA, _PADDED, 1, b"\x04" + data[8:] + b"\x00" * 4)
        + _h2(_HEADERS, _END_HEADERS | _END_STREAM | _PRIORITY, 1, b"\x00\x00\x00\x00\x10" + trailers)
    )
    script[3] = (
        _h2(_HEADERS, _END_HEADERS, 3, _START)
        + _h2(_DATA, 0, 3, message_frame(b"one") + message_frame(b"two"))
        + _h2(_HEADERS, _END_HEADERS | _END_STREAM, 3, trailers)
    )
    script[5] = (
        _h2(_HEADERS, _END_HEADERS, 5, _START)
        + _h2(_DATA, 0, 5, message_frame(b"one") + data[:7])
        + _h2(_HEADERS, _END_HEADERS | _END_STREAM, 5, trailers)
    )
    script[7] = _h2(_HEADERS, _END_HEADERS | _END_STREAM, 7, _START)
    script[9] = _answer(9, b"z", literal_field(b"why", b"none", never_indexed=False))
    script[11] = _h2(_HEADERS, _END_HEADERS, 11, _START) + _h2(
        _HEADERS, _END_HEADERS | _END_STREAM, 11, trailers
    )
    assert await upstream.unary("/t.T/Slow", b"", b"x") == b"hello world"
    assert await upstream.unary("/t.T/Slow", b"", b"x") == b"one"
    with pytest.raises(GRPCError) as failed:
        await upstream.unary("/t.T/Slow", b"", b"x")
    assert (failed.value.status, failed.value.message) == (
        Status.INTERNAL,
        "the upstream ended its stream inside a message",
    )
    with pytest.raises(StreamTerminatedError, match="without trailers"):
        await upstream.unary("/t.T/Slow", b"", b"x")
    with pytest.raises(GRPCError) as failed:
        await upstream.unary("/t.T/Slow", b"", b"x")
    assert (failed.value.status, failed.value.message) == (Status.UNKNOWN, "Missing grpc-status header")
    assert await upstream.unary("/t.T/Slow", b"", b"x") is None  # OK, without a reply


async def test_an_answer_before_the_request_is_all_sent(
    scripted: tuple[int, dict[int, bytes]], connect: Connect
) -> None:
    """A request beyond the upstream's window waits for WINDOW_UPDATE; the upstream answers first, then
    opens its windows: the reply that came before the call was read whole is its reply, credited."""
    port, script = scripted
    upstream = connect(port)
    opened = _h2(_WINDOW_UPDATE, 0, 0, (1 << 20).to_bytes(4, "big"))
    opened += _h2(_WINDOW_UPDATE, 0, 1, (1 << 20).to_bytes(4, "big"))
    script[1] = _answer(1, b"early", literal_field(b"grpc-status", b"0", never_indexed=False)) + opened
    async with asyncio.timeout(5):
        assert await upstream.unary("/t.T/Slow", b"", b"r" * 100_000) == b"early"
