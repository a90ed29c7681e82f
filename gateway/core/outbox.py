"""The webhook outbox as the backend contract sees it: which endpoints a change is for, and the messages.

A backend that is given an :class:`Outbox` writes one :class:`OutboxMessage` per endpoint that a change
matches, *in the same atomic step* as the change and its log entry (``API.md``, "Webhooks"): the outbox is
durable exactly when the change is. Matching is pure Python on the room id and the change's kind, decided
here once per (room, kind) shape, so a backend without endpoints does no extra work at all.

A message's delivery state lives in the store too, so that several instances share the work: an instance
*claims* due messages (:meth:`~gateway.core.backend.Backend.outbox_claim`), which moves each one's
``due_time`` past a lease and counts the attempt; it then *settles* the attempt with its outcome. An
instance killed mid-attempt leaves the message due again when its lease runs out; a late settle of an
attempt that another instance has since claimed again is ignored (the attempt numbers differ).
"""

from __future__ import annotations

import enum
import fnmatch
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from gateway.core.models import Change, ChangeKind, Variable

#: The Standard Webhooks type of each kind of Change (``API.md``); RESET is never logged, so never sent.
EVENT_TYPES: dict[ChangeKind, str] = {
    ChangeKind.ROOM_CREATED: "room.created",
    ChangeKind.ROOM_UPDATED: "room.updated",
    ChangeKind.ROOM_CLOSED: "room.closed",
    ChangeKind.ROOM_DELETED: "room.deleted",
    ChangeKind.VARIABLE_SET: "variable.set",
    ChangeKind.VARIABLE_DELETED: "variable.deleted",
    ChangeKind.EVENT: "event.published",
    ChangeKind.CONNECTIONS_INVALIDATED: "connections.invalidated",
    ChangeKind.MEMBER_JOINED: "member.joined",
    ChangeKind.MEMBER_LEFT: "member.left",
}
#: The type of a ``:test`` message, which no change makes.
TEST_TYPE = "webhook.test"
#: Every type an endpoint's ``events`` may name.
ALL_TYPES = frozenset([*EVENT_TYPES.values(), TEST_TYPE])
#: The kinds whose message carries the variable's previous value.
PREVIOUS_KINDS = frozenset({ChangeKind.VARIABLE_SET, ChangeKind.VARIABLE_DELETED})


def new_message_id() -> str:
    """A ``webhook-id`` (Standard Webhooks ids are opaque, unique strings): ``msg_``, the time in
    milliseconds since the epoch as 12 hex digits, and 80 random bits, so that ids sort by creation time to
    the millisecond (as UUIDv7's do). Each message is a row keyed by its id: a random key lands each insert
    on a random page of the store's index, and after a PostgreSQL checkpoint that page's first change writes
    the whole page to the WAL (SQLite: each commit, every page it changed); a time-ordered one lands at the
    index's end. bench/outbox_ids.py, beside 500,000 messages: WAL bytes an insert ~2,280 → ~745 on
    PostgreSQL, ~8,040 → ~3,090 on SQLite."""
    return f"msg_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


class MessageStatus(enum.Enum):
    """Where a message is in its life: ``pending`` (an attempt is due, or running), ``delivered`` (a 2xx),
    ``failed`` (its schedule ran out; ``:retry`` makes it pending again)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def _glob(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for a list of ``*`` globs (``fnmatch``); ``None`` for an empty list (everything)."""
    compiled = [fnmatch.translate(one) for one in patterns]
    return re.compile("|".join(compiled)) if compiled else None


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint's filters, as the backend matches them: ``events`` and ``rooms`` are ``*`` globs, empty
    meaning every one."""

    name: str
    events: tuple[str, ...] = ()
    rooms: tuple[str, ...] = ()
    _events: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _rooms: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_events", _glob(self.events))
        object.__setattr__(self, "_rooms", _glob(self.rooms))

    def takes_type(self, kind: ChangeKind) -> bool:
        """Whether changes of ``kind`` are for this endpoint, whatever their room."""
        pattern = self._events
        return kind in EVENT_TYPES and (pattern is None or pattern.fullmatch(EVENT_TYPES[kind]) is not None)

    def takes_room(self, room_id: str) -> bool:
        pattern = self._rooms
        return pattern is None or pattern.fullmatch(room_id) is not None


class Outbox:
    """The endpoints a backend writes messages for (``webhooks.endpoints``, enabled or not: an endpoint
    disabled meanwhile keeps its messages for when it is enabled again).

    :meth:`targets` is on the write path: the endpoints that take a kind are found once per kind, and room
    patterns are matched only for endpoints that have some.
    """

    def __init__(self, routes: Iterable[Route], *, first_delay_seconds: float = 0.0) -> None:
        self.routes = tuple(routes)
        #: A new message is due this long after its change (the retry schedule's first entry).
        self.first_delay = timedelta(seconds=first_delay_seconds)
        self._by_kind = {kind: tuple(r for r in self.routes if r.takes_type(kind)) for kind in ChangeKind}
        self._listeners: list[Callable[[], None]] = []

    def on_written(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever this instance has durably written messages (a deliverer's wake-up)."""
        self._listeners.append(listener)

    def written(self) -> None:
        """Tell the listeners that messages were written (a backend calls it once the step is durable)."""
        for listener in self._listeners:
            listener()

    def targets(self, room_id: str, kind: ChangeKind) -> tuple[str, ...]:
        """The names of the endpoints a change of ``kind`` in ``room_id`` goes to (often none)."""
        routes = self._by_kind[kind]
        if not routes:
            return ()
        return tuple(r.name for r in routes if r.takes_room(room_id))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, as the management API lists it.

    :param status_code: the receiver's HTTP status; ``0`` when none came (connection refused, timeout).
    :param error: why it failed without a status (the exception's class and message), else ``""``.
    """

    time: datetime
    status_code: int
    duration_ms: float
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message for one endpoint.

    :param change: the change it tells of; a ``webhook.test`` message has ``change is None``.
    :param previous: the variable's version before a ``VARIABLE_SET``/``VARIABLE_DELETED``, when it had a
        value (read in the write's atomic step).
    :param attempts: how many attempts were claimed so far (the one running included).
    :param due_time: when the next attempt is due (for a claimed message: when its lease ends).
    :param created_time: when it was written (the change's time; a copy's: when replayed).
    :param log: the attempts settled so far, oldest first.
    """

    id: str
    endpoint: str
    room_id: str
    change: Change | None
    previous: Variable | None = None
    status: MessageStatus = MessageStatus.PENDING
    attempts: int = 0
    due_time: datetime | None = None
    created_time: datetime | None = None
    log: tuple[Attempt, ...] = ()

    @property
    def type(self) -> str:
        return EVENT_TYPES[self.change.kind] if self.change is not None else TEST_TYPE


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome of a claimed attempt, to record (:meth:`~gateway.core.backend.Backend.outbox_settle`).

    :param message: the message as claimed (its ``attempts`` names the attempt).
    :param due_time: when the next attempt is due; ``None``: the message is settled (delivered if the
        attempt succeeded, else failed).
    """

    message: OutboxMessage
    attempt: Attempt
    due_time: datetime | None = None

    @property
    def status(self) -> MessageStatus:
        if self.due_time is not None:
            return MessageStatus.PENDING
        return MessageStatus.DELIVERED if self.attempt.succeeded else MessageStatus.FAILED


@dataclass(frozen=True, slots=True)
class EndpointState:
    """What every instance knows of an endpoint's health (kept in the store).

    :param failing_since: the first failure since the last success (``None``: not failing).
    """

    enabled: bool = True
    disabled_reason: str = ""
    failing_since: datetime | None = None
    last_success_time: datetime | None = None


def dumps_log(log: Iterable[Attempt]) -> str:
    """A message's attempts as stored: JSON text (the SQL and Redis backends keep them so)."""
    return orjson.dumps(
        [
            {
                "time": a.time.isoformat(),
                "statusCode": a.status_code,
                "durationMs": a.duration_ms,
                "error": a.error,
            }
            for a in log
        ]
    ).decode()


def loads_log(text: str | bytes | None) -> tuple[Attempt, ...]:
    """The attempts of :func:`dumps_log`'s text."""
    if not text:
        return ()
    return tuple(
        Attempt(datetime.fromisoformat(a["time"]), a["statusCode"], a["durationMs"], a["error"])
        for a in orjson.loads(text)
    )
