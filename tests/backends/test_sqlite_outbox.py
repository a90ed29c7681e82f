"""SQLite's webhook bookkeeping: each claim and settle one trip through the writer's thread, in one
``BEGIN IMMEDIATE`` … ``COMMIT``, and the wait for a write lock that another connection holds
(``sql/writer.py``'s :func:`~room_gateway_plugins.sql.writer.begin`).

Real files, threads and a second connection (a second backend on the same file, as the delivery worker is;
or a bare ``sqlite3`` connection holding the lock, as a tool would).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from room_gateway_plugins.sql import SQLiteBackend, migrations, sqlite

from gateway.core.models import UNSET
from gateway.core.outbox import Attempt, EndpointState, MessageStatus, Outbox, OutboxMessage, Route, Settled
from gateway.errors import Unavailable

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)  # every message due
ENDPOINT = "hook"
EVERY_ROOM = Route(ENDPOINT)


@contextlib.asynccontextmanager
async def opened(path: Path, route: Route = EVERY_ROOM) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(f"sqlite:///{path}")
    backend.outbox = Outbox([route])
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def write(backend: SQLiteBackend, count: int) -> None:
    for i in range(count):
        await backend.set_variable("r", f"v{i}", i, expected_version=None, now=T0)


async def claim(backend: SQLiteBackend, limit: int = 100) -> list[OutboxMessage]:
    return await backend.outbox_claim(ENDPOINT, now=LATER, lease_seconds=60, limit=limit)


def outcome(message: OutboxMessage, status: int = 204, retry: datetime | None = None) -> Settled:
    return Settled(message, Attempt(LATER, status, 1.0), retry)


async def writer_of(backend: SQLiteBackend) -> aiosqlite.Connection:
    async with backend.engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
    assert isinstance(driver, aiosqlite.Connection)
    return driver


@contextlib.contextmanager
def trips_counted(writer: aiosqlite.Connection) -> Iterator[list[bool]]:
    """Every call queued to an aiosqlite thread from now on: ``True`` for the writer's."""
    trips: list[bool] = []
    execute: Callable[..., Any] = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(self is writer)
        return await execute(self, fn, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiosqlite.Connection, "_execute", counted)
        yield trips


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the file's write lock (``BEGIN IMMEDIATE``) until it is rolled back."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def test_a_claim_and_a_settle_are_one_trip_and_one_transaction_each(tmp_path: Path) -> None:
    async with opened(tmp_path / "rooms.db") as backend:
        await write(backend, 5)
        writer = await writer_of(backend)
        statements: list[str] = []
        await writer.set_trace_callback(statements.append)
        with trips_counted(writer) as trips:
            claimed = await claim(backend)
            assert trips == [True]  # SQLAlchemy's adaptation made ten
            begun = statements.count("BEGIN IMMEDIATE")
            states = await backend.outbox_settle(
                [outcome(m) for m in claimed[:4]] + [outcome(claimed[4], 500, LATER)]
            )
            assert trips == [True, True]  # and seventeen
        assert len(claimed) == 5
        assert (begun, statements.count("BEGIN IMMEDIATE"), statements.count("COMMIT")) == (1, 2, 2)
        # Bookkeeping alone commits without waiting for the disk, and the writer is durable again after it.
        assert statements.count("PRAGMA synchronous=NORMAL") == 2
        assert statements[-1] == "PRAGMA synchronous=FULL"
        state = states[0]
        assert state is not None and state.failing_since == LATER and state.last_success_time == LATER
        assert states == [state] * 5
        delivered = await backend.outbox_messages(ENDPOINT, status=MessageStatus.DELIVERED, limit=10)
        assert len(delivered) == 4 and all(len(m.log) == 1 for m in delivered)
        assert await backend.outbox_backlog(ENDPOINT) == 1
        assert await backend.get_endpoint_state(ENDPOINT) == state


async def test_a_claim_queued_with_writes_commits_in_their_group_durably(tmp_path: Path) -> None:
    async with opened(tmp_path / "rooms.db") as backend:
        await write(backend, 3)
        statements: list[str] = []
        await (await writer_of(backend)).set_trace_callback(statements.append)
        first = asyncio.create_task(backend.set_variable("r", "x", 0, expected_version=None, now=T0))
        await asyncio.sleep(0)  # its group is on its way: what follows queues for the next one
        outcomes = await asyncio.gather(
            backend.set_variable("r", "y", 1, expected_version=None, now=T0), claim(backend)
        )
        await first
        assert len(outcomes[1]) in (4, 5)  # the messages committed before the claim's group: x's, maybe y's
        assert statements.count("COMMIT") == 2
        assert "PRAGMA synchronous=NORMAL" not in statements  # a write's group is durable


async def test_a_stale_settle_is_dropped_in_its_transaction(tmp_path: Path) -> None:
    async with opened(tmp_path / "rooms.db") as backend:
        await write(backend, 2)
        first = await claim(backend)
        again = await backend.outbox_claim(
            ENDPOINT, now=LATER + timedelta(minutes=5), lease_seconds=60, limit=100
        )  # the leases ran out: claimed again, a second attempt each
        assert [m.attempts for m in again] == [2, 2]
        assert await backend.outbox_settle([outcome(m) for m in first]) == [None, None]
        states = await backend.outbox_settle([outcome(first[0]), outcome(again[1], 503)])
        assert states[0] is None and states[1] == EndpointState(failing_since=LATER)
        assert await backend.outbox_backlog(ENDPOINT) == 1  # the late success recorded nothing


async def test_two_claimers_on_one_file_never_take_the_same_attempt(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    async with opened(path) as gateway, opened(path) as worker:
        await write(gateway, 300)
        taken: dict[str, list[str]] = {"gateway": [], "worker": []}

        async def claimer(name: str, backend: SQLiteBackend) -> None:
            while found := await claim(backend, limit=7):
                taken[name].extend(m.id for m in found)
                await backend.outbox_settle([outcome(m) for m in found])

        await asyncio.gather(claimer("gateway", gateway), claimer("worker", worker))
        everything = taken["gateway"] + taken["worker"]
        assert len(everything) == len(set(everything)) == 300
        assert taken["gateway"] and taken["worker"]  # both took some
        assert await gateway.outbox_backlog(ENDPOINT) == 0


async def test_a_held_write_lock_is_waited_for_and_taken_promptly(tmp_path: Path) -> None:
    path = tmp_path / "rooms.db"
    hold = 0.18
    async with opened(path) as backend:
        await write(backend, 2)
        writer = await writer_of(backend)
        for call in ("claim", "settle", "sqlalchemy"):
            with write_lock_held(path) as other:
                released = threading.Timer(hold, other.rollback)
                started = time.monotonic()
                released.start()
                with trips_counted(writer) as trips:
                    if call == "claim":
                        claimed = await claim(backend)
                    elif call == "settle":
                        await backend.outbox_settle([outcome(m) for m in claimed])
                    else:  # a transaction through SQLAlchemy begins the same way
                        await backend.save_endpoint_state(ENDPOINT, EndpointState(disabled_reason="x"))
                waited = time.monotonic() - started
                released.join()
            if call != "sqlalchemy":
                assert trips == [True]  # the wait is on the writer's thread, in the same trip
            # SQLite's busy handler would have slept until 228 ms (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50).
            assert hold <= waited < hold + 0.04, (call, waited)
        assert len(claimed) == 2 and await backend.outbox_backlog(ENDPOINT) == 0
        assert (await backend.get_endpoint_state(ENDPOINT)).disabled_reason == "x"


async def test_a_write_lock_held_beyond_the_timeout_is_unavailable_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "rooms.db"
    async with opened(path) as backend:
        await write(backend, 2)
        with write_lock_held(path):
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await claim(backend)
            assert 0.2 <= time.monotonic() - started < 1.0
        claimed = await claim(backend)
        assert len(claimed) == 2
        with write_lock_held(path):
            with pytest.raises(Unavailable):
                await backend.outbox_settle([outcome(m) for m in claimed])
            with pytest.raises(Unavailable):  # the writes wait the same way
                await backend.set_variable("r", "v", 0, expected_version=None, now=T0)
            with pytest.raises(Unavailable):  # and SQLAlchemy's transactions
                await backend.save_endpoint_state(ENDPOINT, EndpointState(disabled_reason="x"))
        states = await backend.outbox_settle([outcome(m) for m in claimed])  # not recorded before
        assert states[0] is not None and states[0].last_success_time == LATER
        assert await backend.outbox_backlog(ENDPOINT) == 0
        assert await backend.set_variable("r", "v", 1, expected_version=None, now=T0) is not None
        await backend.save_endpoint_state(ENDPOINT, EndpointState(disabled_reason="x"))


# -- the value before a watched write: returned by the write (previous_value), not read before it -----------


def on_variables(statements: list[str]) -> list[str]:
    """The verbs of the statements on ``variables`` among ``statements`` (the writer's trace)."""
    verbs = ("SELECT", "INSERT INTO variables", "UPDATE variables")
    return [s.split()[0] for s in statements if s.startswith(verbs) and " variables" in s.split("WHERE")[0]]


def kept(path: Path) -> dict[tuple[str, str], str | None]:
    """``previous_value`` of every variable row, read with a connection of its own."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {(r, n): p for r, n, p in conn.execute("SELECT room_id, name, previous_value FROM variables")}


async def test_a_watched_write_returns_the_value_it_replaced_without_reading_it_first(tmp_path: Path) -> None:
    """A watched write of a value runs no statement on ``variables`` but itself (the write, the log's append
    and the messages' insert), and keeps the value it replaced only until the next write of the variable:
    a deletion (which reads the row before it instead) or a write no endpoint takes clears it."""
    path = tmp_path / "rooms.db"
    async with opened(path, Route(ENDPOINT, rooms=("watched",))) as backend:
        await backend.set_variable("watched", "v", "a", expected_version=None, now=T0)
        statements: list[str] = []
        await (await writer_of(backend)).set_trace_callback(statements.append)
        for value, expected in (("b", None), ("c", 2), (["d"], None)):
            await backend.set_variable("watched", "v", value, expected_version=expected, now=T0)
        assert on_variables(statements) == ["INSERT", "UPDATE", "INSERT"]  # the writes alone
        assert kept(path) == {("watched", "v"): '"c"'}
        statements.clear()
        await backend.set_variable("watched", "v", UNSET, expected_version=None, now=T0)
        assert on_variables(statements) == ["SELECT", "UPDATE"]
        assert kept(path) == {("watched", "v"): None}
        await backend.set_variable("watched", "v", "e", expected_version=None, now=T0)
        await backend.set_variable("other", "v", "x", expected_version=None, now=T0)
        await backend.set_variable("other", "v", "y", expected_version=None, now=T0)  # no endpoint takes it
        assert kept(path) == {("watched", "v"): None, ("other", "v"): None}
        await backend.set_variable("watched", "v", "f", expected_version=6, now=T0)
        assert kept(path)[("watched", "v")] == '"e"'
        messages = [m for m in await claim(backend) if m.change and m.change.variable]
        previous = [
            (m.change.variable.version, m.previous and (m.previous.value, m.previous.version))
            for m in messages
            if m.change and m.change.variable
        ]
        assert sorted(previous) == [
            (1, None),
            (2, ("a", 1)),
            (3, ("b", 2)),
            (4, ("c", 3)),
            (5, (["d"], 4)),
            (6, None),
            (7, ("e", 6)),
        ]


async def test_a_database_of_schema_3_keeps_its_variables_and_their_previous_values(tmp_path: Path) -> None:
    """Upgraded to 4 (``previous_value``): a variable written before it gets the right ``previous``."""
    path = tmp_path / "v3.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        v3 = migrations.metadata(3)
        v3.create_all(conn, tables=[t for t in v3.sorted_tables if t.name != "notification_bodies"])
        conn.execute(v3.tables["schema_version"].insert().values(version=3))
        row = {"room_id": "r", "name": "x", "value": "7", "version": 3, "update_time": T0}
        conn.execute(v3.tables["variables"].insert().values(row))
        conn.execute(v3.tables["room_heads"].insert().values(room_id="r", head=0))
        conn.execute(v3.tables["log_meta"].insert().values(name="epoch", value="e"))
    engine.dispose()
    async with opened(path) as backend:
        assert backend._schema_found == 3  # type: ignore[attr-defined]
        await backend.set_variable("r", "x", 8, expected_version=3, now=T0)
        [message] = await claim(backend)
        assert message.previous is not None
        assert (message.previous.value, message.previous.version) == (7, 3)
    assert kept(path) == {("r", "x"): "7"}


async def test_pruning_is_one_trip(tmp_path: Path) -> None:
    async with opened(tmp_path / "rooms.db") as backend:
        await write(backend, 3)
        await backend.outbox_settle([outcome(m) for m in await claim(backend)])
        writer = await writer_of(backend)
        with trips_counted(writer) as trips:
            pruned = await backend.outbox_prune(ENDPOINT, delivered_before=LATER, failed_before=T0, limit=2)
        assert trips == [True] and pruned == 2
        assert len(await backend.outbox_messages(ENDPOINT, status=None, limit=10)) == 1


async def test_a_closed_writer_connection_is_replaced_for_sqlalchemy_transactions_too(tmp_path: Path) -> None:
    """Their BEGIN runs on the writer's thread (writer.begin), not through SQLAlchemy's cursor: a closed
    connection must still be invalidated, as SQLAlchemy does on a disconnect, so the next one recovers."""
    async with opened(tmp_path / "rooms.db") as backend:
        await (await writer_of(backend)).close()
        with pytest.raises(Unavailable):
            await backend.save_endpoint_state(ENDPOINT, EndpointState(disabled_reason="x"))
        await backend.save_endpoint_state(ENDPOINT, EndpointState(disabled_reason="y"))
        assert (await backend.get_endpoint_state(ENDPOINT)).disabled_reason == "y"
