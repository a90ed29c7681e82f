"""The memory backend: everything in this process, nothing survives a restart.

For tests, demos and single-process deployments that need no persistence. Registered through the same hook
and entry point (``room_gateway`` group, name ``memory``) that a third-party backend uses.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Sequence

from gateway.core import times
from gateway.core.backend import Backend, VariableWrite
from gateway.core.hub import LocalHub, Subscription, Topic
from gateway.core.models import JSON, Event, Room, RoomSignal, Unset, Variable
from gateway.errors import AlreadyExists, Unavailable
from gateway.hookspecs import hookimpl


class MemoryBackend(Backend):
    """Rooms and variables in dicts; notifications through a :class:`LocalHub`. URL: ``memory://``."""

    schemes = ("memory",)

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self.hub = LocalHub()
        self._rooms: dict[str, Room] = {}
        self._room_ids: list[str] = []  # sorted, for listing in code-point order
        # Rooms are copied in and out (shallow: the service replaces a room's settings, never edits them in
        # place), so a caller's changes reach the store only through save_room; their times in UTC, as
        # every store keeps them (gateway.core.times).
        # room -> name -> current version (value UNSET once deleted: its version stays, so none repeats)
        self._variables: dict[str, dict[str, Variable]] = {}
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self.hub.close_all(Unavailable("server shutting down; reconnect"))

    async def check(self) -> None:
        if self._closed:
            raise Unavailable("backend is closed")

    async def create_room(self, room: Room) -> None:
        if room.room_id in self._rooms:
            raise AlreadyExists(f"room {room.room_id!r} already exists (ids are never reused)")
        self._rooms[room.room_id] = _stored(room)
        bisect.insort(self._room_ids, room.room_id)

    async def get_room(self, room_id: str) -> Room | None:
        room = self._rooms.get(room_id)
        return copy.copy(room) if room is not None else None

    async def save_room(self, room: Room) -> None:
        self._rooms[room.room_id] = _stored(room)

    async def list_rooms(self, *, start: str, inclusive: bool, limit: int) -> list[Room]:
        ids = self._room_ids
        first = bisect.bisect_left(ids, start) if inclusive else bisect.bisect_right(ids, start)
        return [copy.copy(self._rooms[one]) for one in ids[first : first + limit]]

    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        return [copy.copy(self._rooms[one]) for one in sorted(set(room_ids)) if one in self._rooms]

    async def get_variable(self, room_id: str, name: str) -> Variable | None:
        variable = self._variables.get(room_id, {}).get(name)
        if variable is None or variable.deleted:
            return None
        return variable

    async def write_variable(self, write: VariableWrite) -> Variable | None:
        variables = self._variables.setdefault(write.room_id, {})
        previous = variables.get(write.name)
        last_version = previous.version if previous is not None else 0
        current = 0 if previous is None or previous.deleted else previous.version
        if write.expected_version is not None and write.expected_version != current:
            raise write.conflict(current)
        if write.deletes and current == 0:
            return None
        # Values are stored as given: they come from a JSON parser or a protobuf message, and are never
        # mutated afterwards (Variable is frozen; readers get JSON out of it, not references to keep).
        variable = write.written(last_version + 1)
        variables[write.name] = variable
        self.hub.deliver(write.topic, variable)
        return variable

    async def get_contents(self, room_id: str) -> dict[str, JSON]:
        return {
            name: variable.value
            for name, variable in self._variables.get(room_id, {}).items()
            if not isinstance(variable.value, Unset)
        }

    async def delete_room_data(self, room_id: str) -> None:
        self._variables.pop(room_id, None)

    async def publish_event(self, room_id: str, event: Event) -> None:
        self.hub.deliver(Topic("event", room_id, event.name), event)

    async def publish_signal(self, signal: RoomSignal) -> None:
        self.hub.deliver_signal(signal)

    async def subscribe(self, topic: Topic) -> Subscription:
        return self.hub.subscribe(topic)


def _stored(room: Room) -> Room:
    """A copy of ``room`` to keep, its times in UTC."""
    kept = copy.copy(room)
    if kept.create_time is not None:
        kept.create_time = times.utc(kept.create_time)
    if kept.update_time is not None:
        kept.update_time = times.utc(kept.update_time)
    return kept


@hookimpl
def gateway_backend_classes() -> list[type[Backend]]:
    return [MemoryBackend]
