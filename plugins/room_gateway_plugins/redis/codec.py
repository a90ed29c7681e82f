"""Rooms, variables, log entries and members as the strings stored in Redis.

A room is one JSON object of its fields (:mod:`gateway.core.jsontext`, so values read back exactly; times
by :mod:`gateway.core.times`). A variable's record is the Change of its last write as a wire message
(:mod:`gateway.core.wire`): the write script stores, logs and publishes the same bytes, so it encodes
nothing itself, and a deleted variable simply has no record. A log entry is that message behind a fixed
15-byte prefix (:func:`entry_prefix`) that Lua reads without decoding JSON.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from gateway.core import jsontext, times, wire
from gateway.core.models import JSON, Change, ChangeKind, Member, Room, Variable

#: Each kind's two-digit code in a log entry's prefix (append-only: stored entries keep their codes).
KIND_CODES: dict[ChangeKind, str] = {kind: f"{number:02d}" for number, kind in enumerate(ChangeKind)}
#: The length of a log entry's prefix: 13 digits of milliseconds, then the kind's code.
PREFIX_LENGTH = 15


def dumps_room(room: Room) -> bytes:
    return jsontext.dumps(wire.room_fields(room))


def loads_room(data: bytes | str) -> Room:
    return wire.room_of(jsontext.loads(data))


def loads_variable(record: bytes | str) -> Variable:
    """The variable of a stored record."""
    variable = wire.change_of(record).variable
    if variable is None:
        raise ValueError("a variable's record holds no variable")
    return variable


def loads_value(record: bytes | str) -> JSON:
    """Only the value of a stored record (cheaper than :func:`loads_variable`, for whole rooms)."""
    fields: dict[str, Any] = jsontext.loads(record)
    return fields["variable"]["value"]  # type: ignore[no-any-return]  # a stored record is a set variable's


def milliseconds(moment: datetime | None) -> int:
    """Milliseconds since 1970 of ``moment`` (now when ``None``)."""
    return int(time.time() * 1000) if moment is None else int(times.utc(moment).timestamp() * 1000)


def from_milliseconds(ms: int) -> datetime:
    """The UTC time ``ms`` milliseconds after 1970 (the inverse of :func:`milliseconds`)."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def entry_prefix(change: Change) -> str:
    """What starts a change's log entry: its time (13-digit ms, sorting as text) and its kind's code."""
    return f"{milliseconds(change.time):013d}{KIND_CODES[change.kind]}"


def loads_entry(entry: bytes) -> Change:
    """The change of a log entry."""
    return wire.change_of(entry[PREFIX_LENGTH:])


def dumps_member(member: Member) -> bytes:
    """A present user's stored fields (the connection count lives apart, per instance)."""
    return jsontext.dumps({"info": member.info, "join_time": times.to_text(member.join_time)})


def loads_member(user_id: str, connections: int, data: bytes | str | None) -> Member:
    """The member of its stored fields (``None``: not stored, as for a member being swept)."""
    fields: dict[str, Any] = jsontext.loads(data) if data is not None else {"info": {}, "join_time": None}
    return Member(user_id, connections, fields["info"], times.from_text(fields["join_time"]))
