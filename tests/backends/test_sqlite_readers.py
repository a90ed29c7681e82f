"""SQLite's readers: reads of a file database on raw aiosqlite connections (``sql/readers.py``).

Real files, real threads: each test opens a backend on a file in ``tmp_path`` and counts aiosqlite's worker
threads (one per connection: the writer's and each reader's) to see connections come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from room_gateway_plugins.sql import SQLiteBackend, base, changelog, presence, readers, sqlite, tables
from room_gateway_plugins.sql.readers import CompiledRead, CompiledStatement
from sqlalchemy.dialects import sqlite as sqlite_dialect

from gateway.core.backend import Snapshot
from gateway.core.models import UNSET, Member, Room, Variable
from gateway.errors import Unavailable

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def aiosqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)")}


async def no_thread_left(before: set[threading.Thread]) -> None:
    """Wait (briefly: a closed connection's thread ends right after answering) for the threads started
    since ``before`` to end; any left would keep the process from exiting (they are not daemons)."""
    async with asyncio.timeout(5):
        while aiosqlite_threads() - before:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def opened(path: Path | str) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def test_a_read_sees_the_write_acknowledged_before_it(tmp_path: Path) -> None:
    async with opened(tmp_path / "rooms.db") as backend:
        room = Room(room_id="r", display_name="R", create_time=T0, update_time=T0)
        await backend.create_room(room)
        assert await backend.get_room("r") == room
        # Other readers keep every reader connection busy meanwhile: no read may serve an older snapshot.
        stop = asyncio.Event()

        async def reading() -> None:
            while not stop.is_set():
                await backend.get_variable("r", "x")

        others = [asyncio.create_task(reading()) for _ in range(16)]
        try:
            for i in range(200):
                now = T0 + timedelta(microseconds=i)
                written = await backend.set_variable("r", "x", {"i": i}, expected_version=None, now=now)
                assert await backend.get_variable("r", "x") == written == Variable("x", {"i": i}, i + 1, now)
                # The snapshot's position is the write's: create_room was seq 1, each write one more.
                assert await backend.get_contents("r") == Snapshot({"x": {"i": i}}, i + 2, backend.epoch)
        finally:
            stop.set()
            await asyncio.gather(*others)
        await backend.set_variable("r", "x", UNSET, expected_version=None, now=T0)
        assert await backend.get_variable("r", "x") is None
        assert await backend.get_contents("r") == Snapshot({}, 202, backend.epoch)


async def test_concurrent_reads_share_a_few_connections(tmp_path: Path) -> None:
    before = aiosqlite_threads()
    async with opened(tmp_path / "rooms.db") as backend:
        await backend.set_variable("r", "x", [1, 2], expected_version=None, now=T0)
        results = await asyncio.gather(*(backend.get_variable("r", "x") for _ in range(64)))
        assert results == [Variable("x", [1, 2], 1, T0)] * 64
        started = aiosqlite_threads() - before
        assert 2 <= len(started) <= 1 + sqlite.READERS < 64  # the writer, and at most READERS readers
    await no_thread_left(before)


async def test_close_ends_every_reader_thread_even_under_reads(tmp_path: Path) -> None:
    before = aiosqlite_threads()
    path = tmp_path / "rooms.db"
    async with opened(path) as backend:
        await backend.set_variable("r", "x", 1, expected_version=None, now=T0)
    for step in range(12):  # close() landing at every stage of reads in flight
        backend = SQLiteBackend(f"sqlite:///{path}")
        await backend.open()
        reads = [asyncio.create_task(backend.get_variable("r", "x")) for _ in range(64)]
        for _ in range(step):
            await asyncio.sleep(0)
        await backend.close()
        for outcome in await asyncio.gather(*reads, return_exceptions=True):
            # A read ahead of the close finishes; one after it is refused as a store that cannot serve.
            assert outcome == Variable("x", 1, 1, T0) or isinstance(outcome, Unavailable), outcome
        await no_thread_left(before)


async def test_a_cancelled_read_gives_its_connection_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client leaving cancels its read: the cancellation stays one, and the connection goes back."""
    monkeypatch.setattr(sqlite, "READERS", 1)  # one reader: a connection not given back would block all
    before = aiosqlite_threads()
    async with opened(tmp_path / "rooms.db") as backend:
        await backend.set_variable("r", "x", 1, expected_version=None, now=T0)

        async def cancel_reads() -> int:
            """Cancels landing at every stage of a read; how many reads they stopped."""
            stopped = 0
            for i in range(64):
                task = asyncio.create_task(backend.get_variable("r", "x"))
                for _ in range(i % 32):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    assert await task == Variable("x", 1, 1, T0)  # (finished before the cancel: fine)
                except asyncio.CancelledError:
                    stopped += 1
            return stopped

        assert await cancel_reads() > 0  # while the reader connection opens
        async with asyncio.timeout(5):
            assert await backend.get_variable("r", "x") == Variable("x", 1, 1, T0)
        assert await cancel_reads() > 0  # while it reads
        async with asyncio.timeout(5):
            assert await backend.get_variable("r", "x") == Variable("x", 1, 1, T0)
        async with asyncio.timeout(5):  # (a thread whose connect was cancelled ends by itself, soon)
            while len(aiosqlite_threads() - before) > 2:
                await asyncio.sleep(0.01)
        assert len(aiosqlite_threads() - before) == 2  # the writer and the one reader, kept
    await no_thread_left(before)


async def test_an_unopenable_file_is_unavailable_until_it_is_back(tmp_path: Path) -> None:
    """The database's directory moved away under a running gateway: the writer keeps its open file, but a
    reader cannot open the file (sqlite3's "unable to open database file"), which is UNAVAILABLE."""
    home, away = tmp_path / "data", tmp_path / "moved"
    home.mkdir()
    before = aiosqlite_threads()
    async with opened(home / "rooms.db") as backend:
        await backend.set_variable("r", "x", 1, expected_version=None, now=T0)
        home.rename(away)
        try:
            with pytest.raises(Unavailable) as raised:
                await backend.get_variable("r", "x")
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(Unavailable):
                await backend.list_rooms(start="", inclusive=True, limit=10)
        finally:
            away.rename(home)
        assert await backend.get_variable("r", "x") == Variable("x", 1, 1, T0)
    await no_thread_left(before)


async def test_reads_of_memory_stay_on_the_one_connection() -> None:
    """``:memory:`` has no readers: another connection would open another, empty, database."""
    async with opened(":memory:") as backend:
        assert backend._readers is None
        await backend.set_variable("r", "x", 1, expected_version=None, now=T0)
        assert await backend.get_variable("r", "x") == Variable("x", 1, 1, T0)


async def test_rows_come_back_as_sqlalchemy_returns_them(tmp_path: Path) -> None:
    """The readers' rows equal the engine's for each read statement: same names, same Python values."""
    async with opened(tmp_path / "rooms.db") as backend:
        for i in range(3):
            room = Room(room_id=f"r{i}", display_name="R", settings={"n": i}, create_time=T0, update_time=T0)
            await backend.create_room(room)
            await backend.set_variable(f"r{i}", "x", i, expected_version=None, now=T0)
        reads = [
            (base._ROOM, {"room_id": "r1"}),
            (base._ROOMS_FROM, {"start": "r1", "limit": 5}),
            (base._ROOMS_AFTER, {"start": "r1", "limit": 1}),
            (base._ROOMS_AMONG, {"room_ids": ["r0", "r2", "nope"]}),
            (base._VARIABLE, {"room_id": "r2", "name": "x"}),
            (base._SNAPSHOT, {"room_id": "r0"}),
            (changelog.PAGE, {"room_id": "r1", "after_seq": 0, "limit": 10}),
            (
                changelog.PAGE_OF_KINDS,
                {"room_id": "r1", "after_seq": 1, "limit": 10, "kinds": ["VARIABLE_SET"]},
            ),
            (presence.ROOM, {"room_id": "r1"}),
            (presence.USERS, {"room_ids": ["r0", "r1"]}),
        ]
        await backend.presence_heartbeat("i", now=T0, ttl_seconds=30)
        await backend.presence_join("r1", Member("u", info={"a": 1}), instance="i", now=T0)
        for statement, params in reads:
            ours = await backend._fetch(statement, **params)
            async with backend.engine.connect() as conn:
                theirs = (await conn.execute(statement, params)).all()
            assert [row._asdict() for row in ours] == [row._asdict() for row in theirs], statement
            assert ours, statement


def test_a_compiled_statement_binds_as_sqlalchemy_would() -> None:
    """Typed parameters go through their bind processors (a time becomes SQLite's text), defaults are
    filled in, an ``IN`` list is expanded, and a missing parameter is an error, not a NULL."""
    dialect = sqlite_dialect.dialect(paramstyle="qmark")
    append = CompiledStatement(sqlite._APPEND, dialect)
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    params = {"room_id": "r", "kind": "VARIABLE_SET", "time": at, "before": "{", "after": "}"}
    assert append.bind(params)[1] == ("r", "r", "VARIABLE_SET", "2024-05-06 07:08:09.123456", "{", "}")
    with pytest.raises(KeyError):
        append.bind({"room_id": "r"})
    listing = CompiledRead(base._ROOMS_FROM, dialect)
    assert listing.bind({"start": "a", "limit": 5})[1] == ("a", 5, 0)  # OFFSET's default
    among = CompiledRead(base._ROOMS_AMONG, dialect)
    assert among.bind({"room_ids": ["a", "b"]})[1] == ("a", "b")


def test_compiled_statements_are_kept_once_each_by_kind() -> None:
    """The one cache of both SQL backends (``readers.Compiled``): a statement is compiled once per kind and
    then handed out again; inferred, a SELECT or a ``RETURNING`` reads rows by name and anything else by
    position; and statements built anew on every call are bounded, the oldest dropped first."""
    dialect = sqlite_dialect.dialect(paramstyle="qmark")
    compiled = readers.Compiled(dialect)
    read = compiled.read(base._ROOMS_FROM)
    assert isinstance(read, CompiledRead) and compiled.read(base._ROOMS_FROM) is read
    by_position = compiled.statement(base.CURRENT_VERSION)  # a SELECT its caller reads by position
    assert type(by_position) is CompiledStatement and compiled.statement(base.CURRENT_VERSION) is by_position
    assert compiled(base._ROOMS_FROM) is read  # a SELECT, inferred: named rows
    assert compiled(sqlite._APPEND) is compiled.statement(sqlite._APPEND)  # no RETURNING: by position
    returning = sa.update(tables.variables).values(version=1).returning(tables.variables.c.version)
    assert isinstance(compiled(returning), CompiledRead)
    text = sa.text("SELECT 1")
    assert type(compiled(text)) is CompiledStatement

    built = [sa.select(tables.variables.c.version).where(tables.variables.c.name == str(n)) for n in range(3)]
    first = compiled.read(built[0])
    for statement in built[1:] + [sa.select(sa.literal(n).label("n")) for n in range(readers.KEPT)]:
        compiled.read(statement)
    assert compiled.read(built[0]) is not first  # dropped, compiled again
    assert compiled.read(base._ROOMS_FROM) is not read  # the oldest goes first, whatever it is
