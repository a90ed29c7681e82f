"""Changes as bytes: the one format of PostgreSQL NOTIFY payloads, Redis pub/sub messages and stored log
entries, for any backend that sends notifications through a broker or keeps its log as JSON text.

A message is one JSON object (:mod:`gateway.core.jsontext`, UTF-8) that names what it is about, so it
decodes alone, whatever channel it came on (PostgreSQL's channel names are hashes). It is either a
:class:`~gateway.core.models.Change` of a room, or the every-room signal (InvalidateConnections without a
room, which no room's log records)::

    {"type":"change","room_id":"r","kind":"VARIABLE_SET","time":"2026-…",
     "variable":{"name":"x","update_time":"2026-…","value":1},"epoch":"e1","version":3,"seq":7}
    {"type":"change","room_id":"r","kind":"EVENT","time":"…","event":{"name":"e","data":{},"time":"…"},
     "epoch":"e1","seq":8}
    {"type":"signal","room_id":"","kind":"invalidated","time":"…"}

* The change's payload — ``variable``, ``event``, ``room`` or ``member``, as ``kind`` says — is a nested
  object with the message's fields by their proto names; the others are absent. A deleted variable's
  object has no ``value`` member (JSON ``null`` is a value).
* What a store assigns inside its atomic write comes last, in this order: ``epoch``, a variable's
  ``version`` (at the top level, not in the ``variable`` object), ``seq``. A store that assigns them in a
  script (the Redis backend's Lua) sends :func:`head` and completes it with :func:`tail_format` filled in
  (``string.format`` in Lua, ``%`` on bytes in Python): it never decodes nor re-encodes the value — Redis'
  cjson would turn integers into doubles and empty objects into arrays.
* :func:`change_bytes` / :func:`change_of` are the same object without ``type`` and ``room_id``: what a
  backend may store as a log entry's payload.
* Times are :func:`gateway.core.times.to_text`.
* Size is the transport's business: PostgreSQL's payloads must stay under 8000 bytes (its backend sends a
  larger message by reference, :mod:`room_gateway_plugins.sql.postgresql`); Redis has no practical limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from gateway.core import jsontext, times
from gateway.core.hub import LocalHub
from gateway.core.models import (
    UNSET,
    Change,
    ChangeKind,
    Event,
    Member,
    Notification,
    Room,
    RoomSignal,
    RoomStatus,
    SignalKind,
    Unset,
    Variable,
)

#: The fields a store may assign inside its atomic write, in the order they end a message.
ASSIGNED = ("epoch", "version", "seq")
_FORMATS = {"epoch": '"epoch":"%s"', "version": '"version":%d', "seq": '"seq":%d'}


class Message(NamedTuple):
    """A notification and the room it belongs to (``""`` with the every-room signal)."""

    room_id: str
    note: Notification

    def deliver(self, hub: LocalHub) -> None:
        """Queue the notification for its subscribers on this process."""
        if isinstance(self.note, RoomSignal):
            hub.deliver_signal(self.note)
        else:
            hub.deliver(self.room_id, self.note)


# -- encoding -----------------------------------------------------------------------------------------------


def room_fields(room: Room) -> dict[str, Any]:
    """A room's stored fields by proto name, as JSON values (times as text): the ``room`` of a message, and
    what a store may keep as a room's record (:func:`room_of` reads it back)."""
    return {
        "room_id": room.room_id,
        "display_name": room.display_name,
        "description": room.description,
        "status": room.status.value,
        "jurisdiction": room.jurisdiction,
        "settings": room.settings,
        "create_time": times.to_text(room.create_time),
        "update_time": times.to_text(room.update_time),
    }


def _fields(change: Change) -> dict[str, Any]:
    """The change as one dict in message order (without ``type`` and ``room_id``)."""
    fields: dict[str, Any] = {"kind": change.kind.value, "time": times.to_text(change.time)}
    if change.variable is not None:
        variable: dict[str, Any] = {
            "name": change.variable.name,
            "update_time": times.to_text(change.variable.update_time),
        }
        if not isinstance(change.variable.value, Unset):
            variable["value"] = change.variable.value
        fields["variable"] = variable
    if change.event is not None:
        event = change.event
        fields["event"] = {"name": event.name, "data": event.data, "time": times.to_text(event.time)}
    if change.room is not None:
        fields["room"] = room_fields(change.room)
    if change.member is not None:
        member = change.member
        fields["member"] = {
            "user_id": member.user_id,
            "connections": member.connections,
            "info": member.info,
            "join_time": times.to_text(member.join_time),
        }
    fields["epoch"] = change.epoch
    if change.variable is not None:
        fields["version"] = change.variable.version
    fields["seq"] = change.seq
    return fields


def change_bytes(change: Change) -> bytes:
    """The JSON text of a change alone (a stored log entry): :func:`change_of` reads it back."""
    return jsontext.dumps(_fields(change))


def encode(message: Message) -> bytes:
    """The bytes of ``message``."""
    room_id, note = message
    if isinstance(note, RoomSignal):
        signal = {"type": "signal", "room_id": note.room_id, "kind": note.kind.value}
        return jsontext.dumps({**signal, "time": times.to_text(note.time)})
    return jsontext.dumps({"type": "change", "room_id": room_id, **_fields(note)})


def head(room_id: str, change: Change, assigned: Sequence[str] = ("seq",)) -> bytes:
    """A change's message without the ``assigned`` fields, which the store appends: ``{…,``.

    Append :func:`tail_format` of the same ``assigned``, filled in, to make :func:`encode`'s bytes (the
    values of ``change`` for those fields are ignored).

    :param assigned: a suffix of :data:`ASSIGNED` (``version`` only for a variable's change).
    :raises ValueError: ``assigned`` is not such a suffix.
    """
    fields = {"type": "change", "room_id": room_id, **_fields(change)}
    trailing = [name for name in ASSIGNED if name in fields]
    if list(assigned) != trailing[len(trailing) - len(assigned) :] or not assigned:
        raise ValueError(f"assigned fields must end {trailing}, not {list(assigned)}")
    for name in assigned:
        del fields[name]
    return jsontext.dumps(fields)[:-1] + b","


def tail_format(assigned: Sequence[str] = ("seq",)) -> str:
    """The printf-style end of a :func:`head`: ``"seq":%d}``, ``"version":%d,"seq":%d}``, … (an epoch is
    ``%s`` inside quotes: it must need no JSON escaping, as the built-in backends' epochs do not)."""
    return ",".join(_FORMATS[name] for name in assigned) + "}"


# -- decoding -----------------------------------------------------------------------------------------------


def room_of(fields: dict[str, Any]) -> Room:
    """The room of :func:`room_fields`' dict.

    :raises KeyError: a field is missing.
    """
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


def _change_of(fields: dict[str, Any]) -> Change:
    variable = event = room = member = None
    if (v := fields.get("variable")) is not None:
        value = v.get("value", UNSET)
        variable = Variable(v["name"], value, fields["version"], times.from_text(v["update_time"]))
    if (e := fields.get("event")) is not None:
        event = Event(e["name"], e["data"], times.from_text(e["time"]))
    if (r := fields.get("room")) is not None:
        room = room_of(r)
    if (m := fields.get("member")) is not None:
        join_time = times.from_text(m["join_time"])
        member = Member(m["user_id"], m["connections"], m["info"], join_time)
    return Change(
        seq=fields["seq"],
        epoch=fields["epoch"],
        kind=ChangeKind(fields["kind"]),
        time=times.from_text(fields["time"]),
        variable=variable,
        event=event,
        room=room,
        member=member,
    )


def change_of(data: bytes | str) -> Change:
    """The change of :func:`change_bytes`' text.

    :raises ValueError: not such a change.
    """
    try:
        return _change_of(jsontext.loads(data))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a change ({type(exc).__name__}: {exc})") from exc


def decode(data: bytes | str) -> Message:
    """The message of bytes made by :func:`encode` (or by completing a :func:`head`).

    :raises ValueError: not such a message.
    """
    fields: dict[str, Any] = jsontext.loads(data)
    try:
        kind, room_id = fields["type"], fields["room_id"]
        if kind == "change":
            return Message(room_id, _change_of(fields))
        if kind == "signal":
            if fields["time"] is None:
                raise ValueError("not a notification (a room signal without its time)")
            signal = RoomSignal(room_id, SignalKind(fields["kind"]), times.from_text(fields["time"]))
            return Message(room_id, signal)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a notification ({type(exc).__name__}: {exc})") from exc
    raise ValueError(f"not a notification (type {kind!r})")
