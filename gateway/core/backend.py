"""The backend contract: what a storage plugin implements.

A backend stores rooms and variables and delivers notifications (variable changes, events, room signals)
to subscriptions — on every gateway instance that shares it. The room *rules* live in
:class:`gateway.core.service.RoomService`; a backend only has to make each operation atomic.

A backend is chosen by the scheme of the ``backend`` URL in ``gateway.yaml``: each class declares its
``schemes`` and is offered to the gateway through the ``gateway_backend_classes`` hook
(:mod:`gateway.hookspecs`). Run the shipped conformance suite against it (:mod:`gateway.testing`).

The service calls :meth:`Backend.set_variable`; a backend implements :meth:`Backend.write_variable`, which
receives the whole write as one :class:`VariableWrite` (with the topic, the result and the conflict error
it implies). Helpers a backend may use, as the built-in ones do: :mod:`gateway.core.hub` (delivery to this
process's subscriptions), :mod:`gateway.core.wire` (notifications as bytes on a broker),
:mod:`gateway.core.times` and :mod:`gateway.core.jsontext` (times and JSON as stored),
:mod:`gateway.core.reconnect` (keeping a notification connection up).

Driver errors are wrapped automatically: an exception of a class listed in ``base_exceptions`` escaping any
contract coroutine becomes :class:`~gateway.errors.Unavailable` (503 / UNAVAILABLE), with the original as
``__cause__`` — so a backend author cannot forget it (``limits``' ``Storage.__init_subclass__`` does
the same).
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar, final

from gateway.core import times
from gateway.core.hub import Subscription, Topic
from gateway.core.models import (
    JSON,
    Change,
    ChangeKind,
    Event,
    Member,
    Presence,
    Room,
    RoomSignal,
    Unset,
    Variable,
)
from gateway.core.outbox import EndpointState, MessageStatus, Outbox, OutboxMessage, Settled
from gateway.errors import Aborted, GatewayError, Unavailable, Unimplemented

_T = TypeVar("_T")

#: The coroutine methods whose driver errors are wrapped.
CONTRACT_METHODS = (
    "open",
    "close",
    "check",
    "create_room",
    "get_room",
    "save_room",
    "list_rooms",
    "get_rooms",
    "get_variable",
    "write_variable",
    "get_contents",
    "delete_room",
    "publish_event",
    "publish_signal",
    "read_changes",
    "subscribe",
    "presence_join",
    "presence_leave",
    "presence_heartbeat",
    "presence_expire",
    "presence_rejoin",
    "get_presence",
    "count_users",
    "outbox_claim",
    "outbox_settle",
    "outbox_messages",
    "outbox_retry",
    "outbox_replay",
    "outbox_add",
    "outbox_backlog",
    "outbox_prune",
    "get_endpoint_state",
    "save_endpoint_state",
)


def _wrap_driver_errors(
    method: Callable[..., Awaitable[_T]], errors: tuple[type[BaseException], ...]
) -> Callable[..., Awaitable[_T]]:
    @functools.wraps(method)
    async def wrapper(self: Backend, *args: Any, **kwargs: Any) -> _T:
        try:
            return await method(self, *args, **kwargs)
        except GatewayError:
            raise
        except errors as exc:
            raise driver_unavailable(exc) from exc

    # A marker on the function, holding what it turns into UNAVAILABLE: the metrics wrapper
    # (gateway.observability.backends) does the same turning itself and calls the method unwrapped.
    wrapper.__wrapped_driver_errors__ = errors  # type: ignore[attr-defined]
    return wrapper


def driver_unavailable(exc: BaseException) -> Unavailable:
    """The UNAVAILABLE a driver error becomes, worded the same wherever it is turned (it names the error's
    class, never its message, which may hold a URL or a password)."""
    return Unavailable(f"backend unavailable ({type(exc).__name__})")


def version_conflict(name: str, expected: int, current: int) -> Aborted:
    """The ABORTED error of a failed compare-and-set, worded the same by every backend."""
    return Aborted(f"variable {name!r} is at version {current}, not the expected {expected}")


@dataclass(frozen=True, slots=True)
class VariableWrite:
    """One write of a variable — or, with ``value is UNSET``, its deletion — as a backend receives it.

    :param expected_version: write only if the variable is at this version (``0``: unset); ``None``: write
        whatever the version.
    :param now: the time of the write: the variable's new ``update_time``.
    """

    room_id: str
    name: str
    value: JSON | Unset
    expected_version: int | None
    now: datetime

    @property
    def deletes(self) -> bool:
        """Whether this write deletes the variable."""
        return isinstance(self.value, Unset)

    @property
    def topic(self) -> Topic:
        """The topic whose listeners are notified of the write."""
        return Topic("variable", self.room_id, self.name)

    def written(self, version: int) -> Variable:
        """The variable as this write leaves it, at ``version`` (what listeners and the caller get).

        :raises ValueError: :attr:`now` is naive (:func:`gateway.core.times.utc`).
        """
        return Variable(self.name, self.value, version, times.utc(self.now))  # positional: once per write

    def conflict(self, current: int) -> Aborted:
        """The error to raise when the variable is at ``current``, not at :attr:`expected_version`."""
        return version_conflict(self.name, self.expected_version or 0, current)


@dataclass(frozen=True, slots=True)
class History:
    """How much of each room's change log a backend keeps (``history:`` in gateway.yaml).

    A backend keeps at least a room's last ``max_changes`` changes that are younger than ``max_age_seconds``
    and drops the rest; it may drop lazily (on append), so a read may return somewhat more, never less.
    Ages are measured by the changes' own times (the ``now`` of each write: the service's clock) against
    the latest write's, not by the store's clock, so the conformance suite's fixed clock works on every
    store.
    With ``events`` false, events are live only: not logged, and delivered with ``seq == 0``.
    """

    max_changes: int = 1000
    max_age_seconds: float = 86400.0
    events: bool = True


#: The retention of a backend made without ``history`` (``API.md``'s defaults).
DEFAULT_HISTORY = History()


@dataclass(frozen=True, slots=True)
class LogPage:
    """A slice of a room's change log (:meth:`Backend.read_changes`).

    :param changes: in seq order.
    :param head_seq: the room's last seq (``0`` before its first change).
    :param epoch: the log's incarnation (:attr:`Backend.epoch`).
    :param first_seq: the oldest seq still retained (``head_seq + 1`` when none is): a reader at position
        ``p`` misses nothing iff ``first_seq - 1 <= p <= head_seq``.
    """

    changes: list[Change]
    head_seq: int
    epoch: str
    first_seq: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every set variable of a room, and the log position it was read at (:meth:`Backend.get_contents`)."""

    contents: dict[str, JSON]
    seq: int
    epoch: str


class Backend(abc.ABC):
    """Base class of storage backends.

    **The change log** (``API.md``, "The room change log"). Every write below that changes a room appends
    one :class:`~gateway.core.models.Change` to the room's log *in the same atomic step* as the change
    itself (transaction, Lua script): a change is never visible without its log entry. ``seq`` is gap-free
    per room (1, 2, 3, …), assigned by the store. The log is delivered to subscriptions as it is appended —
    every notification is a Change (or the every-room :class:`~gateway.core.models.RoomSignal`), delivered
    through a :class:`~gateway.core.hub.LocalHub` on every instance sharing the store, in seq order per room.
    :attr:`epoch` names the log's incarnation: a durable store keeps it across restarts and instances, and
    makes a new one only when its history is lost (the memory backend: one per process).

    :param url: the ``backend`` URL from the configuration; its scheme is one of :attr:`schemes`.
    :param history: how much of each room's log to keep.
    """

    #: URL schemes this class serves, e.g. ``("memory",)`` or ``("postgresql", "postgresql+asyncpg")``.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Whether the class implements the webhook outbox (the ``outbox_*`` methods and writing messages with
    #: each change); the gateway refuses ``webhooks:`` on a backend without it.
    supports_outbox: ClassVar[bool] = False
    #: Exceptions of the driver that mean "the store cannot be reached": turned into UNAVAILABLE.
    base_exceptions: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError, TimeoutError)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in CONTRACT_METHODS:
            method = cls.__dict__.get(name)
            if method is not None and inspect.iscoroutinefunction(method):
                setattr(cls, name, _wrap_driver_errors(method, cls.base_exceptions))

    def __init__(self, url: str, *, history: History = DEFAULT_HISTORY) -> None:
        self.url = url
        self.history = history
        #: The log's incarnation; a backend sets it in :meth:`open` at the latest (durable stores read it
        #: from the store, creating it once).
        self.epoch = ""
        #: The webhook endpoints to write outbox messages for, set before :meth:`open`; ``None``: none (the
        #: write path then does no outbox work at all).
        self.outbox: Outbox | None = None

    # -- life cycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional: a no-op unless the backend needs it
        """Connect, create or upgrade the schema. Called once before any other method."""

    async def close(self) -> None:  # noqa: B027 - optional: a no-op unless the backend needs it
        """Release connections and end every subscription. Called once at shutdown."""

    async def check(self) -> None:  # noqa: B027 - optional: a no-op unless the backend needs it
        """Raise :class:`~gateway.errors.Unavailable` when the store cannot serve (``/readyz``)."""

    # -- rooms --------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_room(self, room: Room) -> None:
        """Store a new room and log ``ROOM_CREATED`` (with the room). Raise
        :class:`~gateway.errors.AlreadyExists` if its id was *ever* stored."""

    @abc.abstractmethod
    async def get_room(self, room_id: str) -> Room | None:
        """Return the room (DELETED rooms included: they are tombstones), or ``None`` if never stored."""

    @abc.abstractmethod
    async def save_room(self, room: Room, kind: ChangeKind = ChangeKind.ROOM_UPDATED) -> None:
        """Overwrite an existing room's fields (metadata, status, ``update_time``) and log ``kind``
        (``ROOM_UPDATED`` or ``ROOM_CLOSED``) with the room."""

    @abc.abstractmethod
    async def list_rooms(self, *, start: str, inclusive: bool, limit: int) -> list[Room]:
        """Up to ``limit`` rooms in code-point order of id, from ``start`` (``inclusive`` or not).

        ``start == ""`` with ``inclusive`` lists from the first room.
        """

    @abc.abstractmethod
    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        """The rooms among ``room_ids`` that exist, in code-point order of id."""

    # -- variables ----------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_variable(self, room_id: str, name: str) -> Variable | None:
        """The current version of a variable, or ``None`` when it is unset (never set, or deleted)."""

    @final
    async def set_variable(
        self,
        room_id: str,
        name: str,
        value: JSON | Unset,
        *,
        expected_version: int | None,
        now: datetime,
    ) -> Variable | None:
        """Write (or, with ``value is UNSET``, delete) a variable: :meth:`write_variable`, which a backend
        implements, with the arguments as one :class:`VariableWrite`."""
        return await self.write_variable(VariableWrite(room_id, name, value, expected_version, now))

    @abc.abstractmethod
    async def write_variable(self, write: VariableWrite) -> Variable | None:
        """Write (or, with ``write.deletes``, delete) a variable atomically, log ``VARIABLE_SET`` (or
        ``VARIABLE_DELETED``) with the variable, and notify its listeners.

        The version is one more than the variable's last version, deletions included, so versions never
        repeat. With ``expected_version`` the write happens only if the current version is that one (``0``:
        the variable is unset); otherwise raise :meth:`VariableWrite.conflict`. Notifications of one
        variable reach listeners in version order. Return :meth:`VariableWrite.written` with the new
        version; deleting an unset variable does nothing and returns ``None``.
        """

    @abc.abstractmethod
    async def get_contents(self, room_id: str) -> Snapshot:
        """Every set variable of the room, and the log position (head seq, epoch) they were read at, in one
        consistent read: a ListenRoom resumed from that position misses no change the snapshot lacks."""

    @abc.abstractmethod
    async def delete_room(self, room: Room) -> None:
        """Delete a room (``room.status`` is DELETED) in one atomic step: store it as its tombstone, wipe its
        variables and its change log; then deliver ``ROOM_DELETED`` (with the room, at the old head's seq
        + 1, the room's last change), which ends every stream of the room."""

    # -- realtime -----------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def publish_event(self, room_id: str, event: Event) -> Change:
        """Log ``EVENT`` (unless ``history.events`` is false: then ``seq == 0``) and deliver it to every
        instance. Return the Change."""

    @abc.abstractmethod
    async def publish_signal(self, signal: RoomSignal) -> None:
        """End streams (``signal.kind`` is INVALIDATED). For one room: log ``CONNECTIONS_INVALIDATED`` and
        deliver it, which ends every stream of the room; for every room (``room_id == ""``): deliver the
        signal to every subscription on every instance (no room's log records it)."""

    @abc.abstractmethod
    async def read_changes(
        self,
        room_id: str,
        *,
        after_seq: int,
        limit: int,
        kinds: frozenset[ChangeKind] | None = None,
    ) -> LogPage:
        """The retained changes of a room with ``seq > after_seq``, in order, at most ``limit`` of them,
        only of ``kinds`` when given (``limit`` counts the changes returned), with the log's head and
        retention bounds read in the same step. A room never written has an empty log (``head_seq == 0``)."""

    @abc.abstractmethod
    async def subscribe(self, topic: Topic) -> Subscription:
        """Start listening to a topic on this instance: a room's every change (``Topic.room``), or those of
        one variable or one event name. Notifications published after this call returns are delivered (the
        subscription is active on return)."""

    # -- presence -----------------------------------------------------------------------------------------

    # An instance is *alive* in the store from a heartbeat until the store expires it (its deadline, the last
    # heartbeat's ``now`` plus ``ttl_seconds``, passed when a survivor calls presence_expire). Only an alive
    # instance's connections count: an expired one learns it from its next heartbeat, and rejoins.

    @abc.abstractmethod
    async def presence_join(self, room_id: str, member: Member, *, instance: str, now: datetime) -> None:
        """Count one more connection of ``member.user_id`` in the room on ``instance``; when it is the
        user's first connection on any instance, log ``MEMBER_JOINED`` (with the member) in the same step.
        Nothing when ``instance`` is not alive (never heartbeaten, or expired): it rejoins after its next
        heartbeat."""

    @abc.abstractmethod
    async def presence_leave(self, room_id: str, user_id: str, *, instance: str, now: datetime) -> None:
        """Count one connection fewer; when it was the user's last one on any instance, log ``MEMBER_LEFT``
        in the same step."""

    @abc.abstractmethod
    async def presence_heartbeat(self, instance: str, *, now: datetime, ttl_seconds: float) -> bool:
        """Keep ``instance`` alive until ``now + ttl_seconds`` (one write per instance, not per connection).

        :returns: whether it was alive already. ``False`` (its first heartbeat, or the store expired it —
            e.g. it was paused for longer than the timeout): the store counts none of its connections, and
            the caller rejoins them (:meth:`presence_rejoin`). An instance whose expiry is still under way
            stays expired (``False`` again) until that is done."""

    @abc.abstractmethod
    async def presence_expire(self, *, now: datetime, ttl_seconds: float) -> datetime | None:
        """Expire the instances whose deadline has passed at ``now``: drop their connections, logging
        ``MEMBER_LEFT`` for each user whose last connection they held (once, however many instances expire
        them at the same time). ``ttl_seconds`` is the timeout, for a store that keeps heartbeat times
        rather than deadlines.

        :returns: the earliest deadline of the instances still alive (when the next one expires if it stays
            silent), ``None`` when there are none: the caller's next expiry is due then."""

    @abc.abstractmethod
    async def presence_rejoin(
        self, room_id: str, member: Member, *, instance: str, connections: int, now: datetime
    ) -> None:
        """Count exactly ``connections`` (≥ 0) connections of ``member.user_id`` in the room on ``instance``,
        whatever was counted there before: how an instance whose heartbeat answered ``False`` makes its live
        connections count again, and how it settles a count a failed write left unsure. Logs
        ``MEMBER_JOINED`` when the user goes from no connection on any instance to some, ``MEMBER_LEFT``
        when from some to none. Nothing when ``instance`` is not alive."""

    @abc.abstractmethod
    async def get_presence(self, room_id: str) -> Presence:
        """The room's members (one per user, connections summed over live instances), by user id."""

    @abc.abstractmethod
    async def count_users(self, room_ids: Sequence[str]) -> dict[str, int]:
        """How many users are present in each of ``room_ids`` (rooms with none may be left out)."""

    # -- the webhook outbox --------------------------------------------------------------------------------
    #
    # With :attr:`outbox` set, every logged change (and ROOM_DELETED, which the log forgets) writes one
    # OutboxMessage per endpoint of ``outbox.targets(room_id, kind)`` in the change's own atomic step —
    # ``status`` pending, ``attempts`` 0, ``due_time`` the change's time plus ``outbox.first_delay``,
    # ``created_time`` the change's time, ``previous`` the variable's version before the write when it had a
    # value — then calls ``outbox.written()`` once the step is durable. Live-only events (``seq == 0``)
    # write none. Several instances share the messages through :meth:`outbox_claim`.

    async def outbox_claim(
        self, endpoint: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        """Claim up to ``limit`` of the endpoint's pending messages due at ``now`` (earliest due first), in
        one atomic step: each one's ``attempts`` grows by one and its ``due_time`` moves to ``now +
        lease_seconds``, so no other instance claims it until that lease ends. Return them as claimed."""
        raise _no_outbox(self)

    async def outbox_settle(self, settled: Sequence[Settled]) -> list[EndpointState | None]:
        """Record the outcomes of claimed attempts (of one endpoint, several at once: one transaction or
        round trip for many deliveries). Each is recorded if its attempt (``message.attempts``) is still the
        message's latest claimed one and the message is pending; else it is skipped (``None`` in its place).

        The attempt joins the message's ``log``, and the message takes :attr:`Settled.status` and
        ``due_time``. With each, the endpoint's state records the outcome: a success sets
        ``last_success_time`` and clears ``failing_since``; a failure sets ``failing_since`` unless it is
        set, in the batch's order. Return, for each, the endpoint's state after it — or after the whole
        batch, which a backend that records the outcomes at once may give for all of them."""
        raise _no_outbox(self)

    async def outbox_messages(
        self, endpoint: str, *, status: MessageStatus | None, limit: int
    ) -> list[OutboxMessage]:
        """Up to ``limit`` of the endpoint's messages (of ``status`` when given), newest first."""
        raise _no_outbox(self)

    async def outbox_retry(self, endpoint: str, message_id: str, *, now: datetime) -> bool:
        """Make a message pending and due at ``now`` (its id kept, its attempts counting on); ``False`` when
        the endpoint has no such message."""
        raise _no_outbox(self)

    async def outbox_replay(self, endpoint: str, *, since: datetime, now: datetime) -> int:
        """Copy every message of the endpoint created at or after ``since``, each under a new id, pending and
        due at ``now``, with no attempts; return how many."""
        raise _no_outbox(self)

    async def outbox_add(self, messages: Sequence[OutboxMessage]) -> None:
        """Store messages made outside a change (``webhook.test``) as given."""
        raise _no_outbox(self)

    async def outbox_backlog(self, endpoint: str) -> int:
        """How many of the endpoint's messages are pending."""
        raise _no_outbox(self)

    async def outbox_prune(
        self, endpoint: str, *, delivered_before: datetime, failed_before: datetime, limit: int
    ) -> int:
        """Delete up to ``limit`` of the endpoint's delivered messages created before ``delivered_before``
        and failed ones created before ``failed_before`` (oldest first, as far as the store can tell);
        return how many. Pending messages are never deleted. Bounded, so that a long backlog of settled
        messages is pruned in many short steps rather than one that holds up the writes."""
        raise _no_outbox(self)

    async def get_endpoint_state(self, endpoint: str) -> EndpointState:
        """The endpoint's state (an endpoint never seen: the default, enabled state)."""
        raise _no_outbox(self)

    async def save_endpoint_state(self, endpoint: str, state: EndpointState) -> None:
        """Overwrite the endpoint's state (disable, enable)."""
        raise _no_outbox(self)


def _no_outbox(backend: Backend) -> Unimplemented:
    return Unimplemented(f"the {type(backend).__name__} backend has no webhook outbox")
