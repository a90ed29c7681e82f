"""PostgreSQL's hot statements on a pooled connection's asyncpg connection, not through SQLAlchemy's run.

Through SQLAlchemy's asyncio adaptation a variable write cost the gateway ~880 CPU-µs on its own (one at a
time; ~1,200 with 60 at once), a room read ~280: each statement is a greenlet spawned and switched, an
execution context, a result proxy, and ``begin()`` its own. A transaction of the same shape on the asyncpg
connection itself costs ~190; here a write costs ~480 and a read ~165
(bench/postgresql_writes.py). So a variable write (:meth:`.base.SqlBackend._tx` with ``hot``), the reads
of :meth:`.base.SqlBackend._fetch` and the webhook outbox's bookkeeping (claims, settles, prunings) run
here, on a connection checked out of SQLAlchemy's pool as any other (one pool, its size and its
recovery), while the rest of the backend keeps SQLAlchemy.

Nothing is written twice. The statements stay the SQLAlchemy Core constructs of :mod:`.base`,
:mod:`.outbox` and :mod:`.postgresql`, compiled once by the engine's own dialect
(:class:`~.readers.Compiled`, the cache the SQLite backend keeps its statements in too): the same SQL
text, with the same casts, as SQLAlchemy sends, and values through the same bind and result processors.
:class:`DirectConnection` answers ``execute`` as an ``AsyncConnection`` does, for the part of its result
that the backend reads (``first``, ``one``, ``scalar``, ``scalar_one``, ``scalars``, ``all``,
``rowcount``), so the backend's write code is one and the same on either.

A connection error (asyncpg's, or the socket's) is :class:`~.base.StoreUnreachable`, as SQLAlchemy's
``handle_error`` hook makes it elsewhere, and the pool's connections are invalidated, as SQLAlchemy does on
a disconnect, so that the next calls connect afresh.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from room_gateway_plugins.sql import pgerrors
from room_gateway_plugins.sql.base import StoreUnreachable
from room_gateway_plugins.sql.readers import Compiled, CompiledRead

#: A lost connection: the socket's errors and asyncpg's (:data:`.pgerrors.LOST_CONNECTION`).
_LOST: tuple[type[BaseException], ...] = (OSError, *pgerrors.LOST_CONNECTION)


class DirectResult:
    """The rows of one statement (or, for one without, its row count), read as SQLAlchemy's result."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise sa.exc.NoResultFound("no row") if not self._rows else sa.exc.MultipleResultsFound("rows")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]

    def all(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Any:
        return iter(self._rows)


class DirectConnection:
    """``execute`` of SQLAlchemy statements on one asyncpg connection (see the module)."""

    __slots__ = ("_conn", "_statements")

    def __init__(self, conn: asyncpg.Connection, statements: Compiled) -> None:
        self._conn = conn
        self._statements = statements

    async def execute(
        self,
        statement: sa.ClauseElement,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> DirectResult:
        """Run ``statement`` with ``params``; with a list of them, once each (``executemany``: no rows)."""
        compiled = self._statements(statement)
        if isinstance(params, Sequence):
            bound = [compiled.bind(one) for one in params]
            if bound:
                await self._conn.executemany(bound[0][0], [args for _, args in bound])
            return DirectResult((), len(bound))
        sql, args = compiled.bind(params or {})
        if isinstance(compiled, CompiledRead):
            rows = compiled.rows(await self._conn.fetch(sql, *args))
            return DirectResult(rows, len(rows))
        if isinstance(statement, sa.TextClause):
            records = await self._conn.fetch(sql, *args)
            return DirectResult(records, len(records))
        status = await self._conn.execute(sql, *args)  # "UPDATE 3", "INSERT 0 1", "DELETE 0"
        count = status.rsplit(" ", 1)[-1]
        return DirectResult((), int(count) if count.isdigit() else -1)

    async def exec_driver_sql(self, sql: str) -> None:
        """Run SQL text as it is (a ``SET LOCAL``)."""
        await self._conn.execute(sql)


@contextlib.asynccontextmanager
async def checked_out(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection of a connection checked out of ``engine``'s pool, given back after.

    :raises StoreUnreachable: the server cannot be reached, or the connection was lost meanwhile (then
        invalidated, so that the pool does not hand it out again).
    """
    async with engine.connect() as conn:  # SQLAlchemy's pool: its connect errors are classified already
        raw = await conn.get_raw_connection()
        try:
            yield raw.driver_connection
        except _LOST as exc:
            # What SQLAlchemy does on a disconnect it sees itself: every connection of the pool made before
            # now is replaced at its next checkout (the server went away: they are all lost), so one call
            # answers UNAVAILABLE and the next ones connect afresh. The pool's own (underscored) method,
            # the one its ``Connection`` calls.
            engine.sync_engine.pool._invalidate(raw, exc)
            raise StoreUnreachable(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            # Cancelled (the client went away), maybe with a statement in flight: the connection's state
            # is unknown, so it is closed rather than given back (SQLAlchemy does the same), and the
            # cancellation stays a cancellation.
            raw.invalidate()
            raise


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine, statements: Compiled) -> AsyncIterator[DirectConnection]:
    """A transaction on a checked-out connection's asyncpg connection: committed when the block ends,
    rolled back when it raises."""
    async with checked_out(engine) as conn, conn.transaction():
        yield DirectConnection(conn, statements)
