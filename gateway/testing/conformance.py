"""The backend conformance suite: one set of tests that every backend — ours or a third party's — passes.

A backend proves itself with one small test file::

    import pytest
    from gateway.testing.conformance import BackendContract
    from my_package import MyBackend

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend_factory(self):
            return lambda: MyBackend("my://localhost/test")

``backend_factory`` returns a callable that makes a new, *unopened* backend each call. Backends that several
gateway processes share (SQL server, Redis) subclass :class:`SharedBackendContract` instead: its factory's
instances must all reach the same store, and the suite checks that a write through one reaches listeners of
another. The suite uses fresh room ids in every test, so it runs against a store that holds other data.

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

from gateway.core.backend import Backend
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
from gateway.core.service import RoomService
from gateway.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound, Unavailable

BackendFactory = Callable[[], Backend]
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

    async def backend(self) -> Backend:
        """Another opened instance over the same store (another gateway process, for shared stores)."""
        backend = self._factory()
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


async def nothing_more(sub: Subscription, wait: float = 0.2) -> None:
    try:
        note = await asyncio.wait_for(sub.__anext__(), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected notification {note!r}")


_MEMBER_KINDS = frozenset({ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT})
#: The presence timeout the presence scenarios heartbeat with.
TTL = 30.0


class PresenceContract:
    """The presence operations of the contract (``presence_*``, ``get_presence``, ``count_users``).

    Mixed into :class:`BackendContract`. Two gateway instances are two instance ids: over one backend for a
    store of one process, over two backends of the factory for a shared store
    (:class:`SharedBackendContract`), so that counts, joins and leaves are summed across processes. Every
    scenario heartbeats an instance before it joins (as the gateway does) and passes explicit times: expiry
    is judged by the ``now`` of the heartbeats, never by the wall clock.
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
    async def test_a_silent_instance_expires_within_the_ttl(self, ctx: Ctx) -> None:
        (a, ia), (b, ib) = await self._two_instances(ctx)  # both heartbeat at T0 with TTL
        room_id = ctx.room_id()
        await a.create_room(ctx.room())
        start = ctx.now
        await a.presence_join(room_id, Member("alice"), instance=ia, now=ctx.tick())
        await a.presence_join(room_id, Member("bob"), instance=ia, now=ctx.tick())
        await b.presence_join(room_id, Member("bob"), instance=ib, now=ctx.tick())
        # A beats at T0+10: counted until T0+40, whatever B's heartbeats say before then.
        await a.presence_heartbeat(ia, now=start + timedelta(seconds=10), ttl_seconds=TTL)
        await b.presence_heartbeat(ib, now=start + timedelta(seconds=35), ttl_seconds=TTL)
        assert await self._connections(b, room_id) == {"alice": 1, "bob": 2}
        assert len(await self._member_log(b, room_id)) == 2
        # A falls silent; B's next beat after T0+40 drops A's connections and logs the users they were
        # the last of (alice), not the others (bob is still on B).
        await b.presence_heartbeat(ib, now=start + timedelta(seconds=41), ttl_seconds=TTL)
        assert await self._connections(b, room_id) == {"bob": 1}
        assert (await b.count_users([room_id])).get(room_id) == 1
        await b.presence_heartbeat(ib, now=start + timedelta(seconds=42), ttl_seconds=TTL)
        joined, left = ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT
        assert await self._member_log(b, room_id) == [(joined, "alice"), (joined, "bob"), (left, "alice")]
        expired = (await b.read_changes(room_id, after_seq=0, limit=100, kinds=_MEMBER_KINDS)).changes[-1]
        assert expired.member is not None and expired.member.connections == 0

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


class BackendContract(PresenceContract):
    """The contract of :class:`gateway.core.backend.Backend`. Subclass it and define ``backend_factory``."""

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
        contents = await backend.get_contents(room_id)
        assert contents == {f"v{i}": value for i, value in enumerate(values)}

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
        assert await backend.get_contents(room_id) == {}
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
        await backend.delete_room_data(room_id)
        assert await backend.get_contents(room_id) == {}
        assert await backend.get_variable(room_id, "x") is None
        assert await backend.get_contents(other) == {"x": 1}

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
            got = [await receive(sub) for _ in range(21)]
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
            await backend.publish_event(room_id, Event("ping", {"n": 1}, ctx.tick()))
            assert await receive(sub) == Event("ping", {"n": 1}, ctx.now)
            await nothing_more(sub)
        finally:
            sub.close()

    @scenario
    async def test_signals_reach_the_room_or_every_room(self, ctx: Ctx) -> None:
        backend = await ctx.backend()
        a = await backend.subscribe(Topic("variable", ctx.room_id("a"), "x"))
        b = await backend.subscribe(Topic("event", ctx.room_id("b"), "e"))
        try:
            signal = RoomSignal(ctx.room_id("a"), SignalKind.DELETED, ctx.tick())
            await backend.publish_signal(signal)
            assert await receive(a) == signal
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
            got = await receive(variables)
            assert isinstance(got, Variable) and (got.value, got.version) == ("hello", 1)
            await one.publish_event(room_id, Event("e", [1, 2], ctx.tick()))
            assert await receive(events) == Event("e", [1, 2], ctx.now)
            signal = RoomSignal(room_id, SignalKind.INVALIDATED, ctx.tick())
            await one.publish_signal(signal)
            assert await receive(variables) == signal
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
