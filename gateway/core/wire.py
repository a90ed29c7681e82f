"""Notifications as bytes between gateway processes: the one format of PostgreSQL NOTIFY payloads and Redis
pub/sub messages, for any backend that sends notifications through a broker.

A message is one JSON object (:mod:`gateway.core.jsontext`, UTF-8) that names what it is about, so it
decodes alone, whatever channel it came on (PostgreSQL's channel names are hashes)::

    {"type":"variable","room_id":"r","name":"x","update_time":"2026-…","value":1,"version":3}
    {"type":"event","room_id":"r","name":"e","time":"…","data":{"any":"JSON"}}
    {"type":"signal","room_id":"r","kind":"deleted","time":"…"}

* A deleted variable's message has no ``value`` member (JSON ``null`` is a value).
* A variable's ``version`` comes last. A store that assigns versions inside its atomic write (the Redis
  backend's Lua script) sends :func:`variable_head` and completes it with ``"version":N}``
  (:data:`VERSION_TAIL`): it never decodes nor re-encodes the value — Redis' cjson would turn integers into
  doubles and empty objects into arrays.
* Times are :func:`gateway.core.times.to_text`.
* Size is the transport's business: PostgreSQL's payloads must stay under 8000 bytes (its backend sends a
  larger message by reference, :mod:`room_gateway_plugins.sql.postgresql`); Redis has no practical limit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from gateway.core import jsontext, times
from gateway.core.hub import LocalHub, Topic
from gateway.core.models import JSON, UNSET, Event, Notification, RoomSignal, SignalKind, Unset, Variable

#: How a variable's message ends, after :func:`variable_head`: ``%`` the version (printf-style, as Lua's
#: ``string.format`` and Python's bytes ``%`` both take it).
VERSION_TAIL = '"version":%d}'


class Message(NamedTuple):
    """A notification and the topic it was published to (``None`` for a room signal, which reaches every
    subscription of its room)."""

    topic: Topic | None
    note: Notification

    def deliver(self, hub: LocalHub) -> None:
        """Queue the notification for its subscribers on this process."""
        if isinstance(self.note, RoomSignal):
            hub.deliver_signal(self.note)
        elif self.topic is not None:
            hub.deliver(self.topic, self.note)


def variable_head(room_id: str, name: str, value: JSON | Unset, update_time: datetime | None) -> bytes:
    """A variable's message without its version: ``{"type":"variable",…,"value":…,``.

    Append ``VERSION_TAIL % version`` (encoded) to make the message.
    """
    fields: dict[str, Any] = {
        "type": "variable",
        "room_id": room_id,
        "name": name,
        "update_time": times.to_text(update_time),
    }
    if not isinstance(value, Unset):
        fields["value"] = value
    return jsontext.dumps(fields)[:-1] + b","


def encode(message: Message) -> bytes:
    """The bytes of ``message``.

    :raises TypeError: a variable or event without its topic.
    """
    topic, note = message
    if isinstance(note, RoomSignal):
        signal = {"type": "signal", "room_id": note.room_id, "kind": note.kind.value}
        return jsontext.dumps({**signal, "time": times.to_text(note.time)})
    if topic is None:
        raise TypeError("a variable or event notification needs its topic")
    if isinstance(note, Variable):
        head = variable_head(topic.room_id, note.name, note.value, note.update_time)
        return head + (VERSION_TAIL % note.version).encode()
    event = {"type": "event", "room_id": topic.room_id, "name": note.name, "time": times.to_text(note.time)}
    return jsontext.dumps({**event, "data": note.data})


def decode(data: bytes | str) -> Message:
    """The message of bytes made by :func:`encode` (or by completing a :func:`variable_head`).

    :raises ValueError: not such a message.
    """
    fields: dict[str, Any] = jsontext.loads(data)
    try:
        kind, room_id = fields["type"], fields["room_id"]
        if kind == "variable":
            name, time = fields["name"], times.from_text(fields["update_time"])
            variable = Variable(name, fields.get("value", UNSET), fields["version"], time)
            return Message(Topic("variable", room_id, name), variable)
        if kind == "event":
            name, time = fields["name"], times.from_text(fields["time"])
            return Message(Topic("event", room_id, name), Event(name, fields["data"], time))
        if kind == "signal":
            if fields["time"] is None:
                raise ValueError("not a notification (a room signal without its time)")
            signal = RoomSignal(room_id, SignalKind(fields["kind"]), times.from_text(fields["time"]))
            return Message(None, signal)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a notification ({type(exc).__name__}: {exc})") from exc
    raise ValueError(f"not a notification (type {kind!r})")
