"""The backend conformance suite: one set of tests that every backend — ours or a third party's — passes.

A backend proves itself with one small test file::

    import pytest
    from gateway.testing.conformance import BackendContract
    from my_package import MyBackend

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend_factory(self):
            return lambda: MyBackend("my://localhost/test")

``backend_factory`` returns a callable that makes a new, *unopened* backend each call; the suite calls it
with a ``history=`` keyword (a :class:`~gateway.core.backend.History`) when a test needs a retention of its
own, so pass keywords on (``lambda **kw: MyBackend(url, **kw)``). Backends that several gateway processes
share (SQL server, Redis) subclass :class:`SharedBackendContract` instead: its factory's instances must all
reach the same store, and the suite checks that a write through one reaches listeners of another. A backend
whose store outlives it sets ``durable = True``: the suite then checks that a new instance over the same
store keeps the epoch and the log. The suite uses fresh room ids in every test, so it runs against a store
that holds other data.

The tests are plain synchronous pytest tests that run their scenario in a fresh event loop, so they work
whatever async plugin (or none) the backend's own test suite uses. The module is also registered as a pytest
plugin (entry point ``pytest11``), which only adds the ``room_gateway_conformance`` marker.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from gateway.core.backend import Backend, History
from gateway.core.hub import Subscription, Topic
from gateway.core.models import (
    UNSET,
    Change,
    ChangeKind,
    Event,
    Member,
    Presence,
    Room,
    RoomSignal,
    RoomStatus,
    SignalKind,
    Variable,
)
from gateway.core.outbox import Outbox
from gateway.core.service import RoomService
from gateway.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound, OutOfRange, Unavailable

BackendFactory = Callable[..., Backend]
_C = TypeVar("_C")  # a contract class: BackendContract or one of its mixins (PresenceContract)

#: How long a notification may take to arrive (shared stores deliver through a server).
DELIVERY_TIMEOUT = 5.0
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "room_gateway_conformance: the backend conformance suite")


class Ctx:
    """What a scenario gets: opened backends over one store, a fresh room-id prefix, a service."""

    def __init__(self, factory: BackendFactory) -> None:
        self._factory = factory
        self.opened: list[Backend] = []
        self.prefix = f"conf-{uuid.uuid4().hex[:12]}-"
        self.now = T0

    async def backend(self, history: History | None = None, *, outbox: Outbox | None = None) -> Backend:
        """Another opened instance over the same store (another gateway process, for shared stores)."""
        backend = self._factory() if history is None else self._factory(history=history)
        backend.outbox = outbox
        await backend.open()
        self.opened.append(backend)
        return backend

    def room_id(self, name: str = "room") -> str:
        return self.prefix + name

    def room(self, name: str = "room", **fields: Any) -> Room:
        return Room(room_id=self.room_id(name), create_time=self.now, update_time=self.now, **fields)

    def tick(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    async def close(self) -> None:
        for backend in reversed(self.opened):
            await backend.close()


def scenario(test: Callable[[_C, Ctx], Awaitable[None]]) -> Callable[[_C, BackendFactory], None]:
    """Turn ``async def test_x(self, ctx)`` into a sync pytest test using the ``backend_factory`` fixture."""

    @functools.wraps(test)
    def run(self: _C, backend_factory: BackendFactory) -> None:
        async def main() -> None:
            ctx = Ctx(backend_factory)
            try:
                await asyncio.wait_for(test(self, ctx), timeout=60)
            finally:
                await ctx.close()

        asyncio.run(main())

    del run.__wrapped__  # pytest must see (self, backend_factory), not the scenario's signature
    return pytest.mark.room_gateway_conformance(run)


async def receive(sub: Subscription) -> Any:
    return await asyncio.wait_for(sub.__anext__(), DELIVERY_TIMEOUT)


async def receive_change(sub: Subscription) -> Change:
    note = await receive(sub)
    assert isinstance(note, Change), note
    return note


async def nothing_more(sub: Subscription, wait: float = 0.2) -> None:
    try:
        note = await asyncio.wait_for(sub.__anext__(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected notification {note!r}")


# After Ctx and scenario, which the outbox's part of the suite uses.
from gateway.testing.conformance_outbox import OutboxContract  # noqa: E402

_MEMBER_KINDS = frozenset({ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT})
#: The presence timeout the presence scenarios heartbeat with.
TTL = 30.0


class PresenceContract:
    """The presence operations of the contract (``presence_*``, ``get_presence``, ``count_users``).

    Mixed into :class:`BackendContract`. Two gateway instances are two instance ids: over one backend for a
    store of one process, over two backends of the factory for a shared store
    (:class:`SharedBackendContract`), so that counts, joins and leaves are summed across processes. Every
    scenario heartbeats an instance before it joins (as the gateway does: a join of an instance that is not
    alive counts nothing) and passes explicit times: expiry is judged by the ``now`` of the heartbeats and
    of ``presence_expire``, never by the wall clock.
    """

    async def _two_instances(self, ctx: Ctx) -> tuple[tuple[Backend, str], tuple[Backend, str]]:
        """(backend, instance id) of two gateway instances, both heartbeaten at ``ctx.now``."""
        one = await ctx.backend()
        two = await ctx.backend() if isinstance(self, SharedBackendContract) else one
        pair = ((one, ctx.prefix + "instance-a"), (two, ctx.prefix + "instance-b"))
        for backend, instance in pair:
            await backend.presence_heartbeat(instance, now=ctx.now, ttl_seconds=TTL)
        return pair

    @staticmethod
    async def _member_log(backend: Backend, room_id: str) -> list[tuple[ChangeKind, str]]:
        """The room's MEMBER_JOINED / MEMBER_LEFT changes as (kind, user id), in log order."""
        page = await backend.read_changes(room_id, after_seq=0, limit=1000, kinds=_MEMBER_KINDS)
        return [(c.kind, c.member.user_id if c.member is not None else "") for c in page.changes]

    @staticmethod
    async def _connections(backend: Backend, room_id: str) -> dict[str, int]:
        presence = await backend.get_presence(room_id)
        return {member.user_id: member.connections for member in presence.members}

    @scenario
    async def test_presence_counts_connections_per_user_across_instances(self, ctx: Ctx) -> None:
        (a, ia), (b, ib) = await self._two_instances(ctx)
        room_id, empty = ctx.room_id(), ctx.room_id("empty")
        await a.create_room(ctx.room())
        await a.create_room(ctx.room("empty"))
        first = ctx.tick()
        await a.presence_join(room_id, Member("alice", info={"name": "Alice"}), instance=ia, now=first)
        await a.presence_join(room_id, Member("alice", info={"name": "Alice"}), instance=ia, now=ctx.tick())
        await b.presence_join(room_id, Member("alice", info={"name": "Alice"}), instance=ib, now=ctx.tick())
        await a.presence_join(room_id, Member("bob"), instance=ia, now=ctx.tick())
        for backend in (a, b):  # either instance reads the sum
            presence = await backend.get_presence(room_id)
            assert (presence.num_users, presence.num_connections) == (2, 4)
            assert [(m.user_id, m.connections) for m in presence.members] == [("alice", 3), ("bob", 1)]
            alice = presence.members[0]
            assert alice.info == {"name": "Alice"} and alice.join_time == first
            assert presence.members[1].info == {}
            assert (await backend.count_users([room_id, empty])).get(room_id) == 2
            assert (await backend.count_users([room_id, empty])).get(empty, 0) == 0
            assert await backend.get_presence(empty) == Presence(members=[], num_users=0, num_connections=0)
        # One MEMBER_JOINED per user, however many connections and instances.
        joined = ChangeKind.MEMBER_JOINED
        assert await self._member_log(b, room_id) == [(joined, "alice"), (joined, "bob")]

    @scenario
    async def test_member_joined_and_left_carry_the_member(self, ctx: Ctx) -> None:
        (a, ia), _ = await self._two_instances(ctx)
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        joined_at = ctx.tick()
        await a.presence_join(room_id, Member("alice", info={"avatar": "a.png"}), instance=ia, now=joined_at)
        left_at = ctx.tick()
        await a.presence_leave(room_id, "alice", instance=ia, now=left_at)
        page = await a.read_changes(room_id, after_seq=0, limit=100, kinds=_MEMBER_KINDS)
        join, leave = page.changes
        assert (join.kind, join.time, join.epoch) == (ChangeKind.MEMBER_JOINED, joined_at, a.epoch)
        assert join.member == Member("alice", connections=1, info={"avatar": "a.png"}, join_time=joined_at)
        assert (leave.kind, leave.time, leave.seq) == (ChangeKind.MEMBER_LEFT, left_at, join.seq + 1)
        assert leave.member is not None
        assert (leave.member.user_id, leave.member.connections) == ("alice", 0)

    @scenario
    async def test_member_left_once_when_the_last_connection_closes(self, ctx: Ctx) -> None:
        (a, ia), (b, ib) = await self._two_instances(ctx)
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        for backend, instance in ((a, ia), (a, ia), (b, ib)):
            await backend.presence_join(room_id, Member("alice"), instance=instance, now=ctx.tick())
        await a.presence_join(room_id, Member("bob"), instance=ia, now=ctx.tick())
        await a.presence_leave(room_id, "alice", instance=ia, now=ctx.tick())
        await a.presence_leave(room_id, "alice", instance=ia, now=ctx.tick())
        assert await self._connections(b, room_id) == {"alice": 1, "bob": 1}
        await b.presence_leave(room_id, "alice", instance=ib, now=ctx.tick())
        assert await self._connections(a, room_id) == {"bob": 1}
        await a.presence_leave(room_id, "bob", instance=ia, now=ctx.tick())
        assert await a.get_presence(room_id) == Presence(members=[], num_users=0, num_connections=0)
        assert (await b.count_users([room_id])).get(room_id, 0) == 0
        joined, left = ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT
        assert await self._member_log(a, room_id) == [
            (joined, "alice"),
            (joined, "bob"),
            (left, "alice"),
            (left, "bob"),
        ]
        # A user who comes back joins again.
        await b.presence_join(room_id, Member("alice"), instance=ib, now=ctx.tick())
        assert (await self._member_log(a, room_id))[-1] == (joined, "alice")

    @scenario
    async def test_a_leave_without_a_join_does_nothing(self, ctx: Ctx) -> None:
        (a, ia), (b, ib) = await self._two_instances(ctx)
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        await a.presence_leave(room_id, "nobody", instance=ia, now=ctx.tick())
        await a.presence_join(room_id, Member("alice"), instance=ia, now=ctx.tick())
        # Instance B holds no connection of alice: its leave neither lowers A's count nor logs MEMBER_LEFT.
        await b.presence_leave(room_id, "alice", instance=ib, now=ctx.tick())
        await a.presence_leave(room_id, "alice", instance=ia, now=ctx.tick())
        await a.presence_leave(room_id, "alice", instance=ia, now=ctx.tick())  # one more than it had
        await a.presence_join(room_id, Member("alice"), instance=ia, now=ctx.tick())
        assert await self._connections(a, room_id) == {"alice": 1}
        joined, left = ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT
        assert await self._member_log(a, room_id) == [(joined, "alice"), (left, "alice"), (joined, "alice")]

    @scenario
    async def test_member_changes_reach_room_listeners(self, ctx: Ctx) -> None:
        (a, ia), (b, _) = await self._two_instances(ctx)
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        sub = await b.subscribe(Topic.room(room_id))
        try:
            await a.presence_join(room_id, Member("alice"), instance=ia, now=ctx.tick())
            got = await receive(sub)
            assert isinstance(got, Change) and got.kind is ChangeKind.MEMBER_JOINED
            assert got.member is not None and got.member.user_id == "alice"
            await a.presence_leave(room_id, "alice", instance=ia, now=ctx.tick())
            left = await receive(sub)
            assert isinstance(left, Change) and left.kind is ChangeKind.MEMBER_LEFT
            assert left.seq == got.seq + 1
        finally:
            sub.close()

    @scenario
    async def test_concurrent_joins_and_leaves_log_each_member_change_once(self, ctx: Ctx) -> None:
        (a, ia), (b, ib) = await self._two_instances(ctx)
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        sides = [(a, ia), (b, ib)] * 10
        now = ctx.tick()
        await asyncio.gather(
            *(backend.presence_join(room_id, Member("alice"), instance=i, now=now) for backend, i in sides)
        )
        assert await self._connections(a, room_id) == {"alice": 20}
        await asyncio.gather(
            *(backend.presence_leave(room_id, "alice", instance=i, now=now) for backend, i in sides)
        )
        assert await self._connections(b, room_id) == {}
        joined, left = ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT
        assert await self._member_log(a, room_id) == [(joined, "alice"), (left, "alice")]

    @scenario
    async def test_a_silent_instance_expires_at_its_deadline(self, ctx: Ctx) -> None:
        (a, ia), (b, ib) = await self._two_instances(ctx)  # both heartbeat at T0 with TTL
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        start = ctx.now
        await a.presence_join(room_id, Member("alice"), instance=ia, now=ctx.tick())
        await a.presence_join(room_id, Member("bob"), instance=ia, now=ctx.tick())
        await b.presence_join(room_id, Member("bob"), instance=ib, now=ctx.tick())
        # Expiry answers the earliest deadline: when the next instance expires if it stays silent.
        at = start + timedelta(seconds=1)
        assert await b.presence_expire(now=at, ttl_seconds=TTL) == start + timedelta(seconds=TTL)
        # A beats at T0+10: counted until T0+40, whatever expiry says before then.
        assert await a.presence_heartbeat(ia, now=start + timedelta(seconds=10), ttl_seconds=TTL)
        assert await b.presence_heartbeat(ib, now=start + timedelta(seconds=35), ttl_seconds=TTL)
        a_deadline = start + timedelta(seconds=40)
        for now in (start + timedelta(seconds=35), a_deadline):  # the deadline itself still counts
            assert await b.presence_expire(now=now, ttl_seconds=TTL) == a_deadline
        assert await self._connections(b, room_id) == {"alice": 1, "bob": 2}
        assert len(await self._member_log(b, room_id)) == 2
        # Just past A's deadline, any instance's expiry drops A's connections (two at once: once) and logs
        # the users they were the last of (alice), not the others (bob is still on B).
        past = a_deadline + timedelta(milliseconds=1)
        due = await asyncio.gather(*(one.presence_expire(now=past, ttl_seconds=TTL) for one in (a, b)))
        assert due == [start + timedelta(seconds=35 + TTL)] * 2  # B's is the earliest left
        assert await self._connections(b, room_id) == {"bob": 1}
        assert (await b.count_users([room_id])).get(room_id) == 1
        await b.presence_expire(now=past + timedelta(seconds=1), ttl_seconds=TTL)
        joined, left = ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT
        assert await self._member_log(b, room_id) == [(joined, "alice"), (joined, "bob"), (left, "alice")]
        expired = (await b.read_changes(room_id, after_seq=0, limit=100, kinds=_MEMBER_KINDS)).changes[-1]
        assert expired.member is not None and expired.member.connections == 0

    @scenario
    async def test_an_expired_instance_learns_it_and_rejoins(self, ctx: Ctx) -> None:
        """An instance expired while it lived (paused past the timeout) is told by its next heartbeat; its
        joins count nothing until it rejoins, and a rejoin counts exactly what it says."""
        (a, ia), (b, ib) = await self._two_instances(ctx)
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        start = ctx.now
        for user in ("alice", "alice", "bob"):
            await a.presence_join(room_id, Member(user, info={"n": user}), instance=ia, now=ctx.tick())
        await b.presence_join(room_id, Member("bob"), instance=ib, now=ctx.tick())
        await b.presence_heartbeat(ib, now=start + timedelta(seconds=35), ttl_seconds=TTL)
        await b.presence_expire(now=start + timedelta(seconds=35), ttl_seconds=TTL)  # A is past T0+30
        assert await self._connections(b, room_id) == {"bob": 1}
        # A, unaware, goes on: a join and a leave of an expired instance count nothing.
        later = start + timedelta(seconds=36)
        await a.presence_join(room_id, Member("carol"), instance=ia, now=later)
        await a.presence_leave(room_id, "alice", instance=ia, now=later)
        assert await self._connections(b, room_id) == {"bob": 1}
        # Its heartbeat says so (once: it is alive again afterwards), and it rejoins what is still open.
        assert not await a.presence_heartbeat(ia, now=later, ttl_seconds=TTL)
        assert await a.presence_heartbeat(ia, now=later, ttl_seconds=TTL)
        rejoined = later + timedelta(milliseconds=1)
        for user, connections in (("alice", 1), ("bob", 1), ("carol", 1)):
            member = Member(user, info={"n": user})
            await a.presence_rejoin(room_id, member, instance=ia, connections=connections, now=rejoined)
        assert await self._connections(b, room_id) == {"alice": 1, "bob": 2, "carol": 1}
        await a.presence_rejoin(room_id, Member("alice"), instance=ia, connections=3, now=ctx.tick())
        await a.presence_rejoin(room_id, Member("alice"), instance=ia, connections=2, now=ctx.tick())
        assert await self._connections(b, room_id) == {"alice": 2, "bob": 2, "carol": 1}  # exactly, not more
        await a.presence_rejoin(room_id, Member("dan"), instance="never-alive", connections=1, now=ctx.tick())
        joined, left = ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT
        assert await self._member_log(b, room_id) == [
            (joined, "alice"),
            (joined, "bob"),
            (left, "alice"),
            (joined, "alice"),
            (joined, "carol"),
        ]
        page = await b.read_changes(room_id, after_seq=0, limit=100, kinds=_MEMBER_KINDS)
        assert page.changes[-2].member == Member("alice", 1, {"n": "alice"}, rejoined)
        # A count of 0 drops the instance's connections of the user: carol leaves; bob stays, through B.
        for user in ("carol", "bob", "nobody"):
            await a.presence_rejoin(room_id, Member(user), instance=ia, connections=0, now=ctx.tick())
        assert await self._connections(b, room_id) == {"alice": 2, "bob": 1}
        assert (await self._member_log(b, room_id))[5:] == [(left, "carol")]
        # Its connections count as any others: they leave one by one, and expire with the instance.
        await a.presence_leave(room_id, "alice", instance=ia, now=ctx.tick())
        assert await self._connections(b, room_id) == {"alice": 1, "bob": 1}
        await b.presence_heartbeat(ib, now=later + timedelta(seconds=TTL), ttl_seconds=TTL)
        await b.presence_expire(now=later + timedelta(seconds=TTL + 1), ttl_seconds=TTL)
        assert await self._connections(b, room_id) == {"bob": 1}
        assert (await self._member_log(b, room_id))[5:] == [(left, "carol"), (left, "alice")]

    @scenario
    async def test_a_heartbeat_says_whether_the_instance_was_alive(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        instance = ctx.prefix + "instance"
        assert not await backend.presence_heartbeat(instance, now=ctx.now, ttl_seconds=TTL)  # its first
        assert await backend.presence_heartbeat(instance, now=ctx.tick(), ttl_seconds=TTL)
        # Never heartbeaten: its joins count nothing (it would never expire).
        await backend.presence_join(ctx.room_id(), Member("x"), instance=ctx.prefix + "other", now=ctx.now)
        assert await self._connections(backend, ctx.room_id()) == {}

    @scenario
    async def test_presence_is_per_room_and_ordered_by_user_id(self, ctx: Ctx) -> None:
        (a, ia), (b, ib) = await self._two_instances(ctx)
        one, two = ctx.room_id("one"), ctx.room_id("two")
        await a.create_room(ctx.room("one"))
        await a.create_room(ctx.room("two"))
        for user in ("carol", "alice", "Zed", "bob", "émile"):
            await a.presence_join(one, Member(user), instance=ia, now=ctx.tick())
        await b.presence_join(two, Member("alice"), instance=ib, now=ctx.tick())
        presence = await b.get_presence(one)
        # Code-point order of user id, as rooms are listed.
        assert [m.user_id for m in presence.members] == ["Zed", "alice", "bob", "carol", "émile"]
        assert (presence.num_users, presence.num_connections) == (5, 5)
        assert await self._connections(a, two) == {"alice": 1}
        assert await a.count_users([two, one]) == {one: 5, two: 1}

    @scenario
    async def test_a_deleted_room_has_no_presence(self, ctx: Ctx) -> None:
        (a, ia), (b, _) = await self._two_instances(ctx)
        room = ctx.room()
        await a.create_room(room)
        await a.presence_join(room.room_id, Member("alice"), instance=ia, now=ctx.tick())
        room.status, room.update_time = RoomStatus.DELETED, ctx.tick()
        await a.delete_room(room)
        assert await b.get_presence(room.room_id) == Presence(members=[], num_users=0, num_connections=0)
        assert (await b.count_users([room.room_id])).get(room.room_id, 0) == 0
        # The stream's leave comes after the deletion: the log the deletion dropped stays empty.
        await a.presence_leave(room.room_id, "alice", instance=ia, now=ctx.tick())
        assert await self._member_log(b, room.room_id) == []


class BackendContract(PresenceContract, OutboxContract):
    """The contract of :class:`gateway.core.backend.Backend`. Subclass it and define ``backend_factory``."""

    #: Whether a new instance over the same store finds the same log and epoch (the store outlives it).
    durable = False

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        raise NotImplementedError(
            "define a backend_factory fixture returning a callable that makes a backend"
        )

    # -- rooms --------------------------------------------------------------------------------------------

    @scenario
    async def test_room_round_trip(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room = ctx.room(display_name="Lobby", description="d", jurisdiction="eu", settings={"size": 5})
        await backend.create_room(room)
        got = await backend.get_room(room.room_id)
        assert got == room
        assert await backend.get_room(ctx.room_id("missing")) is None

    @scenario
    async def test_room_ids_are_never_reused(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room = ctx.room()
        await backend.create_room(room)
        with pytest.raises(AlreadyExists):
            await backend.create_room(ctx.room())
        room.status = RoomStatus.DELETED
        await backend.save_room(room)
        with pytest.raises(AlreadyExists):
            await backend.create_room(ctx.room())

    @scenario
    async def test_save_room_overwrites_fields(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room = ctx.room(settings={"a": [1, 2]})
        await backend.create_room(room)
        room.display_name, room.settings, room.status = "New", {"b": {"c": None}}, RoomStatus.CLOSED
        room.update_time = ctx.tick()
        await backend.save_room(room)
        assert await backend.get_room(room.room_id) == room

    @scenario
    async def test_rooms_are_listed_in_code_point_order(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        names = ["b", "B", "a", "é", "a/b", "a-b", "Z", "~", "日本"]
        for name in names:
            await backend.create_room(ctx.room(name))
        expected = sorted(ctx.room_id(n) for n in names)  # Python sorts str by code point

        async def listed(start: str, inclusive: bool, limit: int) -> list[str]:
            rooms = await backend.list_rooms(start=start, inclusive=inclusive, limit=limit)
            return [r.room_id for r in rooms if r.room_id.startswith(ctx.prefix)]

        assert await listed(ctx.prefix, True, 100) == expected
        assert await listed(expected[2], True, 3) == expected[2:5]
        assert await listed(expected[2], False, 3) == expected[3:6]
        assert await listed(expected[-1], False, 100) == []
        everything = await backend.list_rooms(start="", inclusive=True, limit=100000)
        ids = [r.room_id for r in everything]
        assert ids == sorted(ids)
        assert set(expected) <= set(ids)

    @scenario
    async def test_get_rooms_returns_existing_in_order(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        for name in ("c", "a", "b"):
            await backend.create_room(ctx.room(name))
        wanted = [ctx.room_id("c"), ctx.room_id("missing"), ctx.room_id("a"), ctx.room_id("a")]
        rooms = await backend.get_rooms(wanted)
        assert [r.room_id for r in rooms] == [ctx.room_id("a"), ctx.room_id("c")]

    # -- variables ----------------------------------------------------------------------------------------

    @scenario
    async def test_variable_versions_increase(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        assert await backend.get_variable(room_id, "x") is None
        first = await backend.set_variable(room_id, "x", 1, expected_version=None, now=ctx.tick())
        second = await backend.set_variable(room_id, "x", 2, expected_version=None, now=ctx.tick())
        assert first is not None and second is not None
        assert (first.version, second.version) == (1, 2)
        assert await backend.get_variable(room_id, "x") == Variable("x", 2, 2, ctx.now)

    @scenario
    async def test_json_values_round_trip(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        values: list[Any] = [
            None,
            True,
            False,
            0,
            -17,
            2**53,
            1.5,
            "",
            "héllo \u2603 \U0001f600",
            [],
            [1, "two", None, [3.25]],
            {},
            {"nested": {"list": [{"a": None}], "unicode": "日本"}, "n": -0.5},
        ]
        for i, value in enumerate(values):
            await backend.set_variable(room_id, f"v{i}", value, expected_version=None, now=ctx.tick())
        for i, value in enumerate(values):
            got = await backend.get_variable(room_id, f"v{i}")
            assert got is not None and got.value == value and type(got.value) is type(value)
        snapshot = await backend.get_contents(room_id)
        assert snapshot.contents == {f"v{i}": value for i, value in enumerate(values)}

    @scenario
    async def test_compare_and_set(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        with pytest.raises(Aborted):
            await backend.set_variable(room_id, "x", 1, expected_version=1, now=ctx.tick())
        v1 = await backend.set_variable(room_id, "x", 1, expected_version=0, now=ctx.tick())
        assert v1 is not None and v1.version == 1
        with pytest.raises(Aborted):
            await backend.set_variable(room_id, "x", 2, expected_version=0, now=ctx.tick())
        v2 = await backend.set_variable(room_id, "x", 2, expected_version=1, now=ctx.tick())
        assert v2 is not None and v2.version == 2
        got = await backend.get_variable(room_id, "x")
        assert got is not None and got.value == 2

    @scenario
    async def test_delete_keeps_versions_increasing(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        assert await backend.set_variable(room_id, "x", UNSET, expected_version=None, now=ctx.tick()) is None
        await backend.set_variable(room_id, "x", "a", expected_version=None, now=ctx.tick())
        deleted = await backend.set_variable(room_id, "x", UNSET, expected_version=None, now=ctx.tick())
        assert deleted is not None and deleted.deleted and deleted.version == 2
        assert await backend.get_variable(room_id, "x") is None
        assert (await backend.get_contents(room_id)).contents == {}
        with pytest.raises(Aborted):  # unset again: only expected_version 0 matches
            await backend.set_variable(room_id, "x", "b", expected_version=2, now=ctx.tick())
        again = await backend.set_variable(room_id, "x", "b", expected_version=0, now=ctx.tick())
        assert again is not None and again.version == 3

    @scenario
    async def test_room_data_is_wiped(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id, other = ctx.room_id("a"), ctx.room_id("b")
        for rid in (room_id, other):
            await backend.create_room(Room(room_id=rid, create_time=ctx.now, update_time=ctx.now))
            await backend.set_variable(rid, "x", 1, expected_version=None, now=ctx.tick())
        await backend.delete_room(ctx.room("a", status=RoomStatus.DELETED))
        assert (await backend.get_contents(room_id)).contents == {}
        assert await backend.get_variable(room_id, "x") is None
        assert (await backend.get_contents(other)).contents == {"x": 1}
        tombstone = await backend.get_room(room_id)
        assert tombstone is not None and tombstone.status is RoomStatus.DELETED
        with pytest.raises(AlreadyExists):
            await backend.create_room(ctx.room("a"))

    @scenario
    async def test_concurrent_compare_and_set_loses_no_update(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        await backend.set_variable(room_id, "n", 0, expected_version=0, now=ctx.tick())
        successes = 0

        async def increment() -> None:
            nonlocal successes
            for _ in range(20):
                current = await backend.get_variable(room_id, "n")
                assert current is not None and isinstance(current.value, int)
                try:
                    await backend.set_variable(
                        room_id, "n", current.value + 1, expected_version=current.version, now=ctx.tick()
                    )
                except Aborted:
                    continue
                successes += 1
                return

        await asyncio.gather(*(increment() for _ in range(50)))
        final = await backend.get_variable(room_id, "n")
        assert final is not None and final.value == successes and final.version == successes + 1

    # -- realtime -----------------------------------------------------------------------------------------

    @scenario
    async def test_variable_changes_reach_listeners_in_order(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        sub = await backend.subscribe(Topic("variable", room_id, "x"))
        other = await backend.subscribe(Topic("variable", room_id, "y"))
        try:
            for value in range(1, 21):
                await backend.set_variable(room_id, "x", value, expected_version=None, now=ctx.tick())
            await backend.set_variable(room_id, "x", UNSET, expected_version=None, now=ctx.tick())
            changes = [await receive_change(sub) for _ in range(21)]
            assert [c.kind for c in changes] == [ChangeKind.VARIABLE_SET] * 20 + [ChangeKind.VARIABLE_DELETED]
            got = [c.variable for c in changes if c.variable is not None]
            assert [v.version for v in got] == list(range(1, 22))
            assert [v.value for v in got[:20]] == list(range(1, 21))
            assert got[20].deleted
            await nothing_more(other)
        finally:
            sub.close()
            other.close()

    @scenario
    async def test_events_reach_listeners_of_their_name(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        sub = await backend.subscribe(Topic("event", room_id, "ping"))
        try:
            await backend.publish_event(room_id, Event("pong", 0, ctx.tick()))
            await backend.publish_event(ctx.room_id("other"), Event("ping", 0, ctx.tick()))
            sent = await backend.publish_event(room_id, Event("ping", {"n": 1}, ctx.tick()))
            got = await receive_change(sub)
            assert got == sent and got.event == Event("ping", {"n": 1}, ctx.now)
            assert got.kind is ChangeKind.EVENT and got.epoch == backend.epoch
            await nothing_more(sub)
        finally:
            sub.close()

    @scenario
    async def test_signals_reach_the_room_or_every_room(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        a = await backend.subscribe(Topic("variable", ctx.room_id("a"), "x"))
        b = await backend.subscribe(Topic("event", ctx.room_id("b"), "e"))
        try:
            await backend.publish_signal(RoomSignal(ctx.room_id("a"), SignalKind.INVALIDATED, ctx.tick()))
            invalidated = await receive_change(a)
            assert (invalidated.kind, invalidated.seq, invalidated.time) == (
                ChangeKind.CONNECTIONS_INVALIDATED,
                1,
                ctx.now,
            )
            await nothing_more(b)
            everyone = RoomSignal("", SignalKind.INVALIDATED, ctx.tick())
            await backend.publish_signal(everyone)
            assert await receive(a) == everyone
            assert await receive(b) == everyone
        finally:
            a.close()
            b.close()

    @scenario
    async def test_close_ends_subscriptions(self, ctx: Ctx) -> None:
        backend = ctx._factory()
        await backend.open()
        sub = await backend.subscribe(Topic("variable", ctx.room_id(), "x"))
        await backend.close()
        with pytest.raises((Unavailable, StopAsyncIteration)):
            await receive(sub)

    # -- the change log -----------------------------------------------------------------------------------

    @scenario
    async def test_every_write_logs_its_change(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        assert backend.epoch, "a backend has its epoch once opened"
        room_id = ctx.room_id()
        room = ctx.room(display_name="Lobby")
        await backend.create_room(room)
        await backend.set_variable(room_id, "x", {"a": 1}, expected_version=None, now=ctx.tick())
        with pytest.raises(Aborted):  # a refused write logs nothing
            await backend.set_variable(room_id, "x", 2, expected_version=7, now=ctx.tick())
        assert await backend.set_variable(room_id, "y", UNSET, expected_version=None, now=ctx.tick()) is None
        await backend.set_variable(room_id, "x", UNSET, expected_version=None, now=ctx.tick())
        event = await backend.publish_event(room_id, Event("e", [1], ctx.tick()))
        assert (event.seq, event.epoch, event.kind) == (4, backend.epoch, ChangeKind.EVENT)
        room.display_name, room.update_time = "Hall", ctx.tick()
        await backend.save_room(room)
        room.status, room.update_time = RoomStatus.CLOSED, ctx.tick()
        await backend.save_room(room, ChangeKind.ROOM_CLOSED)
        await backend.publish_signal(RoomSignal(room_id, SignalKind.INVALIDATED, ctx.tick()))
        page = await backend.read_changes(room_id, after_seq=0, limit=100)
        assert (page.head_seq, page.epoch, page.first_seq) == (7, backend.epoch, 1)
        assert [c.seq for c in page.changes] == list(range(1, 8))
        assert {c.epoch for c in page.changes} == {backend.epoch}
        kinds = [c.kind for c in page.changes]
        assert kinds == [
            ChangeKind.ROOM_CREATED,
            ChangeKind.VARIABLE_SET,
            ChangeKind.VARIABLE_DELETED,
            ChangeKind.EVENT,
            ChangeKind.ROOM_UPDATED,
            ChangeKind.ROOM_CLOSED,
            ChangeKind.CONNECTIONS_INVALIDATED,
        ]
        created, set_x, deleted_x, logged_event, updated, closed, invalidated = page.changes
        assert created.room is not None and created.room.display_name == "Lobby"
        assert set_x.variable == Variable("x", {"a": 1}, 1, T0 + timedelta(milliseconds=1))
        assert deleted_x.variable is not None and deleted_x.variable.deleted
        assert (deleted_x.variable.name, deleted_x.variable.version) == ("x", 2)
        assert logged_event == event and logged_event.event == Event("e", [1], T0 + timedelta(milliseconds=5))
        assert updated.room is not None and updated.room.display_name == "Hall"
        assert closed.room is not None and closed.room.status is RoomStatus.CLOSED
        assert invalidated.time == ctx.now and invalidated.name == ""
        empty = await backend.read_changes(ctx.room_id("never"), after_seq=0, limit=10)
        assert (empty.changes, empty.head_seq, empty.first_seq) == ([], 0, 1)

    @scenario
    async def test_read_changes_pages_and_filters(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        for i in range(10):
            if i % 2:
                await backend.publish_event(room_id, Event("e", i, ctx.tick()))
            else:
                await backend.set_variable(room_id, "x", i, expected_version=None, now=ctx.tick())
        page = await backend.read_changes(room_id, after_seq=3, limit=4)
        assert [c.seq for c in page.changes] == [4, 5, 6, 7] and page.head_seq == 11
        page = await backend.read_changes(room_id, after_seq=11, limit=4)
        assert page.changes == [] and page.head_seq == 11
        events = await backend.read_changes(
            room_id, after_seq=4, limit=3, kinds=frozenset({ChangeKind.EVENT})
        )
        assert [c.seq for c in events.changes] == [5, 7, 9]
        assert all(c.kind is ChangeKind.EVENT for c in events.changes)
        assert (await backend.read_changes(room_id, after_seq=0, limit=0)).changes == []

    @scenario
    async def test_subscriptions_deliver_what_is_logged(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        room_sub = await backend.subscribe(Topic.room(room_id))
        x_sub = await backend.subscribe(Topic("variable", room_id, "x"))
        try:
            await backend.create_room(ctx.room())
            await backend.set_variable(room_id, "x", 1, expected_version=None, now=ctx.tick())
            await backend.set_variable(room_id, "y", 1, expected_version=None, now=ctx.tick())
            await backend.publish_event(room_id, Event("e", None, ctx.tick()))
            await backend.set_variable(room_id, "x", 2, expected_version=None, now=ctx.tick())
            got = [await receive_change(room_sub) for _ in range(5)]
            logged = (await backend.read_changes(room_id, after_seq=0, limit=10)).changes
            assert got == logged
            assert [c.seq for c in [await receive_change(x_sub), await receive_change(x_sub)]] == [2, 5]
            await nothing_more(x_sub)
        finally:
            room_sub.close()
            x_sub.close()

    @scenario
    async def test_seq_is_gap_free_under_concurrent_writers(self, ctx: Ctx) -> None:
        writers = [await ctx.backend() for _ in range(self._writers)]
        room_id = ctx.room_id()
        await writers[0].create_room(ctx.room())

        async def write(n: int) -> None:
            backend = writers[n % len(writers)]
            for i in range(10):
                if i % 3 == 2:
                    await backend.publish_event(room_id, Event("e", [n, i], ctx.tick()))
                else:
                    await backend.set_variable(
                        room_id, f"v{n % 4}", [n, i], expected_version=None, now=ctx.tick()
                    )

        await asyncio.gather(*(write(n) for n in range(20)))
        page = await writers[-1].read_changes(room_id, after_seq=0, limit=1000)
        assert [c.seq for c in page.changes] == list(range(1, 202)) and page.head_seq == 201
        versions: dict[str, list[int]] = {}
        for change in page.changes:
            if change.variable is not None:
                versions.setdefault(change.name, []).append(change.variable.version)
        for name, seen in versions.items():  # the log orders each variable's versions as they were written
            assert seen == list(range(1, len(seen) + 1)), name

    #: How many instances write at once in the concurrency tests (several for shared stores).
    _writers = 1

    @scenario
    async def test_snapshot_is_a_position_in_the_log(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        await backend.set_variable(room_id, "a", 1, expected_version=None, now=ctx.tick())
        snapshot = await backend.get_contents(room_id)
        assert (snapshot.contents, snapshot.seq, snapshot.epoch) == ({"a": 1}, 2, backend.epoch)
        await backend.set_variable(room_id, "b", 2, expected_version=None, now=ctx.tick())
        after = await backend.read_changes(room_id, after_seq=snapshot.seq, limit=10)
        assert [c.name for c in after.changes] == ["b"]
        fresh = await backend.get_contents(ctx.room_id("never"))
        assert (fresh.contents, fresh.seq) == ({}, 0)

    @scenario
    async def test_retention_by_count(self, ctx: Ctx) -> None:
        backend = await ctx.backend(History(max_changes=5))
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        for i in range(29):
            await backend.set_variable(room_id, "x", i, expected_version=None, now=ctx.tick())
        page = await backend.read_changes(room_id, after_seq=0, limit=100)
        seqs = [c.seq for c in page.changes]
        assert page.head_seq == 30 and seqs[-5:] == list(range(26, 31)), "the last max_changes are kept"
        assert len(seqs) < 30 and page.first_seq > 1, "older changes are dropped"
        assert seqs == list(range(page.first_seq, 31)), "what is kept is the log's tail"

    @scenario
    async def test_retention_by_age(self, ctx: Ctx) -> None:
        backend = await ctx.backend(History(max_age_seconds=60))
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        await backend.set_variable(room_id, "x", 1, expected_version=None, now=ctx.tick())
        ctx.now += timedelta(seconds=30)
        await backend.set_variable(room_id, "x", 2, expected_version=None, now=ctx.tick())
        kept = await backend.read_changes(room_id, after_seq=0, limit=10)
        assert [c.seq for c in kept.changes] == [1, 2, 3], "younger than max_age_seconds: kept"
        ctx.now += timedelta(seconds=45)  # 75 s after the first two, 45 s after the third
        await backend.set_variable(room_id, "x", 3, expected_version=None, now=ctx.tick())
        page = await backend.read_changes(room_id, after_seq=0, limit=10)
        assert [c.seq for c in page.changes] == [3, 4] and page.first_seq == 3

    @scenario
    async def test_live_only_events_when_history_leaves_them_out(self, ctx: Ctx) -> None:
        backend = await ctx.backend(History(events=False))
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        sub = await backend.subscribe(Topic("event", room_id, "e"))
        try:
            sent = await backend.publish_event(room_id, Event("e", 1, ctx.tick()))
            assert (sent.seq, sent.kind) == (0, ChangeKind.EVENT)
            assert await receive_change(sub) == sent
            await backend.set_variable(room_id, "x", 1, expected_version=None, now=ctx.tick())
            page = await backend.read_changes(room_id, after_seq=0, limit=10)
            assert [c.kind for c in page.changes] == [ChangeKind.ROOM_CREATED, ChangeKind.VARIABLE_SET]
            assert page.head_seq == 2
        finally:
            sub.close()

    @scenario
    async def test_delete_room_drops_the_log_and_ends_its_streams(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        room_id = ctx.room_id()
        await backend.create_room(ctx.room())
        await backend.set_variable(room_id, "x", 1, expected_version=None, now=ctx.tick())
        room_sub = await backend.subscribe(Topic.room(room_id))
        x_sub = await backend.subscribe(Topic("variable", room_id, "x"))
        try:
            tombstone = ctx.room(status=RoomStatus.DELETED)
            tombstone.update_time = ctx.tick()
            await backend.delete_room(tombstone)
            for sub in (room_sub, x_sub):
                last = await receive_change(sub)
                assert (last.kind, last.seq) == (ChangeKind.ROOM_DELETED, 3)
                assert last.room is not None and last.room.status is RoomStatus.DELETED
            assert (await backend.read_changes(room_id, after_seq=0, limit=10)).changes == []
            assert (await backend.get_contents(room_id)).contents == {}
        finally:
            room_sub.close()
            x_sub.close()

    @scenario
    async def test_epoch_is_kept_by_a_durable_store(self, ctx: Ctx) -> None:
        first = ctx._factory()
        await first.open()
        room_id = ctx.room_id()
        try:
            await first.create_room(ctx.room())
            await first.set_variable(room_id, "x", 1, expected_version=None, now=ctx.tick())
            before = await first.read_changes(room_id, after_seq=0, limit=10)
        finally:
            await first.close()
        if not self.durable:
            pytest.skip("the store does not outlive its backend (durable = False)")
        again = await ctx.backend()
        assert again.epoch == first.epoch
        after = await again.read_changes(room_id, after_seq=0, limit=10)
        assert after == before
        await again.set_variable(room_id, "x", 2, expected_version=None, now=ctx.tick())
        assert (await again.read_changes(room_id, after_seq=2, limit=10)).changes[0].seq == 3

    # -- the log through the service ----------------------------------------------------------------------

    @scenario
    async def test_service_resume_hands_over_to_live_without_gap_or_duplicate(self, ctx: Ctx) -> None:
        writer = await ctx.backend()
        reader = await ctx.backend() if self._writers > 1 else writer
        writes, listener = RoomService(writer, clock=ctx.tick), RoomService(reader, clock=ctx.tick)
        room_id = ctx.room_id()
        await writes.create_room({"room_id": room_id})
        total = 300
        a_third_written = asyncio.Event()

        async def keep_writing() -> None:
            for i in range(total):
                if i == total // 3:
                    a_third_written.set()
                if i % 5 == 4:
                    await writes.publish_event(room_id, "e", i)
                else:
                    await writes.set_variable(room_id, f"v{i % 7}", i)
                if i % 10 == 0:
                    await asyncio.sleep(0)

        writing = asyncio.create_task(keep_writing())
        try:
            await a_third_written.wait()
            stream = await listener.listen_room(room_id, after_seq=10, epoch=reader.epoch)
            try:
                seqs: list[int] = []
                while not seqs or seqs[-1] < total + 1:
                    change = await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
                    assert change.kind is not ChangeKind.RESET
                    seqs.append(change.seq)
                assert seqs == list(range(11, total + 2)), "every change after the position, once, in order"
                assert stream.position == f"{reader.epoch}:{total + 1}"
            finally:
                await stream.aclose()
        finally:
            await writing

    @scenario
    async def test_service_resume_from_an_unservable_position_resets(self, ctx: Ctx) -> None:
        backend = await ctx.backend(History(max_changes=3))
        service = RoomService(backend, clock=ctx.tick)
        room_id = ctx.room_id()
        for i in range(9):
            await service.set_variable(room_id, "x", i)  # ROOM_CREATED, then 9 writes: head 10
        for after_seq, epoch in ((1, backend.epoch), (4, "another-epoch"), (11, backend.epoch)):
            stream = await service.listen_room(room_id, after_seq=after_seq, epoch=epoch)
            try:
                reset = await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
                assert (reset.kind, reset.seq, reset.epoch) == (ChangeKind.RESET, 10, backend.epoch)
                await service.set_variable(room_id, "x", "live")
                live = await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
                assert live.kind is ChangeKind.VARIABLE_SET and live.seq == reset.seq + 1
            finally:
                await stream.aclose()
            room_id = ctx.room_id(f"again-{after_seq}")
            for i in range(9):
                await service.set_variable(room_id, "x", i)
        with pytest.raises(OutOfRange):
            await service.list_changes(room_id, after_seq=1)
        with pytest.raises(OutOfRange):
            await service.list_changes(room_id, after_seq=8, epoch="another-epoch")
        listed = await service.list_changes(room_id, after_seq=8, max_results=1)
        assert ([c.seq for c in listed.changes], listed.more, listed.head_seq) == ([9], True, 10)

    @scenario
    async def test_service_listen_events_resumes(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        service = RoomService(backend, clock=ctx.tick)
        room_id = ctx.room_id()
        await service.publish_event(room_id, "chat", 1)  # seq 2, after ROOM_CREATED
        await service.set_variable(room_id, "x", 1)
        await service.publish_event(room_id, "other", 2)
        await service.publish_event(room_id, "chat", 3)
        stream = await service.listen_events(room_id, "chat", after_seq=0, epoch=backend.epoch)
        try:
            first = await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
            assert first.data == 1 and stream.position == f"{backend.epoch}:2"
            second = await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
            assert second.data == 3 and stream.position == f"{backend.epoch}:5"
            await service.publish_event(room_id, "chat", 4)
            live = await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
            assert live.data == 4 and stream.position == f"{backend.epoch}:6"
        finally:
            await stream.aclose()

    @scenario
    async def test_service_delete_ends_room_streams_with_their_last_change(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        service = RoomService(backend, clock=ctx.tick)
        room_id = ctx.room_id()
        await service.set_variable(room_id, "x", 1)
        contents = await service.get_room_contents(room_id)
        assert (contents.seq, contents.epoch) == (2, backend.epoch)
        stream = await service.listen_room(room_id, after_seq=contents.seq, epoch=contents.epoch)
        try:
            await service.close_room(room_id)
            await service.delete_room(room_id)
            kinds = [(await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)).kind for _ in range(2)]
            assert kinds == [ChangeKind.ROOM_CLOSED, ChangeKind.ROOM_DELETED]
            with pytest.raises(NotFound):
                await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
        finally:
            await stream.aclose()

    # -- the rules, through the service -------------------------------------------------------------------

    @scenario
    async def test_service_lifecycle(self, ctx: Ctx) -> None:
        service = RoomService(await ctx.backend(), clock=ctx.tick)
        room_id = ctx.room_id()
        await service.set_variable(room_id, "x", {"v": 1})  # implicit room
        assert (await service.get_room(room_id)).status is RoomStatus.OPEN
        with pytest.raises(FailedPrecondition):
            await service.delete_room(room_id)
        await service.close_room(room_id)
        with pytest.raises(FailedPrecondition):
            await service.set_variable(room_id, "x", 2)
        assert (await service.get_room_contents(room_id)).contents == {"x": {"v": 1}}
        await service.delete_room(room_id)
        assert (await service.get_room(room_id)).status is RoomStatus.DELETED
        with pytest.raises(NotFound, match="deleted"):
            await service.get_variable(room_id, "x")
        with pytest.raises(AlreadyExists):
            await service.create_room({"room_id": room_id})
        with pytest.raises(NotFound):
            await service.set_variable(room_id, "x", 3)

    @scenario
    async def test_service_listen_sends_current_then_changes(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        service = RoomService(backend, clock=ctx.tick)
        room_id = ctx.room_id()
        await service.set_variable(room_id, "x", "first")
        stream = await service.listen_variable(room_id, "x")
        try:
            assert (await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)).value == "first"
            await service.set_variable(room_id, "x", "second")
            got = await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
            assert (got.value, got.version) == ("second", 2)
            await service.close_room(room_id)
            await service.delete_room(room_id)
            with pytest.raises(NotFound):
                await asyncio.wait_for(stream.__anext__(), DELIVERY_TIMEOUT)
        finally:
            await stream.aclose()


class SharedBackendContract(BackendContract):
    """For backends that several gateway processes share: instances of the factory reach one store."""

    _writers = 3
    shared = True

    @scenario
    async def test_instances_share_one_log_and_epoch(self, ctx: Ctx) -> None:
        one, two = await ctx.backend(), await ctx.backend()
        assert one.epoch == two.epoch
        room_id = ctx.room_id()
        sub = await two.subscribe(Topic.room(room_id))
        try:
            await one.create_room(ctx.room())
            await two.set_variable(room_id, "x", 1, expected_version=None, now=ctx.tick())
            await one.publish_event(room_id, Event("e", 1, ctx.tick()))
            got = [await receive_change(sub) for _ in range(3)]
            assert [c.seq for c in got] == [1, 2, 3]
            assert got == (await one.read_changes(room_id, after_seq=0, limit=10)).changes
        finally:
            sub.close()

    @scenario
    async def test_writes_reach_listeners_of_another_instance(self, ctx: Ctx) -> None:
        one, two = await ctx.backend(), await ctx.backend()
        room_id = ctx.room_id()
        await one.create_room(ctx.room())
        assert await two.get_room(room_id) is not None
        variables = await two.subscribe(Topic("variable", room_id, "x"))
        events = await two.subscribe(Topic("event", room_id, "e"))
        try:
            await one.set_variable(room_id, "x", "hello", expected_version=None, now=ctx.tick())
            got = (await receive_change(variables)).variable
            assert isinstance(got, Variable) and (got.value, got.version) == ("hello", 1)
            sent = await one.publish_event(room_id, Event("e", [1, 2], ctx.tick()))
            assert await receive_change(events) == sent
            assert sent.event == Event("e", [1, 2], ctx.now)
            await one.publish_signal(RoomSignal(room_id, SignalKind.INVALIDATED, ctx.tick()))
            assert (await receive_change(variables)).kind is ChangeKind.CONNECTIONS_INVALIDATED
        finally:
            variables.close()
            events.close()

    @scenario
    async def test_compare_and_set_across_instances(self, ctx: Ctx) -> None:
        one, two = await ctx.backend(), await ctx.backend()
        room_id = ctx.room_id()
        await one.create_room(ctx.room())
        await one.set_variable(room_id, "x", 1, expected_version=0, now=ctx.tick())
        await two.set_variable(room_id, "x", 2, expected_version=1, now=ctx.tick())
        with pytest.raises(Aborted):
            await one.set_variable(room_id, "x", 3, expected_version=1, now=ctx.tick())
