"""Presence on one gateway instance: its open room-token streams, and the heartbeat that keeps them counted.

``API.md`` ("Presence"): a Listen… stream opened with a room token makes the token's ``userName`` present in
its room while it is open. The :class:`~gateway.dispatch.Dispatcher` hands every such stream to
:meth:`PresenceRegistry.track`, which joins before the stream is returned and leaves when the stream is
closed — and both transports close every stream however it ends (its end, an error, the client leaving,
the room's deletion, shutdown), so one place serves REST and gRPC alike.

The shared store (the backend) sums connections over instances and logs ``MEMBER_JOINED`` /
``MEMBER_LEFT``. What the store costs stays per *instance*, not per connection, while nothing changes: each
open and each close is one write (``numConnections`` counts connections over every instance, so the store
has to see them), and an idle instance writes once per heartbeat — every ``timeout/3`` seconds — whatever
its number of connections.

**Expiry** does not wait for a heartbeat: each instance's reaper asks the store to expire the instances past
their deadline (their last heartbeat plus ``timeout``), and the store answers the earliest deadline left, so
the reaper wakes up right then (or after a heartbeat interval, whichever comes first). An instance that dies
is gone from presence within ``timeout`` of its last heartbeat plus the sweep's own time — not a heartbeat
interval later. A reaper that finds nothing to expire only reads: at most one read per interval per instance.
After a gap between two of its own heartbeats long enough for others to have missed their deadlines too
(the store was unreachable), an instance expires nobody for one timeout: they get to beat first.

**Rejoin**: an instance the store expired while it was alive (paused, or cut from the store, for longer than
the timeout) learns it from its next heartbeat, which answers ``False``; it then counts each of its live
(room, user) connections again (``Backend.presence_rejoin``: an absolute count, so a write in flight across
the expiry cannot count twice), and the users that had left join again. Until then the store refuses the
expired instance's joins, so nothing it counts is forgotten. The same absolute count settles a (room, user)
whose last write failed — applied or not, the registry cannot tell — at the next heartbeat.

Writes of one (room, user) reach the store in the order they happened (a leave never overtakes its join),
and a leave is written by the registry, not by the stream's task: a stream cancelled under its transport
still leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar

from gateway.auth.tokens import TokenClaims
from gateway.core.backend import Backend
from gateway.core.models import Member
from gateway.instance import INSTANCE_ID

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
#: How many presence writes an instance has in flight at most.
WRITES_IN_FLIGHT = 32
#: How long after a deadline the reaper expires it (deadlines are exclusive), and its shortest sleep.
EXPIRY_SLACK_SECONDS = 0.01

_T_co = TypeVar("_T_co", covariant=True)
_Key = tuple[str, str]  # (room id, user id)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Stream(Protocol[_T_co]):
    """What the service's Listen… methods return: an async iterator that must be closed."""

    def __aiter__(self) -> Stream[_T_co]: ...

    async def __anext__(self) -> _T_co: ...

    async def aclose(self) -> None: ...


class PresentStream(Generic[_T_co]):
    """A room-token stream that keeps its user present: iterates ``stream``; :meth:`aclose` closes it and
    leaves (once, however many times it is called)."""

    def __init__(self, stream: Stream[_T_co], leave: Callable[[], None]) -> None:
        self._stream = stream
        self._leave: Callable[[], None] | None = leave

    def __aiter__(self) -> PresentStream[_T_co]:
        return self

    async def __anext__(self) -> _T_co:
        return await self._stream.__anext__()

    @property
    def position(self) -> str | None:
        """The wrapped stream's log position (its SSE ``id``): a room token's ListenRoom over SSE needs it."""
        position = getattr(self._stream, "position", None)
        return position if isinstance(position, str) else None

    async def aclose(self) -> None:
        leave, self._leave = self._leave, None
        if leave is not None:
            leave()  # first: closing the stream may be cancelled, the leave must happen regardless
        await self._stream.aclose()


class PresenceRegistry:
    """This instance's room-token connections, per (room, user), and its heartbeat.

    :param backend: the opened backend (the shared store of presence).
    :param timeout_seconds: ``presence.timeout_seconds``: how long the store counts this instance's
        connections after its last heartbeat; heartbeats come every third of it.
    :param instance: this instance's id in the store, how the shared store tells this gateway's connections
        from another's (default :data:`gateway.instance.INSTANCE_ID`: a restarted process is another
        instance, whose predecessor's connections expire; tests running several gateways in one process give
        each its own).
    :param clock: the current time (UTC); tests inject their own.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        instance: str = INSTANCE_ID,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.backend = backend
        self.timeout_seconds = timeout_seconds
        self.instance = instance
        self._clock = clock
        #: Open connections of this instance per (room, user), and the member each first joined as.
        self._local: dict[_Key, int] = {}
        self._members: dict[_Key, Member] = {}
        #: The last store write queued per (room, user): the next one waits for it (order per user).
        self._writes: dict[_Key, asyncio.Task[None]] = {}
        #: Writes in flight at once: thousands of streams closing together (a shutdown, a network cut) queue
        #: here rather than exhaust the backend's connection pool (redis-py's refuses past 100).
        self._slots = asyncio.Semaphore(WRITES_IN_FLIGHT)
        self._heartbeat: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._beaten = False
        #: The (room, user)s whose last store write failed (it may or may not have been applied): the next
        #: heartbeat counts them again, absolutely.
        self._unsettled: set[_Key] = set()
        #: When the last heartbeat got through, and until when expiry waits after a long gap between two.
        self._last_beat: datetime | None = None
        self._hold_expiry_until: datetime | None = None

    @property
    def interval_seconds(self) -> float:
        """Seconds between heartbeats."""
        return self.timeout_seconds / 3

    @property
    def connections(self) -> int:
        """Open room-token connections on this instance."""
        return sum(self._local.values())

    def local(self, room_id: str, user_id: str) -> int:
        """Open connections of ``user_id`` in ``room_id`` on this instance."""
        return self._local.get((room_id, user_id), 0)

    # -- streams ------------------------------------------------------------------------------------------

    async def track(self, stream: Stream[_T_co], room_id: str, claims: TokenClaims) -> PresentStream[_T_co]:
        """Make ``claims.user_name`` present in ``room_id`` while ``stream`` is open: join now (the store has
        counted the connection when this returns), leave when the returned stream is closed.

        :raises GatewayError: the store refused the join (the stream is closed then).
        """
        key = (room_id, claims.user_name)
        member = Member(user_id=claims.user_name, info=claims.info)
        self._local[key] = self._local.get(key, 0) + 1
        self._members.setdefault(key, member)
        joined = self._queue(key, lambda now: self._join(room_id, member, now))
        left = False

        def leave() -> None:
            nonlocal left
            if left:
                return
            left = True
            remaining = self._local.get(key, 0) - 1
            if remaining > 0:
                self._local[key] = remaining
            else:
                self._local.pop(key, None)
                self._members.pop(key, None)
            self._queue(
                key,
                lambda now: self.backend.presence_leave(room_id, key[1], instance=self.instance, now=now),
            )

        try:
            # Shielded: a caller cancelled while joining still gets its leave queued after the join.
            await asyncio.shield(joined)
        except BaseException:
            leave()
            await stream.aclose()
            raise
        return PresentStream(stream, leave)

    async def _join(self, room_id: str, member: Member, now: datetime) -> None:
        if not self._beaten:
            # Joins count only for a living instance: make this one alive first (before start(), in tests
            # that build a gateway without serving it).
            await self.beat()
        await self.backend.presence_join(room_id, member, instance=self.instance, now=now)

    def _queue(self, key: _Key, write: Callable[[datetime], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``write`` after the (room, user)'s previous write, in a task of the registry's own."""
        previous = self._writes.get(key)

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            async with self._slots:
                await write(self._clock())

        task = asyncio.get_running_loop().create_task(run(), name=f"presence {key[0]!r} {key[1]!r}")
        self._writes[key] = task
        task.add_done_callback(lambda done: self._written(key, done))
        return task

    def _written(self, key: _Key, task: asyncio.Task[None]) -> None:
        if self._writes.get(key) is task:
            del self._writes[key]
        if not task.cancelled() and task.exception() is not None:
            # A failed join was raised to its stream too. Whether the store applied the write or not, the
            # next heartbeat sets the count to what is open then.
            self._unsettled.add(key)
            log.warning(
                "presence write for %r failed (counted again at the next heartbeat): %s",
                key,
                task.exception(),
            )

    async def drain(self) -> None:
        """Wait for every queued store write (tests; shutdown, before closing the backend)."""
        while self._writes:
            await asyncio.gather(*self._writes.values(), return_exceptions=True)

    # -- heartbeat, expiry, rejoin -------------------------------------------------------------------------

    async def beat(self) -> None:
        """One heartbeat: keep this instance's connections counted for ``timeout`` more; if the store had
        expired this instance, rejoin its live connections."""
        now = self._clock()
        alive = await self.backend.presence_heartbeat(
            self.instance, now=now, ttl_seconds=self.timeout_seconds
        )
        last, self._last_beat = self._last_beat, now
        if last is not None and (now - last).total_seconds() > self.timeout_seconds - self.interval_seconds:
            # This instance could not reach the store for so long that others, cut off with it, may be past
            # their deadline though alive: let them beat again before it expires anyone.
            self._hold_expiry_until = now + timedelta(seconds=self.timeout_seconds)
        keys, self._unsettled = self._unsettled, set()
        if not alive and self._local:
            if self._beaten:
                log.warning(
                    "presence: the store had expired this instance (silent for over %ss); rejoining %d "
                    "connections",
                    self.timeout_seconds,
                    self.connections,
                )
            keys.update(self._local)
        for key in keys:  # each after the writes already queued for it
            self._queue(key, functools.partial(self._settle, key))
        self._beaten = True

    async def _settle(self, key: _Key, now: datetime) -> None:
        """Make the store count exactly the connections of ``key`` open now (the writes queued before this
        one have run; those queued after it are relative to this count)."""
        member = self._members.get(key) or Member(key[1])
        await self.backend.presence_rejoin(
            key[0], member, instance=self.instance, connections=self._local.get(key, 0), now=now
        )

    async def expire(self) -> datetime | None:
        """Expire the instances past their deadline; return the next deadline (``None``: no instance).

        For one timeout after this instance's heartbeats failed for long (the store was unreachable, or this
        process paused), it expires nobody and answers when it will again."""
        now = self._clock()
        if self._hold_expiry_until is not None and now < self._hold_expiry_until:
            return self._hold_expiry_until
        return await self.backend.presence_expire(now=now, ttl_seconds=self.timeout_seconds)

    async def start(self) -> None:
        """Beat once (so the store knows this instance before any join), then every interval; and expire
        silent instances when they are due. Both in tasks of their own."""
        await self.beat()
        loop = asyncio.get_running_loop()
        if self._heartbeat is None:
            self._heartbeat = loop.create_task(self._beat_forever(), name="room-gateway presence heartbeat")
        if self._reaper is None:
            self._reaper = loop.create_task(self._expire_forever(), name="room-gateway presence expiry")

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.beat()
            except Exception as exc:  # the store is down: keep trying, the next beat may reach it
                log.warning("presence heartbeat failed: %s", exc)

    async def _expire_forever(self) -> None:
        while True:
            delay = self.interval_seconds
            try:
                due = await self.expire()
            except Exception as exc:  # the store is down: try again an interval later
                log.warning("presence expiry failed: %s", exc)
            else:
                if due is not None:
                    # Just past the deadline (it is exclusive). No later than an interval: a deadline from a
                    # skewed clock, or an instance's first heartbeat, cannot leave the reaper asleep for long.
                    wait = (due - self._clock()).total_seconds() + EXPIRY_SLACK_SECONDS
                    delay = min(delay, max(EXPIRY_SLACK_SECONDS, wait))
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Stop the heartbeat and the reaper, and wait for the queued writes (the leaves of the streams just
        ended)."""
        for task in (self._heartbeat, self._reaper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._heartbeat = self._reaper = None
        await self.drain()
