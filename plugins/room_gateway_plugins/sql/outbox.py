"""The webhook outbox in SQL: the statements of :class:`~.base.SqlBackend`'s ``outbox_*`` methods.

A change's messages are inserted in the change's own transaction (one ``INSERT`` of a row per endpoint; on
PostgreSQL a CTE of the log's append statement), so they commit or vanish with it. A claim is one
``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``: on PostgreSQL, concurrent claimers
on other instances skip the rows one of them is taking instead of waiting for it, and each row's
``due_time`` moves past the lease in the same statement. On SQLite a claim's, a settle's and a pruning's
statements run as one function on the writer connection's thread, in one ``BEGIN IMMEDIATE`` … ``COMMIT``
(:mod:`.writer`): the write lock keeps every other process (the gateway, another worker) out of the file
from the first statement to the commit, so two claimers never take the same attempt and a settle's stale
check holds until its update. PostgreSQL settles a batch in one ``UPDATE … FROM unnest(…)`` of its own
(:meth:`~.postgresql.PostgresBackend.outbox_settle`), its stale check in the update's condition.

The statements are built once, their values bound parameters, so that SQLite's backend compiles each once
(:class:`~.readers.CompiledStatement`) and PostgreSQL's runs them through SQLAlchemy with the same
parameters; the Python around them (which attempts are still current, the endpoint's state after a batch)
is here once for both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from gateway.core import jsontext, wire
from gateway.core.models import Change, Variable
from gateway.core.outbox import (
    EndpointState,
    MessageStatus,
    OutboxMessage,
    Settled,
    dumps_log,
    loads_log,
)
from room_gateway_plugins.sql.tables import variables, webhook_endpoints, webhook_messages

_M = webhook_messages
_PENDING = MessageStatus.PENDING.value
_DELIVERED = MessageStatus.DELIVERED.value
_FAILED = MessageStatus.FAILED.value
_TIME = _M.c.created_time.type


def rows(
    targets: Sequence[str],
    message_id: str,
    room_id: str,
    change: Change,
    payload: str,
    previous: str | None,
    first_delay: timedelta,
) -> list[dict[str, Any]]:
    """The rows of a change's messages, one per endpoint in ``targets``."""
    time = change.time
    due = due_time(change, first_delay)
    return [
        {
            "endpoint": endpoint,
            "id": message_id,
            "room_id": room_id,
            "payload": payload,
            "previous": previous,
            "status": _PENDING,
            "attempts": 0,
            "due_time": due,
            "created_time": time,
            "log": "[]",
        }
        for endpoint in targets
    ]


#: One message row, its values bound as ``m_<column>`` (:func:`rows`' keys so prefixed): for a store that
#: runs it itself (SQLite's raw connection).
INSERT = _M.insert().values({c.name: sa.bindparam("m_" + c.name, type_=c.type) for c in _M.c})


def due_time(change: Change, first_delay: timedelta) -> datetime:
    """When a change's messages are first due."""
    if change.time is None:
        raise ValueError("a logged change needs its time")
    return change.time + first_delay


def row_of(message: OutboxMessage) -> dict[str, Any]:
    """The row of a message made outside a change (``webhook.test``, a replayed copy)."""
    previous = None
    if message.previous is not None:
        previous = previous_text(jsontext.dumps(message.previous.value).decode(), message.previous.version)
    return {
        "endpoint": message.endpoint,
        "id": message.id,
        "room_id": message.room_id,
        "payload": wire.encode(wire.Message(message.room_id, message.change)).decode()
        if message.change is not None
        else None,
        "previous": previous,
        "status": message.status.value,
        "attempts": message.attempts,
        "due_time": message.due_time,
        "created_time": message.created_time,
        "log": dumps_log(message.log),
    }


#: A variable's row before a write (the ``previous`` of its messages), on a one-writer store.
PREVIOUS = sa.select(variables.c.value, variables.c.version).where(
    variables.c.room_id == sa.bindparam("p_room_id"), variables.c.name == sa.bindparam("p_name")
)

#: The variable's row before a write on PostgreSQL, locked until the write commits — created (unset,
#: version 0, which reads as never set) when there is none, so that there is always a row to lock. A
#: plain ``SELECT … FOR UPDATE`` locks nothing when the row does not exist yet: two first writes of a
#: variable then both read "no value before", and the second one's message lacked the first one's value
#: as ``previous``. ``ON CONFLICT DO UPDATE`` waits for a concurrent insert of the row to commit and then
#: returns the row as committed (not as the statement's snapshot saw it, PostgreSQL's "INSERT … ON
#: CONFLICT" under READ COMMITTED), so the second write reads the first one's value.
LOCK_PREVIOUS = (
    postgresql.insert(variables)
    .values(
        room_id=sa.bindparam("p_room_id"),
        name=sa.bindparam("p_name"),
        value=None,
        version=0,
        update_time=sa.bindparam("p_now", type_=variables.c.update_time.type),
    )
    .on_conflict_do_update(
        index_elements=[variables.c.room_id, variables.c.name], set_={"version": variables.c.version}
    )
    .returning(variables.c.value, variables.c.version)
)


def previous_text(value_text: str, version: int) -> str:
    """A variable's value before a write, as the ``previous`` column keeps it (its JSON text as stored)."""
    return f'{{"value":{value_text},"version":{version}}}'


def previous_of(row: Sequence[Any] | None) -> str | None:
    """The ``previous`` of a write's messages from the variable's row (value, version) before it: ``None``
    when there was none or it was unset."""
    if row is None or row[0] is None:
        return None
    return previous_text(row[0], row[1])


def message_of(row: Sequence[Any]) -> OutboxMessage:
    """The message of a row of ``webhook_messages``, its columns in the table's order (SQLAlchemy's rows and
    :class:`~.readers.CompiledRead`'s alike): unpacked, not read by name, which cost ten times as much on
    SQLAlchemy's rows (callgrind of a claim)."""
    endpoint, message_id, room_id, payload, before, status, attempts, due, created, log = row
    change = None
    if payload is not None:
        note = wire.decode(payload).note
        change = note if isinstance(note, Change) else None
    previous = None
    if before is not None and change is not None and change.variable is not None:
        found = jsontext.loads(before)
        previous = Variable(change.variable.name, found["value"], found["version"])
    return OutboxMessage(
        id=message_id,
        endpoint=endpoint,
        room_id=room_id,
        change=change,
        previous=previous,
        status=MessageStatus(status),
        attempts=attempts,
        due_time=due,
        created_time=created,
        log=loads_log(log),
    )


def _claim() -> sa.Update:
    due = (
        sa.select(_M.c.id)
        .where(
            _M.c.endpoint == sa.bindparam("c_endpoint"),
            _M.c.status == _PENDING,
            _M.c.due_time <= sa.bindparam("c_now", type_=_M.c.due_time.type),
        )
        .order_by(_M.c.due_time)
        .limit(sa.bindparam("c_limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )
    return (
        _M.update()
        .where(_M.c.endpoint == sa.bindparam("c_endpoint"), _M.c.id.in_(due.scalar_subquery()))
        .values(attempts=_M.c.attempts + 1, due_time=sa.bindparam("c_lease_end", type_=_M.c.due_time.type))
        .returning(*_M.c)
    )


#: A claim of up to ``c_limit`` due messages of ``c_endpoint``: each one's attempt counted and its
#: ``due_time`` moved to ``c_lease_end``, the rows returned (:func:`claim_params`, :func:`claimed`).
CLAIM = _claim()


def claim_params(endpoint: str, now: datetime, lease_seconds: float, limit: int) -> dict[str, Any]:
    return {
        "c_endpoint": endpoint,
        "c_now": now,
        "c_lease_end": now + timedelta(seconds=lease_seconds),
        "c_limit": max(0, limit),
    }


def claimed(rows: Iterable[Sequence[Any]], now: datetime) -> list[OutboxMessage]:
    """The messages of a claim's rows, oldest due first."""
    return sorted((message_of(row) for row in rows), key=lambda m: m.due_time or now)


#: The attempt numbers of the pending messages among ``q_ids`` (expanding) of ``q_endpoint``, their rows
#: locked until the settle's transaction ends where the store locks rows (SQLite holds the file's write
#: lock instead; PostgreSQL settles without it).
CURRENT = (
    sa.select(_M.c.id, _M.c.attempts)
    .where(
        _M.c.endpoint == sa.bindparam("q_endpoint"),
        _M.c.id.in_(sa.bindparam("q_ids", expanding=True)),
        _M.c.status == _PENDING,
    )
    .with_for_update()
)


def batch_endpoint(settled: Sequence[Settled]) -> str:
    """The one endpoint of a batch of settled attempts (not empty)."""
    endpoint = settled[0].message.endpoint
    if any(one.message.endpoint != endpoint for one in settled):
        raise ValueError("a batch of settled attempts is of one endpoint")
    return endpoint


def current_params(endpoint: str, settled: Sequence[Settled]) -> dict[str, Any]:
    return {"q_endpoint": endpoint, "q_ids": [one.message.id for one in settled]}


def still_current(settled: Sequence[Settled], found: Iterable[tuple[str, int]]) -> list[Settled]:
    """The attempts of ``settled`` that are still their message's current one, given :data:`CURRENT`'s
    rows (id, attempts): a late settle of an attempt claimed again since (its lease ran out) is dropped."""
    attempts = {message_id: number for message_id, number in found}  # not dict(): a Result has keys()
    return [one for one in settled if attempts.get(one.message.id) == one.message.attempts]


#: A settled attempt's outcome, run once per batch with :func:`settle_params` of each (executemany).
SETTLE = (
    _M.update()
    .where(_M.c.endpoint == sa.bindparam("s_endpoint"), _M.c.id == sa.bindparam("s_id"))
    .values(
        status=sa.bindparam("s_status"),
        due_time=sa.bindparam("s_due", type_=_M.c.due_time.type),
        log=sa.bindparam("s_log"),
    )
)


def settle_params(settled: Settled) -> dict[str, Any]:
    message = settled.message
    return {
        "s_endpoint": message.endpoint,
        "s_id": message.id,
        "s_status": settled.status.value,
        "s_due": settled.due_time,
        "s_log": dumps_log([*message.log, settled.attempt]),
    }


def record_outcomes(insert: Any, succeeded: bool) -> Any:
    """The upsert of an endpoint's state after a batch's attempts, returning the state, with
    :func:`outcomes_params`: when one ``succeeded``, it sets ``last_success_time`` and ``failing_since``
    (the first failure after the batch's last success, or none); else it sets ``failing_since`` unless it is
    set. One statement per shape, made once by the backend (its dialect's ``insert``)."""
    ends = webhook_endpoints.c
    first_failure = sa.bindparam("r_failing_since", type_=ends.failing_since.type)
    last_success = sa.bindparam("r_last_success", type_=ends.last_success_time.type)
    if succeeded:
        change: dict[str, Any] = {"failing_since": first_failure, "last_success_time": last_success}
    else:
        change = {"failing_since": sa.func.coalesce(ends.failing_since, first_failure)}
    return (
        insert.values(
            name=sa.bindparam("r_endpoint"),
            enabled=True,
            disabled_reason="",
            failing_since=first_failure,
            last_success_time=last_success,
        )
        .on_conflict_do_update(index_elements=[ends.name], set_=change)
        .returning(*webhook_endpoints.c)
    )


def outcomes_params(endpoint: str, settled: Sequence[Settled]) -> tuple[bool, dict[str, Any]]:
    """Whether :func:`record_outcomes` is of a batch with a success, and its parameters, from ``settled``'s
    attempts folded in order: a success clears the failures before it."""
    last_success = None
    first_failure = None  # since the last success of the batch
    for one in settled:
        if one.attempt.succeeded:
            last_success, first_failure = one.attempt.time, None
        elif first_failure is None:
            first_failure = one.attempt.time
    params = {"r_endpoint": endpoint, "r_failing_since": first_failure, "r_last_success": last_success}
    return last_success is not None, params


def states(
    settled: Sequence[Settled], live: Sequence[Settled], state: EndpointState | None
) -> list[EndpointState | None]:
    """A settle's answer: the endpoint's state for each attempt recorded, ``None`` for each dropped."""
    kept = {id(one) for one in live}
    return [state if id(one) in kept else None for one in settled]


def listing(endpoint: str, status: MessageStatus | None, limit: int) -> sa.Select[Any]:
    query = sa.select(_M).where(_M.c.endpoint == endpoint)
    if status is not None:
        query = query.where(_M.c.status == status.value)
    return query.order_by(_M.c.created_time.desc(), _M.c.id.desc()).limit(max(0, limit))


def retry(endpoint: str, message_id: str, now: datetime) -> sa.Update:
    return (
        _M.update()
        .where(_M.c.endpoint == endpoint, _M.c.id == message_id)
        .values(status=_PENDING, due_time=now)
        .returning(_M.c.id)
    )


def since(endpoint: str, time: datetime) -> sa.Select[Any]:
    return sa.select(_M).where(_M.c.endpoint == endpoint, _M.c.created_time >= time)


def _prune() -> sa.Delete:
    old = (
        sa.select(_M.c.id)
        .where(
            _M.c.endpoint == sa.bindparam("p_endpoint"),
            _M.c.created_time < sa.bindparam("p_before", type_=_TIME),
            ((_M.c.status == _DELIVERED) & (_M.c.created_time < sa.bindparam("p_delivered", type_=_TIME)))
            | ((_M.c.status == _FAILED) & (_M.c.created_time < sa.bindparam("p_failed", type_=_TIME))),
        )
        .order_by(_M.c.created_time)
        .limit(sa.bindparam("p_limit", type_=sa.Integer))
    )
    return _M.delete().where(_M.c.endpoint == sa.bindparam("p_endpoint"), _M.c.id.in_(old.scalar_subquery()))


#: Delete up to ``p_limit`` settled messages created before their status' cutoff, oldest first (the
#: ``webhook_messages_created`` index), never a pending one (:func:`prune_params`).
PRUNE = _prune()


def prune_params(
    endpoint: str, delivered_before: datetime, failed_before: datetime, limit: int
) -> dict[str, Any]:
    return {
        "p_endpoint": endpoint,
        "p_before": max(delivered_before, failed_before),
        "p_delivered": delivered_before,
        "p_failed": failed_before,
        "p_limit": max(0, limit),
    }


#: The pending messages of ``b_endpoint``, counted.
BACKLOG = sa.select(sa.func.count().label("pending")).where(
    _M.c.endpoint == sa.bindparam("b_endpoint"), _M.c.status == _PENDING
)


def state_of(row: Any) -> EndpointState:
    if row is None:
        return EndpointState()
    return EndpointState(row.enabled, row.disabled_reason, row.failing_since, row.last_success_time)


def state_values(state: EndpointState) -> dict[str, Any]:
    return {
        "enabled": state.enabled,
        "disabled_reason": state.disabled_reason,
        "failing_since": state.failing_since,
        "last_success_time": state.last_success_time,
    }


#: The state of endpoint ``e_name`` (no row: never settled nor saved, :func:`state_of`).
STATE = sa.select(webhook_endpoints).where(webhook_endpoints.c.name == sa.bindparam("e_name"))
