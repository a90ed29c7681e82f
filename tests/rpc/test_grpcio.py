"""The native service on a real grpclib server (127.0.0.1, port 0), called by grpcio from protos/."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from room_gateway_plugins.memory import MemoryBackend

from tests.conftest import ADMIN_KEY, READER_KEY
from tests.rpc.conftest import Loopback, Readiness, Stubs

ADMIN = (("x-api-key", ADMIN_KEY),)
READER = (("x-api-key", READER_KEY),)


def value(json: Any) -> struct_pb2.Value:
    return ParseDict(json, struct_pb2.Value())


def as_json(message: Any) -> Any:
    return MessageToDict(message)


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status a call fails with.

    Not ``pytest.raises``: its ExceptionInfo keeps the traceback, and with it the grpcio call and its
    connection, alive until a garbage collection.
    """
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call succeeded")


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- every method --------------------------------------------------------------------------------------


async def test_room_lifecycle(stub: Any, stubs: Stubs) -> None:
    pb = stubs.pb2
    settings = struct_pb2.Struct()
    settings.update({"size": "large", "enable_chat": True})
    room = await stub.CreateRoom(
        pb.CreateRoomRequest(room=pb.Room(room_id="r1", display_name="One", settings=settings)),
        metadata=ADMIN,
    )
    assert as_json(room) == {
        "roomId": "r1",
        "displayName": "One",
        "status": "OPEN",
        "settings": {"size": "large", "enable_chat": True},
        "createTime": "2026-01-02T03:04:05Z",
        "updateTime": "2026-01-02T03:04:05Z",
    }
    got = await stub.GetRoom(pb.GetRoomRequest(room_id="r1"), metadata=ADMIN)
    assert got == room

    updated = await stub.UpdateRoom(
        pb.UpdateRoomRequest(
            room=pb.Room(room_id="r1", description="about", display_name="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        metadata=ADMIN,
    )
    assert (updated.display_name, updated.description) == ("One", "about")
    # No mask: every field that is set; the others keep their values.
    updated = await stub.UpdateRoom(
        pb.UpdateRoomRequest(room=pb.Room(room_id="r1", jurisdiction="eu")), metadata=ADMIN
    )
    assert (updated.display_name, updated.description, updated.jurisdiction) == ("One", "about", "eu")

    closed = await stub.CloseRoom(pb.CloseRoomRequest(room_id="r1"), metadata=ADMIN)
    assert closed.status == pb.Room.CLOSED
    deleted = await stub.DeleteRoom(pb.DeleteRoomRequest(room_id="r1"), metadata=ADMIN)
    assert deleted.status == pb.Room.DELETED
    tombstone = await stub.GetRoom(pb.GetRoomRequest(room_id="r1"), metadata=ADMIN)
    assert tombstone.status == pb.Room.DELETED


async def test_list_rooms(stub: Any, stubs: Stubs) -> None:
    pb = stubs.pb2
    for room_id in ("c", "a", "b"):
        await stub.CreateRoom(pb.CreateRoomRequest(room=pb.Room(room_id=room_id)), metadata=ADMIN)
    page = await stub.ListRooms(pb.ListRoomsRequest(max_results=2), metadata=ADMIN)
    assert [r.room_id for r in page.results] == ["a", "b"]
    assert (page.num_results, page.more) == (2, True)
    page = await stub.ListRooms(pb.ListRoomsRequest(start_after_key="b"), metadata=ADMIN)
    assert [r.room_id for r in page.results] == ["c"]
    assert not page.more
    page = await stub.ListRooms(pb.ListRoomsRequest(room_id=["c", "a", "zz"]), metadata=ADMIN)
    assert [r.room_id for r in page.results] == ["a", "c"]


async def test_variables(stub: Any, stubs: Stubs) -> None:
    pb = stubs.pb2
    first = await stub.SetVariable(
        pb.SetVariableRequest(room_id="r", name="v", value=value({"n": 3, "xs": [1.5, None, "s"]})),
        metadata=ADMIN,
    )
    assert as_json(first) == {
        "name": "v",
        "value": {"n": 3.0, "xs": [1.5, None, "s"]},
        "version": "1",
        "updateTime": "2026-01-02T03:04:05Z",
    }
    got = await stub.GetVariable(pb.GetVariableRequest(room_id="r", name="v"), metadata=ADMIN)
    assert got == first
    null = await stub.SetVariable(
        pb.SetVariableRequest(room_id="r", name="nothing", value=value(None)), metadata=ADMIN
    )
    assert null.HasField("value") and null.value.WhichOneof("kind") == "null_value"

    contents = await stub.GetRoomContents(pb.GetRoomContentsRequest(room_id="r"), metadata=ADMIN)
    contents_json = as_json(contents)
    assert contents_json.pop("epoch") and contents_json.pop("seq") == "3"  # the snapshot's log position
    assert contents_json == {"contents": {"v": {"n": 3.0, "xs": [1.5, None, "s"]}, "nothing": None}}

    second = await stub.SetVariable(
        pb.SetVariableRequest(room_id="r", name="v", value=value("x"), expected_version=1), metadata=ADMIN
    )
    assert second.version == 2
    code, message = await status_of(
        stub.SetVariable(
            pb.SetVariableRequest(room_id="r", name="v", value=value("y"), expected_version=1), metadata=ADMIN
        )
    )
    assert code == grpc.StatusCode.ABORTED, message

    empty = await stub.DeleteVariable(pb.DeleteVariableRequest(room_id="r", name="v"), metadata=ADMIN)
    assert empty.ByteSize() == 0
    code, _ = await status_of(stub.GetVariable(pb.GetVariableRequest(room_id="r", name="v"), metadata=ADMIN))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_set_variable_without_value_is_invalid(stub: Any, stubs: Stubs) -> None:
    code, message = await status_of(
        stub.SetVariable(stubs.pb2.SetVariableRequest(room_id="r", name="v"), metadata=ADMIN)
    )
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "value is required")


async def test_publish_event(stub: Any, stubs: Stubs) -> None:
    event = await stub.PublishEvent(
        stubs.pb2.PublishEventRequest(room_id="r", name="e", data=value({"a": 1})), metadata=ADMIN
    )
    assert as_json(event) == {"name": "e", "data": {"a": 1.0}, "time": "2026-01-02T03:04:05Z"}


async def test_invalidate_connections(stub: Any, stubs: Stubs) -> None:
    response = await stub.InvalidateConnections(stubs.pb2.InvalidateConnectionsRequest(), metadata=ADMIN)
    assert as_json(response) == {"invalidateTime": "2026-01-02T03:04:05Z"}


# -- errors --------------------------------------------------------------------------------------------


async def test_error_statuses(stub: Any, stubs: Stubs) -> None:
    pb = stubs.pb2
    code, message = await status_of(stub.GetRoom(pb.GetRoomRequest(room_id="nope"), metadata=ADMIN))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "room 'nope' does not exist")

    await stub.CreateRoom(pb.CreateRoomRequest(room=pb.Room(room_id="r")), metadata=ADMIN)
    code, _ = await status_of(
        stub.CreateRoom(pb.CreateRoomRequest(room=pb.Room(room_id="r")), metadata=ADMIN)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, _ = await status_of(stub.DeleteRoom(pb.DeleteRoomRequest(room_id="r"), metadata=ADMIN))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = await status_of(stub.CreateRoom(pb.CreateRoomRequest(room=pb.Room(room_id="")), metadata=ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await status_of(
        stub.ListRooms(pb.ListRoomsRequest(start_key="a", start_after_key="b"), metadata=ADMIN)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_unexpected_error_is_internal_and_logged(
    stub: Any,
    stubs: Stubs,
    backend: MemoryBackend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(room_id: str) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(backend, "get_room", broken)
    with caplog.at_level(logging.ERROR, logger="gateway.rpc.service"):
        code, message = await status_of(stub.GetRoom(stubs.pb2.GetRoomRequest(room_id="r"), metadata=ADMIN))
    assert (code, message) == (grpc.StatusCode.INTERNAL, "internal error")
    assert "secret detail" in caplog.text  # the traceback is in the log, never in the answer


# -- authentication ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        (("x-api-key", ADMIN_KEY),),
        (("authorization", f"Bearer {ADMIN_KEY}"),),
        (("authorization", "Basic " + base64.b64encode(f"someone:{ADMIN_KEY}".encode()).decode()),),
        (("authorization", f"Basic {ADMIN_KEY}"),),
    ],
    ids=["x-api-key", "bearer", "basic-user-key", "basic-raw-key"],
)
async def test_credential_forms(stub: Any, stubs: Stubs, metadata: tuple[tuple[str, str], ...]) -> None:
    await stub.CreateRoom(stubs.pb2.CreateRoomRequest(room=stubs.pb2.Room(room_id="r")), metadata=metadata)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), "missing credentials"),
        ((("x-api-key", "wrong"),), "invalid credentials"),
        ((("authorization", "Bearer wrong"),), "invalid credentials"),
        ((("authorization", "Digest abc"),), "unsupported Authorization scheme"),
    ],
    ids=["missing", "wrong-key", "wrong-bearer", "bad-scheme"],
)
async def test_unauthenticated(
    stub: Any, stubs: Stubs, metadata: tuple[tuple[str, str], ...], expected: str
) -> None:
    code, message = await status_of(stub.GetRoom(stubs.pb2.GetRoomRequest(room_id="r"), metadata=metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert message.startswith(expected)


async def test_reader_may_read_but_not_write(stub: Any, stubs: Stubs) -> None:
    pb = stubs.pb2
    await stub.SetVariable(pb.SetVariableRequest(room_id="r", name="v", value=value(1)), metadata=ADMIN)
    assert (
        await stub.GetVariable(pb.GetVariableRequest(room_id="r", name="v"), metadata=READER)
    ).version == 1
    code, message = await status_of(
        stub.SetVariable(pb.SetVariableRequest(room_id="r", name="v", value=value(2)), metadata=READER)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "variables:write" in message


# -- streams -------------------------------------------------------------------------------------------


async def test_listen_variable_current_value_then_changes(
    stub: Any, stubs: Stubs, backend: MemoryBackend
) -> None:
    pb = stubs.pb2
    await stub.SetVariable(pb.SetVariableRequest(room_id="r", name="v", value=value("a")), metadata=ADMIN)
    call = stub.ListenVariable(pb.ListenVariableRequest(room_id="r", name="v"), metadata=ADMIN)
    first = await call.read()
    assert (first.version, first.value.string_value) == (1, "a")
    await stub.SetVariable(pb.SetVariableRequest(room_id="r", name="v", value=value("b")), metadata=ADMIN)
    await stub.DeleteVariable(pb.DeleteVariableRequest(room_id="r", name="v"), metadata=ADMIN)
    await stub.SetVariable(pb.SetVariableRequest(room_id="r", name="v", value=value("c")), metadata=ADMIN)
    changes = [await call.read() for _ in range(3)]
    assert [c.version for c in changes] == [2, 3, 4]
    assert changes[0].value.string_value == "b"
    assert not changes[1].HasField("value")  # the deletion: no value
    assert changes[2].value.string_value == "c"
    call.cancel()
    await eventually(lambda: len(backend.hub) == 0)


async def test_listen_ends_with_not_found_when_the_room_is_deleted(
    stub: Any, stubs: Stubs, backend: MemoryBackend
) -> None:
    pb = stubs.pb2
    await stub.CreateRoom(pb.CreateRoomRequest(room=pb.Room(room_id="r")), metadata=ADMIN)
    call = stub.ListenEvents(pb.ListenEventsRequest(room_id="r", name="e"), metadata=ADMIN)
    await eventually(lambda: len(backend.hub) == 1)
    await stub.PublishEvent(pb.PublishEventRequest(room_id="r", name="e", data=value(1)), metadata=ADMIN)
    assert (await call.read()).data.number_value == 1
    await stub.CloseRoom(pb.CloseRoomRequest(room_id="r"), metadata=ADMIN)
    await stub.DeleteRoom(pb.DeleteRoomRequest(room_id="r"), metadata=ADMIN)
    code, message = await status_of(call.read())
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "room 'r' was deleted")
    await eventually(lambda: len(backend.hub) == 0)


async def test_listen_ends_with_unavailable_on_invalidation(
    stub: Any, stubs: Stubs, backend: MemoryBackend
) -> None:
    pb = stubs.pb2
    call = stub.ListenVariable(pb.ListenVariableRequest(room_id="r", name="v"), metadata=ADMIN)
    await eventually(lambda: len(backend.hub) == 1)
    await stub.InvalidateConnections(pb.InvalidateConnectionsRequest(), metadata=ADMIN)
    code, _ = await status_of(call.read())
    assert code == grpc.StatusCode.UNAVAILABLE
    await eventually(lambda: len(backend.hub) == 0)


async def test_client_cancel_leaves_no_subscription(stub: Any, stubs: Stubs, backend: MemoryBackend) -> None:
    pb = stubs.pb2
    calls = [
        stub.ListenEvents(pb.ListenEventsRequest(room_id="r", name=f"e{i}"), metadata=ADMIN) for i in range(3)
    ]
    await eventually(lambda: len(backend.hub) == 3)
    for call in calls:
        call.cancel()
    await eventually(lambda: len(backend.hub) == 0)


async def test_listen_errors_before_the_first_message(
    stub: Any, stubs: Stubs, backend: MemoryBackend
) -> None:
    pb = stubs.pb2
    await stub.CreateRoom(pb.CreateRoomRequest(room=pb.Room(room_id="r")), metadata=ADMIN)
    await stub.CloseRoom(pb.CloseRoomRequest(room_id="r"), metadata=ADMIN)
    call = stub.ListenEvents(pb.ListenEventsRequest(room_id="r", name="e"), metadata=ADMIN)
    code, _ = await status_of(call.read())
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(backend.hub) == 0


async def test_listen_needs_the_permission(stub: Any, stubs: Stubs) -> None:
    call = stub.ListenEvents(stubs.pb2.ListenEventsRequest(room_id="r", name="e"))
    code, _ = await status_of(call.read())
    assert code == grpc.StatusCode.UNAUTHENTICATED


# -- health and reflection -----------------------------------------------------------------------------


async def test_health_needs_no_credentials(loopback: Loopback, readiness: Readiness) -> None:
    async with Channel("127.0.0.1", loopback.port) as chan:
        health = HealthStub(chan)
        for service in ("", "roomgateway.v1.RoomService"):
            response = await health.Check(HealthCheckRequest(service=service))
            assert response.status == HealthCheckResponse.SERVING


async def test_health_not_serving_when_not_ready(
    loopback: Loopback, readiness: Readiness, caplog: pytest.LogCaptureFixture
) -> None:
    readiness.failing = True
    async with Channel("127.0.0.1", loopback.port) as chan:
        response = await HealthStub(chan).Check(HealthCheckRequest(service=""))
    assert response.status == HealthCheckResponse.NOT_SERVING
    assert "backend unreachable" in caplog.text


async def test_reflection_lists_services_for_an_authenticated_caller(loopback: Loopback) -> None:
    async with Channel("127.0.0.1", loopback.port) as chan:
        reflection = ServerReflectionStub(chan)
        async with reflection.ServerReflectionInfo.open(metadata=dict(ADMIN)) as call:
            await call.send_message(ServerReflectionRequest(list_services=""), end=True)
            response = await call.recv_message()
            assert response is not None
            names = {s.name for s in response.list_services_response.service}
            assert {"roomgateway.v1.RoomService", "grpc.health.v1.Health"} <= names

        async with reflection.ServerReflectionInfo.open(metadata=dict(ADMIN)) as call:
            await call.send_message(
                ServerReflectionRequest(file_containing_symbol="roomgateway.v1.RoomService"), end=True
            )
            response = await call.recv_message()
            assert response is not None
            assert response.file_descriptor_response.file_descriptor_proto

        with pytest.raises(GRPCError) as info:
            async with reflection.ServerReflectionInfo.open() as call:
                await call.send_message(ServerReflectionRequest(list_services=""), end=True)
                await call.recv_message()
        assert info.value.status.name == "UNAUTHENTICATED"
