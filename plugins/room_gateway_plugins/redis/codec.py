"""Rooms, variables, events and signals as the JSON bytes stored in Redis and published on its channels.

orjson writes and reads every JSON value as the gateway holds it: ``null`` stays ``None``, ``1`` an int and
``1.0`` a float, strings as UTF-8. A deleted variable's record has no ``value`` member, which keeps "unset"
apart from ``null``. Times are ISO-8601 in UTC with microseconds (``2026-01-02T03:04:05.000000+00:00``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.core.models import JSON, UNSET, Event, Room, RoomSignal, RoomStatus, SignalKind, Unset, Variable


def format_time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # the gateway's clocks are UTC; a naive time is read as one
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def dumps_room(room: Room) -> bytes:
    return orjson.dumps(
        {
            "room_id": room.room_id,
            "display_name": room.display_name,
            "description": room.description,
            "status": room.status.value,
            "jurisdiction": room.jurisdiction,
            "settings": room.settings,
            "create_time": format_time(room.create_time),
            "update_time": format_time(room.update_time),
        }
    )


def loads_room(data: bytes | str) -> Room:
    fields: dict[str, Any] = orjson.loads(data)
    return Room(
        room_id=fields["room_id"],
        display_name=fields["display_name"],
        description=fields["description"],
        status=RoomStatus(fields["status"]),
        jurisdiction=fields["jurisdiction"],
        settings=fields["settings"],
        create_time=parse_time(fields["create_time"]),
        update_time=parse_time(fields["update_time"]),
    )


def variable_tail(value: JSON | Unset, now: datetime) -> bytes:
    """A variable record without its version: ``"update_time":…,"value":…}``.

    The write script prepends ``{"version":N,`` once it knows N, so Lua never parses (nor re-encodes) the
    value: Redis' cjson would turn integers into doubles and empty objects into arrays.
    """
    fields: dict[str, Any] = {"update_time": format_time(now)}
    if not isinstance(value, Unset):
        fields["value"] = value
    return orjson.dumps(fields)[1:]


def loads_variable(name: str, record: bytes | str) -> Variable:
    fields: dict[str, Any] = orjson.loads(record)
    return Variable(
        name=name,
        value=fields.get("value", UNSET),
        version=fields["version"],
        update_time=parse_time(fields["update_time"]),
    )


def loads_value(record: bytes | str) -> JSON:
    """The value of a stored record (only a set variable has one in Redis)."""
    fields: dict[str, Any] = orjson.loads(record)
    return fields["value"]  # type: ignore[no-any-return]


def dumps_event(event: Event) -> bytes:
    return orjson.dumps({"name": event.name, "data": event.data, "time": format_time(event.time)})


def loads_event(data: bytes | str) -> Event:
    fields: dict[str, Any] = orjson.loads(data)
    return Event(name=fields["name"], data=fields["data"], time=parse_time(fields["time"]))


def dumps_signal(signal: RoomSignal) -> bytes:
    return orjson.dumps(
        {"room_id": signal.room_id, "kind": signal.kind.value, "time": format_time(signal.time)}
    )


def loads_signal(data: bytes | str) -> RoomSignal:
    fields: dict[str, Any] = orjson.loads(data)
    time = parse_time(fields["time"])
    if time is None:
        raise ValueError("a room signal needs a time")
    return RoomSignal(room_id=fields["room_id"], kind=SignalKind(fields["kind"]), time=time)
