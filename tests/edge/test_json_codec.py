"""The descriptor-driven proto3 JSON codec, message by message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import schema
from gateway.core.models import UNSET, Room, RoomStatus, Variable
from gateway.edge.json_codec import Codecs, format_timestamp, parse_field_mask, parse_timestamp
from gateway.errors import InvalidArgument


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
