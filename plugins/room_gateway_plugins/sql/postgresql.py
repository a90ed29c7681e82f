"""The PostgreSQL backend: many gateway processes over one database, realtime through LISTEN/NOTIFY.

URL: ``postgresql://user@host:5432/db`` (or ``postgresql+asyncpg://…``), with optional query parameters of
ours: ``schema`` (tables in that schema, created if missing; default: the connection's search_path),
``connect_timeout`` (seconds, default 5) and ``pool_size`` (connections kept open, default 20).

**Pool.** No pre-ping: on asyncpg it costs a BEGIN/``;``/ROLLBACK round trip on every checkout (a quarter of
a read's time in a profile). A connection found dead raises a disconnect error, SQLAlchemy then invalidates
the whole pool, that one call answers UNAVAILABLE and the next ones connect afresh — the gateway recovers
without a restart either way. The pool is sized so that a busy process does not open and close overflow
connections per request (the default 5 + 10 overflow did, under 32 concurrent calls).

**Channels.** A room has its own channel, ``LISTEN``ed while this process has a subscriber to any topic of
the room (the hub's ``on_topic_open`` / ``on_topic_close``; the hub routes a change to its topics); the
every-room signal, rare, has one channel. One channel for everything would be simpler, but every process
would then receive, decode and drop every write of the whole deployment; with a channel per room the server
sends a process only the rooms it listens to, and one channel per room keeps the room's changes in seq
order. Channel names are a hash of (database, schema, room): identifiers are limited to 63 bytes and room
ids are not; payloads carry the room id, so a hash collision only costs a dropped message.

**Order.** ``pg_notify`` runs inside the write's transaction: PostgreSQL delivers notifications in commit
order, and a room's writers commit in seq order (its head row lock orders them). This process's own
writes come back through its LISTEN connection like everyone else's: delivering them directly as well
could put a local write ahead of an earlier remote one.

**A variable write is one statement**, sent alone (:func:`.pgstatements.variable_write`): the write, the
head's increment, the log row, the trim, the change's webhook messages and the ``pg_notify`` in
data-modifying CTEs, the version and the seq spliced into the message by the server (the wire format's
:func:`~gateway.core.wire.head`): one round trip a write. A logged event is its append alone
(:data:`.pgstatements.APPEND`), sent by itself too. Any other change is logged by that statement inside its
transaction, so logging costs no round trip over its notification.

**Writers of a room** queue in the process for its head row (:mod:`.roomqueue`): PostgreSQL sees one
variable write or event of a room at a time from each process.

**Payloads** are the messages of :mod:`gateway.core.wire`, the format the Redis backend publishes too. A
payload must be shorter than 8000 bytes. A larger message is stored in ``notification_bodies`` (in the same
transaction) and ``#`` followed by its id is sent instead (no message starts with ``#``); receivers read it
back in arrival order. Bodies older than :data:`BODY_TTL_SQL` are deleted now and then by writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.core import wire
from gateway.core.backend import History, VariableWrite
from gateway.core.hub import LocalHub, Subscription, Topic
from gateway.core.models import Change, ChangeKind, Event, RoomSignal, Variable
from gateway.core.outbox import EndpointState, OutboxMessage, Settled, new_message_id
from gateway.errors import Unavailable
from room_gateway_plugins.sql import changelog, direct, pgstatements
from room_gateway_plugins.sql import outbox as outbox_sql
from room_gateway_plugins.sql.base import (
    CURRENT_VERSION,
    SqlBackend,
    Transaction,
    check_unwritten,
    variable_change,
)
from room_gateway_plugins.sql.listener import Listener
from room_gateway_plugins.sql.readers import Compiled
from room_gateway_plugins.sql.roomqueue import RoomQueue
from room_gateway_plugins.sql.tables import log_meta, notification_bodies

log = logging.getLogger(__name__)

#: Largest payload sent as is (PostgreSQL's limit is 8000 bytes, exclusive, in the server encoding).
MAX_PAYLOAD = 7900
#: Starts a payload that stands for a message stored in ``notification_bodies``: the id follows.
BODY_REFERENCE = "#"
BODY_TTL_SQL = "interval '10 minutes'"
#: Share of large writes that also clean up expired bodies.
BODY_CLEANUP_RATE = 1 / 32
DEFAULT_CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0
#: Query parameters of SQLAlchemy's asyncpg dialect that asyncpg.connect itself does not take.
#: Connections a process keeps open (and as many more under bursts).
DEFAULT_POOL_SIZE = 20
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn")


class PostgresBackend(SqlBackend):
    """Rooms in PostgreSQL; notifications reach every gateway process that shares the database."""

    schemes = ("postgresql", "postgresql+asyncpg", "postgres")

    def __init__(self, url: str, *, history: History = History()) -> None:  # noqa: B008 - frozen
        super().__init__(url, history=history)
        parsed = make_url(url)
        self._db_schema: str | None = parsed.query.get("schema")  # type: ignore[assignment]
        timeout = parsed.query.get("connect_timeout")
        self._connect_timeout = float(timeout) if timeout else DEFAULT_CONNECT_TIMEOUT  # type: ignore[arg-type]
        pool_size = parsed.query.get("pool_size")
        self._pool_size = int(pool_size) if pool_size else DEFAULT_POOL_SIZE  # type: ignore[arg-type]
        self._sa_url: URL = parsed.difference_update_query(["schema", "connect_timeout", "pool_size"]).set(
            drivername="postgresql+asyncpg"
        )
        namespace = f"{self._sa_url.database}\0{self._db_schema or ''}"
        self._namespace = namespace
        self._signal_channel = _channel(namespace, "signals")
        self._incoming: asyncio.Queue[str] = asyncio.Queue()
        self._writers = RoomQueue()  # one writer of a room at a time from this process (:mod:`.roomqueue`)
        self._statements: Compiled | None = None  # compiled for asyncpg itself (:mod:`.direct`)
        self._reader: asyncio.Task[None] | None = None
        self._listener: Listener | None = None

    def _make_hub(self) -> LocalHub:
        return LocalHub(on_topic_open=self._topic_opened, on_topic_close=self._topic_closed)

    def _schema(self) -> str | None:
        return self._db_schema

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": "room-gateway"}
        if self._db_schema:
            settings["search_path"] = self._db_schema
        return settings

    def _make_engine(self) -> AsyncEngine:
        return create_async_engine(
            self._sa_url,
            pool_size=self._pool_size,
            max_overflow=self._pool_size,
            pool_timeout=self._connect_timeout * 2,
            connect_args={
                "timeout": self._connect_timeout,
                "command_timeout": COMMAND_TIMEOUT,
                "server_settings": self._server_settings(),
            },
        )

    async def _connect_listener(self) -> asyncpg.Connection:
        _, kwargs = self.engine.dialect.create_connect_args(self._sa_url)
        for key in _SQLALCHEMY_ONLY:
            kwargs.pop(key, None)
        return await asyncpg.connect(
            **kwargs, timeout=self._connect_timeout, server_settings=self._server_settings()
        )

    # -- life cycle ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        await super().open()
        await self._trim_to_max_changes()
        self._listener = Listener(self._connect_listener, self._incoming.put_nowait, self._connection_lost)
        self._listener.want(self._signal_channel)
        self._reader = asyncio.create_task(self._read(), name="room-gateway pg notifications")
        try:
            await self._listener.start()
        except BaseException:
            await self.close()
            raise

    async def _trim_to_max_changes(self) -> None:
        """Drop every room's changes beyond ``max_changes`` when it is lower than the last one an instance
        opened with (or not known yet): an append trims only :data:`.changelog.TRIM_BAND` seqs below its
        window."""
        keep = self.history.max_changes
        stored = sa.select(log_meta.c.value).where(log_meta.c.name == "max_changes")
        async with self._tx() as tx:
            last = (await tx.conn.execute(stored)).scalar()
            if last is not None and int(last) == keep:
                return
            if last is None or int(last) > keep:
                await tx.conn.execute(pgstatements.TRIM_ALL, {"keep": keep})
            await tx.conn.execute(
                postgresql.insert(log_meta)
                .values(name="max_changes", value=str(keep))
                .on_conflict_do_update(index_elements=[log_meta.c.name], set_={"value": str(keep)})
            )

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        await super().close()

    async def check(self) -> None:
        await super().check()
        listener = self._listener
        if listener is None:
            raise Unavailable("backend is closed")
        if not listener.connected:
            await listener.sync()

    def _connection_lost(self, error: Exception) -> None:
        self.hub.close_all(Unavailable("lost the connection to PostgreSQL; reconnect"))

    # -- subscriptions ---------------------------------------------------------------------------------------

    def _room_channel(self, room_id: str) -> str:
        return _channel(self._namespace, "room", room_id)

    def _topic_opened(self, topic: Topic) -> None:
        if self._listener is not None:
            self._listener.want(self._room_channel(topic.room_id))

    def _topic_closed(self, topic: Topic) -> None:
        if self._listener is not None:
            self._listener.unwant(self._room_channel(topic.room_id))

    async def subscribe(self, topic: Topic) -> Subscription:
        listener = self._listener
        if listener is None:
            raise Unavailable("backend is closed")
        sub = self.hub.subscribe(topic)
        try:
            await listener.sync()  # active on return: LISTEN has been executed
        except BaseException:
            sub.close()
            raise
        return sub

    # -- writes and reads: on asyncpg directly (:mod:`.direct`), one writer of a room at a time -------------

    def _begin(self, *, hot: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        if not hot:
            return super()._begin(hot=hot)
        return direct.transaction(self.engine, self._compiled())

    async def _fetch(self, statement: sa.Select[*tuple[Any, ...]], **params: Any) -> Sequence[Any]:
        return (await self._alone(statement, params)).all()

    async def _alone(self, statement: Any, params: dict[str, Any]) -> direct.DirectResult:
        """Run one statement by itself on asyncpg directly: it commits by itself (autocommit, as
        SQLAlchemy's)."""
        async with direct.checked_out(self.engine) as raw:
            return await direct.DirectConnection(raw, self._compiled()).execute(statement, params)

    async def write_variable(self, write: VariableWrite) -> Variable | None:
        # One statement (:func:`.pgstatements.variable_write`), sent by itself: it commits by itself. The
        # general path (a transaction of the write and then the append) keeps what that statement does not
        # do: a deletion that a webhook endpoint takes (the statement would keep the deleted value in the
        # row), a deletion only if unset (nothing to write), and a message too large to notify as it is.
        expected = write.expected_version
        _, change = variable_change(write, 0)  # its version and seq: the server's, spliced in
        change = dataclasses.replace(change, epoch=self.epoch)
        targets = self._targets(write.room_id, change)
        before, middle, after = changelog.around_version_and_seq(write.room_id, change)
        if (
            (write.deletes and (targets or expected == 0))
            or len(before.encode()) + len(middle) + len(after) + 40 > MAX_PAYLOAD  # 2 x 20 digits: int64s
        ):
            return await super().write_variable(write)
        _, params = self._variable_statement(write)
        params |= self._append_params(write.room_id, change, before, after) | {"middle": middle}
        if targets:
            params |= self._message_params(change, targets)
        shape = "any" if expected is None else "unset" if expected == 0 else "version"
        statement = pgstatements.variable_write(write.deletes, shape, bool(targets))
        row = (await self._write_alone(write.room_id, statement, params)).first()
        if row is None:  # the guard held the write back: a conflict, or deleting an unset variable
            found = await self._fetch(CURRENT_VERSION, **params)
            check_unwritten(write, found[0].version if found else 0)
            return None
        if targets:
            self._outbox_written()
        return write.written(row[0])

    async def publish_event(self, room_id: str, event: Event) -> Change:
        # A logged event is its append alone, one statement sent by itself, on asyncpg directly (as a
        # variable write): not BEGIN, the append and COMMIT through SQLAlchemy. A live-only event (no head
        # moved) and one too large to notify take the general path.
        change = Change(0, self.epoch, ChangeKind.EVENT, event.time, event=event)
        before, after = changelog.around_seq(room_id, change)
        if not self.history.events or len(before.encode()) + len(after) + 20 > MAX_PAYLOAD:
            return await super().publish_event(room_id, event)
        params = self._append_params(room_id, change, before, after)
        targets = self._targets(room_id, change)
        statement = pgstatements.APPEND
        if targets:
            statement = pgstatements.APPEND_AND_ENQUEUE
            params |= self._message_params(change, targets) | {"m_previous": None}
        seq = (await self._write_alone(room_id, statement, params)).scalar()
        if targets:
            self._outbox_written()
        return dataclasses.replace(change, seq=seq)

    async def _write_alone(self, room_id: str, statement: Any, params: dict[str, Any]) -> direct.DirectResult:
        """Run a write of ``room_id`` that is one statement, sent by itself (it commits by itself), as the
        room's one writer from this process (:mod:`.roomqueue`: queued before it takes a connection)."""
        release = await self._writers.enter(room_id)
        try:
            return await self._alone(statement, params)
        finally:
            release()

    def _compiled(self) -> Compiled:
        if self._statements is None:
            self._statements = Compiled(self.engine.dialect)
        return self._statements

    async def _before_head(self, tx: Transaction, room_id: str) -> None:
        tx.on_end.append(await self._writers.enter(room_id))  # :mod:`.roomqueue`

    # -- the webhook outbox: a claim and a settle are one statement each, sent by itself --------------------

    async def outbox_claim(
        self, endpoint: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        params = outbox_sql.claim_params(endpoint, now, lease_seconds, limit)
        return outbox_sql.claimed((await self._alone(pgstatements.CLAIM, params)).all(), now)

    async def outbox_settle(self, settled: Sequence[Settled]) -> list[EndpointState | None]:
        # One statement (:func:`.pgstatements.settle`) where the general path takes a transaction of a
        # locking read, an update a message and the endpoint's state: ~9% fewer of the worker's
        # instructions a delivery (bench/RESULTS.md, session 19), and one round trip a batch instead of
        # five (session 20). The endpoint's state is folded from every attempt of the batch, a late one's
        # too (its lease ran out and its message was claimed again: the general path leaves it out), which
        # did reach, or fail to reach, the endpoint.
        if not settled:
            return []
        endpoint = outbox_sql.batch_endpoint(settled)
        ordered = sorted(settled, key=lambda one: one.message.id)  # locked in id order (pgstatements.settle)
        params = [outbox_sql.settle_params(one) for one in ordered]
        succeeded, record = outbox_sql.outcomes_params(endpoint, settled)
        outcomes = {
            "u_endpoint": endpoint,
            "u_ids": [one["s_id"] for one in params],
            "u_attempts": [one.message.attempts for one in ordered],
            "u_statuses": [one["s_status"] for one in params],
            "u_dues": [one["s_due"] for one in params],
            "u_logs": [one["s_log"] for one in params],
        }
        rows = (await self._alone(pgstatements.settle(succeeded), outcomes | record)).all()
        if not rows:
            return [None] * len(settled)
        state = EndpointState(*rows[0][2:])
        live = outbox_sql.still_current(settled, ((row[0], row[1]) for row in rows))
        return outbox_sql.states(settled, live, state)

    async def _variable_before(self, tx: Transaction, write: VariableWrite) -> tuple[str | None, int] | None:
        params = {"p_room_id": write.room_id, "p_name": write.name, "p_now": write.now}
        row = (await tx.conn.execute(outbox_sql.LOCK_PREVIOUS, params)).one()
        return row.value, row.version

    @contextlib.asynccontextmanager
    async def _bookkeeping_tx(self) -> AsyncIterator[Transaction]:
        # The commit returns before its WAL record is flushed ("Asynchronous Commit" in PostgreSQL's
        # manual): a server crash may lose the last of them, never corrupts nor reorders them.
        # On asyncpg directly (.direct), as the variable writes: the delivery worker's CPU is taken from
        # the same cores as the gateway's.
        async with direct.transaction(self.engine, self._compiled()) as conn:
            await conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            yield Transaction(conn)  # type: ignore[arg-type]  # answers execute as an AsyncConnection

    # -- notifications out -----------------------------------------------------------------------------------

    async def _log(
        self, tx: Transaction, room_id: str, change: Change, previous: str | None = None
    ) -> Change:
        change = dataclasses.replace(change, epoch=self.epoch)
        before, after = changelog.around_seq(room_id, change)
        if len(before.encode()) + len(after) + 20 > MAX_PAYLOAD:  # 20 digits: any int64 seq
            return await super()._log(tx, room_id, change, previous)  # sent by reference (:meth:`_emit`)
        params = self._append_params(room_id, change, before, after)
        targets = self._targets(room_id, change)
        if not targets:
            seq = (await tx.conn.execute(pgstatements.APPEND, params)).scalar_one()
            return dataclasses.replace(change, seq=seq)
        messages = self._message_params(change, targets) | {"m_previous": previous}
        seq = (await tx.conn.execute(pgstatements.APPEND_AND_ENQUEUE, params | messages)).scalar_one()
        tx.after_commit.append(self._outbox_written)
        return dataclasses.replace(change, seq=seq)

    def _append_params(self, room_id: str, change: Change, before: str, after: str) -> dict[str, Any]:
        """The parameters of an append of ``change`` (:mod:`.pgstatements`) but its webhook messages'."""
        return {
            "room_id": room_id,
            "kind": change.kind.value,
            "time": change.time,
            "before": before,
            "after": after,
            "keep": self.history.max_changes,
            "cutoff": changelog.cutoff(change, self.history),
            "channel": self._room_channel(room_id),
        }

    def _targets(self, room_id: str, change: Change) -> tuple[str, ...]:
        """The endpoints that take ``change`` (often none)."""
        outbox = self.outbox
        return outbox.targets(room_id, change.kind) if outbox is not None else ()

    def _message_params(self, change: Change, targets: Sequence[str]) -> dict[str, Any]:
        """The parameters of ``change``'s webhook messages, one per endpoint of ``targets``, but
        ``previous``."""
        assert self.outbox is not None
        return {
            "m_endpoints": list(targets),
            "m_id": new_message_id(),
            "m_due": outbox_sql.due_time(change, self.outbox.first_delay),
        }

    def _outbox_written(self) -> None:
        if self.outbox is not None:
            self.outbox.written()

    async def _emit(self, tx: Transaction, message: wire.Message, text: str) -> None:
        everyone = isinstance(message.note, RoomSignal) and not message.room_id
        channel = self._signal_channel if everyone else self._room_channel(message.room_id)
        payload = text
        if len(text.encode()) > MAX_PAYLOAD:
            if random.random() < BODY_CLEANUP_RATE:
                await tx.conn.execute(
                    notification_bodies.delete().where(
                        notification_bodies.c.create_time < sa.func.now() - sa.text(BODY_TTL_SQL)
                    )
                )
            stored = notification_bodies.insert().values(body=payload).returning(notification_bodies.c.id)
            payload = BODY_REFERENCE + str((await tx.conn.execute(stored)).scalar_one())
        await tx.conn.execute(sa.select(sa.func.pg_notify(channel, payload)))

    # -- notifications in ------------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Deliver incoming payloads to the hub one by one, in arrival order (large bodies fetched first)."""
        while True:
            payload = await self._incoming.get()
            try:
                if payload.startswith(BODY_REFERENCE):
                    payload = await self._fetch_body(int(payload[len(BODY_REFERENCE) :]))
                wire.decode(payload).deliver(self.hub)
            except Exception:
                log.exception("dropped a PostgreSQL notification that could not be read: %.200s", payload)

    async def _fetch_body(self, body_id: int) -> str:
        query = sa.select(notification_bodies.c.body).where(notification_bodies.c.id == body_id)
        async with self.engine.connect() as conn:
            body: str = (await conn.execute(query)).scalar_one()
        return body


def _channel(namespace: str, *parts: str) -> str:
    key = "\0".join((namespace, *parts)).encode()
    return "rg_" + hashlib.blake2b(key, digest_size=16).hexdigest()
