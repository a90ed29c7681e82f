"""The descriptor-driven proto3 JSON codec, message by message."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, struct_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import schema
from gateway.core.models import UNSET, Room, RoomStatus, Variable
from gateway.edge.json_codec import Codecs, format_timestamp, parse_field_mask, parse_timestamp
from gateway.errors import InvalidArgument
from gateway.schema.fields import UnsupportedField


def codec(name: str):  # type: ignore[no-untyped-def]
    return Codecs().get(schema.pool().FindMessageTypeByName(f"roomgateway.v1.{name}"))


def test_decode_set_variable() -> None:
    c = codec("SetVariableRequest")
    assert c.decode({"roomId": "r", "name": "v", "value": {"a": [1]}, "expectedVersion": "7"}) == {
        "room_id": "r", "name": "v", "value": {"a": [1]}, "expected_version": 7,
    }  # fmt: skip
    assert c.decode({"value": None}) == {"value": None}  # JSON null inside a Value
    assert c.decode({"expectedVersion": None}) == {}  # null elsewhere: not set, no presence


def test_decode_nested_timestamp_mask_enum() -> None:
    c = codec("UpdateRoomRequest")
    decoded = c.decode(
        {
            "room": {"roomId": "r", "status": 2, "createTime": "2026-01-02T05:04:05.25+02:00"},
            "updateMask": "displayName,settings",
        }
    )
    assert decoded == {
        "room": {
            "room_id": "r",
            "status": "CLOSED",
            "create_time": datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC),
        },
        "update_mask": ["display_name", "settings"],
    }


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"maxResults": "1.5"}, "maxResults"),
        ({"maxResults": 1e20}, "maxResults"),
        ({"maxResults": float("nan")}, "maxResults"),
        ({"maxResults": True}, "maxResults"),
        ({"roomId": "a"}, "roomId"),
        ({"roomId": [1]}, "roomId[0]"),
        ({"startKey": 1}, "startKey"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_decode_errors_name_the_field(body: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words.replace("[", r"\[").replace("]", r"\]")):
        codec("ListRoomsRequest").decode(body)


def test_encode_matches_json_format() -> None:
    """Cross-check with google.protobuf.json_format on the same message (non-default values)."""
    room = Room(
        room_id="r",
        display_name="d",
        status=RoomStatus.CLOSED,
        settings={"a": [1, "x"]},
        create_time=datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
        update_time=datetime(2026, 1, 2, tzinfo=UTC),
    )
    ours = codec("Room").encode(room)
    message = GetMessageClass(schema.pool().FindMessageTypeByName("roomgateway.v1.Room"))()
    json_format.ParseDict(ours, message)
    assert json_format.MessageToDict(message, always_print_fields_with_no_presence=True) == ours


def test_encode_variable_deletion_has_no_value() -> None:
    c = codec("Variable")
    assert c.encode(Variable("v", UNSET, 3, None)) == {"name": "v", "version": "3"}
    assert c.encode(Variable("v", None, 2, None)) == {"name": "v", "value": None, "version": "2"}


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 1000, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 100, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 2, 23, 30, 0, 500000, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2026, 1, 2, 3, 4, 5, 250),  # naive: taken as UTC
    ],
)
def test_timestamps_are_written_as_json_format_writes_them(moment: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    assert format_timestamp(moment) == expected.ToJsonString()


def test_timestamps_in_turn_keep_their_own_seconds() -> None:
    # format_timestamp keeps the last second's text: moments within one second, across seconds, and a
    # zone whose local fields equal another moment's UTC fields each get their own.
    moments = [
        datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 6, 5000, tzinfo=timezone(timedelta(hours=1))),
        datetime(2026, 1, 2, 3, 4, 6, 5000, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 6),
        datetime(2027, 1, 2, 3, 4, 6, 7, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
    ]
    for moment in moments * 2:
        expected = Timestamp()
        expected.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        assert format_timestamp(moment) == expected.ToJsonString(), moment


def test_timestamps_and_masks() -> None:
    assert (
        format_timestamp(datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)) == "2026-01-02T03:04:05.123456Z"
    )
    assert format_timestamp(parse_timestamp("2026-01-02T03:04:05.1Z", "t")) == "2026-01-02T03:04:05.100Z"
    for bad in ["2026-01-02", "2026-13-02T00:00:00Z", "2026-01-02T00:00:00", 5]:
        with pytest.raises(InvalidArgument):
            parse_timestamp(bad, "t")
    assert parse_field_mask("", "m") == []
    with pytest.raises(InvalidArgument):
        parse_field_mask("a,,b", "m")


# -- the start-up guard: every field kind the served services use is one the codec serves ------------------


def test_the_native_service_is_served_whole() -> None:
    codecs = Codecs()  # compiles every message the native service reaches; raises if one is not served
    for method in schema.service().methods:
        assert codecs.get(method.input_type) is codecs.get(method.input_type)  # compiled once, then cached


def _synthetic_service(
    field: descriptor_pb2.FieldDescriptorProto,
    *,
    nested: Sequence[descriptor_pb2.DescriptorProto] = (),
    output: str = ".synthetic.Thing",
    syntax: str = "proto3",
) -> ServiceDescriptor:
    """``service Things { rpc Get(Thing) returns (<output>); }`` with ``field`` in ``message Thing``."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in (any_pb2, struct_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="synthetic.proto",
        package="synthetic",
        syntax=syntax,
        dependency=["google/protobuf/any.proto", "google/protobuf/struct.proto"],
    )
    file.message_type.add(name="Thing", field=[field], nested_type=list(nested))
    file.service.add(name="Things").method.add(name="Get", input_type=".synthetic.Thing", output_type=output)
    pool.Add(file)
    return pool.FindServiceByName("synthetic.Things")


_F = descriptor_pb2.FieldDescriptorProto
_ENTRY = descriptor_pb2.DescriptorProto(
    name="FlagsEntry",
    field=[
        _F(name="key", number=1, type=_F.TYPE_BOOL, label=_F.LABEL_OPTIONAL, json_name="key"),
        _F(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="value"),
    ],
    options=descriptor_pb2.MessageOptions(map_entry=True),
)


@pytest.mark.parametrize(
    ("service", "where", "kind"),
    [
        (
            _synthetic_service(
                _F(name="extra", number=1, type=_F.TYPE_MESSAGE, type_name=".google.protobuf.Any")
            ),
            "synthetic.Thing.extra",
            "google.protobuf.Any",
        ),
        (
            _synthetic_service(
                _F(name="nothing", number=1, type=_F.TYPE_ENUM, type_name=".google.protobuf.NullValue")
            ),
            "synthetic.Thing.nothing",
            "google.protobuf.NullValue",
        ),
        (
            _synthetic_service(
                _F(name="flags", number=1, type=_F.TYPE_MESSAGE, type_name=".synthetic.Thing.FlagsEntry",
                   label=_F.LABEL_REPEATED),
                nested=[_ENTRY],
            ),
            "synthetic.Thing.flags",
            "a map with bool keys",
        ),
        (
            _synthetic_service(
                _F(name="grp", number=1, type=_F.TYPE_GROUP, type_name=".synthetic.Thing.Grp",
                   label=_F.LABEL_OPTIONAL),
                nested=[descriptor_pb2.DescriptorProto(name="Grp")],
                syntax="proto2",
            ),
            "synthetic.Thing.grp",
            "group",
        ),
        (
            _synthetic_service(
                _F(name="name", number=1, type=_F.TYPE_STRING), output=".google.protobuf.Value"
            ),
            "synthetic.Things.Get",
            "google.protobuf.Value",
        ),
    ],
    ids=["any", "null-value-enum", "bool-map-keys", "group", "value-response"],
)  # fmt: skip
def test_the_guard_names_what_is_not_served(service: ServiceDescriptor, where: str, kind: str) -> None:
    with pytest.raises(UnsupportedField, match=re.escape(where)) as raised:
        Codecs([service])
    assert raised.value.where == where
    assert kind in raised.value.kind
    assert "REST JSON codec" in str(raised.value)


def test_the_guard_passes_a_synthetic_service_it_serves() -> None:
    service = _synthetic_service(
        _F(name="data", number=1, type=_F.TYPE_MESSAGE, type_name=".google.protobuf.Struct")
    )
    assert Codecs([service]).get(service.methods[0].input_type).decode({"data": {"a": 1}}) == {
        "data": {"a": 1}
    }
