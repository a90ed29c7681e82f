"""The ``roomApi.RoomApi`` handler in-process (``grpclib.testing.ChannelFor``, which runs no server events:
the handler authenticates from the stream itself), for the room rules the real-process tests do not reach."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor
from room_gateway_plugins.memory import MemoryBackend
from room_gateway_plugins.workadventure.service import MISSING_KEY, RoomApiHandler

from gateway._gen.google.protobuf import Value
from gateway._gen.roomApi import EventRequest, RoomApiStub, SaveVariableRequest, VariableRequest
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from tests.conftest import ADMIN_KEY, READER_KEY


@pytest.fixture
async def channel(dispatcher: Dispatcher) -> AsyncIterator[Channel]:
    async with ChannelFor([RoomApiHandler(dispatcher)]) as channel:
        yield channel


@pytest.fixture
def stub(channel: Channel) -> RoomApiStub:
    return RoomApiStub(channel, metadata={"x-api-key": ADMIN_KEY})


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def save(room: str, name: str, value: object) -> SaveVariableRequest:
    return SaveVariableRequest(room=room, name=name, value=Value.from_dict(value))


async def test_a_deleted_variable_reads_and_streams_as_an_empty_value(
    stub: RoomApiStub, service: RoomService
) -> None:
    await stub.save_variable(save("r", "v", 1))
    received: list[Value] = []
    got_one = asyncio.Event()

    async def listen() -> None:
        async for value in stub.listen_variable(VariableRequest(room="r", name="v")):
            received.append(value)
            got_one.set()

    task = asyncio.create_task(listen())
    try:
        for round_ in range(50):  # until the listener is subscribed
            await stub.save_variable(save("r", "v", {"round": round_}))
            try:
                await asyncio.wait_for(got_one.wait(), 0.1)
                break
            except TimeoutError:
                pass
        got_one.clear()
        await service.delete_variable("r", "v")
        await asyncio.wait_for(got_one.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert received[0].to_dict() != 1  # never the value current when the call started
    assert received[-1] == Value()
    assert await stub.read_variable(VariableRequest(room="r", name="v")) == Value()


async def test_closed_and_deleted_rooms(stub: RoomApiStub, service: RoomService) -> None:
    await stub.save_variable(save("r", "v", 1))
    await service.close_room("r")
    with pytest.raises(GRPCError) as closed:
        await stub.save_variable(save("r", "v", 2))
    assert closed.value.status is Status.FAILED_PRECONDITION
    assert (await stub.read_variable(VariableRequest(room="r", name="v"))).to_dict() == 1
    await service.delete_room("r")
    with pytest.raises(GRPCError) as deleted:
        await stub.read_variable(VariableRequest(room="r", name="other"))
    assert deleted.value.status is Status.NOT_FOUND


async def test_without_implicit_rooms_an_unknown_room_is_not_found(dispatcher: Dispatcher) -> None:
    dispatcher.service.auto_create_rooms = False
    async with ChannelFor([RoomApiHandler(dispatcher)]) as channel:
        stub = RoomApiStub(channel, metadata={"x-api-key": ADMIN_KEY})
        with pytest.raises(GRPCError) as read:
            await stub.read_variable(VariableRequest(room="nowhere", name="v"))
    assert read.value.status is Status.NOT_FOUND


async def test_permissions_are_the_native_ones(channel: Channel) -> None:
    reader = RoomApiStub(channel, metadata={"x-api-key": READER_KEY})
    assert await reader.read_variable(VariableRequest(room="r", name="v")) == Value()
    with pytest.raises(GRPCError) as write:
        await reader.save_variable(save("r", "v", 1))
    assert write.value.status is Status.PERMISSION_DENIED
    with pytest.raises(GRPCError) as missing:
        await RoomApiStub(channel).read_variable(VariableRequest(room="r", name="v"))
    assert (missing.value.status, missing.value.message) == (Status.UNAUTHENTICATED, MISSING_KEY)


async def test_a_cancelled_stream_leaves_no_subscription(stub: RoomApiStub, backend: MemoryBackend) -> None:
    async def listen() -> None:
        async for _ in stub.listen_to_event(EventRequest(room="r", name="e")):
            pass

    task = asyncio.create_task(listen())
    await eventually(lambda: len(backend.hub) == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await eventually(lambda: len(backend.hub) == 0)
