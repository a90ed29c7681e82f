"""The descriptor helpers: one loader, field paths, field behaviour read from the proto."""

from __future__ import annotations

import pytest
from google.api import field_behavior_pb2

from gateway import schema
from gateway.core import service
from gateway.edge.routing import raw_route_path, route_path
from gateway.rpc.server import reflection_pool

ROOM = "roomgateway.v1.Room"


def test_one_descriptor_set_feeds_the_schema_and_reflection() -> None:
    names = [file.name for file in schema.descriptor_set().file]
    assert "roomgateway/v1/rooms.proto" in names and "google/api/field_behavior.proto" in names
    assert schema.descriptor_set() is schema.descriptor_set()  # read once
    assert schema.pool() is schema.pool()
    assert schema.new_pool() is not schema.pool()
    for name in names:
        reflection_pool().FindFileByName(name)  # reflection answers for every file of the set
    reflection_pool().FindServiceByName("grpc.health.v1.Health")  # and health, added to it


def test_field_paths() -> None:
    request = schema.message("roomgateway.v1.UpdateRoomRequest")
    assert schema.field_at(request, ("room", "room_id")).full_name == "roomgateway.v1.Room.room_id"
    assert schema.json_path(request, ("room", "room_id")) == "room.roomId"
    assert schema.json_path(request, ("update_mask",)) == "updateMask"
    with pytest.raises(LookupError, match="has no field 'nope'"):
        schema.field_at(request, ("room", "nope"))
    with pytest.raises(LookupError, match=r"room\.room_id is not a message"):
        schema.field_at(request, ("room", "room_id", "x"))
    with pytest.raises(LookupError, match="empty"):
        schema.field_at(request, ())
    assert schema.snake_case("displayName") == "display_name"
    assert schema.camel_case("display_name") == "displayName"


def test_field_behavior_comes_from_the_proto() -> None:
    room = schema.message(ROOM)
    assert [f.name for f in room.fields if schema.is_output_only(f)] == [
        "status",
        "create_time",
        "update_time",
        "num_users",
    ]
    assert [f.name for f in room.fields if schema.is_required(f)] == ["room_id"]
    assert not schema.is_required(schema.message("roomgateway.v1.InvalidateConnectionsRequest").fields[0])
    assert schema.is_required(schema.message("roomgateway.v1.SetVariableRequest").fields_by_name["value"])


def test_the_service_ignores_on_update_what_the_proto_marks() -> None:
    """UpdateRoom accepts, and ignores, a mask naming an OUTPUT_ONLY or IMMUTABLE field (AIP-203)."""
    room = schema.message(ROOM)
    ignored = schema.ignored_on_update(room)
    assert ignored == {"room_id", "status", "create_time", "update_time", "num_users"}
    # Every Room field is either writable (with its rule) or ignored, never both, never neither.
    assert set(service._WRITABLE) | ignored == {f.name for f in room.fields}
    assert not set(service._WRITABLE) & ignored


def test_the_workadventure_proto_carries_no_field_behavior() -> None:
    """roomApi/room-api.proto stays as WorkAdventure ships it."""
    [file] = [f for f in schema.descriptor_set().file if f.name == "roomApi/room-api.proto"]
    for message in file.message_type:
        for field in message.field:
            assert not field.options.Extensions[field_behavior_pb2.field_behavior], field.name


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/v1/rooms", "", "/v1/rooms"),
        ("/api/v1/rooms", "/api", "/v1/rooms"),
        ("/api", "/api", ""),
        ("/apiv1/rooms", "/api", "/apiv1/rooms"),  # not below the mount point
        ("/other", "/api", "/other"),
    ],
)
def test_route_path_below_the_mount_point(path: str, root: str, expected: str) -> None:
    """As Starlette's router computes it (``starlette._utils.get_route_path``, which is private)."""
    scope = {"type": "http", "path": path, "root_path": root, "raw_path": path.encode() + b"?q=1"}
    assert route_path(scope) == expected
    assert raw_route_path(scope) == expected  # the raw path, below the same mount point
