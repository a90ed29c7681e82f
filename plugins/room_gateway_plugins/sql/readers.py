"""Reads of a SQLite file on raw aiosqlite connections: one trip through a driver thread per read.

aiosqlite runs each call of a connection on that connection's own thread. Through SQLAlchemy's asyncio
adaptation a read makes about five such trips (``cursor()``, ``execute``, ``fetchall``, the cursor's
close, the rollback when the pool takes the connection back), each a handoff through the GIL;
``aiosqlite.Connection.execute_fetchall`` makes one. Measured in-process with 64 tasks reading one row
by primary key from a WAL file: 2.4k reads/s through ``AsyncConnection.execute``, 20k through
``execute_fetchall`` on 8 connections (issue #4).

Nothing is written twice. The statements stay SQLAlchemy Core constructs (:mod:`.base`), turned into SQL
text and positional parameters by the engine's own dialect (:class:`CompiledRead`); values come back
through the column types' result processors, as SQLAlchemy itself would return them. The compiled
statements and their cache (:class:`Compiled`) are PostgreSQL's too, for the statements it runs on asyncpg
directly (:mod:`.direct`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import aiosqlite
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ReturnsRows

from room_gateway_plugins.sql.base import StoreUnreachable

#: The default of a parameter that has none: the caller must give it (a KeyError otherwise).
_REQUIRED = object()


class CompiledStatement:
    """A statement compiled once by ``dialect``: its SQL and, for each call, its parameters in order.

    :param statement: a statement whose parameters are :func:`sqlalchemy.bindparam` (expanding ones too).
    :param dialect: the dialect of the engine that would otherwise run it, so the SQL is the same.
    """

    def __init__(self, statement: sa.ClauseElement, dialect: Dialect) -> None:
        if not dialect.positional:
            raise ValueError(
                f"{dialect.name} binds parameters by name; {type(self).__name__} passes them in order"
            )
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler):  # a DDL statement
            raise TypeError(f"not a SQL statement: {statement!r}")
        self._compiled = compiled
        # The parameters' bind processors (a UTCDateTime's to SQLite text): the expanded state lists only
        # those of expanded ``IN`` lists.
        self._bind_processors: dict[str, Callable[[Any], Any]] = {
            key: process
            for key, bind in self._compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

        # Without expanding ``IN`` lists the SQL and the parameters' order never change: made once, and each
        # call only fills them in (``construct_expanded_state`` redoes the work: a tenth of a write's time).
        binds = self._compiled.binds
        self._fixed: tuple[str, list[tuple[str, Callable[[Any], Any] | None, Any]]] | None = None
        if not any(bind.expanding for bind in binds.values()):
            order = [
                (
                    key,
                    self._bind_processors.get(key),
                    _REQUIRED if binds[key].required else binds[key].effective_value,
                )
                for key in self._compiled.positiontup or ()
            ]
            self._fixed = self._compiled.string, order

    def bind(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The SQL text and positional parameters for ``params`` (an expanding ``IN`` list expanded)."""
        if self._fixed is not None:
            sql, order = self._fixed
            given = (
                params[key] if default is _REQUIRED else params.get(key, default) for key, _, default in order
            )
            return sql, tuple(
                value if process is None else process(value)
                for value, (_, process, _) in zip(given, order, strict=True)
            )
        state = self._compiled.construct_expanded_state(params)
        processors = {**self._bind_processors, **state.processors}
        values = state.parameters
        return state.statement, tuple(
            processors[key](values[key]) if key in processors else values[key]
            for key in state.positiontup or ()
        )


class CompiledRead(CompiledStatement):
    """A statement with rows (a SELECT, or a write ``RETURNING`` them) compiled once by ``dialect``: its SQL,
    its parameters in order, its rows."""

    def __init__(self, statement: ReturnsRows, dialect: Dialect) -> None:
        super().__init__(statement, dialect)
        columns = statement.exported_columns
        # The attribute names SQLAlchemy's rows have (row.value, row.version, …): the columns' keys.
        row = collections.namedtuple("Row", columns.keys())  # type: ignore[misc]  # names known at run time
        self._make: Callable[[Iterable[Any]], tuple[Any, ...]] = row._make
        self._processors = [
            (index, process)
            for index, column in enumerate(columns)
            # cursor.description carries no type code in sqlite3: SQLAlchemy passes None here too.
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]

    def rows(self, raw: Iterable[Sequence[Any]]) -> list[Any]:
        """Rows as the driver returned them, made into named tuples of Python values."""
        make = self._make
        if not self._processors:
            return [make(row) for row in raw]
        made = []
        for row in raw:
            values = list(row)
            for index, process in self._processors:
                values[index] = process(values[index])
            made.append(make(values))
        return made


_C = TypeVar("_C", bound=CompiledStatement)

#: Statements of each kind a :class:`Compiled` keeps at most. A backend's statements are module constants or
#: cached per shape, so this bounds only what a caller builds anew on each call (PostgreSQL's log rows of a
#: large payload): those are compiled each time and the oldest dropped.
KEPT = 512


class Compiled:
    """Statements compiled by one dialect, each once and kept by the statement itself (a statement hashes by
    identity): the one cache of both SQL backends' statements run without SQLAlchemy's execution (SQLite's
    raw connections, PostgreSQL's asyncpg ones, :mod:`.direct`)."""

    __slots__ = ("_dialect", "_reads", "_statements")

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._reads: dict[sa.ClauseElement, CompiledRead] = {}
        self._statements: dict[sa.ClauseElement, CompiledStatement] = {}

    def read(self, statement: ReturnsRows) -> CompiledRead:
        """``statement`` compiled with its rows named (a SELECT, a write ``RETURNING``)."""
        compiled = self._reads.get(statement)
        if compiled is None:
            compiled = _keep(self._reads, statement, CompiledRead(statement, self._dialect))
        return compiled

    def statement(self, statement: sa.ClauseElement) -> CompiledStatement:
        """``statement`` compiled with its rows, if any, read by position (or only its row count)."""
        compiled = self._statements.get(statement)
        if compiled is None:
            compiled = _keep(self._statements, statement, CompiledStatement(statement, self._dialect))
        return compiled

    def __call__(self, statement: sa.ClauseElement) -> CompiledStatement:
        """``statement`` compiled as its kind says: rows named for a SELECT or a ``RETURNING``, by position
        otherwise (``text()`` has no columns to name)."""
        named = not isinstance(statement, sa.TextClause) and (
            getattr(statement, "is_select", False) or bool(getattr(statement, "_returning", ()))
        )
        return self.read(statement) if named else self.statement(statement)  # type: ignore[arg-type]


def _keep(kept: dict[sa.ClauseElement, _C], statement: sa.ClauseElement, compiled: _C) -> _C:
    if len(kept) >= KEPT:
        del kept[next(iter(kept))]
    kept[statement] = compiled
    return compiled


class ReaderPool:
    """Up to ``size`` read-only connections to one SQLite file, opened when first needed.

    Each connection serves one task at a time and runs in autocommit: each read is its own WAL snapshot,
    which sees every commit made before the read began, and never waits for the writer.

    :param connect_args: the positional and keyword arguments of ``sqlite3.connect`` for the file (the
        engine's, from its dialect's ``create_connect_args``).
    :param size: connections at most (each is a thread of aiosqlite's); more tasks wait for one.
    :param busy_timeout: seconds to wait for a lock held by another process.
    """

    def __init__(
        self,
        connect_args: tuple[Sequence[Any], Mapping[str, Any]],
        *,
        size: int,
        busy_timeout: float,
    ) -> None:
        args, kwargs = connect_args
        self._args = tuple(args)
        # isolation_level None: autocommit, so no BEGIN/COMMIT trips and no snapshot held between reads.
        self._kwargs = {**kwargs, "timeout": busy_timeout, "isolation_level": None}
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosqlite.Connection] = []
        #: Every open connection, idle or in use: what :meth:`close` closes.
        self._open: set[aiosqlite.Connection] = set()
        self._closed = False

    async def fetchall(self, sql: str, parameters: Sequence[Any]) -> Iterable[Sequence[Any]]:
        """Every row of one statement, in one trip through a connection's thread."""
        async with self._slots:
            if self._closed:
                raise StoreUnreachable("the SQLite readers are closed")
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                return await conn.execute_fetchall(sql, parameters)
            except Exception as exc:
                # Closed under the read: aiosqlite's ValueError ("Connection closed", "no active
                # connection") or sqlite3's ProgrammingError ("Cannot operate on a closed database").
                if self._closed:
                    raise StoreUnreachable("the SQLite readers are closed") from exc
                raise
            finally:
                # A cancelled read gives its connection back too: aiosqlite runs a connection's calls in
                # order on its thread, so the next read simply queues behind the abandoned one.
                if not self._closed:
                    self._idle.append(conn)

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(*self._args, **self._kwargs)
        self._open.add(conn)  # from here on, close() stops its thread
        try:
            if self._closed:
                raise StoreUnreachable("the SQLite readers are closed")
            # A reader that tried to write would be a bug: fail loudly.
            await conn.execute_fetchall("PRAGMA query_only=ON")
        except BaseException:
            self._open.discard(conn)
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close every connection, in use or not, and end their threads (aiosqlite's are not daemons).

        A read in progress finishes first (it is ahead of the close in its connection's queue); reads that
        come after get :class:`StoreUnreachable`.
        """
        self._closed = True
        self._idle.clear()
        conns, self._open = list(self._open), set()
        results = await asyncio.gather(*(conn.close() for conn in conns), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
