"""The guarded protocol's own bookkeeping (gateway.rpc.protocol), seen from inside a loopback server: how a
large read is handed to h2, and how its handler tasks are counted and their streams released."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import gateway.rpc.protocol as protocol
from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import GetVariableRequest, SetVariableRequest
from tests.conftest import ADMIN_KEY
from tests.rpc.conftest import Loopback
from tests.security.h2raw import H2Client, grpc_message

AUTH = {"x-api-key": ADMIN_KEY}
GET = "/roomgateway.v1.RoomService/GetVariable"
SET = "/roomgateway.v1.RoomService/SetVariable"

made: list[protocol.GuardedProtocol] = []
#: What each connection handed to h2, in order: (the loop's turn, the bytes).
parsed: list[tuple[int, bytes]] = []


@pytest.fixture(autouse=True)
def record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection's protocol, and the slices it parses, each with the turn of the loop it came in."""
    connection_made, parse = protocol.GuardedProtocol.connection_made, protocol.GuardedProtocol._parse

    def made_connection(self: protocol.GuardedProtocol, transport: Any) -> None:
        made.append(self)
        connection_made(self, transport)

    def recorded_parse(self: protocol.GuardedProtocol, chunk: bytes) -> None:
        parsed.append((turns.count, chunk))
        parse(self, chunk)

    made.clear()
    parsed.clear()
    monkeypatch.setattr(protocol.GuardedProtocol, "connection_made", made_connection)
    monkeypatch.setattr(protocol.GuardedProtocol, "_parse", recorded_parse)


class Turns:
    """The event loop's turns, counted by a task that yields once a turn."""

    count = 0

    async def run(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)


turns = Turns()


async def test_a_large_read_is_parsed_a_slice_per_turn_each_byte_once(loopback: Loopback) -> None:
    ticker = asyncio.get_running_loop().create_task(turns.run())
    client = await H2Client.connect("127.0.0.1", loopback.port)
    try:
        value = "x" * 60_000  # within the client's first flow-control window
        stream = client.request(SET, AUTH)
        message = grpc_message(
            bytes(SetVariableRequest(room_id="r", name="v", value=Value(string_value=value)))
        )
        client.send(stream, message, end=True)  # some 60 KiB of DATA frames in one write
        reply = await client.reply(stream)
        assert reply.status == 0, reply
        assert value.encode() in reply.data
        assert all(len(chunk) <= protocol.FEED_BYTES for _, chunk in parsed)
        assert len(parsed) > len(message) // protocol.FEED_BYTES
        full = [t for t, chunk in parsed if len(chunk) == protocol.FEED_BYTES]
        assert len(set(full)) == len(full), "two slices of a read parsed in one turn of the loop"
        # Every byte the client sent, once and in order: its stream's DATA payloads are the message.
        assert _payload(b"".join(chunk for _, chunk in parsed), stream) == message
    finally:
        ticker.cancel()
        await client.close()


def _payload(received: bytes, stream_id: int) -> bytes:
    """The DATA payloads on ``stream_id`` of ``received`` (a connection's input from its start), joined."""
    out, pos = b"", len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    while pos + 9 <= len(received):
        length = int.from_bytes(received[pos : pos + 3], "big")
        kind, stream = received[pos + 3], int.from_bytes(received[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        if kind == 0x0 and stream == stream_id:  # DATA, unpadded (h2's client does not pad)
            out += received[pos + 9 : pos + 9 + length]
        pos += 9 + length
    return out


async def test_handler_tasks_are_counted_while_they_run_and_their_streams_released(
    loopback: Loopback,
) -> None:
    client = await H2Client.connect("127.0.0.1", loopback.port)
    try:
        request = grpc_message(bytes(GetVariableRequest(room_id="r", name="v")))
        for _ in range(3):
            stream = client.request(GET, AUTH)
            client.send(stream, request, end=True)
            await client.reply(stream)
        # Opened and reset in one write: grpclib's handler task is cancelled before it ever ran, so its
        # ``finally`` never releases the stream; the protocol does, when the task ends.
        stream = client.request(GET, AUTH)
        client.send(stream, request)
        client.reset(stream)
        events = made[0].processor
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not events.streams and not events.running:
                break
        assert events.running == 0
        assert events.streams == {}
        # And the connection still serves.
        stream = client.request(GET, AUTH)
        client.send(stream, request, end=True)
        assert (await client.reply(stream)).ended
    finally:
        await client.close()
