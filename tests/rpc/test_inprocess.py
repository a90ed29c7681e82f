"""The handler in-process (``grpclib.testing.ChannelFor``) with the generated betterproto2 client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor
from room_gateway_plugins.memory import MemoryBackend

from gateway._gen.google.protobuf import Empty, FieldMask, Struct, Value
from gateway._gen.roomgateway.v1 import (
    ChangeKind,
    CreateRoomRequest,
    DeleteVariableRequest,
    GetVariableRequest,
    ListChangesRequest,
    ListenRoomRequest,
    ListenVariableRequest,
    Room,
    RoomServiceStub,
    RoomStatus,
    SetVariableRequest,
    UpdateRoomRequest,
)
from gateway.dispatch import Dispatcher
from gateway.rpc.auth import install_auth
from gateway.rpc.server import build_handlers
from tests.conftest import ADMIN_KEY

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
async def channel(dispatcher: Dispatcher) -> AsyncIterator[Channel]:
    channel_for = ChannelFor(build_handlers(dispatcher))
    async with channel_for as channel:
        # ChannelFor builds its own Server: authenticate on it as create_grpc_server does.
        install_auth(channel_for._server, dispatcher.policy)
        yield channel


@pytest.fixture
def stub(channel: Channel) -> RoomServiceStub:
    return RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY})


async def test_room_messages_round_trip(stub: RoomServiceStub) -> None:
    room = await stub.create_room(
        CreateRoomRequest(
            room=Room(room_id="r", display_name="R", settings=Struct.from_dict({"layout": "grid"}))
        )
    )
    assert room.status is RoomStatus.OPEN
    assert room.settings is not None and room.settings.to_dict() == {"layout": "grid"}
    assert room.create_time == room.update_time == T0

    updated = await stub.update_room(
        UpdateRoomRequest(room=Room(room_id="r", description="d"), update_mask=FieldMask(paths=["settings"]))
    )
    # The mask named settings, which the request left absent: cleared; the description was not in the mask.
    assert updated.description == ""
    assert updated.settings is not None and updated.settings.to_dict() == {}


async def test_variable_values(stub: RoomServiceStub) -> None:
    for json in (None, True, 0, -2.5, "s", [1, [2]], {"a": {"b": None}}):
        variable = await stub.set_variable(
            SetVariableRequest(room_id="r", name="v", value=Value.from_dict(json))
        )
        assert variable.value is not None and variable.value.to_dict() == json
    got = await stub.get_variable(GetVariableRequest(room_id="r", name="v"))
    assert got.version == 7
    assert isinstance(await stub.delete_variable(DeleteVariableRequest(room_id="r", name="v")), Empty)


async def test_absent_value_is_not_passed(stub: RoomServiceStub) -> None:
    with pytest.raises(GRPCError) as info:
        await stub.set_variable(SetVariableRequest(room_id="r", name="v"))
    assert (info.value.status, info.value.message) == (Status.INVALID_ARGUMENT, "value is required")


async def test_optional_expected_version(stub: RoomServiceStub) -> None:
    first = await stub.set_variable(SetVariableRequest(room_id="r", name="v", value=Value.from_dict(1)))
    # expected_version=0 is sent (proto3 optional) and means "unset": the variable is set, so ABORTED.
    with pytest.raises(GRPCError) as info:
        await stub.set_variable(
            SetVariableRequest(room_id="r", name="v", value=Value.from_dict(2), expected_version=0)
        )
    assert info.value.status is Status.ABORTED
    second = await stub.set_variable(
        SetVariableRequest(room_id="r", name="v", value=Value.from_dict(2), expected_version=first.version)
    )
    assert second.version == 2


async def test_listen_stream_and_deletion(stub: RoomServiceStub, backend: MemoryBackend) -> None:
    await stub.set_variable(SetVariableRequest(room_id="r", name="v", value=Value.from_dict("a")))
    seen = []
    async for variable in stub.listen_variable(ListenVariableRequest(room_id="r", name="v")):
        seen.append(variable)
        if len(seen) == 1:
            await stub.delete_variable(DeleteVariableRequest(room_id="r", name="v"))
        else:
            break
    assert [(v.version, v.value) for v in seen] == [(1, Value(string_value="a")), (2, None)]


async def test_unauthenticated_without_metadata(channel: Channel) -> None:
    with pytest.raises(GRPCError) as info:
        await RoomServiceStub(channel).get_variable(GetVariableRequest(room_id="r", name="v"))
    assert info.value.status is Status.UNAUTHENTICATED


async def test_handler_fails_closed_without_the_auth_listener(dispatcher: Dispatcher) -> None:
    async with ChannelFor(build_handlers(dispatcher)) as channel:
        stub = RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY})
        with pytest.raises(GRPCError) as info:
            await stub.get_variable(GetVariableRequest(room_id="r", name="v"))
    assert info.value.status is Status.UNAUTHENTICATED


async def test_listen_room_resumes_and_list_changes(stub: RoomServiceStub, backend: MemoryBackend) -> None:
    for n in range(3):
        await stub.set_variable(SetVariableRequest(room_id="r", name="x", value=Value(number_value=n)))
    listed = await stub.list_changes(ListChangesRequest(room_id="r", after_seq=1, max_results=1))
    assert [c.seq for c in listed.changes] == [2] and listed.more and listed.head_seq == 4
    assert listed.changes[0].kind is ChangeKind.VARIABLE_SET and listed.epoch == backend.epoch
    seen = []
    request = ListenRoomRequest(
        room_id="r", after_seq=2, epoch=backend.epoch, kinds=[ChangeKind.VARIABLE_SET]
    )
    async for change in stub.listen_room(request):
        seen.append((change.seq, change.variable.value))
        if len(seen) == 2:
            await stub.set_variable(
                SetVariableRequest(room_id="r", name="x", value=Value(string_value="live"))
            )
        if len(seen) == 3:
            break
    assert seen == [
        (3, Value(number_value=1)),
        (4, Value(number_value=2)),
        (5, Value(string_value="live")),
    ]
    with pytest.raises(GRPCError) as info:
        await stub.list_changes(ListChangesRequest(room_id="r", after_seq=9))
    assert info.value.status is Status.OUT_OF_RANGE
    with pytest.raises(GRPCError) as info:
        async for _ in stub.listen_room(ListenRoomRequest(room_id="r", kinds=[ChangeKind.KIND_UNSPECIFIED])):
            pass
    assert info.value.status is Status.INVALID_ARGUMENT


async def test_listen_room_resets_an_unknown_epoch(stub: RoomServiceStub, backend: MemoryBackend) -> None:
    await stub.set_variable(SetVariableRequest(room_id="r", name="x", value=Value(number_value=1)))
    async for change in stub.listen_room(ListenRoomRequest(room_id="r", after_seq=1, epoch="lost")):
        assert (change.kind, change.seq, change.epoch) == (ChangeKind.RESET, 2, backend.epoch)
        break
