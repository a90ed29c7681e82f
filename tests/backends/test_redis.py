"""The Redis backend against a real Redis server: the shipped conformance suite, plus what is Redis's own.

The server is ``ROOM_GATEWAY_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Every key and channel of
this session lives under one fresh prefix, deleted at the end, so the server may hold other data. Without a
server these tests skip, naming it — except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio
import redis.exceptions
from room_gateway_plugins import redis as redis_plugin
from room_gateway_plugins.redis import RedisBackend, codec, scripts
from room_gateway_plugins.redis.keys import DEFAULT_PREFIX

from gateway.auth.tokens import TokenClaims
from gateway.core import wire
from gateway.core.backend import Backend, History, LogPage
from gateway.core.hub import Topic
from gateway.core.models import UNSET, Change, ChangeKind, Event, Member, Room, RoomStatus, Variable
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.errors import Aborted, NotFound, Unavailable
from gateway.plugins import ConfigError, Plugins, create_plugin_manager
from gateway.testing.conformance import SharedBackendContract

SERVER = os.environ.get("ROOM_GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD = "redis://127.0.0.1:1"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The server's URL, once it answers PING; skip (fail under CI) when it does not."""
    try:
        with redis.Redis.from_url(SERVER, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except redis.exceptions.RedisError as exc:
        message = f"no Redis server at {SERVER} ({exc}); set ROOM_GATEWAY_TEST_REDIS_URL or start one"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SERVER


@pytest.fixture(scope="session")
def session_prefix(redis_server: str) -> Iterator[str]:
    """A prefix of this test session; every key under it is deleted at the end."""
    prefix = f"rg-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(redis_server) as client:
        # SCAN is fine here: a test's own clean-up, never something the backend does.
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


def backend_url(server: str, prefix: str) -> str:
    return f"{server}?prefix={quote(prefix, safe='')}"


class TestRedisBackend(SharedBackendContract):
    durable = True  # the server outlives the backend (a restart without persistence: a new epoch)

    @pytest.fixture
    def backend_factory(self, redis_server: str, session_prefix: str) -> Callable[..., Backend]:
        return lambda **kwargs: RedisBackend(backend_url(redis_server, session_prefix), **kwargs)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an async scenario in a fresh loop, as the conformance suite does (its task is the loop's only
    one, so a test can check that nothing else is left running)."""

    async def main() -> None:
        async with asyncio.timeout(60):
            await scenario()

    asyncio.run(main())


def fresh_room(name: str = "room") -> Room:
    return Room(room_id=f"{name}-{uuid.uuid4().hex[:8]}", create_time=NOW, update_time=NOW)


# -- atomicity across instances ---------------------------------------------------------------------------


def test_lua_compare_and_set_loses_no_update_across_two_instances(
    redis_server: str, session_prefix: str
) -> None:
    async def main() -> None:
        url = backend_url(redis_server, session_prefix)
        one, two = RedisBackend(url), RedisBackend(url)
        await one.open()
        await two.open()
        try:
            room = fresh_room()
            await one.create_room(room)
            await one.set_variable(room.room_id, "n", 0, expected_version=0, now=NOW)
            attempts = 0

            async def increment(backend: RedisBackend) -> None:
                nonlocal attempts
                while True:  # retry until this writer's increment lands
                    attempts += 1
                    current = await backend.get_variable(room.room_id, "n")
                    assert current is not None and isinstance(current.value, int)
                    try:
                        await backend.set_variable(
                            room.room_id, "n", current.value + 1, expected_version=current.version, now=NOW
                        )
                        return
                    except Aborted:
                        await asyncio.sleep(0)

            await asyncio.gather(*(increment(one if i % 2 else two) for i in range(50)))
            final = await two.get_variable(room.room_id, "n")
            assert final is not None and (final.value, final.version) == (50, 51)
            assert attempts > 50  # the writers did contend: some compare-and-sets were refused
        finally:
            await one.close()
            await two.close()

    run(main)


# -- the wire format ---------------------------------------------------------------------------------------


def test_the_scripts_complete_the_wire_head_without_decoding_values() -> None:
    # Lua fills gateway.core.wire's tail format in (string.format) and never touches the JSON: cjson would
    # turn big integers into doubles and {} into [].
    assert "string.format(ARGV[8], epoch" in scripts.PRELUDE
    every = {name: getattr(scripts, name) for name in dir(scripts) if name.isupper()}
    # CLAIM and SETTLE quote and unquote whole strings with cjson (the stored records among them), never a
    # value inside one: test_claims_read_back_the_stored_records_exactly holds them to it.
    quoting = {"CLAIM", "SETTLE"}
    assert every and not any(
        "cjson" in script for name, script in every.items() if isinstance(script, str) and name not in quoting
    )


async def outbox_room(url: str, name: str) -> tuple[RedisBackend, str, Room]:
    """An open backend with one webhook endpoint (``name-…``) for every change, and a room created in it
    (its ``room.created`` message queued)."""
    from gateway.core.outbox import Outbox, Route

    backend = RedisBackend(url)
    endpoint = f"{name}-{uuid.uuid4().hex[:6]}"
    backend.outbox = Outbox([Route(endpoint)])
    await backend.open()
    room = fresh_room(name)
    await backend.create_room(room)
    return backend, endpoint, room


def test_claims_read_back_the_stored_records_exactly(redis_server: str, session_prefix: str) -> None:
    # The claim's reply is cjson's array of the stored strings: a value that cjson would change if it
    # decoded it (a big integer, an empty object, escapes, non-ASCII) comes back as written, and so does
    # the previous value.
    from gateway.core.outbox import Attempt, Settled

    async def main() -> None:
        backend, endpoint, room = await outbox_room(backend_url(redis_server, session_prefix), "exact")
        try:
            before = {"n": 12345678901234567890123, "empty": {}, "list": []}
            after = {"text": 'é😀 "quoted" \\ / \t\u0001', "n": 2**63 + 1, "f": 0.1, "empty": {}}
            await backend.set_variable(room.room_id, "v", before, expected_version=None, now=NOW)
            await backend.set_variable(room.room_id, "v", after, expected_version=1, now=NOW)
            at = NOW + timedelta(seconds=1)
            claimed = await backend.outbox_claim(endpoint, now=at, lease_seconds=30, limit=10)
            # All due at once: ties come in the sorted set's order (of the random ids), so by seq here.
            created, first, second = sorted(claimed, key=lambda m: m.change.seq if m.change else 0)
            kinds = [m.type for m in (created, first, second)]
            assert kinds == ["room.created", "variable.set", "variable.set"]
            assert first.change is not None and first.change.variable is not None
            assert first.change.variable.value == before and first.previous is None
            assert second.change is not None and second.change.variable is not None
            assert second.change.variable.value == after
            assert second.previous is not None and second.previous.value == before
            assert (second.room_id, second.attempts, second.log) == (room.room_id, 1, ())
            assert second.due_time == at + timedelta(seconds=30) and second.created_time == NOW
            assert await backend.outbox_claim(endpoint, now=at, lease_seconds=30, limit=10) == []
            # Settled at once (one script for the three), one failing: the log and the state as written.
            failed = Attempt(at, 500, 1.5, "")
            states = await backend.outbox_settle(
                [
                    Settled(created, Attempt(at, 204, 1.0)),
                    Settled(first, failed, at + timedelta(seconds=5)),
                    Settled(second, Attempt(at, 200, 2.0)),
                ]
            )
            assert states[0] == states[1] == states[2] and states[0] is not None
            assert states[0].last_success_time == at and states[0].failing_since is None  # after the batch
            [again] = await backend.outbox_claim(
                endpoint, now=at + timedelta(seconds=5), lease_seconds=30, limit=10
            )
            assert (again.id, again.attempts, again.log) == (first.id, 2, (failed,))
            assert again.change is not None and again.change.variable is not None
            assert again.change.variable.value == before
        finally:
            await backend.close()

    run(main)


def test_records_log_entries_and_notifications_are_exact_wire_messages(
    redis_server: str, session_prefix: str
) -> None:
    async def main() -> None:
        backend = RedisBackend(backend_url(redis_server, session_prefix))
        await backend.open()
        admin = redis.asyncio.Redis.from_url(redis_server)
        raw = admin.pubsub()
        try:
            room = fresh_room()
            await raw.subscribe(backend.keys.room_channel(room.room_id))
            value = {"big": 2**70, "f": 1.0, "s": "é☃", "empty": {}}  # beyond 64 bits, a whole float, {}
            sub = await backend.subscribe(Topic("variable", room.room_id, "x"))
            written = await backend.set_variable(room.room_id, "x", value, expected_version=0, now=NOW)
            assert written == Variable("x", value, 1, NOW)
            change = Change(1, backend.epoch, ChangeKind.VARIABLE_SET, NOW, variable=written)
            assert await asyncio.wait_for(sub.__anext__(), 5) == change
            assert await backend.get_variable(room.room_id, "x") == written
            assert (await backend.get_contents(room.room_id)).contents == {"x": value}
            exact = wire.encode(wire.Message(room.room_id, change))
            assert await admin.hget(backend.keys.variables(room.room_id), "x") == exact
            [entry] = await admin.lrange(backend.keys.log(room.room_id), 0, -1)
            assert entry[codec.PREFIX_LENGTH :] == exact
            assert entry[: codec.PREFIX_LENGTH] == codec.entry_prefix(change).encode()
            published = None
            while published is None or published["type"] != "message":
                published = await raw.get_message(timeout=5)
            assert published["data"] == exact
            sub.close()
        finally:
            await raw.aclose()
            await admin.aclose()
            await backend.close()

    run(main)


# -- the change log ----------------------------------------------------------------------------------------


async def open_backends(url: str, count: int, **kwargs: Any) -> list[RedisBackend]:
    backends = [RedisBackend(url, **kwargs) for _ in range(count)]
    for backend in backends:
        await backend.open()
    return backends


def counted_commands(backend: RedisBackend) -> list[str]:
    """The names of the commands ``backend`` sends from now on, in order (a round trip each)."""
    calls: list[str] = []
    client = backend._redis
    original = client.execute_command

    async def counted(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return await original(*args, **options)

    client.execute_command = counted  # type: ignore[method-assign]
    return calls


def test_every_write_is_one_round_trip(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        [backend] = await open_backends(backend_url(redis_server, session_prefix), 1)
        try:
            calls = counted_commands(backend)
            room = fresh_room()
            await backend.create_room(room)
            await backend.set_variable(room.room_id, "x", 1, expected_version=None, now=NOW)
            await backend.set_variable(room.room_id, "x", UNSET, expected_version=1, now=NOW)
            await backend.publish_event(room.room_id, Event("e", 1, NOW))
            await backend.save_room(room, ChangeKind.ROOM_CLOSED)
            assert calls == ["EVALSHA"] * 5
        finally:
            await backend.close()

    run(main)


def test_a_batch_of_settles_is_one_script(redis_server: str, session_prefix: str) -> None:
    # The deliverers settle what ended meanwhile at once: one EVALSHA for the batch, whatever its size
    # (it was one a settle, pipelined), and a stale attempt in it is told apart.
    from gateway.core.outbox import Attempt, Settled

    async def main() -> None:
        backend, endpoint, room = await outbox_room(backend_url(redis_server, session_prefix), "batch")
        try:
            for i in range(20):
                await backend.set_variable(room.room_id, f"v{i}", i, expected_version=None, now=NOW)
            claimed = await backend.outbox_claim(endpoint, now=NOW, lease_seconds=30, limit=100)
            assert len(claimed) == 21
            stale = dataclasses.replace(claimed[3], attempts=0)  # an attempt claimed again since
            settled = [Settled(m, Attempt(NOW, 204, 1.0)) for m in claimed]
            settled[3] = Settled(stale, Attempt(NOW, 204, 1.0))
            calls = counted_commands(backend)
            states = await backend.outbox_settle(settled)
            assert calls == ["EVALSHA"]
            assert [state is None for state in states] == [i == 3 for i in range(21)]
            assert await backend.outbox_backlog(endpoint) == 1  # the stale one is still pending
        finally:
            await backend.close()

    run(main)


def test_seq_is_gap_free_and_in_order_across_instances(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        one, two, watcher = await open_backends(backend_url(redis_server, session_prefix), 3)
        try:
            room = fresh_room()
            await one.create_room(room)
            sub = await watcher.subscribe(Topic.room(room.room_id))

            async def write(backend: RedisBackend, i: int) -> None:
                if i % 3:
                    await backend.set_variable(room.room_id, f"v{i % 7}", i, expected_version=None, now=NOW)
                else:
                    await backend.publish_event(room.room_id, Event("e", i, NOW))

            await asyncio.gather(*(write(one if i % 2 else two, i) for i in range(200)))
            page = await two.read_changes(room.room_id, after_seq=0, limit=1000)
            assert [c.seq for c in page.changes] == list(range(1, 202)) and page.head_seq == 201
            assert page.first_seq == 1 and page.epoch == one.epoch == two.epoch
            live = [await asyncio.wait_for(sub.__anext__(), 5) for _ in range(200)]
            assert live == page.changes[1:]  # the pub/sub order is the log's (subscribed after creating)
            versions: dict[str, list[int]] = {}
            for change in page.changes:
                if change.variable is not None:
                    versions.setdefault(change.name, []).append(change.variable.version)
            assert all(seen == list(range(1, len(seen) + 1)) for seen in versions.values())
            sub.close()
        finally:
            for backend in (one, two, watcher):
                await backend.close()

    run(main)


def test_read_changes_pages_and_filters_kinds(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        [backend] = await open_backends(backend_url(redis_server, session_prefix), 1)
        try:
            room = fresh_room()
            await backend.create_room(room)  # seq 1
            for i in range(250):  # seqs 2..251: events at even i, variables at odd i
                if i % 2:
                    await backend.set_variable(room.room_id, "x", i, expected_version=None, now=NOW)
                else:
                    await backend.publish_event(room.room_id, Event("e", i, NOW))
            page = await backend.read_changes(room.room_id, after_seq=10, limit=5)
            assert [c.seq for c in page.changes] == [11, 12, 13, 14, 15] and page.head_seq == 251
            events = await backend.read_changes(
                room.room_id, after_seq=1, limit=120, kinds=frozenset({ChangeKind.EVENT})
            )  # spans more than one 100-entry chunk of the script's scan
            assert [c.seq for c in events.changes] == list(range(2, 242, 2))
            assert all(c.kind is ChangeKind.EVENT for c in events.changes)
            created = await backend.read_changes(
                room.room_id, after_seq=0, limit=10, kinds=frozenset({ChangeKind.ROOM_CREATED})
            )
            assert [c.kind for c in created.changes] == [ChangeKind.ROOM_CREATED]
            assert created.changes[0].room == room
            none = await backend.read_changes(room.room_id, after_seq=0, limit=10, kinds=frozenset())
            assert none.changes == [] and none.head_seq == 251
            assert (await backend.read_changes(room.room_id, after_seq=251, limit=10)).changes == []
            empty = await backend.read_changes("never-" + room.room_id, after_seq=0, limit=10)
            assert (empty.changes, empty.head_seq, empty.first_seq) == ([], 0, 1)
        finally:
            await backend.close()

    run(main)


def test_retention_by_count_and_age(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        url = backend_url(redis_server, session_prefix)
        [by_count] = await open_backends(url, 1, history=History(max_changes=5))
        [by_age] = await open_backends(url, 1, history=History(max_age_seconds=60))
        admin = redis.asyncio.Redis.from_url(redis_server)
        try:
            room = fresh_room()
            for i in range(12):
                await by_count.set_variable(room.room_id, "x", i, expected_version=None, now=NOW)
            page = await by_count.read_changes(room.room_id, after_seq=0, limit=100)
            assert [c.seq for c in page.changes] == [8, 9, 10, 11, 12] and page.first_seq == 8

            aged = fresh_room()
            for minutes in (0, 1, 2, 3):  # the write at +3 min drops the ones older than one minute
                when = NOW + timedelta(minutes=minutes)
                await by_age.publish_event(aged.room_id, Event("e", minutes, when))
            page = await by_age.read_changes(aged.room_id, after_seq=0, limit=100)
            assert [c.seq for c in page.changes] == [3, 4] and page.first_seq == 3
            # An idle room's log expires whole once its newest entry is too old to keep.
            ttl = await admin.pttl(by_age.keys.log(aged.room_id))
            assert 0 < ttl <= 60_000
            assert await admin.pttl(by_age.keys.head(aged.room_id)) == -1  # the head never expires
        finally:
            await admin.aclose()
            await by_count.close()
            await by_age.close()

    run(main)


def test_live_only_events_are_not_logged(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        [backend] = await open_backends(
            backend_url(redis_server, session_prefix), 1, history=History(events=False)
        )
        try:
            room = fresh_room()
            sub = await backend.subscribe(Topic("event", room.room_id, "e"))
            sent = await backend.publish_event(room.room_id, Event("e", {}, NOW))
            assert sent.seq == 0 and sent.epoch == backend.epoch != ""
            assert await asyncio.wait_for(sub.__anext__(), 5) == sent
            page = await backend.read_changes(room.room_id, after_seq=0, limit=10)
            assert (page.changes, page.head_seq) == ([], 0)
            sub.close()
        finally:
            await backend.close()

    run(main)


def test_epoch_is_kept_across_instances_and_renewed_when_redis_loses_its_data(redis_server: str) -> None:
    async def main() -> None:
        prefix = f"rg-test-{uuid.uuid4().hex[:12]}:"  # its own: this test wipes it
        url = backend_url(redis_server, prefix)
        admin = redis.asyncio.Redis.from_url(redis_server)
        [first] = await open_backends(url, 1)
        try:
            room = fresh_room()
            await first.create_room(room)
            epoch = first.epoch
            assert epoch and ":" not in epoch  # SSE ids are "<epoch>:<seq>"
            await first.close()
            [again] = await open_backends(url, 1)  # a restart, or another instance
            assert again.epoch == epoch
            assert (await again.get_contents(room.room_id)).epoch == epoch
            # Redis loses everything (FLUSHALL, a restart without persistence): a new epoch on next use.
            await admin.delete(*[key async for key in admin.scan_iter(match=prefix + "*")])
            await again.create_room(room)
            page = await again.read_changes(room.room_id, after_seq=0, limit=10)
            assert page.epoch == again.epoch != epoch
            assert [c.seq for c in page.changes] == [1] and page.changes[0].epoch == again.epoch
            await again.close()
        finally:
            await admin.delete(*[key async for key in admin.scan_iter(match=prefix + "*")] or [prefix])
            await admin.aclose()

    run(main)


def test_snapshot_and_log_agree_under_concurrent_writes(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        reader, writer = await open_backends(backend_url(redis_server, session_prefix), 2)
        try:
            room = fresh_room()
            stop = asyncio.Event()

            async def keep_writing() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    await writer.set_variable(room.room_id, f"v{i % 5}", i, expected_version=None, now=NOW)

            task = asyncio.create_task(keep_writing())
            try:
                for _ in range(20):
                    snapshot = await reader.get_contents(room.room_id)
                    # Replaying the log up to the snapshot's seq gives exactly the snapshot.
                    page = await reader.read_changes(room.room_id, after_seq=0, limit=1000)
                    replayed: dict[str, Any] = {}
                    for change in page.changes:
                        if change.seq <= snapshot.seq and change.variable is not None:
                            replayed[change.name] = change.variable.value
                    assert replayed == snapshot.contents
                    await asyncio.sleep(0.005)
            finally:
                stop.set()
                await task
        finally:
            await reader.close()
            await writer.close()

    run(main)


def test_delete_room_wipes_the_log_and_ends_with_room_deleted(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        backend, other = await open_backends(backend_url(redis_server, session_prefix), 2)
        admin = redis.asyncio.Redis.from_url(redis_server)
        try:
            room = fresh_room()
            await backend.create_room(room)
            await backend.set_variable(room.room_id, "x", 1, expected_version=None, now=NOW)
            await backend.presence_heartbeat("i1", now=NOW, ttl_seconds=30)
            await backend.presence_join(room.room_id, Member("u"), instance="i1", now=NOW)
            sub = await other.subscribe(Topic("variable", room.room_id, "y"))  # not the room's topic
            tombstone = dataclasses.replace(room, status=RoomStatus.DELETED, update_time=NOW)
            await backend.delete_room(tombstone)
            last = await asyncio.wait_for(sub.__anext__(), 5)
            assert (last.kind, last.seq, last.room) == (ChangeKind.ROOM_DELETED, 4, tombstone)
            assert await backend.get_room(room.room_id) == tombstone
            assert (await backend.get_contents(room.room_id)).contents == {}
            assert (await backend.read_changes(room.room_id, after_seq=0, limit=10)).changes == []
            assert (await backend.get_presence(room.room_id)).members == []
            for key in (backend.keys.log, backend.keys.variables, backend.keys.users, backend.keys.members):
                assert not await admin.exists(key(room.room_id))
            # The stream that was open leaves without logging into the deleted room.
            await backend.presence_leave(room.room_id, "u", instance="i1", now=NOW)
            assert not await admin.exists(backend.keys.log(room.room_id))
            with pytest.raises(NotFound):
                await backend.delete_room(fresh_room("never"))
            sub.close()
        finally:
            await admin.aclose()
            await backend.close()
            await other.close()

    run(main)


def test_a_room_stream_resumes_on_another_instance_with_nothing_lost_or_repeated(
    redis_server: str, session_prefix: str
) -> None:
    # The service-level half of tests/multi/test_resume_redis.py: one instance's stream stops mid-load (its
    # reader vanishes with its backend), and the client resumes on another instance by its last position.
    async def main() -> None:
        a, b = await open_backends(backend_url(redis_server, session_prefix), 2)
        on_a, on_b = RoomService(a), RoomService(b)
        room = fresh_room()
        await a.create_room(room)
        snapshot = await b.get_contents(room.room_id)
        acknowledged: list[tuple[str, int]] = []
        received: list[Change] = []
        positions: list[str] = []

        async def write(backend: RedisBackend, worker: str, count: int) -> None:
            for n in range(count):
                await backend.set_variable(room.room_id, worker, n, expected_version=None, now=NOW)
                acknowledged.append((worker, n))
                await asyncio.sleep(0)

        async def listen(service: RoomService, after: str) -> None:
            epoch, seq = after.rsplit(":", 1)
            stream = await service.listen_room(room.room_id, after_seq=int(seq), epoch=epoch)
            async for change in stream:
                received.append(change)
                assert stream.position is not None
                positions.append(stream.position)

        reader = asyncio.create_task(listen(on_a, f"{snapshot.epoch}:{snapshot.seq}"))
        await write(a, "a", 50)
        writers = [asyncio.create_task(write(a, "a2", 100)), asyncio.create_task(write(b, "b", 200))]
        await asyncio.sleep(0.05)
        reader.cancel()  # instance A is gone: its stream stops wherever it was
        writers[0].cancel()
        await asyncio.gather(reader, writers[0], return_exceptions=True)
        await a.close()
        assert positions, "nothing arrived on A"
        resumed = asyncio.create_task(listen(on_b, positions[-1]))
        await writers[1]
        head = (await b.read_changes(room.room_id, after_seq=0, limit=0)).head_seq
        async with asyncio.timeout(10):
            while not received or received[-1].seq < head:
                await asyncio.sleep(0.01)
        resumed.cancel()
        await asyncio.gather(resumed, return_exceptions=True)
        await b.close()
        assert [c.seq for c in received] == list(range(snapshot.seq + 1, head + 1))
        seen = [(c.name, c.variable.value) for c in received if c.variable is not None]
        assert set(acknowledged) <= set(seen) and len(seen) == len(set(seen))

    run(main)


# -- presence ---------------------------------------------------------------------------------------------


def member_changes(page: LogPage) -> list[tuple[ChangeKind, str]]:
    return [(c.kind, c.member.user_id) for c in page.changes if c.member is not None]


def test_presence_is_one_member_per_user_across_instances(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        a, b = await open_backends(backend_url(redis_server, session_prefix), 2)
        try:
            room = fresh_room()
            rid = room.room_id
            for backend, instance in ((a, "A"), (b, "B")):
                await backend.presence_heartbeat(instance, now=NOW, ttl_seconds=30)
            await a.presence_join(rid, Member("ann", info={"name": "Ann"}), instance="A", now=NOW)
            await b.presence_join(rid, Member("ann", info={"name": "Ann"}), instance="B", now=NOW)
            await b.presence_join(rid, Member("bob"), instance="B", now=NOW)
            presence = await a.get_presence(rid)
            assert (presence.num_users, presence.num_connections) == (2, 3)
            assert presence.members[0] == Member("ann", 2, {"name": "Ann"}, NOW)
            assert await b.count_users([rid, "nobody-" + rid]) == {rid: 2}
            await a.presence_leave(rid, "ann", instance="A", now=NOW)  # still on B: no MEMBER_LEFT
            await b.presence_leave(rid, "bob", instance="B", now=NOW)
            await b.presence_leave(rid, "bob", instance="B", now=NOW)  # never counted twice: ignored
            await b.presence_leave(rid, "ann", instance="B", now=NOW)
            page = await a.read_changes(rid, after_seq=0, limit=10)
            assert member_changes(page) == [
                (ChangeKind.MEMBER_JOINED, "ann"),
                (ChangeKind.MEMBER_JOINED, "bob"),
                (ChangeKind.MEMBER_LEFT, "bob"),
                (ChangeKind.MEMBER_LEFT, "ann"),
            ]
            assert page.changes[0].member == Member("ann", 1, {"name": "Ann"}, NOW)
            assert (await a.get_presence(rid)).members == []
            assert await a.count_users([rid]) == {}
        finally:
            await a.close()
            await b.close()

    run(main)


def test_a_dead_instance_is_swept_by_a_live_ones_expiry(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        a, b = await open_backends(backend_url(redis_server, session_prefix), 2)
        dead, alive = f"dead-{uuid.uuid4().hex[:6]}", f"alive-{uuid.uuid4().hex[:6]}"
        try:
            rooms = [fresh_room(), fresh_room()]
            await a.presence_heartbeat(dead, now=NOW, ttl_seconds=5)
            for room in rooms:
                await a.presence_join(room.room_id, Member("ann"), instance=dead, now=NOW)
                await a.presence_join(room.room_id, Member("ann"), instance=dead, now=NOW)
                await a.presence_join(room.room_id, Member("bob"), instance=dead, now=NOW)
            await b.presence_heartbeat(alive, now=NOW, ttl_seconds=5)
            await b.presence_join(rooms[0].room_id, Member("bob"), instance=alive, now=NOW)
            await b.presence_heartbeat(alive, now=NOW + timedelta(seconds=4), ttl_seconds=5)
            await b.presence_expire(now=NOW + timedelta(seconds=4), ttl_seconds=5)
            assert (await b.get_presence(rooms[0].room_id)).num_connections == 4  # not yet past the deadline
            later = NOW + timedelta(seconds=6)
            await b.presence_expire(now=later, ttl_seconds=5)
            await b.presence_expire(now=later, ttl_seconds=5)  # a second sweep finds nothing
            first, second = [await b.read_changes(r.room_id, after_seq=0, limit=10) for r in rooms]
            joined = [(ChangeKind.MEMBER_JOINED, "ann"), (ChangeKind.MEMBER_JOINED, "bob")]
            assert member_changes(first) == [*joined, (ChangeKind.MEMBER_LEFT, "ann")]  # bob is on alive
            assert sorted(member_changes(second)[2:]) == [
                (ChangeKind.MEMBER_LEFT, "ann"),
                (ChangeKind.MEMBER_LEFT, "bob"),
            ]
            assert first.changes[-1].time == later
            presence = await b.get_presence(rooms[0].room_id)
            assert [(m.user_id, m.connections) for m in presence.members] == [("bob", 1)]
            admin = redis.asyncio.Redis.from_url(redis_server)
            try:
                assert await admin.zscore(b.keys.instances, dead) is None  # forgotten
                assert not await admin.sismember(b.keys.expiring, dead)
                assert not await admin.exists(b.keys.holds(dead))
            finally:
                await admin.aclose()
        finally:
            await a.close()
            await b.close()

    run(main)


def test_an_expiry_cut_short_is_finished_by_the_next(redis_server: str, session_prefix: str) -> None:
    """A sweeper that dies between marking an instance expiring and sweeping it leaves the mark: the
    instance stays expired (its heartbeat answers not alive and does not revive it) until the next expiry
    has swept it; then its heartbeat makes it alive again, to rejoin."""

    async def main() -> None:
        (backend,) = await open_backends(backend_url(redis_server, session_prefix), 1)
        paused = f"paused-{uuid.uuid4().hex[:6]}"
        room = fresh_room()
        admin = redis.asyncio.Redis.from_url(redis_server)
        try:
            await backend.presence_heartbeat(paused, now=NOW, ttl_seconds=5)
            await backend.presence_join(room.room_id, Member("ann"), instance=paused, now=NOW)
            # What EXPIRE does before the sweep, as if its caller died right after.
            await admin.zrem(backend.keys.instances, paused)
            await admin.sadd(backend.keys.expiring, paused)
            assert not await backend.presence_heartbeat(paused, now=NOW, ttl_seconds=5)
            assert await admin.zscore(backend.keys.instances, paused) is None  # not revived mid-expiry
            await backend.presence_join(room.room_id, Member("bob"), instance=paused, now=NOW)  # not counted
            assert (await backend.get_presence(room.room_id)).num_connections == 1
            await backend.presence_expire(now=NOW, ttl_seconds=5)  # finds the mark, finishes the sweep
            assert (await backend.get_presence(room.room_id)).members == []
            assert not await admin.sismember(backend.keys.expiring, paused)
            assert not await backend.presence_heartbeat(paused, now=NOW, ttl_seconds=5)  # alive again
            assert await backend.presence_heartbeat(paused, now=NOW, ttl_seconds=5)
        finally:
            await admin.aclose()
            await backend.close()

    run(main)


class _Idle:
    """A stream that yields nothing until closed (what the registry tracks, without a transport)."""

    def __aiter__(self) -> _Idle:
        return self

    async def __anext__(self) -> None:
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        return None


def test_thousands_of_streams_closing_at_once_all_leave(redis_server: str, session_prefix: str) -> None:
    """A shutdown or a network cut closes every stream at once: the registry bounds its writes in flight, so
    they queue instead of exhausting redis-py's pool (100 connections), and every leave is written."""

    async def main() -> None:
        (backend,) = await open_backends(backend_url(redis_server, session_prefix), 1)
        registry = PresenceRegistry(backend, instance=f"many-{uuid.uuid4().hex[:6]}")
        room = fresh_room()
        now = datetime.now(UTC)
        try:
            await registry.start()
            streams = [
                await registry.track(_Idle(), room.room_id, _claims(f"u{n}", room.room_id, now))
                for n in range(600)
            ]
            assert (await backend.get_presence(room.room_id)).num_users == 600
            await asyncio.gather(*(stream.aclose() for stream in streams))
            await registry.drain()
            assert (await backend.get_presence(room.room_id)).num_users == 0
            page = await backend.read_changes(room.room_id, after_seq=0, limit=2000)
            assert [c.kind for c in page.changes].count(ChangeKind.MEMBER_LEFT) == 600
        finally:
            await registry.stop()
            await backend.close()

    run(main)


def _claims(user: str, room_id: str, now: datetime) -> TokenClaims:
    return TokenClaims(user, room_id, frozenset(), (), "guest", 0, now + timedelta(hours=1), user)


# -- faults -----------------------------------------------------------------------------------------------


def test_dead_server_is_unavailable_quickly() -> None:
    async def main() -> None:
        backend = RedisBackend(DEAD)
        await backend.open()  # no connection yet: the gateway starts, /readyz says not ready
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable) as raised:
                await backend.check()
            assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
            with pytest.raises(Unavailable):
                await backend.get_room("r")
            with pytest.raises(Unavailable):
                await backend.set_variable("r", "x", 1, expected_version=None, now=NOW)
            with pytest.raises(Unavailable):
                await backend.publish_event("r", Event("e", 1, NOW))
            with pytest.raises(Unavailable):
                await backend.subscribe(Topic("variable", "r", "x"))
            assert len(backend.hub) == 0  # the failed subscription left nothing behind
            assert time.monotonic() - started < 3.0
        finally:
            await backend.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run(main)


def test_a_dropped_connection_ends_streams_and_the_listener_reconnects(
    redis_server: str, session_prefix: str
) -> None:
    async def main() -> None:
        url = backend_url(redis_server, session_prefix)
        backend, writer = RedisBackend(url), RedisBackend(url)
        await backend.open()
        await writer.open()
        admin = redis.asyncio.Redis.from_url(redis_server)
        try:
            room = fresh_room()
            sub = await backend.subscribe(Topic("variable", room.room_id, "x"))
            # Kill exactly this backend's pub/sub connection (the only one of this session's prefix).
            ours = [c for c in await admin.client_list(_type="pubsub") if c["name"] == backend.listener_name]
            assert len(ours) == 1
            assert await admin.client_kill_filter(_id=ours[0]["id"]) == 1
            with pytest.raises(Unavailable, match="reconnect"):
                await asyncio.wait_for(sub.__anext__(), 5)
            assert len(backend.hub) == 0
            # A client reconnecting gets a working stream again.
            again = await backend.subscribe(Topic("variable", room.room_id, "x"))
            await writer.set_variable(room.room_id, "x", "back", expected_version=None, now=NOW)
            got = await asyncio.wait_for(again.__anext__(), 5)
            assert got.variable.value == "back"
            again.close()
        finally:
            await admin.aclose()
            await backend.close()
            await writer.close()

    run(main)


def test_close_leaves_no_task_and_ends_subscriptions(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        backend = RedisBackend(backend_url(redis_server, session_prefix))
        await backend.open()
        subs = [await backend.subscribe(Topic("event", "room", f"e{i}")) for i in range(3)]
        await backend.close()
        for sub in subs:
            with pytest.raises(Unavailable):
                await asyncio.wait_for(sub.__anext__(), 1)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(Unavailable):
            await backend.check()

    run(main)


# -- configuration ----------------------------------------------------------------------------------------


def test_prefixes_isolate_deployments(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        a = RedisBackend(backend_url(redis_server, session_prefix + "a:"))
        b = RedisBackend(backend_url(redis_server, session_prefix + "b:"))
        await a.open()
        await b.open()
        try:
            room = fresh_room()
            await a.create_room(room)
            await b.create_room(room)  # the same id is free under another prefix
            await a.set_variable(room.room_id, "x", "a", expected_version=None, now=NOW)
            assert await b.get_variable(room.room_id, "x") is None
            listed = await b.list_rooms(start="", inclusive=True, limit=1000)
            assert [r.room_id for r in listed] == [room.room_id]
            events = await b.subscribe(Topic("event", room.room_id, "e"))
            await a.publish_event(room.room_id, Event("e", "from a", NOW))
            await b.publish_event(room.room_id, Event("e", "from b", NOW))
            assert (await asyncio.wait_for(events.__anext__(), 5)).event.data == "from b"
            events.close()
        finally:
            await a.close()
            await b.close()

    run(main)


def test_urls_and_prefix() -> None:
    plain = RedisBackend("redis://localhost:6379/3")
    assert plain.keys.prefix == DEFAULT_PREFIX == "rg:"
    tls = RedisBackend("rediss://:secret@cache.example:6380/2?prefix=app%3A1%3A&ssl_cert_reqs=none")
    assert tls.keys.prefix == "app:1:"
    assert tls.keys.room("r") == "app:1:room:r"

    async def main() -> None:
        await tls.open()  # connects lazily: nothing is reached here
        try:
            pool = tls._redis.connection_pool
            assert issubclass(pool.connection_class, redis.asyncio.SSLConnection)
            assert pool.connection_kwargs["host"] == "cache.example"
            assert pool.connection_kwargs["port"] == 6380
            assert pool.connection_kwargs["db"] == 2
            assert pool.connection_kwargs["password"] == "secret"
            assert "prefix" not in pool.connection_kwargs
        finally:
            await tls.close()

    run(main)
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        RedisBackend("redis://localhost:6379/0?no_such_option=1")


def test_registered_through_the_plugin_hook() -> None:
    pm = create_plugin_manager([redis_plugin], autoload=False)
    backend = Plugins(pm).create_backend("rediss://localhost")
    assert isinstance(backend, RedisBackend)
    assert RedisBackend.schemes == ("redis", "rediss")


def test_redis_still_means_redis_py() -> None:
    # The plugin package is named redis too; it must never shadow the client library.
    import room_gateway_plugins.redis.backend as module

    assert module.redis.asyncio.Redis is redis.asyncio.Redis
    assert "room_gateway_plugins" not in (redis.__file__ or "")
