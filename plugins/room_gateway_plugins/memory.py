"""The memory backend: everything in this process, nothing survives a restart.

For tests, demos and single-process deployments that need no persistence. Registered through the same hook
and entry point (``room_gateway`` group, name ``memory``) that a third-party backend uses.

Every operation runs without awaiting between its read and its write, so each is atomic on the event loop:
a change and its log entry appear together, and seqs are gap-free whatever the number of writers.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.core import times
from gateway.core.backend import DEFAULT_HISTORY, Backend, History, LogPage, Snapshot, VariableWrite
from gateway.core.hub import LocalHub, Subscription, Topic
from gateway.core.models import (
    Change,
    ChangeKind,
    Event,
    Member,
    Presence,
    Room,
    RoomSignal,
    RoomStatus,
    Unset,
    Variable,
)
from gateway.core.outbox import EndpointState, MessageStatus, OutboxMessage, Settled, new_message_id
from gateway.errors import AlreadyExists, Unavailable
from gateway.hookspecs import hookimpl


@dataclass(slots=True)
class _Log:
    """One room's retained changes (contiguous seqs, oldest first) and its head."""

    head: int = 0
    changes: deque[Change] = field(default_factory=deque)

    @property
    def first_seq(self) -> int:
        return self.changes[0].seq if self.changes else self.head + 1


class MemoryBackend(Backend):
    """Rooms, variables and change logs in dicts; notifications through a :class:`LocalHub`.
    URL: ``memory://``. Its epoch is new in every process: a restart loses the history."""

    schemes = ("memory",)
    supports_outbox = True

    def __init__(self, url: str = "memory://", *, history: History = DEFAULT_HISTORY) -> None:
        super().__init__(url, history=history)
        self.epoch = uuid.uuid4().hex
        self.hub = LocalHub()
        self._rooms: dict[str, Room] = {}
        self._room_ids: list[str] = []  # sorted, for listing in code-point order
        # Rooms are copied in and out (shallow: the service replaces a room's settings, never edits them in
        # place), so a caller's changes reach the store only through save_room; their times in UTC, as
        # every store keeps them (gateway.core.times).
        # room -> name -> current version (value UNSET once deleted: its version stays, so none repeats)
        self._variables: dict[str, dict[str, Variable]] = {}
        # room -> user -> seat; alive instance -> the time its connections stop counting (presence_heartbeat).
        self._seats: dict[str, dict[str, _Seat]] = {}
        self._alive_until: dict[str, datetime] = {}
        self._logs: dict[str, _Log] = {}
        # endpoint -> id -> message (in the order written), and the ids of its pending ones.
        self._outbox: dict[str, dict[str, OutboxMessage]] = {}
        self._pending: dict[str, dict[str, None]] = {}
        self._endpoint_states: dict[str, EndpointState] = {}
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self.hub.close_all(Unavailable("server shutting down; reconnect"))

    async def check(self) -> None:
        if self._closed:
            raise Unavailable("backend is closed")

    # -- the log ------------------------------------------------------------------------------------------

    def _log(
        self,
        room_id: str,
        kind: ChangeKind,
        now: datetime | None,
        *,
        variable: Variable | None = None,
        event: Event | None = None,
        room: Room | None = None,
        member: Member | None = None,
        previous: Variable | None = None,
    ) -> Change:
        """Log a change of ``kind`` with its payload at ``now``: the room's next seq, kept (trimming what
        retention drops), its outbox messages written, and delivered. Every writer of this backend, presence
        included, logs through here.
        """
        log = self._logs.get(room_id)
        if log is None:
            log = self._logs[room_id] = _Log()
        log.head += 1
        # Positional: this runs on every write, and keywords or dataclasses.replace cost it measurably.
        change = Change(log.head, self.epoch, kind, now, variable, event, room, member)
        changes = log.changes
        changes.append(change)
        if len(changes) > self.history.max_changes:
            changes.popleft()
        oldest = changes[0].time
        if (
            now is not None
            and oldest is not None
            and (now - oldest).total_seconds() > self.history.max_age_seconds
        ):
            cutoff = times.utc(now) - timedelta(seconds=self.history.max_age_seconds)
            while changes and (changes[0].time or cutoff) < cutoff:
                changes.popleft()
        if self.outbox is not None:
            self._enqueue(room_id, change, previous)
        self.hub.deliver(room_id, change)
        return change

    async def read_changes(
        self,
        room_id: str,
        *,
        after_seq: int,
        limit: int,
        kinds: frozenset[ChangeKind] | None = None,
    ) -> LogPage:
        log = self._logs.get(room_id) or _Log()
        start = max(0, after_seq + 1 - log.first_seq)
        found = (c for c in itertools.islice(log.changes, start, None) if kinds is None or c.kind in kinds)
        return LogPage(list(itertools.islice(found, limit)), log.head, self.epoch, log.first_seq)

    # -- rooms --------------------------------------------------------------------------------------------

    async def create_room(self, room: Room) -> None:
        if room.room_id in self._rooms:
            raise AlreadyExists(f"room {room.room_id!r} already exists (ids are never reused)")
        stored = self._rooms[room.room_id] = _stored(room)
        bisect.insort(self._room_ids, room.room_id)
        self._log(room.room_id, ChangeKind.ROOM_CREATED, stored.update_time, room=stored.__copy__())

    async def get_room(self, room_id: str) -> Room | None:
        room = self._rooms.get(room_id)
        # Room.__copy__ called as it is, throughout this module: copy.copy's own dispatch was a third of a
        # read's cost, and every write reads its room (session 16: 3k of a PUT's 249k instructions).
        return room.__copy__() if room is not None else None

    async def save_room(self, room: Room, kind: ChangeKind = ChangeKind.ROOM_UPDATED) -> None:
        stored = self._rooms[room.room_id] = _stored(room)
        self._log(room.room_id, kind, stored.update_time, room=stored.__copy__())

    async def list_rooms(self, *, start: str, inclusive: bool, limit: int) -> list[Room]:
        ids = self._room_ids
        first = bisect.bisect_left(ids, start) if inclusive else bisect.bisect_right(ids, start)
        return [self._rooms[one].__copy__() for one in ids[first : first + limit]]

    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        return [self._rooms[one].__copy__() for one in sorted(set(room_ids)) if one in self._rooms]

    async def delete_room(self, room: Room) -> None:
        stored = self._rooms[room.room_id] = _stored(room)
        self._variables.pop(room.room_id, None)
        log = self._logs.pop(room.room_id, None)
        last = Change(
            (log.head if log is not None else 0) + 1,
            self.epoch,
            ChangeKind.ROOM_DELETED,
            stored.update_time,
            room=stored.__copy__(),
        )
        if self.outbox is not None:
            self._enqueue(room.room_id, last, None)
        self.hub.deliver(room.room_id, last)

    # -- variables ----------------------------------------------------------------------------------------

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
        kind = ChangeKind.VARIABLE_DELETED if write.deletes else ChangeKind.VARIABLE_SET
        before = previous if current else None
        self._log(write.room_id, kind, variable.update_time, variable=variable, previous=before)
        return variable

    async def get_contents(self, room_id: str) -> Snapshot:
        contents = {
            name: variable.value
            for name, variable in self._variables.get(room_id, {}).items()
            if not isinstance(variable.value, Unset)
        }
        log = self._logs.get(room_id)
        return Snapshot(contents, log.head if log is not None else 0, self.epoch)

    # -- realtime -----------------------------------------------------------------------------------------

    async def publish_event(self, room_id: str, event: Event) -> Change:
        if self.history.events:
            return self._log(room_id, ChangeKind.EVENT, event.time, event=event)
        live = Change(0, self.epoch, ChangeKind.EVENT, event.time, event=event)
        self.hub.deliver(room_id, live)
        return live

    async def publish_signal(self, signal: RoomSignal) -> None:
        if signal.room_id:
            self._log(signal.room_id, ChangeKind.CONNECTIONS_INVALIDATED, signal.time)
        else:
            self.hub.deliver_signal(signal)

    async def subscribe(self, topic: Topic) -> Subscription:
        return self.hub.subscribe(topic)

    # -- the webhook outbox -------------------------------------------------------------------------------

    def _enqueue(self, room_id: str, change: Change, previous: Variable | None) -> None:
        outbox = self.outbox
        if outbox is None:
            return
        targets = outbox.targets(room_id, change.kind)
        if not targets:
            return
        time = change.time
        due = times.utc(time) + outbox.first_delay if time is not None else None
        message_id = new_message_id()
        for endpoint in targets:
            message = OutboxMessage(
                message_id, endpoint, room_id, change, previous, due_time=due, created_time=time
            )
            self._outbox.setdefault(endpoint, {})[message_id] = message
            self._pending.setdefault(endpoint, {})[message_id] = None
        outbox.written()

    async def outbox_claim(
        self, endpoint: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        messages = self._outbox.get(endpoint, {})
        due = [
            messages[one] for one in self._pending.get(endpoint, {}) if (messages[one].due_time or now) <= now
        ]
        due.sort(key=lambda message: message.due_time or now)
        lease_end = times.utc(now) + timedelta(seconds=lease_seconds)
        claimed = []
        for message in due[: max(0, limit)]:
            message = dataclasses.replace(message, attempts=message.attempts + 1, due_time=lease_end)
            messages[message.id] = message
            claimed.append(message)
        return claimed

    async def outbox_settle(self, settled: Sequence[Settled]) -> list[EndpointState | None]:
        return [self._settle(one) for one in settled]

    def _settle(self, settled: Settled) -> EndpointState | None:
        message, attempt = settled.message, settled.attempt
        messages = self._outbox.get(message.endpoint, {})
        stored = messages.get(message.id)
        if (
            stored is None
            or stored.status is not MessageStatus.PENDING
            or stored.attempts != message.attempts
        ):
            return None
        status = settled.status
        if status is not MessageStatus.PENDING:
            self._pending.get(message.endpoint, {}).pop(message.id, None)
        messages[message.id] = dataclasses.replace(
            stored, status=status, due_time=settled.due_time, log=(*stored.log, attempt)
        )
        state = self._endpoint_states.get(message.endpoint, EndpointState())
        if attempt.succeeded:
            state = dataclasses.replace(state, failing_since=None, last_success_time=attempt.time)
        elif state.failing_since is None:
            state = dataclasses.replace(state, failing_since=attempt.time)
        self._endpoint_states[message.endpoint] = state
        return state

    async def outbox_messages(
        self, endpoint: str, *, status: MessageStatus | None, limit: int
    ) -> list[OutboxMessage]:
        found = (m for m in reversed(self._outbox.get(endpoint, {}).values()) if status in (None, m.status))
        return list(itertools.islice(found, max(0, limit)))

    async def outbox_retry(self, endpoint: str, message_id: str, *, now: datetime) -> bool:
        messages = self._outbox.get(endpoint, {})
        message = messages.get(message_id)
        if message is None:
            return False
        messages[message_id] = dataclasses.replace(
            message, status=MessageStatus.PENDING, due_time=times.utc(now)
        )
        self._pending.setdefault(endpoint, {})[message_id] = None
        self._wake()
        return True

    async def outbox_replay(self, endpoint: str, *, since: datetime, now: datetime) -> int:
        since = times.utc(since)
        copies = [
            dataclasses.replace(
                m,
                id=new_message_id(),
                status=MessageStatus.PENDING,
                attempts=0,
                due_time=times.utc(now),
                created_time=times.utc(now),
                log=(),
            )
            for m in list(self._outbox.get(endpoint, {}).values())
            if m.created_time is not None and times.utc(m.created_time) >= since
        ]
        await self.outbox_add(copies)
        return len(copies)

    async def outbox_add(self, messages: Sequence[OutboxMessage]) -> None:
        for message in messages:
            self._outbox.setdefault(message.endpoint, {})[message.id] = message
            if message.status is MessageStatus.PENDING:
                self._pending.setdefault(message.endpoint, {})[message.id] = None
        if messages:
            self._wake()

    def _wake(self) -> None:
        if self.outbox is not None:
            self.outbox.written()

    async def outbox_backlog(self, endpoint: str) -> int:
        return len(self._pending.get(endpoint, {}))

    async def outbox_prune(
        self, endpoint: str, *, delivered_before: datetime, failed_before: datetime, limit: int
    ) -> int:
        messages = self._outbox.get(endpoint, {})
        cutoffs = {
            MessageStatus.DELIVERED: times.utc(delivered_before),
            MessageStatus.FAILED: times.utc(failed_before),
        }
        latest = max(cutoffs.values())
        pruned: list[str] = []
        # Insertion order is creation order (changes, test messages and replayed copies are all added
        # when created), so the scan stops at the first message too young for either cutoff.
        for message in messages.values():
            created = message.created_time
            if len(pruned) >= limit or created is None or times.utc(created) >= latest:
                break
            cutoff = cutoffs.get(message.status)
            if cutoff is not None and times.utc(created) < cutoff:
                pruned.append(message.id)
        for message_id in pruned:
            del messages[message_id]
        return len(pruned)

    async def get_endpoint_state(self, endpoint: str) -> EndpointState:
        return self._endpoint_states.get(endpoint, EndpointState())

    async def save_endpoint_state(self, endpoint: str, state: EndpointState) -> None:
        self._endpoint_states[endpoint] = state

    # -- presence -----------------------------------------------------------------------------------------

    def _seats_of(self, room_id: str) -> dict[str, _Seat] | None:
        """The room's present users, ``None`` when it has none; a deleted room's are dropped (its streams'
        leaves arrive after the deletion, and must not log into the log it dropped)."""
        room = self._rooms.get(room_id)
        if room is not None and room.status is RoomStatus.DELETED:
            self._seats.pop(room_id, None)
            return None
        return self._seats.get(room_id)

    def _counts(self, room_id: str, instance: str) -> bool:
        """Whether a join of ``instance`` in the room counts: the instance is alive, the room not deleted."""
        room = self._rooms.get(room_id)
        return instance in self._alive_until and (room is None or room.status is not RoomStatus.DELETED)

    async def presence_join(self, room_id: str, member: Member, *, instance: str, now: datetime) -> None:
        if not self._counts(room_id, instance):
            return
        seat = self._seat(room_id, member, now, connections=1)
        seat.connections[instance] = seat.connections.get(instance, 0) + 1

    async def presence_rejoin(
        self, room_id: str, member: Member, *, instance: str, connections: int, now: datetime
    ) -> None:
        if not self._counts(room_id, instance):
            return
        if connections:
            self._seat(room_id, member, now, connections=connections).connections[instance] = connections
            return
        seats = self._seats_of(room_id)
        seat = seats.get(member.user_id) if seats is not None else None
        if seats is not None and seat is not None and seat.connections.pop(instance, 0):
            self._vacate(room_id, seats, member.user_id, now)

    def _seat(self, room_id: str, member: Member, now: datetime, *, connections: int) -> _Seat:
        """The user's seat in the room, taken now (logging ``MEMBER_JOINED``) if they had none."""
        seats = self._seats.setdefault(room_id, {})
        seat = seats.get(member.user_id)
        if seat is None:
            seat = seats[member.user_id] = _Seat(info=member.info, join_time=times.utc(now))
            joined = Member(member.user_id, connections=connections, info=seat.info, join_time=seat.join_time)
            self._log(room_id, ChangeKind.MEMBER_JOINED, now, member=joined)
        return seat

    async def presence_leave(self, room_id: str, user_id: str, *, instance: str, now: datetime) -> None:
        seats = self._seats_of(room_id)
        seat = seats.get(user_id) if seats is not None else None
        if seats is None or seat is None or instance not in seat.connections:
            return
        seat.connections[instance] -= 1
        if not seat.connections[instance]:
            del seat.connections[instance]
        self._vacate(room_id, seats, user_id, now)

    async def presence_heartbeat(self, instance: str, *, now: datetime, ttl_seconds: float) -> bool:
        alive = instance in self._alive_until
        self._alive_until[instance] = times.utc(now) + timedelta(seconds=ttl_seconds)
        return alive

    async def presence_expire(self, *, now: datetime, ttl_seconds: float) -> datetime | None:
        now = times.utc(now)
        silent = {other for other, until in self._alive_until.items() if until < now}
        if silent:
            self._expire(silent, now)
        return min(self._alive_until.values(), default=None)

    def _expire(self, silent: set[str], now: datetime) -> None:
        for other in silent:
            del self._alive_until[other]
        for room_id in list(self._seats):
            seats = self._seats_of(room_id)
            if seats is None:
                continue
            for user_id, seat in list(seats.items()):
                if not silent.isdisjoint(seat.connections):
                    for other in silent:
                        seat.connections.pop(other, None)
                    self._vacate(room_id, seats, user_id, now)

    def _vacate(self, room_id: str, seats: dict[str, _Seat], user_id: str, now: datetime) -> None:
        """Log ``MEMBER_LEFT`` and forget the user when their last connection is gone."""
        seat = seats[user_id]
        if seat.connections:
            return
        del seats[user_id]
        if not seats:
            del self._seats[room_id]
        left = Member(user_id, connections=0, info=seat.info, join_time=seat.join_time)
        self._log(room_id, ChangeKind.MEMBER_LEFT, now, member=left)

    async def get_presence(self, room_id: str) -> Presence:
        seats = self._seats_of(room_id) or {}
        members = [
            Member(user_id, connections=seat.total, info=seat.info, join_time=seat.join_time)
            for user_id, seat in sorted(seats.items())
        ]
        return Presence(
            members=members,
            num_users=len(members),
            num_connections=sum(member.connections for member in members),
        )

    async def count_users(self, room_ids: Sequence[str]) -> dict[str, int]:
        counts = {}
        for room_id in room_ids:
            seats = self._seats_of(room_id)
            if seats:
                counts[room_id] = len(seats)
        return counts


@dataclass(slots=True)
class _Seat:
    """One present user of a room: what their first connection brought, and connections per instance."""

    info: dict[str, Any]
    join_time: datetime
    connections: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.connections.values())


def _stored(room: Room) -> Room:
    """A copy of ``room`` to keep, its times in UTC."""
    kept = room.__copy__()
    if kept.create_time is not None:
        kept.create_time = times.utc(kept.create_time)
    if kept.update_time is not None:
        kept.update_time = times.utc(kept.update_time)
    return kept


@hookimpl
def gateway_backend_classes() -> list[type[Backend]]:
    return [MemoryBackend]
