"""The webhook outbox's part of the conformance suite (:class:`OutboxContract`, mixed into
:class:`~gateway.testing.conformance.BackendContract`).

A backend that sets ``supports_outbox`` proves here that it writes a change's messages with the change,
leases them to one claimer at a time, settles attempts once, and keeps them for the management API; a
shared store also proves that two instances claiming at once never get the same attempt. A backend without
an outbox skips these tests.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.core.backend import Backend, History
from gateway.core.models import (
    JSON,
    UNSET,
    ChangeKind,
    Event,
    Member,
    Room,
    RoomSignal,
    RoomStatus,
    SignalKind,
    Unset,
)
from gateway.core.outbox import Attempt, EndpointState, MessageStatus, Outbox, OutboxMessage, Route, Settled
from gateway.errors import Aborted

# Imported by gateway.testing.conformance once it has defined these (its BackendContract mixes this in).
from gateway.testing.conformance import Ctx, scenario

LEASE = 30.0


class OutboxContract:
    """``outbox_*`` and the messages every logged change writes (:mod:`gateway.core.outbox`)."""

    #: Set by :class:`~gateway.testing.conformance.SharedBackendContract`: instances share one store.
    shared = False
    durable = False

    @staticmethod
    def _routes(ctx: Ctx) -> tuple[str, str, Outbox]:
        """Two endpoints of this test: ``every`` takes everything, ``some`` variable.set and room.* of rooms
        named ``…-pub-*``."""
        every, some = ctx.prefix + "every", ctx.prefix + "some"
        outbox = Outbox(
            [Route(every), Route(some, events=("variable.set", "room.*"), rooms=(ctx.room_id("pub-*"),))],
            first_delay_seconds=1.0,
        )
        return every, some, outbox

    async def _two_outbox_instances(self, ctx: Ctx) -> tuple[str, Backend, Backend, Room]:
        """The endpoint taking every change, two instances of the backend on one store (one, twice, for a
        store of its own), and a room created through the first."""
        every, _, outbox = self._routes(ctx)
        one = await self._backend(ctx, outbox)
        two = await self._backend(ctx, outbox) if self.shared else one
        room = ctx.room()
        await one.create_room(room)
        return every, one, two, room

    async def _backend(self, ctx: Ctx, outbox: Outbox, history: History | None = None) -> Backend:
        backend = await ctx.backend(history, outbox=outbox)
        if not backend.supports_outbox:
            pytest.skip(f"{type(backend).__name__} has no webhook outbox (supports_outbox = False)")
        return backend

    @staticmethod
    async def _claim_all(
        backend: Backend, endpoint: str, ctx: Ctx, after: float = 60.0
    ) -> list[OutboxMessage]:
        return await backend.outbox_claim(
            endpoint, now=ctx.now + timedelta(seconds=after), lease_seconds=LEASE, limit=1000
        )

    @scenario
    async def test_every_logged_change_writes_a_message_per_matching_endpoint(self, ctx: Ctx) -> None:
        every, some, outbox = self._routes(ctx)
        woken: list[int] = []
        outbox.on_written(lambda: woken.append(1))
        backend = await self._backend(ctx, outbox)
        pub, other = ctx.room("pub-1"), ctx.room("other")
        for room in (pub, other):
            await backend.create_room(room)
            await backend.set_variable(room.room_id, "v", {"a": 1}, expected_version=None, now=ctx.tick())
        await backend.set_variable(pub.room_id, "v", {"a": 2}, expected_version=None, now=ctx.tick())
        await backend.set_variable(pub.room_id, "v", UNSET, expected_version=None, now=ctx.tick())
        await backend.publish_event(pub.room_id, Event("e", [1], ctx.tick()))
        await backend.publish_signal(RoomSignal(pub.room_id, SignalKind.INVALIDATED, ctx.tick()))
        await backend.presence_heartbeat(ctx.prefix + "i", now=ctx.tick(), ttl_seconds=30)
        await backend.presence_join(pub.room_id, Member("u"), instance=ctx.prefix + "i", now=ctx.tick())
        await backend.presence_leave(pub.room_id, "u", instance=ctx.prefix + "i", now=ctx.tick())
        pub.status, pub.update_time = RoomStatus.CLOSED, ctx.tick()
        await backend.save_room(pub, ChangeKind.ROOM_CLOSED)
        pub.status, pub.update_time = RoomStatus.DELETED, ctx.tick()
        await backend.delete_room(pub)
        assert woken, "outbox.written() was never called"

        got = await self._claim_all(backend, every, ctx)
        kinds = [(m.room_id, m.change.kind) for m in got if m.change is not None]
        assert sorted(kinds, key=str) == sorted(
            [(other.room_id, ChangeKind.ROOM_CREATED), (other.room_id, ChangeKind.VARIABLE_SET)]
            + [
                (pub.room_id, kind)
                for kind in (
                    ChangeKind.ROOM_CREATED,
                    ChangeKind.VARIABLE_SET,
                    ChangeKind.VARIABLE_SET,
                    ChangeKind.VARIABLE_DELETED,
                    ChangeKind.EVENT,
                    ChangeKind.CONNECTIONS_INVALIDATED,
                    ChangeKind.MEMBER_JOINED,
                    ChangeKind.MEMBER_LEFT,
                    ChangeKind.ROOM_CLOSED,
                    ChangeKind.ROOM_DELETED,
                )
            ],
            key=str,
        )
        assert len({m.id for m in got}) == len(got)
        pub_changes = sorted(
            (m.change for m in got if m.room_id == pub.room_id and m.change), key=lambda c: c.seq
        )
        assert [c.seq for c in pub_changes] == list(range(1, 11))
        assert all(m.attempts == 1 and m.status is MessageStatus.PENDING for m in got)
        by_seq = {m.change.seq: m for m in got if m.room_id == pub.room_id and m.change is not None}
        assert by_seq[2].previous is None  # the first set: no value before
        previous = by_seq[3].previous
        assert previous is not None and (previous.value, previous.version) == ({"a": 1}, 1)
        assert by_seq[3].change is not None and by_seq[3].change.variable is not None
        assert by_seq[3].change.variable.value == {"a": 2}
        deleted = by_seq[4].previous
        assert deleted is not None and (deleted.value, deleted.version) == ({"a": 2}, 2)
        assert by_seq[10].change is not None and by_seq[10].change.room is not None
        assert by_seq[10].change.room.status is RoomStatus.DELETED

        filtered = await self._claim_all(backend, some, ctx)
        assert sorted((m.change.kind.value, m.change.seq) for m in filtered if m.change) == [
            ("ROOM_CLOSED", 9),
            ("ROOM_CREATED", 1),
            ("ROOM_DELETED", 10),
            ("VARIABLE_SET", 2),
            ("VARIABLE_SET", 3),
        ]
        assert {m.room_id for m in filtered} == {pub.room_id}

    @scenario
    async def test_large_and_compare_and_set_writes_carry_their_previous(self, ctx: Ctx) -> None:
        # Larger than a PostgreSQL notification (8000 bytes: sent by reference, by another path than a
        # small write's), as the value written and as the value replaced, and at an expected version.
        every, _, outbox = self._routes(ctx)
        backend = await self._backend(ctx, outbox)
        room_id, big = ctx.room_id(), {"text": "x" * 20_000}
        await backend.set_variable(room_id, "v", big, expected_version=None, now=ctx.tick())
        await backend.set_variable(room_id, "v", {"small": 1}, expected_version=1, now=ctx.tick())
        await backend.set_variable(room_id, "v", big, expected_version=None, now=ctx.tick())
        await backend.set_variable(room_id, "w", 1, expected_version=0, now=ctx.tick())
        with pytest.raises(Aborted):
            await backend.set_variable(room_id, "v", 0, expected_version=1, now=ctx.tick())
        got = sorted(
            (m for m in await self._claim_all(backend, every, ctx) if m.change is not None),
            key=lambda m: m.change.seq if m.change else 0,
        )
        variables = [m.change.variable for m in got if m.change is not None]
        written = [(v.name, v.version) if v else None for v in variables]
        assert written == [("v", 1), ("v", 2), ("v", 3), ("w", 1)]  # nothing of the refused write
        previous = [(m.previous.value, m.previous.version) if m.previous else None for m in got]
        assert previous == [None, (big, 1), ({"small": 1}, 2), None]
        assert got[2].change is not None and got[2].change.variable is not None
        assert got[2].change.variable.value == big

    @scenario
    async def test_live_only_events_write_no_message(self, ctx: Ctx) -> None:
        every, _, outbox = self._routes(ctx)
        backend = await self._backend(ctx, outbox, History(events=False))
        await backend.publish_event(ctx.room_id(), Event("e", 1, ctx.tick()))
        assert await backend.outbox_backlog(every) == 0

    @scenario
    async def test_a_claim_is_a_lease_and_a_late_settle_is_ignored(self, ctx: Ctx) -> None:
        every, _, outbox = self._routes(ctx)
        backend = await self._backend(ctx, outbox)
        room = ctx.room()
        await backend.create_room(room)
        # Not due before the first delay (1 s after the change).
        assert await backend.outbox_claim(every, now=ctx.now, lease_seconds=LEASE, limit=10) == []
        [first] = await self._claim_all(backend, every, ctx, after=1.0)
        assert first.attempts == 1
        assert await self._claim_all(backend, every, ctx, after=1.0 + LEASE - 1) == []
        [again] = await self._claim_all(backend, every, ctx, after=2.0 + LEASE)  # the lease ran out
        assert (again.id, again.attempts) == (first.id, 2)
        at = ctx.now + timedelta(seconds=3 + LEASE)
        assert await backend.outbox_settle([Settled(first, Attempt(at, 200, 1.0))]) == [None]  # stale
        retry_at = at + timedelta(seconds=5)
        [state] = await backend.outbox_settle([Settled(again, Attempt(at, 500, 2.0), retry_at)])
        assert state is not None and state.failing_since == at and state.last_success_time is None
        assert await backend.outbox_claim(every, now=at, lease_seconds=LEASE, limit=10) == []
        [third] = await backend.outbox_claim(every, now=retry_at, lease_seconds=LEASE, limit=10)
        assert third.attempts == 3 and [a.status_code for a in third.log] == [500]
        done = retry_at + timedelta(seconds=1)
        [state] = await backend.outbox_settle([Settled(third, Attempt(done, 204, 3.0))])
        assert state == EndpointState(failing_since=None, last_success_time=done)
        assert await backend.outbox_backlog(every) == 0
        [listed] = await backend.outbox_messages(every, status=MessageStatus.DELIVERED, limit=10)
        assert listed.id == first.id and [a.status_code for a in listed.log] == [500, 204]
        assert await backend.outbox_messages(every, status=MessageStatus.PENDING, limit=10) == []

    @scenario
    async def test_failed_messages_are_retried_and_replayed(self, ctx: Ctx) -> None:
        every, _, outbox = self._routes(ctx)
        backend = await self._backend(ctx, outbox)
        room = ctx.room()
        await backend.create_room(room)
        await backend.set_variable(room.room_id, "v", 1, expected_version=None, now=ctx.tick())
        claimed = await self._claim_all(backend, every, ctx)
        at = ctx.now + timedelta(seconds=61)
        states = await backend.outbox_settle(
            [Settled(m, Attempt(at, 0, 1.0, "ConnectError")) for m in claimed]
        )
        assert [s.failing_since if s else None for s in states] == [at, at]
        failed = await backend.outbox_messages(every, status=MessageStatus.FAILED, limit=10)
        assert [m.change.seq for m in failed if m.change] == [2, 1]  # newest first
        assert failed[0].log[0].error == "ConnectError"
        assert await backend.outbox_messages(every, status=None, limit=1) == failed[:1]
        assert await backend.outbox_retry(every, failed[1].id, now=at) is True
        assert await backend.outbox_retry(every, "msg_unknown", now=at) is False
        assert await backend.outbox_retry(ctx.prefix + "nobody", failed[1].id, now=at) is False
        [retried] = await backend.outbox_claim(every, now=at, lease_seconds=LEASE, limit=10)
        assert (retried.id, retried.attempts) == (failed[1].id, 2)

        assert await backend.outbox_replay(every, since=ctx.now, now=at) == 1  # the set, at ctx.now
        # The two messages, and the first copy (created when replayed).
        assert await backend.outbox_replay(every, since=ctx.now - timedelta(seconds=1), now=at) == 2 + 1
        copies = await backend.outbox_claim(every, now=at, lease_seconds=LEASE, limit=10)
        assert len(copies) == 4 and not {m.id for m in copies} & {m.id for m in claimed}
        assert all(m.attempts == 1 and not m.log for m in copies)

    @scenario
    async def test_added_messages_and_endpoint_state(self, ctx: Ctx) -> None:
        every, _, outbox = self._routes(ctx)
        backend = await self._backend(ctx, outbox)
        test = OutboxMessage(
            "msg_test-" + ctx.prefix, every, "", None, due_time=ctx.now, created_time=ctx.now
        )
        await backend.outbox_add([test])
        assert await backend.outbox_backlog(every) == 1
        [claimed] = await backend.outbox_claim(every, now=ctx.now, lease_seconds=LEASE, limit=10)
        assert (claimed.id, claimed.change, claimed.type) == (test.id, None, "webhook.test")
        assert await backend.get_endpoint_state(every) == EndpointState()
        disabled = EndpointState(enabled=False, disabled_reason="failing since …", failing_since=ctx.now)
        await backend.save_endpoint_state(every, disabled)
        assert await backend.get_endpoint_state(every) == disabled

    @scenario
    async def test_two_claimers_never_get_the_same_attempt(self, ctx: Ctx) -> None:
        every, one, two, room = await self._two_outbox_instances(ctx)
        for i in range(40):
            await one.set_variable(room.room_id, "v", i, expected_version=None, now=ctx.tick())
        at = ctx.now + timedelta(seconds=60)

        async def claim(backend: Backend) -> list[str]:
            ids = []
            for _ in range(20):
                ids += [m.id for m in await backend.outbox_claim(every, now=at, lease_seconds=LEASE, limit=3)]
            return ids

        got = await asyncio.gather(claim(one), claim(two), claim(one), claim(two))
        ids = [one_id for batch in got for one_id in batch]
        assert len(ids) == len(set(ids)) == 41

    @scenario
    async def test_messages_outlive_the_backend_of_a_durable_store(self, ctx: Ctx) -> None:
        if not self.durable:
            pytest.skip("the store does not outlive its backend (durable = False)")
        every, _, outbox = self._routes(ctx)
        first = await self._backend(ctx, outbox)
        await first.create_room(ctx.room())
        await first.close()
        ctx.opened.remove(first)
        second = await self._backend(ctx, outbox)
        [message] = await self._claim_all(second, every, ctx)
        assert message.change is not None and message.change.kind is ChangeKind.ROOM_CREATED

    @scenario
    async def test_concurrent_first_writes_each_carry_the_value_before(self, ctx: Ctx) -> None:
        # Two writers setting a variable that has no row yet: the second one's message has the first one's
        # value as previous (a lock on a row that does not exist yet locks nothing).
        every, one, two, room = await self._two_outbox_instances(ctx)
        now = ctx.tick()
        names = [f"v{i}" for i in range(8)]
        await asyncio.gather(
            *(
                backend.set_variable(room.room_id, name, {"by": n}, expected_version=None, now=now)
                for name in names
                for n, backend in enumerate((one, two))
            )
        )
        sets = [m for m in await self._claim_all(one, every, ctx) if m.change and m.change.variable]
        assert len(sets) == 2 * len(names)
        for name in names:
            first, second = sorted(
                (m for m in sets if m.change and m.change.variable and m.change.variable.name == name),
                key=lambda m: m.change.variable.version if m.change and m.change.variable else 0,
            )
            assert first.previous is None
            assert first.change is not None and first.change.variable is not None
            assert second.previous is not None, f"{name}: the second write's message has no previous"
            assert (second.previous.value, second.previous.version) == (first.change.variable.value, 1)

    @scenario
    async def test_concurrent_writes_of_a_set_variable_each_carry_the_version_before(self, ctx: Ctx) -> None:
        # Writers of a variable that exists, from two instances at once: each message's previous is the
        # version just before its own, with that version's value — never the same one read by two writers.
        every, one, two, room = await self._two_outbox_instances(ctx)
        await one.set_variable(room.room_id, "v", {"by": "seed"}, expected_version=None, now=ctx.tick())
        now = ctx.tick()
        await asyncio.gather(
            *(
                backend.set_variable(room.room_id, "v", {"by": f"{n}-{i}"}, expected_version=None, now=now)
                for i in range(6)
                for n, backend in enumerate((one, two))
            )
        )
        sets = [m for m in await self._claim_all(one, every, ctx) if m.change and m.change.variable]
        by_version = {m.change.variable.version: m for m in sets if m.change and m.change.variable}
        assert sorted(by_version) == list(range(1, 14))
        for version in range(2, 14):
            previous = by_version[version].previous
            assert previous is not None, f"version {version}: no previous"
            before = by_version[version - 1].change
            assert before is not None and before.variable is not None
            assert (previous.value, previous.version) == (before.variable.value, version - 1)

    @scenario
    async def test_every_write_shape_carries_the_value_before(self, ctx: Ctx) -> None:
        # Compare-and-set against a version and against "unset", deletion, and a write after a deletion:
        # each written message's previous is the value it replaced (none when the variable was unset), and a
        # write its guard held back leaves no message.
        every, _, outbox = self._routes(ctx)
        backend = await self._backend(ctx, outbox)
        room = ctx.room()
        await backend.create_room(room)
        rid = room.room_id

        async def write(value: JSON | Unset, expected: int | None) -> None:
            await backend.set_variable(rid, "v", value, expected_version=expected, now=ctx.tick())

        await write("a", 0)  # version 1: unset before
        await write("b", 1)  # version 2
        for value, expected in (("x", 0), ("x", 1), (UNSET, 5)):
            with pytest.raises(Aborted):
                await write(value, expected)
        await write(UNSET, None)  # version 3: deleted
        await write(UNSET, 0)  # deleting an unset variable: nothing written
        await write("c", 0)  # version 4: unset before
        await write("d", None)  # version 5
        await write(UNSET, 5)  # version 6
        got = [
            (m.change.variable.version, m.previous and (m.previous.value, m.previous.version))
            for m in await self._claim_all(backend, every, ctx)
            if m.change and m.change.variable
        ]
        assert sorted(got) == [
            (1, None),
            (2, ("a", 1)),
            (3, ("b", 2)),
            (4, None),
            (5, ("c", 4)),
            (6, ("d", 5)),
        ]

    @scenario
    async def test_settled_messages_are_pruned_in_bounded_batches(self, ctx: Ctx) -> None:
        every, _, outbox = self._routes(ctx)
        backend = await self._backend(ctx, outbox)
        room = ctx.room()
        await backend.create_room(room)
        for i in range(6):
            await backend.set_variable(room.room_id, "v", i, expected_version=None, now=ctx.tick())
        # Seven messages, oldest first: ROOM_CREATED and six sets, created a millisecond apart.
        claimed = sorted(await self._claim_all(backend, every, ctx), key=lambda m: m.created_time or ctx.now)
        assert len(claimed) == 7
        at = ctx.now + timedelta(seconds=61)
        outcomes = [200, 200, 0, 0, 200, None, 200]  # None: left pending (claimed, never settled)
        settled = [
            Settled(m, Attempt(at, code, 1.0, "" if code else "ConnectError"))
            for m, code in zip(claimed, outcomes, strict=True)
            if code is not None
        ]
        await backend.outbox_settle(settled)
        created = [m.created_time for m in claimed]
        assert all(created)
        # Delivered ones created before the 6th, failed ones before the 4th (so only the 3rd of them).
        delivered_before, failed_before = created[5], created[3]
        assert delivered_before is not None and failed_before is not None
        prune = backend.outbox_prune
        assert (
            await prune(every, delivered_before=delivered_before, failed_before=failed_before, limit=2) == 2
        )
        assert (
            await prune(every, delivered_before=delivered_before, failed_before=failed_before, limit=9) == 2
        )
        assert (
            await prune(every, delivered_before=delivered_before, failed_before=failed_before, limit=9) == 0
        )
        left = await backend.outbox_messages(every, status=None, limit=10)
        # Kept: the failed 4th (too young for the failed cutoff), the pending 6th, the delivered 7th.
        assert sorted(m.id for m in left) == sorted(claimed[i].id for i in (3, 5, 6))
        assert await backend.outbox_backlog(every) == 1
        # Even past every cutoff, a pending message stays.
        later = at + timedelta(days=365)
        assert await prune(every, delivered_before=later, failed_before=later, limit=9) == 2
        [pending] = await backend.outbox_messages(every, status=None, limit=10)
        assert pending.id == claimed[5].id and pending.status is MessageStatus.PENDING
