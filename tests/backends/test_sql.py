"""The sql backend: the shipped conformance suite on SQLite and on a real PostgreSQL, plus what is its own.

PostgreSQL tests use ``ROOM_GATEWAY_TEST_POSTGRESQL_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
in a schema of their own per test session, dropped at the end: concurrent runs (and InvalidateConnections
of every room, which reaches every instance in a schema) do not cross. Without a reachable server they skip,
naming it — except under ``CI=true``, where they fail: CI must never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import room_gateway_plugins.sql
import sqlalchemy as sa
from room_gateway_plugins.sql import PostgresBackend, SQLiteBackend, migrations, tables
from room_gateway_plugins.sql import presence as presence_ops
from room_gateway_plugins.sql.base import SqlBackend
from room_gateway_plugins.sql.migrations import LATEST
from room_gateway_plugins.sql.postgresql import MAX_PAYLOAD
from room_gateway_plugins.sql.presence import EXPIRING

from gateway.core import wire
from gateway.core.backend import Backend, History, Snapshot
from gateway.core.hub import Topic
from gateway.core.models import UNSET, Change, ChangeKind, Event, Member, Presence, Room, RoomStatus, Variable
from gateway.core.outbox import Attempt, Outbox, Route, Settled
from gateway.errors import Unavailable
from gateway.plugins import Plugins, create_plugin_manager
from gateway.testing.conformance import BackendContract, SharedBackendContract
from gateway.testing.conformance_outbox import OutboxContract

POSTGRES_URL = os.environ.get("ROOM_GATEWAY_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def pg_url(schema: str, url: str = POSTGRES_URL) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def fresh_schema() -> str:
    return f"room_gateway_test_{uuid.uuid4().hex[:12]}"


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@functools.cache
def _postgres_error() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await conn.close()

    try:
        # In a thread of its own: the first test to need the server may be running in an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, probe()).result()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The PostgreSQL URL, with this session's schema; skips without a server, fails under CI."""
    error = _postgres_error()
    if error is not None:
        message = f"PostgreSQL server not reachable at {POSTGRES_URL} ({error})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the PostgreSQL tests")
        pytest.skip(message)
    schema = fresh_schema()
    yield pg_url(schema)
    asyncio.run(drop_schema(schema))


@contextlib.asynccontextmanager
async def opened(backend: Backend) -> AsyncIterator[Backend]:
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def fresh(name: str = "room") -> str:
    return f"sql-{uuid.uuid4().hex[:12]}-{name}"


async def receive(sub: AsyncIterator[object]) -> object:
    return await asyncio.wait_for(sub.__anext__(), 5.0)


# -- the conformance suite ----------------------------------------------------------------------------------


class TestSQLiteFile(BackendContract):
    durable = True

    @pytest.fixture
    def backend_factory(self, tmp_path: Path) -> Callable[..., Backend]:
        return functools.partial(SQLiteBackend, f"sqlite:///{tmp_path / 'rooms.db'}")


class TestSQLiteMemory(BackendContract):
    @pytest.fixture
    def backend_factory(self) -> Callable[..., Backend]:
        return functools.partial(SQLiteBackend, "sqlite:///:memory:")


class TestPostgreSQL(SharedBackendContract):
    durable = True

    @pytest.fixture
    def backend_factory(self, postgres: str) -> Callable[..., Backend]:
        return functools.partial(PostgresBackend, postgres)


class _GeneralSettle(PostgresBackend):
    """PostgreSQL claiming and settling through :class:`SqlBackend`'s own path (a transaction; for a settle a
    locking read, then an update a message, then the endpoint's state), the one a SQL dialect without
    statements of its own takes: PostgreSQL's are one statement each."""

    outbox_claim = SqlBackend.outbox_claim
    outbox_settle = SqlBackend.outbox_settle


class TestPostgreSQLGeneralSettle(OutboxContract):
    shared = True
    durable = True

    @pytest.fixture
    def backend_factory(self, postgres: str) -> Callable[..., Backend]:
        return functools.partial(_GeneralSettle, postgres)


# -- registration -------------------------------------------------------------------------------------------


def test_registered_by_scheme(tmp_path: Path) -> None:
    plugins = Plugins(create_plugin_manager([room_gateway_plugins.sql], autoload=False))
    assert type(plugins.create_backend(f"sqlite:///{tmp_path}/r.db")) is SQLiteBackend
    for url in ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"):
        assert type(plugins.create_backend(url)) is PostgresBackend


# -- migrations ---------------------------------------------------------------------------------------------


async def _versions(backend: Backend) -> list[int]:
    assert isinstance(backend, SQLiteBackend | PostgresBackend)
    async with backend.engine.connect() as conn:
        return list((await conn.execute(sa.text("SELECT version FROM schema_version"))).scalars())


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_migrations_are_idempotent(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    schema = fresh_schema()
    if where == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
        make: Callable[[], Backend] = lambda: SQLiteBackend(url)  # noqa: E731
    else:
        request.getfixturevalue("postgres")  # a server, or skip
        make = lambda: PostgresBackend(pg_url(schema))  # noqa: E731
    first, second = make(), make()
    try:
        async with opened(first):
            assert first._schema_found == 0  # type: ignore[attr-defined]
            assert await _versions(first) == [LATEST]
        async with opened(second):
            assert second._schema_found == LATEST  # type: ignore[attr-defined]
            assert await _versions(second) == [LATEST]
    finally:
        if where == "postgresql":
            await drop_schema(schema)


async def test_migrations_run_concurrently_on_postgresql(postgres: str) -> None:
    schema = fresh_schema()
    backends = [PostgresBackend(pg_url(schema)) for _ in range(4)]
    try:
        await asyncio.gather(*(b.open() for b in backends))
        assert sorted(b._schema_found for b in backends) == [0, LATEST, LATEST, LATEST]
    finally:
        await asyncio.gather(*(b.close() for b in backends))
        await drop_schema(schema)


async def test_migrated_schema_matches_the_tables(tmp_path: Path) -> None:
    """The migrations and :mod:`tables` (what the queries expect) describe the same columns."""
    async with opened(SQLiteBackend(f"sqlite:///{tmp_path / 's.db'}")) as backend:
        assert isinstance(backend, SQLiteBackend)
        async with backend.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            for table in tables.metadata.sorted_tables:
                if table.name not in names:
                    assert table.name == "notification_bodies"  # PostgreSQL only
                    continue
                columns = await conn.run_sync(lambda c, t=table.name: sa.inspect(c).get_columns(t))
                assert [c["name"] for c in columns] == [c.name for c in table.columns]


# -- durability, exactness ----------------------------------------------------------------------------------


async def test_sqlite_is_durable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    room = Room(room_id="lobby", display_name="Lobby", settings={"size": 3}, create_time=T0, update_time=T0)
    async with opened(SQLiteBackend(url)) as backend:
        await backend.create_room(room)
        await backend.set_variable("lobby", "x", {"big": 2**70, "f": 1.0}, expected_version=0, now=T0)
    async with opened(SQLiteBackend(url)) as backend:
        assert await backend.get_room("lobby") == room
        got = await backend.get_variable("lobby", "x")
        assert got == Variable("x", {"big": 2**70, "f": 1.0}, 1, T0)
        assert type(got.value["f"]) is float  # type: ignore[index]


# -- realtime over PostgreSQL -------------------------------------------------------------------------------


async def test_big_notifications_reach_another_instance(postgres: str) -> None:
    room_id = fresh()
    big = {"text": "é☃" * 6000, "n": list(range(500))}
    assert len(str(big).encode()) > MAX_PAYLOAD
    async with opened(PostgresBackend(postgres)) as one, opened(PostgresBackend(postgres)) as two:
        variable = await two.subscribe(Topic("variable", room_id, "x"))
        events = await two.subscribe(Topic("event", room_id, "e"))
        await one.set_variable(room_id, "x", "small", expected_version=None, now=T0)
        await one.set_variable(room_id, "x", big, expected_version=None, now=T0)
        await one.set_variable(room_id, "x", "small again", expected_version=None, now=T0)
        await one.publish_event(room_id, Event("e", big, T0))
        got = [await receive(variable) for _ in range(3)]
        assert [(c.variable.version, c.variable.value) for c in got] == [  # type: ignore[attr-defined]
            (1, "small"),
            (2, big),
            (3, "small again"),
        ]
        assert [c.seq for c in got] == [1, 2, 3]  # type: ignore[attr-defined]
        event = await receive(events)
        assert event.event == Event("e", big, T0) and event.seq == 4  # type: ignore[attr-defined]
        variable.close()
        events.close()
        # Sent by reference or not, the log holds the same changes.
        page = await two.read_changes(room_id, after_seq=0, limit=10)
        assert page.changes == [*got, event] and page.head_seq == 4


async def test_payloads_are_wire_messages(postgres: str) -> None:
    """PostgreSQL sends what the Redis backend publishes: the messages of gateway.core.wire (the seq spliced
    in by the server), and keeps the same text in its log."""
    room_id = fresh()
    payloads: asyncio.Queue[str] = asyncio.Queue()
    async with opened(PostgresBackend(postgres)) as backend:
        assert isinstance(backend, PostgresBackend)
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.add_listener(
                backend._room_channel(room_id), lambda *args: payloads.put_nowait(args[3])
            )
            written = await backend.set_variable(room_id, "x", {"big": 2**70}, expected_version=None, now=T0)
            payload = await asyncio.wait_for(payloads.get(), 5)
        finally:
            await conn.close()
        page = await backend.read_changes(room_id, after_seq=0, limit=10)
    change = Change(1, backend.epoch, ChangeKind.VARIABLE_SET, T0, variable=written)
    assert page.changes == [change]
    assert payload.encode() == wire.encode(wire.Message(room_id, change))


async def test_concurrent_writers_on_two_instances_get_distinct_versions(postgres: str) -> None:
    room_id = fresh()
    async with opened(PostgresBackend(postgres)) as one, opened(PostgresBackend(postgres)) as two:
        sub = await one.subscribe(Topic("variable", room_id, "n"))
        writes = [
            backend.set_variable(room_id, "n", i, expected_version=None, now=T0)
            for i in range(20)
            for backend in (one, two)
        ]
        results = await asyncio.gather(*writes)
        assert sorted(v.version for v in results if v is not None) == list(range(1, 41))
        seen = [await receive(sub) for _ in range(40)]
        assert [c.variable.version for c in seen] == list(range(1, 41))  # type: ignore[attr-defined]
        sub.close()


async def test_listener_reconnects_after_its_connection_is_killed(postgres: str) -> None:
    room_id = fresh()
    async with opened(PostgresBackend(postgres)) as writer, opened(PostgresBackend(postgres)) as reader:
        sub = await reader.subscribe(Topic("variable", room_id, "x"))
        pid = reader._listener._conn.get_server_pid()  # type: ignore[union-attr]
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        with pytest.raises(Unavailable):
            await receive(sub)
        deadline = time.monotonic() + 10
        while True:  # the listener comes back by itself; a subscription meanwhile may be refused
            try:
                sub = await reader.subscribe(Topic("variable", room_id, "x"))
                break
            except Unavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        await writer.set_variable(room_id, "x", 1, expected_version=None, now=T0)
        assert (await receive(sub)).variable.value == 1  # type: ignore[attr-defined]
        sub.close()


class _Proxy:
    """A TCP proxy to PostgreSQL that can be cut: a server going away and coming back, for real."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


async def test_server_going_away_and_coming_back(postgres: str) -> None:
    target = sa.engine.make_url(POSTGRES_URL)
    proxy = _Proxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    schema = sa.engine.make_url(postgres).query["schema"]
    url = pg_url(str(schema), target.set(port=proxy.port).render_as_string(hide_password=False))
    room_id = fresh()
    async with opened(PostgresBackend(url)) as backend, opened(PostgresBackend(postgres)) as writer:
        await backend.check()
        sub = await backend.subscribe(Topic("variable", room_id, "x"))
        await proxy.cut()
        with pytest.raises(Unavailable):
            await receive(sub)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await backend.check()
        with pytest.raises(Unavailable):
            await backend.get_room(room_id)
        with pytest.raises(Unavailable):
            await backend.subscribe(Topic("variable", room_id, "x"))
        assert time.monotonic() - started < 5
        await proxy.start()  # same port: the server is back
        deadline = time.monotonic() + 15
        while not backend._listener.connected:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the LISTEN connection did not come back"
            await asyncio.sleep(0.1)
        await backend.check()
        sub = await backend.subscribe(Topic("variable", room_id, "x"))
        await writer.set_variable(room_id, "x", "back", expected_version=None, now=T0)
        assert (await receive(sub)).variable.value == "back"  # type: ignore[attr-defined]
        # Its own writes and reads (on asyncpg directly, .direct) are back too, without a restart.
        assert (await backend.set_variable(room_id, "x", "again", expected_version=None, now=T0)) is not None
        assert (await receive(sub)).variable.value == "again"  # type: ignore[attr-defined]
        assert await backend.get_room(room_id) is None  # never created: read, not failed
        sub.close()
    await proxy.cut()


# -- faults -------------------------------------------------------------------------------------------------


async def test_dead_postgresql_port_is_unavailable_quickly() -> None:
    started = time.monotonic()
    backend = PostgresBackend("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(Unavailable) as raised:
        await backend.open()
    assert raised.value.__cause__ is not None
    with pytest.raises(Unavailable):
        await backend.check()
    await backend.close()
    assert time.monotonic() - started < 5


async def test_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'missing-dir' / 'rooms.db'}")
    with pytest.raises(Unavailable):
        await backend.open()
    with pytest.raises(Unavailable):
        await backend.check()
    await backend.close()


async def test_a_cancelled_call_stays_cancelled(tmp_path: Path) -> None:
    """A client leaving cancels its call mid-query: that is a cancellation, not an unreachable store."""
    async with opened(SQLiteBackend(f"sqlite:///{tmp_path / 'c.db'}")) as backend:
        now = datetime.now(UTC)
        for i in range(40):  # cancels landing at every stage of a write transaction
            task = asyncio.create_task(backend.set_variable("r", "x", i, expected_version=None, now=now))
            for _ in range(i % 8):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass  # what a cancellation must look like (a call that finished first is fine too)
        # The backend still serves; and since aiosqlite runs a connection's calls in order on its thread,
        # this also waits for the cancelled calls' work to finish while this test's loop is still open.
        await backend.check()


# -- the change log -----------------------------------------------------------------------------------------


def sql_backends(tmp_path: Path, request: pytest.FixtureRequest, where: str) -> Callable[..., Backend]:
    """A factory of backends on one store: a SQLite file, or this session's PostgreSQL schema."""
    if where == "sqlite":
        url = f"sqlite:///{tmp_path / 'log.db'}"
        return lambda **kw: SQLiteBackend(url, **kw)
    postgres = request.getfixturevalue("postgres")  # a server, or skip
    return lambda **kw: PostgresBackend(postgres, **kw)


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_epoch_and_seq_survive_a_restart(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    make = sql_backends(tmp_path, request, where)
    room_id = fresh()
    async with opened(make()) as backend:
        epoch = backend.epoch
        assert epoch and ":" not in epoch  # it goes into SSE ids, "<epoch>:<seq>"
        await backend.create_room(Room(room_id, create_time=T0, update_time=T0))
        await backend.set_variable(room_id, "x", 1, expected_version=None, now=T0)
    async with opened(make()) as backend:
        assert backend.epoch == epoch
        assert await backend.get_contents(room_id) == Snapshot({"x": 1}, 2, epoch)
        change = await backend.publish_event(room_id, Event("e", None, T0))
        assert (change.seq, change.epoch) == (3, epoch)
        page = await backend.read_changes(room_id, after_seq=0, limit=10)
        assert [c.kind for c in page.changes] == [
            ChangeKind.ROOM_CREATED,
            ChangeKind.VARIABLE_SET,
            ChangeKind.EVENT,
        ]


async def test_an_upgraded_database_starts_each_room_at_seq_zero(tmp_path: Path) -> None:
    """A database of schema 1 (before the log): its rooms and variables stay, their log starts empty."""
    path = tmp_path / "v1.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        v1 = migrations.metadata(1)
        v1.create_all(conn, tables=[v1.tables[name] for name in ("schema_version", "rooms", "variables")])
        conn.execute(v1.tables["schema_version"].insert().values(version=1))
        conn.execute(
            v1.tables["variables"]
            .insert()
            .values(room_id="old", name="x", value="7", version=3, update_time=T0)
        )
    engine.dispose()
    async with opened(SQLiteBackend(f"sqlite:///{path}")) as backend:
        assert backend._schema_found == 1  # type: ignore[attr-defined]
        assert await backend.get_contents("old") == Snapshot({"x": 7}, 0, backend.epoch)
        assert (await backend.read_changes("old", after_seq=0, limit=10)).head_seq == 0
        written = await backend.set_variable("old", "x", 8, expected_version=3, now=T0)
        assert written == Variable("x", 8, 4, T0)
        page = await backend.read_changes("old", after_seq=0, limit=10)
        assert [(c.seq, c.variable) for c in page.changes] == [(1, written)]


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_retention_is_trimmed_in_the_table(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Trimming happens on append, in the store: the table never holds more than retention keeps."""
    make = sql_backends(tmp_path, request, where)
    room_id = fresh()
    async with opened(make(history=History(max_changes=3, max_age_seconds=60))) as backend:
        assert isinstance(backend, SQLiteBackend | PostgresBackend)
        for i in range(10):
            await backend.set_variable(room_id, "x", i, expected_version=None, now=T0)
        count = (
            sa.select(sa.func.count()).select_from(tables.changes).where(tables.changes.c.room_id == room_id)
        )
        async with backend.engine.connect() as conn:
            assert (await conn.execute(count)).scalar_one() == 3
        page = await backend.read_changes(room_id, after_seq=0, limit=10)
        assert ([c.seq for c in page.changes], page.first_seq, page.head_seq) == ([8, 9, 10], 8, 10)
        # A change a minute and a second later drops the rest by age.
        later = T0 + timedelta(seconds=61)
        await backend.set_variable(room_id, "x", "later", expected_version=None, now=later)
        page = await backend.read_changes(room_id, after_seq=0, limit=10)
        assert ([c.seq for c in page.changes], page.first_seq, page.head_seq) == ([11], 11, 11)
        async with backend.engine.connect() as conn:
            assert (await conn.execute(count)).scalar_one() == 1


async def test_a_postgresql_backend_opened_with_fewer_max_changes_trims_every_room(postgres: str) -> None:
    """An append trims only a band below its window (:data:`.changelog.TRIM_BAND`), so what a larger
    ``max_changes`` kept is dropped when a backend opens with a smaller one; opened again with a larger
    one, nothing is dropped, and the next smaller one trims again."""
    rooms = [fresh(), fresh()]
    count = sa.select(sa.func.count()).select_from(tables.changes).where(tables.changes.c.room_id.in_(rooms))

    async def kept(keep: int) -> int:
        async with opened(PostgresBackend(postgres, history=History(max_changes=keep))) as backend:
            assert isinstance(backend, PostgresBackend)
            async with backend.engine.connect() as conn:
                return (await conn.execute(count)).scalar_one()  # type: ignore[no-any-return]

    async with opened(PostgresBackend(postgres, history=History(max_changes=200))) as backend:
        for room_id in rooms:
            for i in range(150):
                await backend.set_variable(room_id, "x", i, expected_version=None, now=T0)
    assert await kept(10) == 20
    assert await kept(200) == 20
    async with opened(PostgresBackend(postgres, history=History(max_changes=200))) as backend:
        for i in range(100):
            await backend.set_variable(rooms[0], "x", i, expected_version=None, now=T0)
        page = await backend.read_changes(rooms[0], after_seq=0, limit=1000)
        assert [c.seq for c in page.changes] == list(range(141, 251))  # 10 kept, then 100 more
    assert await kept(5) == 10


async def test_a_postgresql_variable_write_is_one_statement(postgres: str) -> None:
    """A variable write, its log's append, its notification and its webhook messages are one statement,
    sent by itself (no BEGIN, no COMMIT: it commits by itself) — a plain write, a compare-and-set, a
    deletion, a write an endpoint takes; and so is a logged event. The statement's row is the write's,
    logged and notified."""
    room_id, watched = fresh(), fresh("watched")
    backend = PostgresBackend(postgres)
    backend.outbox = Outbox([Route("app", rooms=(watched,))], first_delay_seconds=0)
    async with opened(backend):
        assert isinstance(backend, PostgresBackend)
        await backend.set_variable(room_id, "x", 0, expected_version=None, now=T0)  # warm the pool
        sub = await backend.subscribe(Topic("variable", room_id, "x"))
        statements: list[str] = []
        engine = backend.engine.sync_engine
        through_sqlalchemy = lambda *args: statements.append(args[2])  # noqa: E731
        # What each pooled connection sends, whoever sends it (writes run on asyncpg directly: .direct).
        sent = lambda query: statements.append(query.query)  # noqa: E731
        logged: list[Any] = []

        def log_on(dbapi_connection: Any, *_: Any) -> None:
            driver = dbapi_connection.driver_connection
            driver.add_query_logger(sent)
            logged.append(driver)

        sa.event.listen(engine, "before_cursor_execute", through_sqlalchemy)
        sa.event.listen(engine, "checkout", log_on)
        try:
            await backend.set_variable(room_id, "x", 1, expected_version=None, now=T0)
            written = await backend.set_variable(room_id, "x", 2, expected_version=2, now=T0)
            await backend.set_variable(room_id, "x", UNSET, expected_version=None, now=T0)
            await backend.set_variable(watched, "y", 1, expected_version=None, now=T0)
            event = await backend.publish_event(room_id, Event("e", {"n": 1}, T0))
        finally:
            sa.event.remove(engine, "before_cursor_execute", through_sqlalchemy)
            sa.event.remove(engine, "checkout", log_on)
            for driver in logged:
                driver.remove_query_logger(sent)
        assert len(statements) == 5, statements
        assert all("pg_notify" in statement for statement in statements), statements
        assert ["webhook_messages" in statement for statement in statements] == [False] * 3 + [True, False]
        assert written is not None and written.version == 3 and event.seq == 5
        changes = [await receive(sub) for _ in range(3)]
        assert [(c.seq, c.variable.version) for c in changes] == [(2, 2), (3, 3), (4, 4)]  # type: ignore[attr-defined]
        assert changes[2].kind is ChangeKind.VARIABLE_DELETED  # type: ignore[attr-defined]
        sub.close()


async def test_a_postgresql_settle_reads_its_own_messages_whatever_the_backlog(postgres: str) -> None:
    """A settle finds its attempts' rows by their keys, not by walking the endpoint's pending messages, even
    on a table the server has no statistics of yet (a new store, before autovacuum's first ANALYZE). That
    plan walked every pending row of the endpoint for each settle (16 to 21 ms for 8 attempts beside 10,000
    to 50,000, against under 1 ms), so a receiver's return after an outage would drain its backlog in
    quadratic time. The plan of the statement the backend sent, with its own arguments, on a fresh store
    with 10,000 pending messages (a schema of its own: the session's has had its statistics gathered;
    ``postgres`` only for its check of the server)."""
    schema = fresh_schema()
    backend = PostgresBackend(pg_url(schema))
    room_id = fresh("watched")
    backend.outbox = Outbox([Route("app", rooms=(room_id,))], first_delay_seconds=0)
    try:
        async with opened(backend):
            assert isinstance(backend, PostgresBackend)
            for n in range(8):
                await backend.set_variable(room_id, "x", n, expected_version=None, now=T0)
            conn = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
            try:
                columns = [c.name for c in tables.webhook_messages.c]
                copied = ", ".join("m.id || '-' || g" if c == "id" else f"m.{c}" for c in columns)
                await conn.execute(
                    f"INSERT INTO webhook_messages ({', '.join(columns)}) SELECT {copied} "
                    "FROM webhook_messages AS m, generate_series(1, 1249) AS g"
                )
                claimed = await backend.outbox_claim("app", now=T0, lease_seconds=60, limit=8)
                assert len(claimed) == 8
                sent: list[Any] = []
                engine = backend.engine.sync_engine
                log_on = lambda dbapi_connection, *_: dbapi_connection.driver_connection.add_query_logger(  # noqa: E731
                    sent.append
                )
                sa.event.listen(engine, "checkout", log_on)
                try:
                    states = await backend.outbox_settle(
                        [Settled(message, Attempt(T0, 204, 1.0)) for message in claimed]
                    )
                finally:
                    sa.event.remove(engine, "checkout", log_on)
                assert all(state is not None for state in states)
                (settle,) = [query for query in sent if "UPDATE webhook_messages" in query.query]
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {settle.query}", *settle.args)
                assert "webhook_messages_due" not in plan and "webhook_messages_pkey" in plan, plan
            finally:
                await conn.close()
    finally:
        await drop_schema(schema)


async def test_a_process_sends_postgresql_one_writer_of_a_room_at_a_time(postgres: str) -> None:
    """Concurrent writes of one room's variables from one process queue in the process for the room's head
    (:mod:`.roomqueue`): none of its connections waits for a lock in PostgreSQL (writes of one variable
    still meet at its row), every write lands, and the queue keeps nothing once they are done — a
    transaction that fails after taking its turn too."""
    room_id = fresh()
    async with opened(PostgresBackend(postgres)) as backend:
        assert isinstance(backend, PostgresBackend)
        watcher = await asyncpg.connect(POSTGRES_URL)
        writing = True
        lock_waits = 0

        async def watch() -> None:
            nonlocal lock_waits
            while writing:
                lock_waits += await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND application_name = 'room-gateway'"
                    " AND query LIKE '%room_heads%'"  # the head row's waits, not another session's
                )
                await asyncio.sleep(0)

        watching = asyncio.ensure_future(watch())
        try:
            results = await asyncio.gather(
                *(
                    backend.set_variable(room_id, f"v{i}", i, expected_version=None, now=T0)
                    for i in range(200)
                )
            )
        finally:
            writing = False
            await watching
            await watcher.close()
        assert lock_waits == 0
        assert all(v is not None and v.version == 1 for v in results)
        page = await backend.read_changes(room_id, after_seq=0, limit=1000)
        assert [c.seq for c in page.changes] == list(range(1, 201))
        assert len(backend._writers) == 0
        with pytest.raises(RuntimeError, match="after its turn"):
            async with backend._tx() as tx:
                await backend._before_head(tx, room_id)
                raise RuntimeError("failed after its turn")
        assert len(backend._writers) == 0
        assert (await backend.set_variable(room_id, "v0", "next", expected_version=None, now=T0)) is not None


async def test_postgresql_writes_cancelled_in_flight_leave_the_pool_working(postgres: str) -> None:
    """Writes cancelled at every stage (waiting for a connection, mid-statement, mid-commit) stay
    cancellations; the connections they held are not given back in an unknown state, so the next write
    works at once; and every acknowledged write is in the log, once, with the log's seqs gap-free.

    A write cancelled while its COMMIT is in flight has committed on the server although its caller saw
    the cancellation (any database's unknown outcome: the client went away before the answer), so the log
    may also hold some cancelled writes, each at most once, but nothing that was never written."""
    room_id = fresh()
    async with opened(PostgresBackend(postgres)) as backend:
        assert isinstance(backend, PostgresBackend)
        issued: set[str] = set()
        acknowledged: set[str] = set()
        cancelled = 0
        for turn, delay in enumerate((0.0005, 0.001, 0.002, 0.004, 0.008, 0.016) * 3):
            names = [f"v{turn}-{i}" for i in range(30)]
            issued.update(names)
            writes = [
                asyncio.ensure_future(backend.set_variable(room_id, name, 1, expected_version=None, now=T0))
                for name in names
            ]
            await asyncio.sleep(delay)
            for write in writes:
                write.cancel()
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
            for name, outcome in zip(names, outcomes, strict=True):
                if isinstance(outcome, Variable):
                    acknowledged.add(name)
                else:
                    assert isinstance(outcome, asyncio.CancelledError), outcome
                    cancelled += 1
            assert cancelled, "no write was cancelled: the test checks nothing"
            name = f"next{turn}"
            issued.add(name)
            assert await backend.set_variable(room_id, name, 1, expected_version=None, now=T0) is not None
            acknowledged.add(name)
        page = await backend.read_changes(room_id, after_seq=0, limit=10_000)
        logged = [c.name for c in page.changes]
        assert [c.seq for c in page.changes] == list(range(1, len(logged) + 1))
        assert len(set(logged)) == len(logged)
        assert acknowledged <= set(logged) <= issued


async def test_postgresql_connections_the_server_ends_cost_one_call(postgres: str) -> None:
    """The server ends every pooled connection (``pg_terminate_backend``: an admin shutdown, as a restart
    does): the first call that meets one answers UNAVAILABLE and invalidates the pool, so the calls after
    it connect afresh and succeed."""
    room_id = fresh()
    pid = sa.select(sa.func.pg_backend_pid().label("pid"))
    async with opened(PostgresBackend(postgres)) as backend:
        await asyncio.gather(
            *(backend.set_variable(room_id, f"v{i}", i, expected_version=None, now=T0) for i in range(8))
        )
        pids = {
            row.pid for rows in await asyncio.gather(*(backend._fetch(pid) for _ in range(8))) for row in rows
        }
        killer = await asyncpg.connect(POSTGRES_URL)
        try:
            await killer.fetch("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) AS p", list(pids))
        finally:
            await killer.close()
        outcomes = []
        for i in range(6):
            try:
                outcomes.append(
                    await backend.set_variable(room_id, "after", i, expected_version=None, now=T0)
                )
            except Unavailable:
                outcomes.append(None)
        assert outcomes.count(None) <= 1, outcomes
        assert outcomes[-1] is not None and await backend.get_room(room_id) is None


@pytest.mark.parametrize(("sqlstate", "error"), [("40P01", "deadlock_detected"), ("40001", "serialization")])
async def test_a_rolled_back_postgresql_transaction_is_unavailable_then_recovers(
    postgres: str, sqlstate: str, error: str
) -> None:
    """SQLSTATE class 40 (a deadlock, a serialization failure): the server rolled the transaction back, so
    the call can be retried as it is — UNAVAILABLE, as for a lost connection, not an error no one maps
    (a 500, or the end of a webhook deliverer's task). Raised here by the real server, from a trigger, on
    both paths: a variable write on asyncpg directly (:mod:`.direct`), a room's creation through
    SQLAlchemy."""
    room_id = fresh()
    async with opened(PostgresBackend(postgres)) as backend:
        schema = backend._schema()
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(
                f"""
                CREATE FUNCTION "{schema}".fail_{sqlstate}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.room_id = '{room_id}' THEN
                        RAISE EXCEPTION '{error}' USING ERRCODE = '{sqlstate}';
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER fail BEFORE INSERT OR UPDATE ON "{schema}".variables
                    FOR EACH ROW EXECUTE FUNCTION "{schema}".fail_{sqlstate}();
                CREATE TRIGGER fail BEFORE INSERT OR UPDATE ON "{schema}".rooms
                    FOR EACH ROW EXECUTE FUNCTION "{schema}".fail_{sqlstate}();
                """
            )
            try:
                with pytest.raises(Unavailable):
                    await backend.set_variable(room_id, "x", 1, expected_version=None, now=T0)
                with pytest.raises(Unavailable):
                    await backend.create_room(Room(room_id=room_id, create_time=T0, update_time=T0))
            finally:
                await conn.execute(f'DROP FUNCTION "{schema}".fail_{sqlstate}() CASCADE')  # its triggers
        finally:
            await conn.close()
        written = await backend.set_variable(room_id, "x", 1, expected_version=None, now=T0)
        assert written is not None and written.version == 1  # the failed write left nothing behind
        await backend.create_room(Room(room_id=room_id, create_time=T0, update_time=T0))
        assert (await backend.get_room(room_id)) is not None


async def test_concurrent_writers_on_two_instances_log_gap_free(postgres: str) -> None:
    """Writes of every kind through two instances at once: seqs 1..N with none lost or repeated, in the
    log and on a room listener of each instance, in the same order."""
    room_id = fresh()
    async with opened(PostgresBackend(postgres)) as one, opened(PostgresBackend(postgres)) as two:
        listeners = [await one.subscribe(Topic.room(room_id)), await two.subscribe(Topic.room(room_id))]
        await one.create_room(Room(room_id, create_time=T0, update_time=T0))
        for backend, instance in ((one, "a"), (two, "b")):  # only alive instances' joins count
            await backend.presence_heartbeat(instance, now=T0, ttl_seconds=30)
        writes = []
        for i in range(15):
            for backend, name in ((one, "a"), (two, "b")):
                writes.append(backend.set_variable(room_id, name, i, expected_version=None, now=T0))
                writes.append(backend.publish_event(room_id, Event(name, i, T0)))
                writes.append(backend.presence_join(room_id, Member(f"{name}{i}"), instance=name, now=T0))
        await asyncio.gather(*writes)
        total = 1 + len(writes)
        page = await two.read_changes(room_id, after_seq=0, limit=1000)
        assert [c.seq for c in page.changes] == list(range(1, total + 1))
        assert page.head_seq == total
        for sub in listeners:
            assert [await receive(sub) for _ in range(total)] == page.changes
            sub.close()
        assert (await one.get_presence(room_id)).num_users == 30


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_delete_room_drops_its_log_and_presence(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    make = sql_backends(tmp_path, request, where)
    room_id = fresh()
    async with opened(make()) as backend:
        room = Room(room_id, create_time=T0, update_time=T0)
        await backend.create_room(room)
        await backend.set_variable(room_id, "x", 1, expected_version=None, now=T0)
        await backend.presence_heartbeat("i", now=T0, ttl_seconds=30)
        await backend.presence_join(room_id, Member("u"), instance="i", now=T0)
        sub = await backend.subscribe(Topic("variable", room_id, "x"))
        deleted = Room(room_id, status=RoomStatus.DELETED, create_time=T0, update_time=T0)
        await backend.delete_room(deleted)
        ending = await receive(sub)
        assert ending == Change(4, backend.epoch, ChangeKind.ROOM_DELETED, T0, room=deleted)
        assert await backend.get_room(room_id) == deleted
        assert await backend.get_contents(room_id) == Snapshot({}, 4, backend.epoch)
        page = await backend.read_changes(room_id, after_seq=0, limit=10)
        assert (page.changes, page.head_seq, page.first_seq) == ([], 4, 5)
        assert await backend.get_presence(room_id) == Presence([], 0, 0)


# -- presence -----------------------------------------------------------------------------------------------


async def test_presence_is_one_member_per_user_across_instances(postgres: str) -> None:
    room_id = fresh()
    later = T0 + timedelta(seconds=60)
    async with opened(PostgresBackend(postgres)) as one, opened(PostgresBackend(postgres)) as two:
        a, b = f"a-{room_id}", f"b-{room_id}"  # instance ids of this test alone
        await one.presence_heartbeat(a, now=T0, ttl_seconds=30)
        await two.presence_heartbeat(b, now=T0, ttl_seconds=30)
        await asyncio.gather(
            one.presence_join(room_id, Member("u", info={"n": 1}), instance=a, now=T0),
            two.presence_join(room_id, Member("u", info={"n": 1}), instance=b, now=T0),
            two.presence_join(room_id, Member("u", info={"n": 1}), instance=b, now=T0),
        )
        got = await one.get_presence(room_id)
        assert got == Presence([Member("u", 3, {"n": 1}, T0)], 1, 3)
        assert await two.count_users([room_id, fresh()]) == {room_id: 1}
        # Instance a goes silent; b's expiry sweeps it: u is still there through b, so no one leaves.
        await two.presence_heartbeat(b, now=later, ttl_seconds=30)
        await two.presence_expire(now=later, ttl_seconds=30)
        assert await one.get_presence(room_id) == Presence([Member("u", 2, {"n": 1}, T0)], 1, 2)
        await one.presence_leave(room_id, "u", instance=a, now=later)  # swept already: nothing to do
        await two.presence_leave(room_id, "u", instance=b, now=later)
        await two.presence_leave(room_id, "u", instance=b, now=later)
        page = await one.read_changes(room_id, after_seq=0, limit=10)
        assert [(c.kind, c.member) for c in page.changes] == [
            (ChangeKind.MEMBER_JOINED, Member("u", 1, {"n": 1}, T0)),
            (ChangeKind.MEMBER_LEFT, Member("u", 0, {"n": 1}, T0)),
        ]
        assert await one.count_users([room_id]) == {}


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_a_silent_instance_s_users_leave(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    make = sql_backends(tmp_path, request, where)
    rooms = [fresh("one"), fresh("two")]
    dead, alive = f"dead-{rooms[0]}", f"alive-{rooms[0]}"
    async with opened(make()) as backend:
        for instance in (dead, alive):
            await backend.presence_heartbeat(instance, now=T0, ttl_seconds=30)
        for room_id in rooms:
            await backend.presence_join(room_id, Member("gone"), instance=dead, now=T0)
            await backend.presence_join(room_id, Member("here"), instance=alive, now=T0)
        await backend.presence_heartbeat(alive, now=T0 + timedelta(seconds=20), ttl_seconds=30)
        await backend.presence_expire(now=T0 + timedelta(seconds=20), ttl_seconds=30)
        assert (await backend.get_presence(rooms[0])).num_users == 2  # not silent for long enough yet
        await backend.presence_heartbeat(alive, now=T0 + timedelta(seconds=40), ttl_seconds=30)
        await backend.presence_expire(now=T0 + timedelta(seconds=40), ttl_seconds=30)
        for room_id in rooms:
            assert [m.user_id for m in (await backend.get_presence(room_id)).members] == ["here"]
            page = await backend.read_changes(room_id, after_seq=0, limit=10)
            assert [(c.kind, c.member.user_id) for c in page.changes if c.member] == [
                (ChangeKind.MEMBER_JOINED, "gone"),
                (ChangeKind.MEMBER_JOINED, "here"),
                (ChangeKind.MEMBER_LEFT, "gone"),
            ]


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_an_expiry_cut_short_is_finished_by_the_next(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A sweeper that dies between its two transactions leaves the instance marked expiring: it stays
    expired (its heartbeat answers not alive, its joins count nothing) until the next expiry has swept it;
    then its heartbeat makes it alive again, to rejoin."""
    make = sql_backends(tmp_path, request, where)
    room_id = fresh()
    paused = f"paused-{room_id}"
    instances = tables.presence_instances
    async with opened(make()) as backend:
        assert isinstance(backend, SqlBackend)
        await backend.presence_heartbeat(paused, now=T0, ttl_seconds=30)
        await backend.presence_join(room_id, Member("ann"), instance=paused, now=T0)
        async with backend.engine.begin() as conn:  # the first transaction of an expiry, alone
            mark = instances.update().where(instances.c.instance == paused)
            await conn.execute(mark.values(last_seen=EXPIRING))
        assert not await backend.presence_heartbeat(paused, now=T0, ttl_seconds=30)
        await backend.presence_join(room_id, Member("bob"), instance=paused, now=T0)  # not counted
        assert (await backend.get_presence(room_id)).num_connections == 1
        await backend.presence_expire(now=T0, ttl_seconds=30)  # finds the mark, finishes the sweep
        assert (await backend.get_presence(room_id)).members == []
        page = await backend.read_changes(room_id, after_seq=0, limit=10)
        assert [(c.kind, c.member.user_id) for c in page.changes if c.member] == [
            (ChangeKind.MEMBER_JOINED, "ann"),
            (ChangeKind.MEMBER_LEFT, "ann"),
        ]
        assert not await backend.presence_heartbeat(paused, now=T0, ttl_seconds=30)  # alive again
        assert await backend.presence_heartbeat(paused, now=T0, ttl_seconds=30)


async def test_a_join_in_flight_holds_off_expiry_but_not_heartbeats(postgres: str) -> None:
    """A join holds its instance's row FOR KEY SHARE until it commits: expiry (which deletes the row) waits
    for it, so the sweep sees what it counted; a heartbeat (which updates the row) does not wait."""
    room_id = fresh()
    busy = f"busy-{room_id}"
    async with opened(PostgresBackend(postgres)) as backend:
        assert isinstance(backend, SqlBackend)
        await backend.presence_heartbeat(busy, now=T0, ttl_seconds=30)
        async with backend.engine.connect() as conn, conn.begin():  # a join's transaction, still open
            assert await presence_ops.alive(conn, busy)
            beat = backend.presence_heartbeat(busy, now=T0 + timedelta(seconds=1), ttl_seconds=30)
            assert await asyncio.wait_for(beat, 5)  # not blocked
            expiry = asyncio.create_task(
                backend.presence_expire(now=T0 + timedelta(seconds=40), ttl_seconds=30)
            )
            await asyncio.sleep(0.5)
            assert not expiry.done()  # waits for the join to commit
        await asyncio.wait_for(expiry, 5)
        assert not await backend.presence_heartbeat(busy, now=T0 + timedelta(seconds=41), ttl_seconds=30)
