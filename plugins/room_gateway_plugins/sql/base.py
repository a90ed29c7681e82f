"""What the SQLite and PostgreSQL backends share: the queries, one transaction per operation.

Each write is one statement that the database makes atomic — an upsert or a guarded ``UPDATE … RETURNING``
— so that concurrent writers (other tasks, other gateway processes) never lose an update, and a
compare-and-set is decided by the database, not by a read in Python. In the same transaction the write
appends its change to the room's log (:mod:`.changelog`), whose head row lock orders the room's writers,
and emits its notification (:meth:`SqlBackend._emit`), so listeners see a room's changes in seq order.
Values and settings are JSON text (:mod:`gateway.core.jsontext`).

Every transaction takes its locks in one order — a room's own rows (room, variable), then its head row,
then its log and presence rows — so that concurrent writers wait for each other rather than deadlock.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.core import jsontext, wire
from gateway.core.backend import Backend, History, LogPage, Snapshot, VariableWrite
from gateway.core.hub import LocalHub, Subscription, Topic
from gateway.core.models import (
    Change,
    ChangeKind,
    Event,
    Member,
    Presence,
    Room,
    RoomSignal,
    RoomStatus,
    Variable,
)
from gateway.core.outbox import (
    EndpointState,
    MessageStatus,
    OutboxMessage,
    Settled,
    new_message_id,
)
from gateway.core.wire import Message
from gateway.errors import AlreadyExists, Unavailable
from room_gateway_plugins.sql import changelog, migrations, pgerrors
from room_gateway_plugins.sql import outbox as outbox_sql
from room_gateway_plugins.sql import presence as presence_ops
from room_gateway_plugins.sql.tables import (
    changes,
    log_meta,
    presence,
    room_heads,
    rooms,
    variables,
    webhook_endpoints,
    webhook_messages,
)

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
#: The set variables and the head, in one statement (one snapshot): one row per variable, or one row with
#: ``name`` NULL when none is set; no row for a room never written.
_SNAPSHOT = (
    sa.select(room_heads.c.head, variables.c.name, variables.c.value)
    .select_from(
        room_heads.outerjoin(
            variables, (variables.c.room_id == room_heads.c.room_id) & variables.c.value.is_not(None)
        )
    )
    .where(room_heads.c.room_id == sa.bindparam("room_id"))
    .order_by(variables.c.name)
)


#: The version a compare-and-set is compared with when its write changed no row (``0``: unset), with the
#: parameters of :meth:`SqlBackend._variable_statement`.
CURRENT_VERSION = sa.select(variables.c.version).where(
    variables.c.room_id == sa.bindparam("w_room_id"),
    variables.c.name == sa.bindparam("w_name"),
    variables.c.value.is_not(None),
)


def variable_change(write: VariableWrite, version: int) -> tuple[Variable, Change]:
    """The variable as ``write`` left it at ``version``, and the change to log (seq and epoch to come)."""
    variable = write.written(version)
    kind = ChangeKind.VARIABLE_DELETED if write.deletes else ChangeKind.VARIABLE_SET
    return variable, Change(0, "", kind, variable.update_time, variable=variable)


def check_unwritten(write: VariableWrite, current: int) -> None:
    """Raise the compare-and-set's conflict of a write that changed no row, the variable being at
    ``current``; return if it is none (deleting an unset variable: the write answers ``None``)."""
    if write.expected_version is not None and write.expected_version != current:
        raise write.conflict(current)


class StoreUnreachable(ConnectionError):
    """A driver error that SQLAlchemy classified as a lost or refused connection (see ``handle_error``)."""


@dataclass
class Transaction:
    """The connection of one write transaction, and what to do once it has committed."""

    conn: AsyncConnection
    #: Run after commit (SQLite delivers to its in-process hub only once the write is durable).
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    #: Run when the transaction ends, committed or not (a lock of this process's, held until then).
    on_end: list[Callable[[], None]] = field(default_factory=list)


class SqlBackend(Backend):
    """Rooms and variables in SQL tables (:mod:`.tables`), schema by :mod:`.migrations`, each write logged in
    its own transaction (:mod:`.changelog`), presence by :mod:`.presence`."""

    #: Driver errors meaning "cannot reach the store". One tuple for both dialects: the contract methods are
    #: defined (and wrapped by :class:`Backend`) here, with this class's tuple.
    base_exceptions: ClassVar[tuple[type[BaseException], ...]] = (
        OSError,  # ConnectionRefusedError, TimeoutError, StoreUnreachable, socket errors
        sqlalchemy.exc.OperationalError,  # SQLite: locked, unable to open, disk I/O; lost connections
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
        sqlite3.OperationalError,  # the same, raw: SQLite's readers run without SQLAlchemy (readers.py)
        *pgerrors.UNAVAILABLE,
    )

    supports_outbox = True

    def __init__(self, url: str, *, history: History = History()) -> None:  # noqa: B008 - frozen
        super().__init__(url, history=history)
        self.hub = self._make_hub()
        self._engine: AsyncEngine | None = None
        self._schema_found: int | None = None
        #: :meth:`_variable_write`'s statements by shape.
        self._variable_writes: dict[tuple[bool, bool, bool, bool], Any] = {}
        #: :meth:`_record`'s statements by shape.
        self._records: dict[bool, Any] = {}

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

    async def _before_head(self, tx: Transaction, room_id: str) -> None:
        """Called by a variable write before it takes the room's head row lock (:meth:`_log`), holding no
        head lock yet: a dialect may queue its writers of one room here (PostgreSQL, :mod:`.roomqueue`)."""

    @abc.abstractmethod
    async def _emit(self, tx: Transaction, message: Message, text: str) -> None:
        """Send ``message`` (whose wire text is ``text``) to its listeners, on every instance, when ``tx``
        commits."""

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
            epoch = sa.select(log_meta.c.value).where(log_meta.c.name == "epoch")
            self.epoch = (await tx.conn.execute(epoch)).scalar_one()

    async def close(self) -> None:
        self.hub.close_all(Unavailable("server shutting down; reconnect"))
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def check(self) -> None:
        async with self._serial(), self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def _tx(self, *, hot: bool = False) -> AsyncIterator[Transaction]:
        """A write transaction (``hot``: a variable write's, which a dialect may run on its driver
        directly, :meth:`_begin`)."""
        async with self._serial():
            tx: Transaction | None = None
            try:
                async with self._begin(hot=hot) as conn:
                    tx = Transaction(conn)
                    yield tx
            finally:
                if tx is not None:
                    for end in tx.on_end:
                        end()
            for deliver in tx.after_commit:
                deliver()

    def _begin(self, *, hot: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        """The connection of a write transaction, committed when the block ends: SQLAlchemy's
        (PostgreSQL runs its ``hot`` ones on asyncpg directly, :mod:`.direct`)."""
        return self.engine.begin()

    @contextlib.asynccontextmanager
    async def _bookkeeping_tx(self) -> AsyncIterator[Transaction]:
        """A transaction of the outbox's delivery bookkeeping (claims, settles, pruning) whose commit need
        not wait for the disk (each dialect says how; SQLite runs its bookkeeping on its writer's thread
        instead, :mod:`.writer`, and so never comes here).

        A claim or a settle lost to a power cut (never to a crash of the process: the database has it) is
        an attempt sent again — at-least-once allows it — while waiting for the disk made each one an fsync
        under SQLite's one writer lock, taken from the writes (bench/webhooks.py: about 6 ms a commit on this
        machine, two commits a delivery round). Messages themselves are written with their change, durably.
        """
        async with self._serial(), self.engine.begin() as conn:
            yield Transaction(conn)

    async def _fetch(self, statement: sa.Select[*tuple[Any, ...]], **params: Any) -> Sequence[Any]:
        """The rows of one read, with attributes named as the statement's columns (``row.version``).

        Runs in autocommit: no BEGIN/COMMIT round trips, and the read sees every commit made before it.
        One statement is one snapshot, so a read that joins the head row is consistent with it.
        """
        async with self._serial(), self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            return (await conn.execute(statement, params)).all()

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ``ON CONFLICT``."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    # -- the log ---------------------------------------------------------------------------------------------

    def _bump_head(self, room_id: str, by: int = 1) -> Any:
        """The upsert that adds ``by`` to the room's head (``0``: only locks the row) and returns it."""
        return (
            self._insert(room_heads)
            .values(room_id=room_id, head=by)
            .on_conflict_do_update(
                index_elements=[room_heads.c.room_id], set_={"head": room_heads.c.head + by}
            )
            .returning(room_heads.c.head)
        )

    async def _lock_room(self, tx: Transaction, room_id: str) -> int:
        """Take the room's head row lock (the writers' order) without a change; return the head."""
        head: int = (await tx.conn.execute(self._bump_head(room_id, 0))).scalar_one()
        return head

    async def _log(
        self, tx: Transaction, room_id: str, change: Change, previous: str | None = None
    ) -> Change:
        """Append ``change`` to the room's log in ``tx`` (its ``seq`` and ``epoch`` assigned here), trim what
        retention drops, and have it delivered when ``tx`` commits. Return the change as logged."""
        seq = (await tx.conn.execute(self._bump_head(room_id))).scalar_one()
        change = dataclasses.replace(change, seq=seq, epoch=self.epoch)
        message = Message(room_id, change)
        text = wire.encode(message).decode()
        await tx.conn.execute(changes.insert().values(changelog.row(room_id, change, text)))
        for trim in changelog.trim(room_id, seq, change, self.history):
            await tx.conn.execute(trim)
        await self._emit(tx, message, text)
        if self.outbox is not None:
            await self._enqueue(tx, room_id, change, text, previous)
        return change

    async def _enqueue(
        self, tx: Transaction, room_id: str, change: Change, payload: str, previous: str | None
    ) -> None:
        """Write the change's outbox messages in ``tx``, one per endpoint it is for (often none)."""
        outbox = self.outbox
        if outbox is None:
            return
        targets = outbox.targets(room_id, change.kind)
        if not targets:
            return
        found = outbox_sql.rows(
            targets, new_message_id(), room_id, change, payload, previous, outbox.first_delay
        )
        await self._insert_messages(tx, found)
        tx.after_commit.append(outbox.written)

    async def _insert_messages(self, tx: Transaction, rows: list[dict[str, Any]]) -> None:
        await tx.conn.execute(webhook_messages.insert(), rows)

    async def _written(
        self, tx: Transaction, write: VariableWrite, statement: Any, params: dict[str, Any]
    ) -> tuple[Any, str | None]:
        """Run ``write``'s ``statement`` (:meth:`_variable_statement`): its row (the new ``version``;
        ``None``: not written) and, when an endpoint takes the write, the variable's value and version
        before it (the ``previous`` of its messages; ``None`` when it was unset)."""
        previous = None
        if self._wants_previous(write):
            previous = outbox_sql.previous_of(await self._variable_before(tx, write))
        written = (await tx.conn.execute(statement, params)).first() if statement is not None else None
        return written, previous

    def _wants_previous(self, write: VariableWrite) -> bool:
        """Whether a webhook endpoint takes ``write``, so that its messages need the value before it."""
        outbox = self.outbox
        kind = ChangeKind.VARIABLE_DELETED if write.deletes else ChangeKind.VARIABLE_SET
        return outbox is not None and bool(outbox.targets(write.room_id, kind))

    async def _variable_before(self, tx: Transaction, write: VariableWrite) -> tuple[str | None, int] | None:
        """The variable's row (value, version) as ``write`` finds it, no other writer changing it before
        ``write`` commits: SQLite has one writer; PostgreSQL overrides this with a lock."""
        params = {"p_room_id": write.room_id, "p_name": write.name}
        row = (await tx.conn.execute(outbox_sql.PREVIOUS, params)).first()
        return None if row is None else (row.value, row.version)

    async def read_changes(
        self,
        room_id: str,
        *,
        after_seq: int,
        limit: int,
        kinds: frozenset[ChangeKind] | None = None,
    ) -> LogPage:
        statement, params = changelog.page_params(room_id, after_seq, limit, kinds)
        return changelog.log_page(await self._fetch(statement, **params), self.epoch, limit)

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
            await self._log(tx, room.room_id, _room_change(ChangeKind.ROOM_CREATED, room))

    async def get_room(self, room_id: str) -> Room | None:
        found = await self._fetch(_ROOM, room_id=room_id)
        return _room(found[0]) if found else None

    async def save_room(self, room: Room, kind: ChangeKind = ChangeKind.ROOM_UPDATED) -> None:
        row = _room_row(room)
        del row["room_id"]
        async with self._tx() as tx:
            await tx.conn.execute(rooms.update().where(rooms.c.room_id == room.room_id).values(row))
            await self._log(tx, room.room_id, _room_change(kind, room))

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

    async def delete_room(self, room: Room) -> None:
        room_id = room.room_id
        row = _room_row(room)
        del row["room_id"]
        # Locks in the order every writer takes them (the room's rows, then its head, then its log and
        # presence), so a concurrent write or join waits instead of deadlocking.
        async with self._tx() as tx:
            await tx.conn.execute(rooms.update().where(rooms.c.room_id == room_id).values(row))
            # Variable rows go with the data: a deleted room's id never comes back, so versions cannot repeat.
            await tx.conn.execute(variables.delete().where(variables.c.room_id == room_id))
            # The head stays, one past the log's last seq: ROOM_DELETED is the room's last change.
            seq = (await tx.conn.execute(self._bump_head(room_id))).scalar_one()
            await tx.conn.execute(changes.delete().where(changes.c.room_id == room_id))
            await tx.conn.execute(presence.delete().where(presence.c.room_id == room_id))
            change = dataclasses.replace(
                _room_change(ChangeKind.ROOM_DELETED, room), seq=seq, epoch=self.epoch
            )
            message = Message(room_id, change)
            text = wire.encode(message).decode()
            await self._emit(tx, message, text)
            if self.outbox is not None:
                await self._enqueue(tx, room_id, change, text, None)

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
        statement, params = self._variable_statement(write)
        async with self._tx(hot=True) as tx:
            written, previous = await self._written(tx, write, statement, params)
            if written is None:
                check_unwritten(write, (await tx.conn.execute(CURRENT_VERSION, params)).scalar() or 0)
                return None
            variable, change = variable_change(write, written.version)
            await self._before_head(tx, write.room_id)
            await self._log(tx, write.room_id, change, previous)
        return variable

    def _variable_statement(
        self, write: VariableWrite, keep_previous: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        """The statement of ``write`` (:meth:`_variable_write`; ``None`` for a delete-only-if-unset, which
        has nothing to write either way) and its parameters, :data:`CURRENT_VERSION`'s too."""
        text = None if write.deletes else jsontext.dumps(write.value).decode()
        expected_version = write.expected_version
        statement = None
        if text is not None or expected_version != 0:
            statement = self._variable_write(text is None, expected_version, keep_previous)
        params = {
            "w_room_id": write.room_id,
            "w_name": write.name,
            "w_value": text,
            "w_now": write.now,
            "w_expected": expected_version,
        }
        return statement, params

    def _variable_write(
        self, deletes: bool, expected_version: int | None, keep_previous: bool = False
    ) -> Any:
        """The statement of a variable write of this shape, with its values as bound parameters
        (``w_room_id``, ``w_name``, ``w_value``, ``w_now``, ``w_expected``: not the columns' names, which
        SQLAlchemy keeps for its own VALUES parameters): built once per shape, since building it
        took about as long as the rest of the write's Python (issue 11's PUT benchmark).

        It returns the new ``version``. With ``keep_previous`` (a write that sets a value) it also keeps the
        value it replaced in ``previous_value`` and returns it second (``NULL``: unset before; its version
        is the new one less one): SQLite's way to the ``previous`` of a write's webhook messages without a
        read before the write. Every other write clears ``previous_value`` (:mod:`.migrations`, v4)."""
        assert not (deletes and keep_previous), "a deletion keeps no value"
        shape = (deletes, expected_version is None, expected_version == 0, keep_previous)
        statement = self._variable_writes.get(shape)
        if statement is not None:
            return statement
        value, now = (
            sa.bindparam("w_value", type_=sa.Text),
            sa.bindparam("w_now", type_=variables.c.update_time.type),
        )
        # In an UPDATE's SET (an upsert's too) a column names the row before it: its value, replaced.
        previous = variables.c.value if keep_previous else sa.null()
        returned = [variables.c.version]
        if keep_previous:
            returned.append(variables.c.previous_value)
        if deletes or expected_version:
            # Deletion, or compare-and-set against a set variable: only an existing, set row can change.
            guard = (
                (variables.c.room_id == sa.bindparam("w_room_id"))
                & (variables.c.name == sa.bindparam("w_name"))
                & variables.c.value.is_not(None)
            )
            if expected_version:
                guard &= variables.c.version == sa.bindparam("w_expected", type_=sa.BigInteger)
            statement = (
                variables.update()
                .where(guard)
                .values(
                    value=value, version=variables.c.version + 1, update_time=now, previous_value=previous
                )
                .returning(*returned)
            )
        else:
            # Plain write, or compare-and-set against "unset" (expected_version == 0): an upsert whose update
            # keeps counting from the row's last version (deletions included), so versions never repeat.
            statement = (
                self._insert(variables)
                .values(
                    room_id=sa.bindparam("w_room_id"),
                    name=sa.bindparam("w_name"),
                    value=value,
                    version=1,
                    update_time=now,
                )
                .on_conflict_do_update(
                    index_elements=[variables.c.room_id, variables.c.name],
                    set_={
                        "value": sa.literal_column("excluded.value"),
                        "version": variables.c.version + 1,
                        "update_time": sa.literal_column("excluded.update_time"),
                        "previous_value": previous,
                    },
                    where=variables.c.value.is_(None) if expected_version == 0 else None,
                )
                .returning(*returned)
            )
        self._variable_writes[shape] = statement
        return statement

    async def get_contents(self, room_id: str) -> Snapshot:
        rows = await self._fetch(_SNAPSHOT, room_id=room_id)
        contents = {row.name: jsontext.loads(row.value) for row in rows if row.name is not None}
        return Snapshot(contents=contents, seq=rows[0].head if rows else 0, epoch=self.epoch)

    # -- realtime --------------------------------------------------------------------------------------------

    async def publish_event(self, room_id: str, event: Event) -> Change:
        change = Change(0, self.epoch, ChangeKind.EVENT, event.time, event=event)
        async with self._tx() as tx:
            if self.history.events:
                return await self._log(tx, room_id, change)
            message = Message(room_id, change)  # live only: seq 0, no head moved
            await self._emit(tx, message, wire.encode(message).decode())
        return change

    async def publish_signal(self, signal: RoomSignal) -> None:
        async with self._tx() as tx:
            if signal.room_id:
                change = Change(0, "", ChangeKind.CONNECTIONS_INVALIDATED, signal.time)
                await self._log(tx, signal.room_id, change)
            else:
                message = Message("", signal)
                await self._emit(tx, message, wire.encode(message).decode())

    async def subscribe(self, topic: Topic) -> Subscription:
        if self._engine is None:
            raise Unavailable("backend is closed")
        return self.hub.subscribe(topic)

    # -- the webhook outbox ----------------------------------------------------------------------------------

    async def outbox_claim(
        self, endpoint: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        params = outbox_sql.claim_params(endpoint, now, lease_seconds, limit)
        async with self._bookkeeping_tx() as tx:
            found = (await tx.conn.execute(outbox_sql.CLAIM, params)).all()
        return outbox_sql.claimed(found, now)

    async def outbox_settle(self, settled: Sequence[Settled]) -> list[EndpointState | None]:
        if not settled:
            return []
        endpoint = outbox_sql.batch_endpoint(settled)
        # Three statements for the whole batch, not two a message: the rows' attempts (locked until the
        # transaction ends, so that no claim moves them meanwhile), the outcomes of the current ones (one
        # executemany), and the endpoint's state once, from the batch's outcomes folded in order.
        async with self._bookkeeping_tx() as tx:
            found = await tx.conn.execute(outbox_sql.CURRENT, outbox_sql.current_params(endpoint, settled))
            live = outbox_sql.still_current(settled, found)
            if not live:
                return [None] * len(settled)
            await tx.conn.execute(outbox_sql.SETTLE, [outbox_sql.settle_params(one) for one in live])
            succeeded, params = outbox_sql.outcomes_params(endpoint, live)
            state = outbox_sql.state_of((await tx.conn.execute(self._record(succeeded), params)).first())
        return outbox_sql.states(settled, live, state)

    def _record(self, succeeded: bool) -> Any:
        """:func:`.outbox.record_outcomes` of this shape, in the dialect's ``INSERT``, made once."""
        record = self._records.get(succeeded)
        if record is None:
            record = self._records[succeeded] = outbox_sql.record_outcomes(
                self._insert(webhook_endpoints), succeeded
            )
        return record

    async def outbox_messages(
        self, endpoint: str, *, status: MessageStatus | None, limit: int
    ) -> list[OutboxMessage]:
        async with self._tx() as tx:
            found = (await tx.conn.execute(outbox_sql.listing(endpoint, status, limit))).all()
        return [outbox_sql.message_of(row) for row in found]

    async def outbox_retry(self, endpoint: str, message_id: str, *, now: datetime) -> bool:
        async with self._tx() as tx:
            found = (await tx.conn.execute(outbox_sql.retry(endpoint, message_id, now))).first()
            if found is not None and self.outbox is not None:
                tx.after_commit.append(self.outbox.written)
        return found is not None

    async def outbox_replay(self, endpoint: str, *, since: datetime, now: datetime) -> int:
        async with self._tx() as tx:
            found = (await tx.conn.execute(outbox_sql.since(endpoint, since))).all()
            copies = [
                {
                    **row._asdict(),
                    "id": new_message_id(),
                    "status": MessageStatus.PENDING.value,
                    "attempts": 0,
                    "due_time": now,
                    "created_time": now,
                    "log": "[]",
                }
                for row in found
            ]
            if copies:
                await tx.conn.execute(webhook_messages.insert(), copies)
                if self.outbox is not None:
                    tx.after_commit.append(self.outbox.written)
        return len(copies)

    async def outbox_add(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        async with self._tx() as tx:
            await tx.conn.execute(webhook_messages.insert(), [outbox_sql.row_of(m) for m in messages])
            if self.outbox is not None:
                tx.after_commit.append(self.outbox.written)

    # The backlog and the state are reads (once a poll interval a loop): outside a write transaction, on
    # SQLite on the readers, without the write lock that the writes and the claims need.

    async def outbox_backlog(self, endpoint: str) -> int:
        [row] = await self._fetch(outbox_sql.BACKLOG, b_endpoint=endpoint)
        count: int = row.pending
        return count

    async def outbox_prune(
        self, endpoint: str, *, delivered_before: datetime, failed_before: datetime, limit: int
    ) -> int:
        params = outbox_sql.prune_params(endpoint, delivered_before, failed_before, limit)
        async with self._bookkeeping_tx() as tx:  # lost to a power cut: pruned again next time
            pruned: int = (await tx.conn.execute(outbox_sql.PRUNE, params)).rowcount
        return pruned

    async def get_endpoint_state(self, endpoint: str) -> EndpointState:
        found = await self._fetch(outbox_sql.STATE, e_name=endpoint)
        return outbox_sql.state_of(found[0] if found else None)

    async def save_endpoint_state(self, endpoint: str, state: EndpointState) -> None:
        values = outbox_sql.state_values(state)
        async with self._tx() as tx:
            await tx.conn.execute(
                self._insert(webhook_endpoints)
                .values(name=endpoint, **values)
                .on_conflict_do_update(index_elements=[webhook_endpoints.c.name], set_=values)
            )

    # -- presence --------------------------------------------------------------------------------------------

    async def presence_join(self, room_id: str, member: Member, *, instance: str, now: datetime) -> None:
        async with self._tx() as tx:
            await self._lock_room(tx, room_id)  # one user's joins on two instances: one MEMBER_JOINED
            joined = await presence_ops.join(tx.conn, self._insert, room_id, member, instance, now)
            if joined is not None:
                await self._log(tx, room_id, Change(0, "", ChangeKind.MEMBER_JOINED, now, member=joined))

    async def presence_leave(self, room_id: str, user_id: str, *, instance: str, now: datetime) -> None:
        async with self._tx() as tx:
            await self._lock_room(tx, room_id)
            left = await presence_ops.leave(tx.conn, room_id, user_id, instance)
            if left is not None:
                await self._log(tx, room_id, Change(0, "", ChangeKind.MEMBER_LEFT, now, member=left))

    async def presence_rejoin(
        self, room_id: str, member: Member, *, instance: str, connections: int, now: datetime
    ) -> None:
        async with self._tx() as tx:
            await self._lock_room(tx, room_id)
            logged = await presence_ops.rejoin(
                tx.conn, self._insert, room_id, member, instance, connections, now
            )
            if logged is not None:
                kind = ChangeKind.MEMBER_JOINED if connections else ChangeKind.MEMBER_LEFT
                await self._log(tx, room_id, Change(0, "", kind, now, member=logged))

    async def presence_heartbeat(self, instance: str, *, now: datetime, ttl_seconds: float) -> bool:
        async with self._tx() as tx:
            return await presence_ops.heartbeat(tx.conn, self._insert, instance, now)

    async def presence_expire(self, *, now: datetime, ttl_seconds: float) -> datetime | None:
        ttl = timedelta(seconds=ttl_seconds)
        async with self._tx() as tx:
            expiring = await presence_ops.mark_silent(tx.conn, now - ttl)
            deadline = await presence_ops.next_deadline(tx.conn, ttl)
        if expiring:
            async with self._tx() as tx:
                for room_id in await presence_ops.rooms_of(tx.conn, expiring):
                    await self._lock_room(tx, room_id)
                for room_id, left in await presence_ops.sweep(tx.conn, expiring):
                    await self._log(tx, room_id, Change(0, "", ChangeKind.MEMBER_LEFT, now, member=left))
        return deadline

    async def get_presence(self, room_id: str) -> Presence:
        return presence_ops.of_rows(await self._fetch(presence_ops.ROOM, room_id=room_id))

    async def count_users(self, room_ids: Sequence[str]) -> dict[str, int]:
        wanted = sorted(set(room_ids))
        counts: dict[str, int] = {}
        for first in range(0, len(wanted), _IN_CHUNK):
            rows = await self._fetch(presence_ops.USERS, room_ids=wanted[first : first + _IN_CHUNK])
            counts.update((row.room_id, row.users) for row in rows)
        return counts


def _room_change(kind: ChangeKind, room: Room) -> Change:
    return Change(0, "", kind, room.update_time or datetime.now(UTC), room=room)


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
        unreachable = isinstance(cause, (OSError, *pgerrors.UNAVAILABLE))
        cause = cause.__cause__
    if unreachable:
        return StoreUnreachable(f"{type(ctx.original_exception).__name__}: {ctx.original_exception}")
    return None
