"""What backends keep and send: times, exact JSON text, and the one notification wire format."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.core import jsontext, times, wire
from gateway.core.hub import LocalHub, Topic
from gateway.core.models import UNSET, Event, RoomSignal, SignalKind, Variable

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

MESSAGES = [
    wire.Message(Topic("variable", "room", "x"), Variable("x", {"a": [1, 2.5, None]}, 3, T0)),
    wire.Message(Topic("variable", "room", "x"), Variable("x", None, 4, T0)),  # null is a value
    wire.Message(Topic("variable", "room", "x"), Variable("x", UNSET, 5, T0)),  # a deletion
    wire.Message(Topic("variable", 'r\0"', "n\n☃"), Variable("n\n☃", 2**70, 2**40, T0)),
    wire.Message(Topic("event", "room", "e"), Event("e", {"hello": "world"}, T0)),
    wire.Message(Topic("event", "room", "e"), Event("e", None, None)),
    wire.Message(None, RoomSignal("room", SignalKind.DELETED, T0)),
    wire.Message(None, RoomSignal("", SignalKind.INVALIDATED, T0)),  # every room
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{type(m.note).__name__}")
def test_messages_round_trip(message: wire.Message) -> None:
    data = wire.encode(message)
    assert wire.decode(data) == message
    assert wire.decode(data.decode()) == message  # as PostgreSQL hands a payload over: text


def test_a_message_is_one_self_describing_json_object() -> None:
    data = wire.encode(MESSAGES[0])
    assert json.loads(data) == {
        "type": "variable",
        "room_id": "room",
        "name": "x",
        "update_time": "2026-01-02T03:04:05.123456+00:00",
        "value": {"a": [1, 2.5, None]},
        "version": 3,
    }
    assert "value" not in json.loads(wire.encode(MESSAGES[2]))
    assert json.loads(wire.encode(MESSAGES[6])) == {
        "type": "signal",
        "room_id": "room",
        "kind": "deleted",
        "time": "2026-01-02T03:04:05.123456+00:00",
    }


@pytest.mark.parametrize("value", [1, UNSET, 2**70, "x" * 10_000])
def test_a_variable_head_completed_with_its_version_is_the_message(value: object) -> None:
    """What a store that assigns versions itself (Redis' Lua script) sends is what encode() makes."""
    variable = Variable("x", value, 12, T0)  # type: ignore[arg-type]
    head = wire.variable_head("room", "x", variable.value, T0)
    assert head + (wire.VERSION_TAIL % 12).encode() == wire.encode(
        wire.Message(Topic("variable", "room", "x"), variable)
    )


def test_times_are_sent_in_utc() -> None:
    message = wire.Message(None, RoomSignal("room", SignalKind.DELETED, T0.astimezone(PARIS)))
    decoded = wire.decode(wire.encode(message)).note
    assert isinstance(decoded, RoomSignal) and decoded.time == T0 and decoded.time.tzinfo is UTC


def test_a_variable_or_event_needs_its_topic() -> None:
    with pytest.raises(TypeError):
        wire.encode(wire.Message(None, Event("e", 1, T0)))


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"gossip","room_id":"r"}',
        b'{"type":"variable","room_id":"r"}',
        b'{"type":"signal","room_id":"r","kind":"deleted","time":null}',
        b'{"type":"signal","room_id":"r","kind":"renamed","time":"2026-01-02T03:04:05+00:00"}',
        b'{"room_id":"r"}',
    ],
)
def test_what_is_not_a_message_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        wire.decode(data)


async def test_a_message_delivers_itself_to_its_subscribers() -> None:
    hub = LocalHub()
    variables = hub.subscribe(Topic("variable", "room", "x"))
    other = hub.subscribe(Topic("variable", "other", "x"))
    for message in (MESSAGES[0], MESSAGES[6]):
        wire.decode(wire.encode(message)).deliver(hub)
    assert await asyncio.wait_for(variables.__anext__(), 1) == MESSAGES[0].note
    assert await asyncio.wait_for(variables.__anext__(), 1) == MESSAGES[6].note
    with pytest.raises(TimeoutError):  # neither its topic nor its room
        await asyncio.wait_for(other.__anext__(), 0.05)
