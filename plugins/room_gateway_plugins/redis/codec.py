"""Rooms and variables as the JSON strings stored in Redis.

A room is one JSON object of its fields (:mod:`gateway.core.jsontext`, so values read back exactly; times
by :mod:`gateway.core.times`). A variable's record is the notification of its last write
(:mod:`gateway.core.wire`): the write script stores and publishes the same bytes, so it encodes nothing
itself, and a deleted variable simply has no record. Events and signals are wire messages only.
"""

from __future__ import annotations

from typing import Any

from gateway.core import jsontext, times, wire
from gateway.core.models import JSON, Room, RoomStatus, Variable


def dumps_room(room: Room) -> bytes:
    return jsontext.dumps(
        {
            "room_id": room.room_id,
            "display_name": room.display_name,
            "description": room.description,
            "status": room.status.value,
            "jurisdiction": room.jurisdiction,
            "settings": room.settings,
            "create_time": times.to_text(room.create_time),
            "update_time": times.to_text(room.update_time),
        }
    )


def loads_room(data: bytes | str) -> Room:
    fields: dict[str, Any] = jsontext.loads(data)
    return Room(
        room_id=fields["room_id"],
        display_name=fields["display_name"],
        description=fields["description"],
        status=RoomStatus(fields["status"]),
        jurisdiction=fields["jurisdiction"],
        settings=fields["settings"],
        create_time=times.from_text(fields["create_time"]),
        update_time=times.from_text(fields["update_time"]),
    )


def loads_variable(record: bytes | str) -> Variable:
    """The variable of a stored record."""
    note = wire.decode(record).note
    if not isinstance(note, Variable):
        raise ValueError(f"a variable's record holds a {type(note).__name__}")
    return note


def loads_value(record: bytes | str) -> JSON:
    """Only the value of a stored record (cheaper than :func:`loads_variable`, for whole rooms)."""
    fields: dict[str, Any] = jsontext.loads(record)
    return fields["value"]  # type: ignore[no-any-return]  # a stored record is a set variable's
