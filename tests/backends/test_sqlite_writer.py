"""SQLite's writes: one trip through the writer's thread a transaction, and group commit (``sql/writer.py``).

Real files and threads. Some tests drive :class:`GroupCommit` on a connection of their own, to give a group
writes that fail in ways the backend's never do on purpose (a constraint, a commit refused); the others go
through the backend and count the statements SQLite ran on the writer connection (its trace callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from room_gateway_plugins.sql import SQLiteBackend, sqlite
from room_gateway_plugins.sql import writer as writer_module
from room_gateway_plugins.sql.writer import GroupCommit, LostTransaction

from gateway.core.hub import Topic
from gateway.core.models import Change, ChangeKind, Event
from gateway.errors import Aborted, Unavailable

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(url)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def writer_of(backend: SQLiteBackend) -> aiosqlite.Connection:
    async with backend.engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
    assert isinstance(driver, aiosqlite.Connection)
    return driver


async def traced(backend: SQLiteBackend) -> list[str]:
    """The statements SQLite runs on the backend's writer connection from now on."""
    statements: list[str] = []
    await (await writer_of(backend)).set_trace_callback(statements.append)
    return statements


def commits(statements: list[str]) -> int:
    return sum(1 for statement in statements if statement == "COMMIT")


async def test_a_write_is_one_trip_through_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(f"sqlite:///{tmp_path / 'rooms.db'}") as backend:
        await backend.set_variable("r", "v", 0, expected_version=None, now=T0)  # the room's first write
        writer = await writer_of(backend)
        trips = []
        execute: Callable[..., Any] = aiosqlite.Connection._execute

        async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
            trips.append(self is writer)
            return await execute(self, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        for i in range(1, 4):
            await backend.set_variable("r", "v", i, expected_version=None, now=T0)
        assert trips == [True] * 3  # one a write (SQLAlchemy's adaptation made nine)


async def test_concurrent_writes_share_one_commit_in_order(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path / 'rooms.db'}") as backend:
        await backend.set_variable("r", "v", -1, expected_version=None, now=T0)
        statements = await traced(backend)
        topic = Topic("variable", "r", "v")
        subscription = await backend.subscribe(topic)
        written = await asyncio.gather(
            *(backend.set_variable("r", "v", i, expected_version=None, now=T0) for i in range(20))
        )
        # All 20 queued before the group began (its task runs after the callers'): one transaction.
        assert commits(statements) == 1, statements
        assert statements.count("SAVEPOINT write") == 20
        # Versions, seqs and notifications in the order the writes were made.
        assert [variable.version for variable in written if variable] == list(range(2, 22))
        page = await backend.read_changes("r", after_seq=0, limit=100)
        logged = [change.variable for change in page.changes if change.variable is not None]
        assert [(v.value, v.version) for v in logged] == [(i - 2, i) for i in range(1, 22)]
        notified = [await asyncio.wait_for(anext(subscription), 5) for _ in range(20)]
        subscription.close()
        assert all(isinstance(change, Change) for change in notified)
        changes = [change for change in notified if isinstance(change, Change)]
        assert [change.variable.value for change in changes if change.variable] == list(range(20))
        assert [change.seq for change in changes] == list(range(2, 22))


async def test_a_group_is_at_most_max_group_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "MAX_GROUP", 8)
    async with opened(f"sqlite:///{tmp_path / 'rooms.db'}") as backend:
        await backend.set_variable("r", "v", -1, expected_version=None, now=T0)
        statements = await traced(backend)
        await asyncio.gather(
            *(backend.set_variable("r", f"v{i}", i, expected_version=None, now=T0) for i in range(20))
        )
        assert commits(statements) == 3, statements  # 8 + 8 + 4
        assert len((await backend.get_contents("r")).contents) == 21


async def test_events_and_variable_writes_share_groups_in_seq_order(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path / 'rooms.db'}") as backend:
        await backend.set_variable("r", "v", -1, expected_version=None, now=T0)
        statements = await traced(backend)
        calls: list[Awaitable[object]] = []
        for i in range(10):
            calls.append(backend.set_variable("r", "v", i, expected_version=None, now=T0))
            calls.append(backend.publish_event("r", Event("e", i, T0)))
        outcomes = await asyncio.gather(*calls)
        assert commits(statements) == 1, statements
        events = [outcome for outcome in outcomes if isinstance(outcome, Change)]
        assert [event.seq for event in events] == list(range(3, 22, 2))
        page = await backend.read_changes("r", after_seq=1, limit=100)
        kinds = [change.kind for change in page.changes]
        assert kinds == [ChangeKind.VARIABLE_SET, ChangeKind.EVENT] * 10
        assert [change.seq for change in page.changes] == list(range(2, 22))


async def test_a_conflict_fails_its_own_write_only(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path / 'rooms.db'}") as backend:
        await backend.set_variable("r", "cas", "first", expected_version=None, now=T0)
        statements = await traced(backend)
        calls = [
            backend.set_variable("r", "a", 0, expected_version=None, now=T0),
            backend.set_variable("r", "a", 1, expected_version=None, now=T0),
            backend.set_variable("r", "cas", "stale", expected_version=5, now=T0),
            backend.set_variable("r", "b", 2, expected_version=None, now=T0),
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert commits(statements) == 1, statements
        assert isinstance(outcomes[2], Aborted)
        assert [outcome.value for outcome in (outcomes[1], outcomes[3])] == [1, 2]  # type: ignore[union-attr]
        assert (await backend.get_contents("r")).contents == {"a": 1, "b": 2, "cas": "first"}
        page = await backend.read_changes("r", after_seq=0, limit=100)
        assert [change.seq for change in page.changes] == list(range(1, 5))  # no gap where the conflict was


# -- GroupCommit on a connection of the test's own ----------------------------------------------------------


@contextlib.asynccontextmanager
async def group_commit(path: Path) -> AsyncIterator[tuple[GroupCommit, Callable[[str], list[Any]]]]:
    """A GroupCommit over a fresh file with table ``t`` (unique ``k``) and a child table with a deferred
    foreign key (checked at COMMIT), and a function reading a query on another connection (committed rows
    only)."""
    driver = await aiosqlite.connect(path, isolation_level=None)
    await driver.executescript(
        """
        PRAGMA journal_mode=WAL;
        PRAGMA foreign_keys=ON;
        CREATE TABLE t (k TEXT PRIMARY KEY);
        CREATE TABLE child (k TEXT REFERENCES t (k) DEFERRABLE INITIALLY DEFERRED);
        """
    )

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[aiosqlite.Connection]:
        yield driver

    def committed(query: str) -> list[Any]:
        with contextlib.closing(sqlite3.connect(path)) as other:
            return other.execute(query).fetchall()

    try:
        yield GroupCommit(asyncio.Lock(), connect, busy_timeout=5.0), committed
    finally:
        await driver.close()


def insert(*keys: str) -> Callable[[sqlite3.Connection], str]:
    def work(conn: sqlite3.Connection) -> str:
        for key in keys:
            conn.execute("INSERT INTO t VALUES (?)", (key,))
        return keys[-1]

    return work


async def test_a_failing_write_is_rolled_back_to_its_savepoint(tmp_path: Path) -> None:
    async with group_commit(tmp_path / "g.db") as (writer, committed):
        first = asyncio.create_task(writer.run(insert("first")))
        await asyncio.sleep(0)  # the first group is on its way: the others queue behind it
        outcomes = await asyncio.gather(
            writer.run(insert("a")),
            writer.run(insert("b", "first")),  # its "b" goes with it: "first" is taken
            writer.run(insert("c")),
            return_exceptions=True,
        )
        assert await first == "first"
        assert outcomes[0] == "a" and outcomes[2] == "c"
        assert isinstance(outcomes[1], sqlite3.IntegrityError)
        assert committed("SELECT k FROM t ORDER BY k") == [("a",), ("c",), ("first",)]


async def test_nothing_is_acknowledged_before_its_commit(tmp_path: Path) -> None:
    async with group_commit(tmp_path / "g.db") as (writer, committed):
        seen: list[list[Any]] = []

        def after(key: str) -> None:  # the hub's delivery, in the backend: the write is committed by then
            seen.append(committed(f"SELECT k FROM t WHERE k = '{key}'"))

        held = threading.Event()
        release = threading.Event()

        def blocking(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t VALUES ('x')")
            held.set()
            release.wait(5)
            return "x"

        first = asyncio.create_task(writer.run(blocking, after))
        await asyncio.to_thread(held.wait, 5)
        queued = [asyncio.create_task(writer.run(insert(key), after)) for key in ("y", "z")]
        await asyncio.sleep(0.05)
        assert not first.done() and not any(task.done() for task in queued)  # its commit has not happened
        assert seen == []  # nor has any delivery
        release.set()
        assert await first == "x" and [await task for task in queued] == ["y", "z"]
        assert seen == [[("x",)], [("y",)], [("z",)]]  # each after() found its row committed, in order


async def test_a_write_cancelled_in_flight_is_still_followed_up(tmp_path: Path) -> None:
    """Its caller is gone, but the write commits: its change must still reach the listeners."""
    async with group_commit(tmp_path / "g.db") as (writer, committed):
        held, release = threading.Event(), threading.Event()
        followed: list[str] = []

        def blocking(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t VALUES ('x')")
            held.set()
            release.wait(5)
            return "x"

        call = asyncio.create_task(writer.run(blocking, followed.append))
        await asyncio.to_thread(held.wait, 5)
        call.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        await writer.close()
        assert followed == ["x"] and committed("SELECT k FROM t") == [("x",)]


async def test_a_refused_commit_fails_every_write_of_its_group(tmp_path: Path) -> None:
    async with group_commit(tmp_path / "g.db") as (writer, committed):

        def orphan(conn: sqlite3.Connection) -> str:  # fine until COMMIT checks the deferred key
            conn.execute("INSERT INTO child VALUES ('nobody')")
            return "orphan"

        first = asyncio.create_task(writer.run(insert("first")))
        await asyncio.sleep(0)
        outcomes = await asyncio.gather(
            writer.run(insert("a")), writer.run(orphan), writer.run(insert("b")), return_exceptions=True
        )
        assert await first == "first"
        assert all(isinstance(outcome, sqlite3.IntegrityError) for outcome in outcomes), outcomes
        assert committed("SELECT k FROM t") == [("first",)] and committed("SELECT * FROM child") == []
        assert await writer.run(insert("after")) == "after"  # the next group commits


async def test_a_write_that_ends_the_transaction_fails_its_whole_group(tmp_path: Path) -> None:
    async with group_commit(tmp_path / "g.db") as (writer, committed):

        def ending(conn: sqlite3.Connection) -> str:  # as SQLite does itself on some errors (SQLITE_FULL)
            conn.execute("INSERT INTO t VALUES ('gone')")
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")

        first = asyncio.create_task(writer.run(insert("first")))
        await asyncio.sleep(0)
        outcomes = await asyncio.gather(writer.run(insert("a")), writer.run(ending), return_exceptions=True)
        assert await first == "first"
        assert all(isinstance(outcome, LostTransaction) for outcome in outcomes), outcomes
        assert committed("SELECT k FROM t") == [("first",)]


# -- faults -------------------------------------------------------------------------------------------------


async def test_a_locked_database_is_unavailable_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "rooms.db"
    async with opened(f"sqlite:///{path}") as backend:
        await backend.set_variable("r", "v", 0, expected_version=None, now=T0)
        other = sqlite3.connect(path, isolation_level=None)  # a stray writer: another process, a tool
        try:
            other.execute("BEGIN IMMEDIATE")
            outcomes = await asyncio.gather(
                *(backend.set_variable("r", "v", i, expected_version=None, now=T0) for i in range(3)),
                return_exceptions=True,
            )
            assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
            other.execute("ROLLBACK")
        finally:
            other.close()
        variable = await backend.set_variable("r", "v", 9, expected_version=None, now=T0)
        assert variable is not None and variable.version == 2
        assert (await backend.read_changes("r", after_seq=0, limit=10)).changes[-1].seq == 2


async def test_a_closed_writer_connection_is_unavailable_then_replaced(tmp_path: Path) -> None:
    async with opened(f"sqlite:///{tmp_path / 'rooms.db'}") as backend:
        await backend.set_variable("r", "v", 0, expected_version=None, now=T0)
        await (await writer_of(backend)).close()  # gone under the backend (not a 500: a store fault)
        with pytest.raises(Unavailable):
            await backend.set_variable("r", "v", 1, expected_version=None, now=T0)
        variable = await backend.set_variable("r", "v", 2, expected_version=None, now=T0)
        assert variable is not None and variable.version == 2


async def test_memory_databases_write_in_groups_too() -> None:
    async with opened("sqlite:///:memory:") as backend:
        await backend.set_variable("r", "v", -1, expected_version=None, now=T0)
        statements = await traced(backend)
        await asyncio.gather(
            *(backend.set_variable("r", f"v{i}", i, expected_version=None, now=T0) for i in range(10))
        )
        assert commits(statements) == 1
        assert (await backend.get_contents("r")).contents == {"v": -1, **{f"v{i}": i for i in range(10)}}


async def test_writes_queued_at_close_are_committed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rooms.db'}"
    backend = SQLiteBackend(url)
    await backend.open()
    writes = [
        asyncio.create_task(backend.set_variable("r", f"v{i}", i, expected_version=None, now=T0))
        for i in range(10)
    ]
    await asyncio.sleep(0)
    await backend.close()
    assert all(task.done() and task.exception() is None for task in writes)
    async with opened(url) as again:
        assert len((await again.get_contents("r")).contents) == 10
