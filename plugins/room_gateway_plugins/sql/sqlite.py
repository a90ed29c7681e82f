"""The SQLite backend: the embedded default, one file (or memory) owned by one gateway process.

``sqlite:///rooms.db`` (relative path), ``sqlite:////var/lib/rooms.db`` (absolute), ``sqlite:///:memory:``.
One connection writes, used by one task at a time: SQLite serializes writers anyway, and a single writer
rules out ``database is locked`` between our own tasks. Notifications — the logged changes — are delivered
to the in-process hub right after their write commits, under the same lock, so in commit (= seq) order.
Variable writes and logged events skip SQLAlchemy: each is one synchronous function on the writer
connection's thread, and the writes that queue while a transaction is in flight are committed together in
the next one, each in a savepoint of its own (:mod:`.writer`). So are the webhook outbox's claims, settles
and prunings (one function and one trip each, committed without waiting for the disk); the other writes are
SQLAlchemy transactions, their log appends one trip each.

Reads of a file database go through a small pool of read-only connections instead, without that lock: in
WAL mode readers never wait for the writer, and each read sees every commit made before it began (so a
client reads its own acknowledged writes). With reads queued behind writes on the one connection, a GET
served at under half the rate of a bare route with the same driver (bench/RESULTS.md). The readers are raw
aiosqlite connections, one trip through their thread per read, where SQLAlchemy's adaptation takes about
five (:mod:`.readers`); they run the same SQLAlchemy statements, compiled by the engine's dialect.
``:memory:`` keeps the one connection: another connection would open another, empty, database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import aiosqlite
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import await_

from gateway.core.backend import History, VariableWrite
from gateway.core.models import Change, ChangeKind, Event, Variable
from gateway.core.outbox import EndpointState, OutboxMessage, Settled, new_message_id
from gateway.core.wire import Message
from gateway.errors import Unavailable
from room_gateway_plugins.sql import changelog
from room_gateway_plugins.sql import outbox as outbox_sql
from room_gateway_plugins.sql.base import (
    CURRENT_VERSION,
    SqlBackend,
    StoreUnreachable,
    Transaction,
    check_unwritten,
    variable_change,
)
from room_gateway_plugins.sql.columns import UTCDateTime
from room_gateway_plugins.sql.readers import Compiled, ReaderPool
from room_gateway_plugins.sql.tables import log_meta
from room_gateway_plugins.sql.writer import DURABLE, GroupCommit, begin, on_thread

#: The log's append, one statement: the seq after the head, spliced into the wire message; the trigger
#: ``changes_appended`` (:mod:`.migrations`) then moves the head and trims retention.
_APPEND = sa.text(
    """
    WITH s(seq) AS (SELECT coalesce((SELECT head FROM room_heads WHERE room_id = :room_id), 0) + 1)
    INSERT INTO changes (room_id, seq, kind, time, payload)
    SELECT :room_id, seq, :kind, :time, :before || seq || :after FROM s
    RETURNING seq
    """
).bindparams(sa.bindparam("time", type_=UTCDateTime()))

#: Seconds to wait for a lock held by another process (a backup tool, a stray second gateway).
BUSY_TIMEOUT = 5.0
#: Read-only connections of a file database, at most (each is a thread of aiosqlite's): one per core, 2 to 8.
#: More threads than cores only contend for the GIL with the event loop: on 2 cores a REST GET served
#: 4.9k req/s with 8 readers, 5.4k with 4 and 5.7k with 2 (a hand-written aiosqlite route: 6.6k with any).
READERS = max(2, min(8, os.cpu_count() or 2))


class SQLiteBackend(SqlBackend):
    """Rooms in a SQLite file. URL: ``sqlite:///path/rooms.db`` or ``sqlite:///:memory:``."""

    schemes = ("sqlite", "sqlite+aiosqlite")

    def __init__(self, url: str, *, history: History = History()) -> None:  # noqa: B008 - frozen
        super().__init__(url, history=history)
        self._lock = asyncio.Lock()
        self._readers: ReaderPool | None = None
        #: Every statement run on a raw connection, compiled when first run (reads, the write path's by
        #: shape, the outbox's); made at :meth:`open`, with the engine's dialect.
        self._statements: Compiled | None = None
        self._writer = GroupCommit(self._lock, self._writer_connection, busy_timeout=BUSY_TIMEOUT)

    async def open(self) -> None:
        await super().open()  # creates and migrates the schema first: readers find it in place
        self._statements = Compiled(self.engine.dialect)
        async with self._tx() as tx:  # what the append's trigger trims to (migrations._SQLITE_APPENDED)
            settings = {
                "max_changes": self.history.max_changes,
                "max_age_seconds": self.history.max_age_seconds,
            }
            for name, value in settings.items():
                await tx.conn.execute(
                    sqlite_insert(log_meta)
                    .values(name=name, value=str(value))
                    .on_conflict_do_update(index_elements=[log_meta.c.name], set_={"value": str(value)})
                )
        url = make_url(self.url).set(drivername="sqlite+aiosqlite")
        if url.database not in (None, "", ":memory:"):
            # The writer's file and options, as its dialect passes them to sqlite3.connect.
            connect_args = self.engine.dialect.create_connect_args(url)
            self._readers = ReaderPool(connect_args, size=READERS, busy_timeout=BUSY_TIMEOUT)

    async def close(self) -> None:
        readers, self._readers = self._readers, None
        try:
            await self._writer.close()  # the writes queued before the close are committed or failed
            await super().close()
        finally:
            if readers is not None:
                await readers.close()

    async def _fetch(self, statement: sa.Select[*tuple[Any, ...]], **params: Any) -> Sequence[Any]:
        readers = self._readers
        if readers is None:  # :memory:, or not open (the writer's engine says so)
            return await super()._fetch(statement, **params)
        compiled = self._compiled().read(statement)
        sql, parameters = compiled.bind(params)
        return compiled.rows(await readers.fetchall(sql, parameters))

    def _compiled(self) -> Compiled:
        if self._statements is None:
            raise Unavailable("backend is not open")
        return self._statements

    def _make_engine(self) -> AsyncEngine:
        url = make_url(self.url).set(drivername="sqlite+aiosqlite")
        engine = create_async_engine(
            url,
            poolclass=StaticPool,
            pool_reset_on_return=None,  # every transaction ends in COMMIT or ROLLBACK already
            connect_args={"timeout": BUSY_TIMEOUT},
        )
        sa.event.listen(engine.sync_engine, "connect", _on_connect)
        sa.event.listen(engine.sync_engine, "begin", _on_begin)
        return engine

    def _serial(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._lock

    @contextlib.asynccontextmanager
    async def _writer_connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer's aiosqlite connection, for a group of :attr:`_writer` (under the lock already)."""
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if driver is None:
                raise Unavailable("the SQLite connection is closed")
            try:
                yield driver
            except StoreUnreachable:
                # As SQLAlchemy does on a disconnect: the pool opens a new connection for the next use.
                await conn.invalidate()
                raise

    async def write_variable(self, write: VariableWrite) -> Variable | None:
        # One trip through the writer's thread, in a group commit (.writer): not through SQLAlchemy's
        # adaptation, whose nine trips a write (each a GIL hand-off, all under the writer lock with the
        # commit's fsync) bounded the writes per second (bench/sqlite_writes.py).
        kind = ChangeKind.VARIABLE_DELETED if write.deletes else ChangeKind.VARIABLE_SET
        targets = self._targets(write.room_id, kind)
        # A watched write that sets a value returns the one it replaced (previous_value, .base): no read
        # before it, a statement less on the writer's thread, where each one waits for the GIL anew.
        # A watched deletion reads the row before it (a deletion keeps no value).
        keeps = bool(targets) and not write.deletes
        statement, params = self._variable_statement(write, keep_previous=keeps)
        statements = self._compiled()
        compiled = None if statement is None else statements.statement(statement)
        current = statements.statement(CURRENT_VERSION)
        previous_read = statements.statement(outbox_sql.PREVIOUS) if targets and not keeps else None
        room_id = write.room_id

        def work(conn: sqlite3.Connection) -> tuple[Variable, Change] | None:
            previous = None
            if previous_read is not None:
                sql, parameters = previous_read.bind({"p_room_id": room_id, "p_name": write.name})
                previous = outbox_sql.previous_of(conn.execute(sql, parameters).fetchone())
            written = None if compiled is None else conn.execute(*compiled.bind(params)).fetchone()
            if written is None:
                found = conn.execute(*current.bind(params)).fetchone()
                check_unwritten(write, 0 if found is None else found[0])
                return None
            if keeps:
                previous = outbox_sql.previous_of((written[1], written[0] - 1))
            variable, change = variable_change(write, written[0])
            return variable, self._log_on(conn, room_id, change, previous, targets)

        def after(outcome: tuple[Variable, Change] | None) -> None:
            if outcome is not None:
                self._logged(room_id, outcome[1], targets)

        outcome = await self._writer.run(work, after)
        return None if outcome is None else outcome[0]

    async def publish_event(self, room_id: str, event: Event) -> Change:
        if not self.history.events:
            return await super().publish_event(room_id, event)  # live only: nothing written
        # Logged: a write like a variable's, in the same groups (so in seq order with them).
        change = Change(0, self.epoch, ChangeKind.EVENT, event.time, event=event)
        targets = self._targets(room_id, ChangeKind.EVENT)
        return await self._writer.run(
            lambda conn: self._log_on(conn, room_id, change, None, targets),
            lambda logged: self._logged(room_id, logged, targets),
        )

    # -- the webhook outbox's bookkeeping: one function on the writer's thread each (.writer), not durable --

    async def outbox_claim(
        self, endpoint: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        claim = self._compiled().read(outbox_sql.CLAIM)
        sql, parameters = claim.bind(outbox_sql.claim_params(endpoint, now, lease_seconds, limit))
        rows = await self._writer.run(lambda conn: claim.rows(conn.execute(sql, parameters)), durable=False)
        return outbox_sql.claimed(rows, now)

    async def outbox_settle(self, settled: Sequence[Settled]) -> list[EndpointState | None]:
        if not settled:
            return []
        endpoint = outbox_sql.batch_endpoint(settled)
        statements = self._compiled()
        current = statements.read(outbox_sql.CURRENT)
        update = statements.statement(outbox_sql.SETTLE)
        records = {succeeded: statements.read(self._record(succeeded)) for succeeded in (True, False)}
        # Bound before the trip, for every attempt: the writer's thread holds the write lock meanwhile.
        current_sql, current_parameters = current.bind(outbox_sql.current_params(endpoint, settled))
        updates = {id(one): update.bind(outbox_sql.settle_params(one)) for one in settled}

        def work(conn: sqlite3.Connection) -> tuple[list[Settled], Any]:
            live = outbox_sql.still_current(settled, conn.execute(current_sql, current_parameters))
            if not live:
                return live, None
            bound = [updates[id(one)] for one in live]
            conn.executemany(bound[0][0], [parameters for _, parameters in bound])
            succeeded, params = outbox_sql.outcomes_params(endpoint, live)
            record = records[succeeded]
            [row] = record.rows(conn.execute(*record.bind(params)))
            return live, row

        live, row = await self._writer.run(work, durable=False)
        return outbox_sql.states(settled, live, None if row is None else outbox_sql.state_of(row))

    async def outbox_prune(
        self, endpoint: str, *, delivered_before: datetime, failed_before: datetime, limit: int
    ) -> int:
        prune = self._compiled().statement(outbox_sql.PRUNE)
        params = outbox_sql.prune_params(endpoint, delivered_before, failed_before, limit)
        sql, parameters = prune.bind(params)
        pruned: int = await self._writer.run(
            lambda conn: conn.execute(sql, parameters).rowcount, durable=False
        )
        return pruned

    def _targets(self, room_id: str, kind: ChangeKind) -> tuple[str, ...]:
        """The endpoints a change goes to (none without an outbox)."""
        return () if self.outbox is None else self.outbox.targets(room_id, kind)

    async def _log(
        self, tx: Transaction, room_id: str, change: Change, previous: str | None = None
    ) -> Change:
        # On the transaction's own connection, so in the transaction, but in one trip through aiosqlite's
        # thread for the append and the messages, where SQLAlchemy's adaptation takes about five a statement.
        targets = self._targets(room_id, change.kind)
        driver = await _driver(tx)
        logged = await on_thread(driver, lambda conn: self._log_on(conn, room_id, change, previous, targets))
        tx.after_commit.append(lambda: self._logged(room_id, logged, targets))
        return logged

    def _log_on(
        self,
        conn: sqlite3.Connection,
        room_id: str,
        change: Change,
        previous: str | None,
        targets: tuple[str, ...],
    ) -> Change:
        """Append ``change`` to the room's log on the writer's thread (the trigger ``changes_appended``
        moves the head and trims, :mod:`.migrations`) with its messages for ``targets``; return it logged."""
        append = self._compiled().statement(_APPEND)
        change = dataclasses.replace(change, epoch=self.epoch)
        before, after = changelog.around_seq(room_id, change)
        params = {"room_id": room_id, "kind": change.kind.value, "time": change.time}
        [(seq,)] = conn.execute(*append.bind({**params, "before": before, "after": after})).fetchall()
        change = dataclasses.replace(change, seq=seq)
        if targets and self.outbox is not None:
            found = outbox_sql.rows(
                targets,
                new_message_id(),
                room_id,
                change,
                f"{before}{seq}{after}",
                previous,
                self.outbox.first_delay,
            )
            conn.executemany(*self._bound_messages(found))
        return change

    def _logged(self, room_id: str, change: Change, targets: tuple[str, ...]) -> None:
        """After the commit of a change :meth:`_log_on` appended: its delivery, its messages' wake-up."""
        self.hub.deliver(room_id, change)
        if targets and self.outbox is not None:
            self.outbox.written()

    def _bound_messages(self, rows: list[dict[str, Any]]) -> tuple[str, list[tuple[Any, ...]]]:
        insert = self._compiled().statement(outbox_sql.INSERT)
        bound = [insert.bind({"m_" + key: value for key, value in row.items()}) for row in rows]
        return bound[0][0], [parameters for _, parameters in bound]

    async def _insert_messages(self, tx: Transaction, rows: list[dict[str, Any]]) -> None:
        # ROOM_DELETED's (base.delete_room): on the raw connection, one trip.
        await (await _driver(tx)).executemany(*self._bound_messages(rows))

    async def _emit(self, tx: Transaction, message: Message, text: str) -> None:
        tx.after_commit.append(lambda: message.deliver(self.hub))


async def _driver(tx: Transaction) -> aiosqlite.Connection:
    """The aiosqlite connection under ``tx``'s, to run a compiled statement in one trip through its thread."""
    driver: aiosqlite.Connection | None = (await tx.conn.get_raw_connection()).driver_connection
    if driver is None:
        raise Unavailable("the SQLite connection is closed")
    return driver


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # pysqlite opens transactions itself, late and only before DML (so DDL would run outside them); take
    # transactions over, as SQLAlchemy's SQLite dialect documentation recommends ("Serializable isolation /
    # Savepoints / Transactional DDL"), so each migration is atomic.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers (a backup, sqlite3 on the console) do not block the gateway's writes. Memory: ignored.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(DURABLE)  # the bookkeeping's groups alone commit less durably (.writer)
    # From here on a taken write lock is polled by writer.begin, not waited for by SQLite's busy handler
    # (the connection's timeout served the pragmas above, as it serves its readers).
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()


def _on_begin(conn: sa.Connection) -> None:
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        # As the group commits begin theirs (writer.begin), in one trip; the begin event runs in
        # SQLAlchemy's greenlet, where await_ awaits on the event loop.
        driver = conn.connection.driver_connection
        if driver is None:
            raise Unavailable("the SQLite connection is closed")
        timeout = BUSY_TIMEOUT
        try:
            await_(on_thread(driver, lambda raw: begin(raw, timeout)))
        except StoreUnreachable:
            # As SQLAlchemy does on a disconnect (and did when it ran the BEGIN itself): the pool opens a
            # new connection for the next transaction.
            conn.invalidate()
            raise
