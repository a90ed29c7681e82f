"""The generic conversions between betterproto2 messages and RoomService arguments and results."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import betterproto2
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from gateway._gen.google.protobuf import Empty, FieldMask, Struct, Value
from gateway._gen.roomgateway.v1 import (
    ListRoomsRequest,
    ListRoomsResponse,
    Room,
    RoomStatus,
    SetVariableRequest,
    UpdateRoomRequest,
    Variable,
)
from gateway.core import models
from gateway.dispatch import native_methods
from gateway.rpc import codec
from gateway.schema.fields import UnsupportedField

METHODS = native_methods()
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def kwargs(method: str, message: betterproto2.Message) -> dict[str, Any]:
    return codec.to_kwargs(message, METHODS[method].input)


def test_absent_fields_are_not_passed() -> None:
    assert kwargs("SetVariable", SetVariableRequest(room_id="r", name="v")) == {"room_id": "r", "name": "v"}
    assert kwargs("UpdateRoom", UpdateRoomRequest()) == {}


def test_present_fields() -> None:
    request = SetVariableRequest(
        room_id="r", name="v", value=Value.from_dict({"n": 3, "x": 0.5}), expected_version=0
    )
    assert kwargs("SetVariable", request) == {
        "room_id": "r",
        "name": "v",
        "value": {"n": 3, "x": 0.5},
        "expected_version": 0,
    }
    assert isinstance(kwargs("SetVariable", request)["value"]["n"], int)
    assert kwargs("SetVariable", SetVariableRequest(value=Value.from_dict(None)))["value"] is None


def test_nested_message_mask_and_repeated() -> None:
    request = UpdateRoomRequest(
        room=Room(room_id="r", settings=Struct.from_dict({"size": 2})),
        update_mask=FieldMask(paths=["settings"]),
    )
    assert kwargs("UpdateRoom", request) == {
        "room": {
            "room_id": "r",
            "display_name": "",
            "description": "",
            "status": "STATUS_UNSPECIFIED",
            "jurisdiction": "",
            "settings": {"size": 2},
            "num_users": 0,
        },
        "update_mask": ["settings"],
    }
    assert kwargs("ListRooms", ListRoomsRequest(room_id=["a", "b"]))["room_id"] == ["a", "b"]


def test_results_to_messages() -> None:
    room = models.Room("r", status=models.RoomStatus.CLOSED, settings={"a": [1]}, create_time=T0)
    response = codec.to_message(models.ListRoomsResponse([room], 1, False), METHODS["ListRooms"].output)
    assert isinstance(response, ListRoomsResponse)
    [message] = response.results
    assert message.status is RoomStatus.CLOSED
    assert message.settings is not None and message.settings.to_dict() == {"a": [1]}
    assert (message.create_time, message.update_time) == (T0, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, Value.from_dict(None)), ({"k": "v"}, Value.from_dict({"k": "v"})), (models.UNSET, None)],
    ids=["json-null", "object", "deleted"],
)
def test_variable_values(value: Any, expected: Value | None) -> None:
    message = codec.to_message(models.Variable("v", value, 3, T0), METHODS["GetVariable"].output)
    assert isinstance(message, Variable)
    assert message.value == expected
    assert message.version == 3


def test_none_is_empty() -> None:
    assert isinstance(codec.to_message(None, METHODS["DeleteVariable"].output), Empty)


def test_a_map_is_refused_clearly() -> None:
    """No served proto has a map yet: the codec names the field rather than convert it as a list."""
    f = descriptor_pb2.FieldDescriptorProto
    entry = descriptor_pb2.DescriptorProto(
        name="LabelsEntry",
        field=[
            f(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL),
            f(name="value", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL),
        ],
        options=descriptor_pb2.MessageOptions(map_entry=True),
    )
    labels = f(
        name="labels",
        number=1,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_REPEATED,
        type_name=".synthetic.Thing.LabelsEntry",
    )
    file = descriptor_pb2.FileDescriptorProto(name="synthetic.proto", package="synthetic", syntax="proto3")
    file.message_type.add(name="Thing", field=[labels], nested_type=[entry])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    with pytest.raises(UnsupportedField, match=r"synthetic\.Thing\.labels: a map"):
        codec.to_kwargs(Empty(), pool.FindMessageTypeByName("synthetic.Thing"))
