"""What backends keep and send: times, exact JSON text, and the one notification wire format."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.core import jsontext, times, wire
from gateway.core.hub import LocalHub, Topic
from gateway.core.models import (
    UNSET,
    Change,
    ChangeKind,
    Event,
    Member,
    Room,
    RoomSignal,
    RoomStatus,
    SignalKind,
    Variable,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
PARIS = timezone(timedelta(hours=1))

# -- times --------------------------------------------------------------------------------------------------


def test_times_are_utc_and_naive_ones_are_refused() -> None:
    assert times.utc(T0) is T0
    converted = times.utc(T0.astimezone(PARIS))
    assert converted == T0 and converted.tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        times.utc(T0.replace(tzinfo=None))
    # Read back from a store that dropped the zone: it was UTC.
    assert times.assume_utc(T0.replace(tzinfo=None)) == T0
    assert times.assume_utc(T0.astimezone(PARIS)).tzinfo is UTC


@pytest.mark.parametrize(
    "moment",
    [
        T0,
        T0.replace(microsecond=0),
        T0.astimezone(PARIS),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ],
)
def test_time_text_round_trips_in_fixed_width(moment: datetime) -> None:
    text = times.to_text(moment)
    assert text.endswith("+00:00") and len(text) == len("2026-01-02T03:04:05.123456+00:00")
    back = times.from_text(text)
    assert back == moment and back.tzinfo is UTC
    assert times.to_text(None) is None and times.from_text(None) is None


def test_time_text_sorts_in_time_order() -> None:
    moments = [T0 + timedelta(microseconds=n * 999_999) for n in range(-50, 50)]
    assert sorted(moments, key=times.to_text) == moments


# -- JSON text ----------------------------------------------------------------------------------------------

EXACT_VALUES = [
    None,
    True,
    0,
    1,
    1.0,
    -0.5,
    "",
    "é☃\U0001f600\u2028",
    [],
    {},
    {"b": 1, "a": [1.0, {"z": None}]},  # key order kept
    2**63 - 1,
    -(2**63),
    2**64,  # beyond orjson: the standard library's path
    {"big": -(2**100), "f": 1.0},
]


@pytest.mark.parametrize("value", EXACT_VALUES, ids=repr)
def test_json_text_round_trips_exactly(value: object) -> None:
    data = jsontext.dumps(value)
    for text in (data, data.decode()):
        back = jsontext.loads(text)
        assert back == value
        assert json.dumps(back) == json.dumps(value)  # 1.0 stays a float, key order stays
    assert json.loads(data) == value  # plain JSON for any other reader


def test_json_text_writes_non_finite_floats_as_null() -> None:
    assert jsontext.loads(jsontext.dumps([float("nan"), float("inf")])) == [None, None]


# -- the wire format ----------------------------------------------------------------------------------------

ROOM = Room("room", display_name="R", settings={"a": [1, 2.5]}, create_time=T0, update_time=T0)
CHANGES = [
    Change(7, "e1", ChangeKind.VARIABLE_SET, T0, variable=Variable("x", {"a": [1, 2.5, None]}, 3, T0)),
    Change(8, "e1", ChangeKind.VARIABLE_SET, T0, variable=Variable("x", None, 4, T0)),  # null is a value
    Change(9, "e1", ChangeKind.VARIABLE_DELETED, T0, variable=Variable("x", UNSET, 5, T0)),
    Change(2**40, "e1", ChangeKind.VARIABLE_SET, T0, variable=Variable("n\n☃", 2**70, 2**40, T0)),
    Change(3, "e1", ChangeKind.EVENT, T0, event=Event("e", {"hello": "world"}, T0)),
    Change(0, "e1", ChangeKind.EVENT, None, event=Event("e", None, None)),  # live only
    Change(1, "e1", ChangeKind.ROOM_CREATED, T0, room=ROOM),
    Change(4, "e1", ChangeKind.ROOM_DELETED, T0, room=Room("room", status=RoomStatus.DELETED)),
    Change(5, "e1", ChangeKind.CONNECTIONS_INVALIDATED, T0),
    Change(6, "e1", ChangeKind.MEMBER_JOINED, T0, member=Member("ann", 2, {"nick": "A"}, T0)),
]
MESSAGES = [
    *(wire.Message("room", change) for change in CHANGES),
    wire.Message('r\0"', CHANGES[0]),
    wire.Message("", RoomSignal("", SignalKind.INVALIDATED, T0)),  # every room
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: getattr(m.note, "kind", "signal").__str__())
def test_messages_round_trip(message: wire.Message) -> None:
    data = wire.encode(message)
    assert wire.decode(data) == message
    assert wire.decode(data.decode()) == message  # as PostgreSQL hands a payload over: text


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.kind.value)
def test_a_change_alone_round_trips(change: Change) -> None:
    assert wire.change_of(wire.change_bytes(change)) == change
    assert wire.change_of(wire.change_bytes(change).decode()) == change


def test_a_message_is_one_self_describing_json_object() -> None:
    data = wire.encode(MESSAGES[0])
    assert json.loads(data) == {
        "type": "change",
        "room_id": "room",
        "kind": "VARIABLE_SET",
        "time": "2026-01-02T03:04:05.123456+00:00",
        "variable": {
            "name": "x",
            "update_time": "2026-01-02T03:04:05.123456+00:00",
            "value": {"a": [1, 2.5, None]},
        },
        "epoch": "e1",
        "version": 3,
        "seq": 7,
    }
    assert "value" not in json.loads(wire.encode(MESSAGES[2]))["variable"]
    assert json.loads(wire.encode(MESSAGES[-1])) == {
        "type": "signal",
        "room_id": "",
        "kind": "invalidated",
        "time": "2026-01-02T03:04:05.123456+00:00",
    }


@pytest.mark.parametrize(
    ("change", "assigned", "values"),
    [
        (CHANGES[0], ("version", "seq"), (3, 7)),
        (CHANGES[2], ("epoch", "version", "seq"), (b"e1", 5, 9)),
        (CHANGES[3], ("seq",), (2**40,)),
        (CHANGES[4], ("seq",), (3,)),
        (CHANGES[6], ("epoch", "seq"), (b"e1", 1)),
    ],
)
def test_a_head_completed_with_its_tail_is_the_message(
    change: Change, assigned: tuple[str, ...], values: tuple[object, ...]
) -> None:
    """What a store that assigns seq and versions itself (Redis' Lua script) sends is what encode() makes."""
    head = wire.head("room", change, assigned)
    tail = wire.tail_format(assigned).encode() % values
    assert head + tail == wire.encode(wire.Message("room", change))


def test_a_head_leaves_out_only_a_suffix_of_the_assigned_fields() -> None:
    with pytest.raises(ValueError):
        wire.head("room", CHANGES[4], ("version", "seq"))  # an event has no version
    with pytest.raises(ValueError):
        wire.head("room", CHANGES[0], ("epoch", "seq"))
    with pytest.raises(ValueError):
        wire.head("room", CHANGES[0], ())


def test_times_are_sent_in_utc() -> None:
    message = wire.Message("", RoomSignal("", SignalKind.INVALIDATED, T0.astimezone(PARIS)))
    decoded = wire.decode(wire.encode(message)).note
    assert isinstance(decoded, RoomSignal) and decoded.time == T0 and decoded.time.tzinfo is UTC
    change = Change(1, "e", ChangeKind.CONNECTIONS_INVALIDATED, T0.astimezone(PARIS))
    back = wire.decode(wire.encode(wire.Message("r", change))).note
    assert isinstance(back, Change) and back.time == T0 and back.time.tzinfo is UTC


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"gossip","room_id":"r"}',
        b'{"type":"change","room_id":"r"}',
        b'{"type":"change","room_id":"r","kind":"RENAMED","time":null,"epoch":"e","seq":1}',
        b'{"type":"change","room_id":"r","kind":"EVENT","time":null,"event":1,"epoch":"e","seq":1}',
        b'{"type":"signal","room_id":"r","kind":"deleted","time":null}',
        b'{"type":"signal","room_id":"r","kind":"renamed","time":"2026-01-02T03:04:05+00:00"}',
        b'{"room_id":"r"}',
    ],
)
def test_what_is_not_a_message_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        wire.decode(data)


def test_what_is_not_a_change_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        wire.change_of(b'{"kind":"EVENT"}')


async def test_a_message_delivers_itself_to_its_subscribers() -> None:
    hub = LocalHub()
    variables = hub.subscribe(Topic("variable", "room", "x"))
    room = hub.subscribe(Topic.room("room"))
    other = hub.subscribe(Topic("variable", "other", "x"))
    for message in (MESSAGES[0], MESSAGES[-1]):
        wire.decode(wire.encode(message)).deliver(hub)
    for sub in (variables, room):
        assert await asyncio.wait_for(sub.__anext__(), 1) == MESSAGES[0].note
        assert await asyncio.wait_for(sub.__anext__(), 1) == MESSAGES[-1].note
    assert await asyncio.wait_for(other.__anext__(), 1) == MESSAGES[-1].note  # the every-room signal
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other.__anext__(), 0.05)
