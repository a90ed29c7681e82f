"""What the SQLite and PostgreSQL backends share: the queries, one transaction per operation.

Each write is one statement that the database makes atomic — an upsert or a guarded ``UPDATE … RETURNING``
— so that concurrent writers (other tasks, other gateway processes) never lose an update, and a
compare-and-set is decided by the database, not by a read in Python. The notification of a write is
emitted inside its transaction (:meth:`SqlBackend._emit`), so listeners see writes in commit order, which
for one variable is version order (its row lock orders its writers). Values and settings are JSON text
(:mod:`gateway.core.jsontext`).
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.core import jsontext
from gateway.core.backend import Backend, VariableWrite
from gateway.core.hub import LocalHub, Subscription, Topic
from gateway.core.models import JSON, Event, Room, RoomSignal, RoomStatus, Variable
from gateway.core.wire import Message
from gateway.errors import AlreadyExists, Unavailable
from room_gateway_plugins.sql import migrations
from room_gateway_plugins.sql.tables import rooms, variables

try:
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

    _ASYNCPG_ERRORS: tuple[type[BaseException], ...] = (
        asyncpg.PostgresConnectionError,  # SQLSTATE class 08
        asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress" after a drop
        asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03 cannot connect now
    )
except ImportError:  # installed without PostgreSQL support
    _ASYNCPG_ERRORS = ()

#: Room ids per ``IN (…)`` query, well under SQLite's limit of bound parameters.
_IN_CHUNK = 500

# The reads, each defined once and run by :meth:`SqlBackend._fetch` with the named parameters: SQLAlchemy
# runs them on PostgreSQL and on an in-memory SQLite; the SQLite backend compiles them for its own readers.
_ROOM = sa.select(rooms).where(rooms.c.room_id == sa.bindparam("room_id"))
_ROOMS_FROM = (
    sa.select(rooms)
    .where(rooms.c.room_id >= sa.bindparam("start"))
    .order_by(rooms.c.room_id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_ROOMS_AFTER = (
    sa.select(rooms)
    .where(rooms.c.room_id > sa.bindparam("start"))
    .order_by(rooms.c.room_id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_ROOMS_AMONG = (
    sa.select(rooms)
    .where(rooms.c.room_id.in_(sa.bindparam("room_ids", expanding=True)))
    .order_by(rooms.c.room_id)
)
_VARIABLE = sa.select(variables.c.value, variables.c.version, variables.c.update_time).where(
    variables.c.room_id == sa.bindparam("room_id"),
    variables.c.name == sa.bindparam("name"),
    variables.c.value.is_not(None),
)
_CONTENTS = (
    sa.select(variables.c.name, variables.c.value)
    .where(variables.c.room_id == sa.bindparam("room_id"), variables.c.value.is_not(None))
    .order_by(variables.c.name)
)


class StoreUnreachable(ConnectionError):
    """A driver error that SQLAlchemy classified as a lost or refused connection (see ``handle_error``)."""


@dataclass
class Transaction:
    """The connection of one write transaction, and what to do once it has committed."""

    conn: AsyncConnection
    #: Run after commit (SQLite delivers to its in-process hub only once the write is durable).
    after_commit: list[Callable[[], None]] = field(default_factory=list)


class SqlBackend(Backend):
    """Rooms and variables in SQL tables (:mod:`.tables`), schema by :mod:`.migrations`."""

    #: Driver errors meaning "cannot reach the store". One tuple for both dialects: the contract methods are
    #: defined (and wrapped by :class:`Backend`) here, with this class's tuple.
    base_exceptions: ClassVar[tuple[type[BaseException], ...]] = (
        OSError,  # ConnectionRefusedError, TimeoutError, StoreUnreachable, socket errors
        sqlalchemy.exc.OperationalError,  # SQLite: locked, unable to open, disk I/O; lost connections
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
        sqlite3.OperationalError,  # the same, raw: SQLite's readers run without SQLAlchemy (readers.py)
        *_ASYNCPG_ERRORS,
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.hub = self._make_hub()
        self._engine: AsyncEngine | None = None
        self._schema_found: int | None = None

    # -- what a dialect provides ----------------------------------------------------------------------------

    def _make_hub(self) -> LocalHub:
        return LocalHub()

    @abc.abstractmethod
    def _make_engine(self) -> AsyncEngine:
        """A new engine (called in :meth:`open`, inside the event loop that will use it)."""

    def _schema(self) -> str | None:
        return None

    def _serial(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Held around every transaction (SQLite: one connection, used by one task at a time)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    async def _emit(self, tx: Transaction, message: Message) -> None:
        """Send ``message`` to its listeners, on every instance, when ``tx`` commits."""

    # -- life cycle ------------------------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise Unavailable("backend is not open")
        return self._engine

    async def open(self) -> None:
        self._engine = self._make_engine()
        sa.event.listen(self._engine.sync_engine, "handle_error", _classify_error)
        async with self._tx() as tx:
            self._schema_found = await tx.conn.run_sync(migrations.upgrade, self._schema())

    async def close(self) -> None:
        self.hub.close_all(Unavailable("server shutting down; reconnect"))
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def check(self) -> None:
        async with self._serial(), self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Transaction]:
        async with self._serial():
            async with self.engine.begin() as conn:
                tx = Transaction(conn)
                yield tx
            for deliver in tx.after_commit:
                deliver()

    async def _fetch(self, statement: sa.Select[*tuple[Any, ...]], **params: Any) -> Sequence[Any]:
        """The rows of one read, with attributes named as the statement's columns (``row.version``).

        Runs in autocommit: no BEGIN/COMMIT round trips, and the read sees every commit made before it.
        """
        async with self._serial(), self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            return (await conn.execute(statement, params)).all()

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ``ON CONFLICT``."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    # -- rooms -----------------------------------------------------------------------------------------------

    async def create_room(self, room: Room) -> None:
        statement = (
            self._insert(rooms)
            .values(_room_row(room))
            .on_conflict_do_nothing(index_elements=[rooms.c.room_id])
            .returning(rooms.c.room_id)
        )
        async with self._tx() as tx:
            created = (await tx.conn.execute(statement)).first()
        if created is None:
            raise AlreadyExists(f"room {room.room_id!r} already exists (ids are never reused)")

    async def get_room(self, room_id: str) -> Room | None:
        found = await self._fetch(_ROOM, room_id=room_id)
        return _room(found[0]) if found else None

    async def save_room(self, room: Room) -> None:
        row = _room_row(room)
        del row["room_id"]
        async with self._tx() as tx:
            await tx.conn.execute(rooms.update().where(rooms.c.room_id == room.room_id).values(row))

    async def list_rooms(self, *, start: str, inclusive: bool, limit: int) -> list[Room]:
        query = _ROOMS_FROM if inclusive else _ROOMS_AFTER
        return [_room(row) for row in await self._fetch(query, start=start, limit=limit)]

    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        wanted = sorted(set(room_ids))
        found: list[Room] = []
        for first in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[first : first + _IN_CHUNK]
            found.extend(_room(row) for row in await self._fetch(_ROOMS_AMONG, room_ids=chunk))
        return found

    # -- variables -------------------------------------------------------------------------------------------

    async def get_variable(self, room_id: str, name: str) -> Variable | None:
        found = await self._fetch(_VARIABLE, room_id=room_id, name=name)
        if not found:
            return None
        row = found[0]
        return Variable(
            name=name, value=jsontext.loads(row.value), version=row.version, update_time=row.update_time
        )

    async def write_variable(self, write: VariableWrite) -> Variable | None:
        room_id, name, expected_version, now = write.room_id, write.name, write.expected_version, write.now
        text = None if write.deletes else jsontext.dumps(write.value).decode()
        this = (variables.c.room_id == room_id) & (variables.c.name == name)
        statement: Any
        if text is None and expected_version == 0:
            statement = None  # delete only if unset: nothing to write either way
        elif text is None or expected_version:
            # Deletion, or compare-and-set against a set variable: only an existing, set row can change.
            guard = this & variables.c.value.is_not(None)
            if expected_version:
                guard &= variables.c.version == expected_version
            statement = (
                variables.update()
                .where(guard)
                .values(value=text, version=variables.c.version + 1, update_time=now)
                .returning(variables.c.version)
            )
        else:
            # Plain write, or compare-and-set against "unset" (expected_version == 0): an upsert whose update
            # keeps counting from the row's last version (deletions included), so versions never repeat.
            statement = (
                self._insert(variables)
                .values(room_id=room_id, name=name, value=text, version=1, update_time=now)
                .on_conflict_do_update(
                    index_elements=[variables.c.room_id, variables.c.name],
                    set_={
                        "value": sa.literal_column("excluded.value"),
                        "version": variables.c.version + 1,
                        "update_time": sa.literal_column("excluded.update_time"),
                    },
                    where=variables.c.value.is_(None) if expected_version == 0 else None,
                )
                .returning(variables.c.version)
            )
        async with self._tx() as tx:
            written = (await tx.conn.execute(statement)).first() if statement is not None else None
            if written is None:
                current = await self._current_version(tx, room_id, name)
                if expected_version is not None and expected_version != current:
                    raise write.conflict(current)
                return None  # deleting an unset variable
            variable = write.written(written.version)
            await self._emit(tx, Message(write.topic, variable))
        return variable

    async def _current_version(self, tx: Transaction, room_id: str, name: str) -> int:
        """The version a compare-and-set is compared with: ``0`` when unset."""
        query = sa.select(variables.c.version).where(
            variables.c.room_id == room_id, variables.c.name == name, variables.c.value.is_not(None)
        )
        return (await tx.conn.execute(query)).scalar() or 0

    async def get_contents(self, room_id: str) -> dict[str, JSON]:
        return {row.name: jsontext.loads(row.value) for row in await self._fetch(_CONTENTS, room_id=room_id)}

    async def delete_room_data(self, room_id: str) -> None:
        # Rows go with the data: a deleted room's id never comes back, so its versions cannot repeat.
        async with self._tx() as tx:
            await tx.conn.execute(variables.delete().where(variables.c.room_id == room_id))

    # -- realtime --------------------------------------------------------------------------------------------

    async def publish_event(self, room_id: str, event: Event) -> None:
        async with self._tx() as tx:
            await self._emit(tx, Message(Topic("event", room_id, event.name), event))

    async def publish_signal(self, signal: RoomSignal) -> None:
        async with self._tx() as tx:
            await self._emit(tx, Message(None, signal))

    async def subscribe(self, topic: Topic) -> Subscription:
        if self._engine is None:
            raise Unavailable("backend is closed")
        return self.hub.subscribe(topic)


def _room_row(room: Room) -> dict[str, Any]:
    return {
        "room_id": room.room_id,
        "display_name": room.display_name,
        "description": room.description,
        "status": room.status.value,
        "jurisdiction": room.jurisdiction,
        "settings": jsontext.dumps(room.settings).decode(),
        "create_time": room.create_time,
        "update_time": room.update_time,
    }


def _room(row: Any) -> Room:
    return Room(
        room_id=row.room_id,
        display_name=row.display_name,
        description=row.description,
        status=RoomStatus(row.status),
        jurisdiction=row.jurisdiction,
        settings=jsontext.loads(row.settings),
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _classify_error(ctx: sa.engine.ExceptionContext) -> BaseException | None:
    """``handle_error`` hook: a lost or refused connection becomes :class:`StoreUnreachable`.

    SQLAlchemy wraps every driver error in a ``DBAPIError``; the ones it recognizes as disconnects
    (``is_disconnect``, which also invalidates the pool) and the driver's own connection errors are turned
    into one type that :attr:`SqlBackend.base_exceptions` maps to UNAVAILABLE.
    """
    if not isinstance(ctx.original_exception, Exception):
        # A cancelled call (the client went away) or KeyboardInterrupt: SQLAlchemy invalidates the
        # connection and flags it as a disconnect, but it must stay a cancellation, not become a 503.
        return None
    cause: BaseException | None = ctx.original_exception
    unreachable = ctx.is_disconnect
    while cause is not None and not unreachable:
        unreachable = isinstance(cause, (OSError, *_ASYNCPG_ERRORS))
        cause = cause.__cause__
    if unreachable:
        return StoreUnreachable(f"{type(ctx.original_exception).__name__}: {ctx.original_exception}")
    return None
