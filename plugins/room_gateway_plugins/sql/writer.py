"""SQLite's write transactions in one trip through the writer connection's thread, with group commit.

aiosqlite runs each call of a connection on that connection's own thread, and each call is a hand-off
through the GIL: through SQLAlchemy's asyncio adaptation, a variable write was 9 such trips (10 with a
webhook endpoint) for its 8 statements, all under the one writer's lock, with the ``COMMIT``'s fsync
(``synchronous=FULL``) among them — so writes per second were at most one over that whole sequence
(bench/sqlite_writes.py). Here a transaction is one synchronous function run on the thread (its statements
compiled once by the engine's dialect, :class:`~.readers.CompiledStatement`), and the writes that queue
while one transaction is in flight run together in the next one: **group commit**, one ``BEGIN IMMEDIATE``
… ``COMMIT`` and so one fsync for all of them.

Each write of a group runs inside a ``SAVEPOINT``: one that fails (a compare-and-set conflict, a constraint)
is rolled back to it and answers its own error, the others commit. A write is acknowledged — its caller's
call returns — only once the ``COMMIT`` that holds it has returned, so nothing acknowledged is lost to a
crash or a power cut; a group whose ``BEGIN`` or ``COMMIT`` fails (``database is locked`` after the busy
timeout, a disk error) fails every write in it. Writes run, commit and are followed up (their ``after``:
the hub's delivery of the change) in the order they were queued, under the backend's writer lock, so seq
order is commit order is notification order.

The webhook outbox's bookkeeping (claims, settles, pruning) runs here too, each one function and so one
trip: in the delivery worker's process alone, in an ``inline`` gateway's in the writes' groups. Its work
need not wait for the disk (``durable=False``, :meth:`GroupCommit.run`): a group of such work alone
commits with ``synchronous=NORMAL``, which survives a crash of the process but not a power cut — an
attempt claimed or recorded again, as at-least-once delivery allows.

**Waiting for the write lock.** Another process writes the same file — the gateway's delivery worker, a
backup tool — so ``BEGIN IMMEDIATE`` may find the write lock taken. SQLite's own busy handler sleeps
1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between its tries, and a writer that commits group after
group frees the lock only between two of them (a fraction of a ms, the event loop's turn): a worker that
slept 25 ms mostly woke to find the lock taken again, and its claims and settles waited up to seconds
beside 1,000 writes a second (bench/sqlite_outbox.py ``wait``). :func:`begin` instead tries again every
:data:`LOCK_POLL_SECONDS` on the connection's thread (still one trip), up to the busy timeout, and then
raises ``database is locked`` (UNAVAILABLE; the next transaction tries afresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosqlite

from room_gateway_plugins.sql.base import StoreUnreachable

_R = TypeVar("_R")
_T = TypeVar("_T")

#: Writes in one transaction at most. A group holds SQLite's write lock for all its writes (a fraction of a ms
#: each here): a burst of thousands in one would keep another process that writes the file (the delivery
#: worker's claims) waiting for long, up to its busy timeout, and answer the burst's first callers late.
MAX_GROUP = 256

#: Seconds between two tries of a write lock that another connection holds (:func:`begin`).
LOCK_POLL_SECONDS = 0.0005

#: The writer connection's durability (set when it is opened), and that of a group of bookkeeping alone.
DURABLE = "PRAGMA synchronous=FULL"  # a committed write survives a power cut, not only a crash
LAZY = "PRAGMA synchronous=NORMAL"  # in WAL mode: survives a crash of the process; the next FULL commit's
# fsync makes it durable too (the WAL is written in order). SQLite refuses to change it in a transaction.

#: A write's statements, run on the writer connection's thread inside the group's transaction. It may
#: raise: its savepoint is then rolled back and its caller gets the exception.
Work = Callable[[sqlite3.Connection], _R]


async def on_thread(driver: aiosqlite.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run ``work`` on ``driver``'s thread with its sqlite3 connection, in one trip.

    aiosqlite has no public call for this: ``_execute`` is how its own methods (``execute_fetchall``,
    ``executemany``) queue theirs, unchanged from 0.17 to 0.22 (pyproject.toml pins ``<1``);
    tests/backends/test_sqlite_writer.py counts the trips through it.
    """

    def call() -> _T:
        return work(driver._conn)

    execute: Callable[[Callable[[], _T]], Awaitable[_T]] = driver._execute
    try:
        result = await execute(call)
    except ValueError as exc:
        if not driver._running or driver._connection is None:  # aiosqlite's "Connection closed"
            raise StoreUnreachable("the SQLite connection is closed") from exc
        raise
    return result


@dataclass(slots=True)
class _Failed:
    """A write of a group that raised: rolled back to its savepoint, the group going on."""

    error: Exception


@dataclass(slots=True)
class _Queued:
    work: Work[Any]
    after: Callable[[Any], None] | None
    future: asyncio.Future[Any]
    durable: bool


class LostTransaction(sqlite3.OperationalError):
    """A write's error ended the group's whole transaction (SQLite rolls back on some, e.g. a full disk):
    every write in it is undone, so every one of them fails with this (UNAVAILABLE, as a driver error)."""


def begin(conn: sqlite3.Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``, trying again every :data:`LOCK_POLL_SECONDS` while another
    connection holds the write lock, for ``timeout`` seconds at most (then ``database is locked``).

    ``conn`` has no busy handler of its own (``PRAGMA busy_timeout=0``: SQLite's sleeps grow to 100 ms, see
    the module's docstring): every transaction of the writer connection begins here, its group commits'
    and (through :func:`sqlalchemy.util.await_`) SQLAlchemy's. Once it has begun, the write lock is its own
    until the commit: in WAL mode nothing in the transaction waits for another connection.
    """
    deadline = None
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            polled = time.monotonic()
            if deadline is None:
                deadline = polled + timeout
            elif polled >= deadline:
                raise
        time.sleep(LOCK_POLL_SECONDS)  # the GIL released: the event loop runs on


def transaction(
    works: Sequence[Work[Any]], conn: sqlite3.Connection, *, timeout: float, durable: bool = True
) -> list[Any]:
    """Run ``works`` in one transaction on ``conn``: each write's outcome, or :class:`_Failed`, in order.

    Raises (everything rolled back) when the transaction itself fails. One write alone needs no savepoint:
    its failure rolls the transaction back.

    :param timeout: seconds to wait for the write lock (:func:`begin`).
    :param durable: ``False``: the commit need not wait for the disk (:data:`LAZY`).
    """
    if not durable:
        conn.execute(LAZY)
        try:
            return transaction(works, conn, timeout=timeout)
        finally:
            conn.execute(DURABLE)
    isolate = len(works) > 1
    outcomes: list[Any] = []
    begin(conn, timeout)
    try:
        for work in works:
            if isolate:
                conn.execute("SAVEPOINT write")
            try:
                outcome = work(conn)
            except Exception as exc:
                if not isolate:
                    raise
                if not conn.in_transaction:
                    raise LostTransaction(f"a write's {type(exc).__name__} rolled back its group") from exc
                conn.execute("ROLLBACK TO write")
                outcome = _Failed(exc)
            if isolate:
                conn.execute("RELEASE write")
            outcomes.append(outcome)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


class GroupCommit:
    """The write transactions of one SQLite writer connection, run as groups (see the module's docstring).

    :param serial: the lock every use of the writer connection holds (the backend's other transactions).
    :param connect: the writer connection (aiosqlite's, under SQLAlchemy's), for one group.
    :param busy_timeout: seconds a group waits for a write lock that another process holds.
    """

    def __init__(
        self,
        serial: asyncio.Lock,
        connect: Callable[[], contextlib.AbstractAsyncContextManager[aiosqlite.Connection]],
        *,
        busy_timeout: float,
    ) -> None:
        self._serial = serial
        self._connect = connect
        self._busy_timeout = busy_timeout
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(
        self, work: Work[_R], after: Callable[[_R], None] | None = None, *, durable: bool = True
    ) -> _R:
        """Run ``work`` in the next group; return its outcome once the group has committed.

        :param after: called with the outcome right after the commit, before the next group runs (so in
            commit order) — even when the caller was cancelled meanwhile: the write is in the database.
        :param durable: ``False``: bookkeeping whose commit need not wait for the disk; a group commits
            durably when any of its work must.
        """
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(work, after, future, durable))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="room-gateway sqlite group commit")
        return await future

    async def close(self) -> None:
        """Wait for the queued writes to be committed (or to fail)."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.shield(flusher)

    async def _flush(self) -> None:
        try:
            while self._queue:
                async with self._serial:
                    # Taken under the lock: what queued while the last group (or another transaction on the
                    # connection) was in flight is all in this one.
                    taken, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                    group = [queued for queued in taken if not queued.future.cancelled()]
                    if group:
                        await self._commit(group)
        finally:
            self._flusher = None

    async def _commit(self, group: list[_Queued]) -> None:
        works = [queued.work for queued in group]
        durable = any(queued.durable for queued in group)
        timeout = self._busy_timeout
        try:
            async with self._connect() as driver:
                outcomes = await on_thread(
                    driver, lambda conn: transaction(works, conn, timeout=timeout, durable=durable)
                )
        except asyncio.CancelledError:
            for queued in group:
                queued.future.cancel()
            raise
        except Exception as exc:
            for queued in group:
                if not queued.future.done():
                    queued.future.set_exception(exc)
            return
        for queued, outcome in zip(group, outcomes, strict=True):
            future = queued.future
            if isinstance(outcome, _Failed):
                if not future.done():
                    future.set_exception(outcome.error)
                continue
            try:
                if queued.after is not None:
                    queued.after(outcome)
            except Exception as exc:  # the write is committed; its caller hears of the failure after it
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(outcome)
