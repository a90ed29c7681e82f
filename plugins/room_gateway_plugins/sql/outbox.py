"""The webhook outbox in SQL: the statements of :class:`~.base.SqlBackend`'s ``outbox_*`` methods.

A change's messages are inserted in the change's own transaction (one ``INSERT`` of a row per endpoint; on
PostgreSQL a CTE of the log's append statement), so they commit or vanish with it. A claim is one
``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``: on PostgreSQL, concurrent claimers
on other instances skip the rows one of them is taking instead of waiting for it, and each row's
``due_time`` moves past the lease in the same statement; SQLite has one writer (the gateway process that
owns the file), which runs its claims one at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def message_of(row: Any) -> OutboxMessage:
    # One mapping for the row's eleven reads: each attribute read of a SQLAlchemy Row first fails the plain
    # lookup (an AttributeError formatted and dropped), ten times the cost of a key (callgrind of a claim).
    m = row._mapping
    change = None
    payload = m["payload"]
    if payload is not None:
        note = wire.decode(payload).note
        change = note if isinstance(note, Change) else None
    previous = None
    before = m["previous"]
    if before is not None and change is not None and change.variable is not None:
        found = jsontext.loads(before)
        previous = Variable(change.variable.name, found["value"], found["version"])
    return OutboxMessage(
        id=m["id"],
        endpoint=m["endpoint"],
        room_id=m["room_id"],
        change=change,
        previous=previous,
        status=MessageStatus(m["status"]),
        attempts=m["attempts"],
        due_time=m["due_time"],
        created_time=m["created_time"],
        log=loads_log(m["log"]),
    )


def claim(endpoint: str, now: datetime, lease_end: datetime, limit: int) -> sa.Update:
    due = (
        sa.select(_M.c.id)
        .where(_M.c.endpoint == endpoint, _M.c.status == _PENDING, _M.c.due_time <= now)
        .order_by(_M.c.due_time)
        .limit(max(0, limit))
        .with_for_update(skip_locked=True)
    )
    return (
        _M.update()
        .where(_M.c.endpoint == endpoint, _M.c.id.in_(due.scalar_subquery()))
        .values(attempts=_M.c.attempts + 1, due_time=lease_end)
        .returning(*_M.c)
    )


def current(endpoint: str, ids: Sequence[str]) -> sa.Select[Any]:
    """The attempt numbers of the pending messages among ``ids``, their rows locked (PostgreSQL) until the
    settle's transaction ends."""
    return (
        sa.select(_M.c.id, _M.c.attempts)
        .where(_M.c.endpoint == endpoint, _M.c.id.in_(ids), _M.c.status == _PENDING)
        .with_for_update()
    )


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


def record_outcomes(insert: Any, endpoint: str, settled: Sequence[Settled]) -> Any:
    """The upsert of the endpoint's state after ``settled``'s attempts, in order, returning the state: a
    success sets ``last_success_time`` and clears ``failing_since``, a failure sets ``failing_since`` unless
    it is set."""
    last_success = None
    first_failure = None  # since the last success of the batch
    for one in settled:
        if one.attempt.succeeded:
            last_success, first_failure = one.attempt.time, None
        elif first_failure is None:
            first_failure = one.attempt.time
    ends = webhook_endpoints.c
    if last_success is not None:
        change: dict[str, Any] = {"failing_since": first_failure, "last_success_time": last_success}
    else:
        change = {"failing_since": sa.func.coalesce(ends.failing_since, first_failure)}
    return (
        insert.values(
            name=endpoint,
            enabled=True,
            disabled_reason="",
            failing_since=first_failure,
            last_success_time=last_success,
        )
        .on_conflict_do_update(index_elements=[ends.name], set_=change)
        .returning(*webhook_endpoints.c)
    )


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


def prune(endpoint: str, delivered_before: datetime, failed_before: datetime, limit: int) -> sa.Delete:
    """Delete up to ``limit`` settled messages created before their status' cutoff, oldest first (the
    ``webhook_messages_created`` index), never a pending one."""
    old = (
        sa.select(_M.c.id)
        .where(
            _M.c.endpoint == endpoint,
            _M.c.created_time < max(delivered_before, failed_before),
            ((_M.c.status == _DELIVERED) & (_M.c.created_time < delivered_before))
            | ((_M.c.status == _FAILED) & (_M.c.created_time < failed_before)),
        )
        .order_by(_M.c.created_time)
        .limit(max(0, limit))
    )
    return _M.delete().where(_M.c.endpoint == endpoint, _M.c.id.in_(old.scalar_subquery()))


def backlog(endpoint: str) -> sa.Select[Any]:
    return sa.select(sa.func.count()).where(_M.c.endpoint == endpoint, _M.c.status == _PENDING)


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


def state(endpoint: str) -> sa.Select[Any]:
    return sa.select(webhook_endpoints).where(webhook_endpoints.c.name == endpoint)
