"""The Redis backend against a real Redis server: the shipped conformance suite, plus what is Redis's own.

The server is ``ROOM_GATEWAY_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Every key and channel of
this session lives under one fresh prefix, deleted at the end, so the server may hold other data. Without a
server these tests skip, naming it — except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
import redis
import redis.asyncio
import redis.exceptions
from room_gateway_plugins import redis as redis_plugin
from room_gateway_plugins.redis import RedisBackend, scripts
from room_gateway_plugins.redis.keys import DEFAULT_PREFIX

from gateway.core import wire
from gateway.core.backend import Backend
from gateway.core.hub import Topic
from gateway.core.models import Event, Room, Variable
from gateway.errors import Aborted, Unavailable
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
    @pytest.fixture
    def backend_factory(self, redis_server: str, session_prefix: str) -> Callable[[], Backend]:
        return lambda: RedisBackend(backend_url(redis_server, session_prefix))


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


def test_the_write_script_completes_the_wire_message_as_the_gateway_would() -> None:
    # The Lua script appends the version itself: with the same tail as gateway.core.wire.encode.
    assert "string.format('" + wire.VERSION_TAIL + "', version)" in scripts.SET_VARIABLE


def test_records_and_notifications_are_exact_wire_messages(redis_server: str, session_prefix: str) -> None:
    async def main() -> None:
        backend = RedisBackend(backend_url(redis_server, session_prefix))
        await backend.open()
        admin = redis.asyncio.Redis.from_url(redis_server)
        try:
            room = fresh_room()
            value = {"big": 2**70, "f": 1.0, "s": "é☃"}  # beyond 64 bits, and a float that looks whole
            sub = await backend.subscribe(Topic("variable", room.room_id, "x"))
            written = await backend.set_variable(room.room_id, "x", value, expected_version=0, now=NOW)
            assert written == Variable("x", value, 1, NOW)
            assert await asyncio.wait_for(sub.__anext__(), 5) == written
            assert await backend.get_variable(room.room_id, "x") == written
            assert await backend.get_contents(room.room_id) == {"x": value}
            record = await admin.hget(backend.keys.variables(room.room_id), "x")
            assert wire.decode(record) == wire.Message(Topic("variable", room.room_id, "x"), written)
            sub.close()
        finally:
            await admin.aclose()
            await backend.close()

    run(main)


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
            assert got.value == "back"
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
            assert (await asyncio.wait_for(events.__anext__(), 5)).data == "from b"
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
