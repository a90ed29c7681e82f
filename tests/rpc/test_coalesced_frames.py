"""The gRPC listener sends a unary answer's frames (headers, data, trailers) with one write to the socket's
transport (gateway.coalesce), where grpclib alone makes three; a server stream's message is written as it
is sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.client import Channel

import gateway.rpc.protocol as protocol
import gateway.rpc.wire as wire
from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import (
    GetVariableRequest,
    ListenVariableRequest,
    RoomServiceStub,
    SetVariableRequest,
)
from tests.conftest import ADMIN_KEY
from tests.edge.test_coalesce import CountingTransport
from tests.rpc.conftest import Loopback

counted: list[CountingTransport] = []


@pytest.fixture(autouse=True)
def count_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection's socket transport, counting what the listener writes to it."""
    made = protocol.GuardedProtocol.connection_made

    def connection_made(self: protocol.GuardedProtocol, transport: Any) -> None:
        counted.append(CountingTransport(transport))
        made(self, counted[-1])

    counted.clear()
    monkeypatch.setattr(protocol.GuardedProtocol, "connection_made", connection_made)


async def test_a_unary_answer_is_one_write(loopback: Loopback) -> None:
    channel = Channel("127.0.0.1", loopback.port)
    try:
        stub = RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY})
        await stub.set_variable(SetVariableRequest(room_id="r", name="v", value=Value(number_value=1)))
        [connection] = counted
        before = len(connection.writes)
        for _ in range(10):
            reply = await stub.get_variable(GetVariableRequest(room_id="r", name="v"))
            assert reply.value.number_value == 1
        await asyncio.sleep(0.05)  # a WINDOW_UPDATE the last reads asked for
        assert len(connection.writes) - before <= 11, connection.writes[before:]  # grpclib alone: 30+
    finally:
        channel.close()


async def test_a_server_streams_message_is_written_as_it_is_sent(
    loopback: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not held to the next turn of the loop: a write fanned out to thousands of streams would reach every
    client only after the last stream's task had run (bench/RESULTS.md, session 16)."""
    written: list[int] = []  # per message sent: the writes it made reach the socket
    send = wire.ReplyStream.send_data

    async def recorded(self: wire.ReplyStream, data: bytes, end_stream: bool = False) -> None:
        before = len(counted[0].writes)
        await send(self, data, end_stream)
        written.append(len(counted[0].writes) - before)

    monkeypatch.setattr(wire.ReplyStream, "send_data", recorded)
    channel = Channel("127.0.0.1", loopback.port)
    try:
        stub = RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY})
        await stub.set_variable(SetVariableRequest(room_id="r", name="v", value=Value(number_value=1)))
        values = []
        async for variable in stub.listen_variable(ListenVariableRequest(room_id="r", name="v")):
            values.append(variable.value.number_value)
            if len(values) == 2:
                break
            await stub.set_variable(SetVariableRequest(room_id="r", name="v", value=Value(number_value=2)))
        assert values == [1, 2]
        assert len(written) >= 2 and all(written), written  # held to the next turn: 0 each
    finally:
        channel.close()
