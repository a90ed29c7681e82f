"""PostgreSQL's hand-written statements: the log's append, a variable write with its append in one
statement, and the webhook outbox's claims and settles, each one statement. The appends are built from the
same pieces of SQL, so that an append reads the same wherever it runs.

**A variable write is one statement** (:func:`variable_write`): the variable's write, the head's increment,
the log's row, the trim, the change's webhook messages and the ``pg_notify``, as data-modifying CTEs, the
write's version and the room's seq spliced into the logged message by the server (the wire format's
:func:`~gateway.core.wire.head`). Sent on its own, it commits on its own: one round trip a write, not a
``BEGIN``, the write, the append and a ``COMMIT`` (bench/RESULTS.md, session 20). It also holds the room's
head row lock only for the server's run of the statement and its commit: in a transaction of four trips
the lock was held over two, and over each wait of the gateway's event loop between them. When the write
changes no row (its guard held it back: a compare-and-set that does not match, a deletion of an unset
variable), ``v`` is empty, and so is everything that reads it: nothing is logged, nothing is notified.

All the CTEs share one snapshot, so the trim never sees (nor drops) the row being added.
"""

from __future__ import annotations

import functools

import sqlalchemy as sa

from room_gateway_plugins.sql import changelog
from room_gateway_plugins.sql import outbox as outbox_sql
from room_gateway_plugins.sql.columns import UTCDateTime

_TIMES = (sa.bindparam("time", type_=UTCDateTime()), sa.bindparam("cutoff", type_=UTCDateTime()))
_DUE = sa.bindparam("m_due", type_=UTCDateTime())
_NOW = sa.bindparam("w_now", type_=UTCDateTime())


def _head(after_write: bool) -> str:
    """The room's head + 1, taking its row lock (the room's writers' order); ``after_write``: only if the
    variable write ``v`` wrote."""
    source = "VALUES (CAST(:room_id AS text), 1)"
    if after_write:
        source = "SELECT CAST(:room_id AS text), 1 FROM v"
    return f"""h AS (
        INSERT INTO room_heads (room_id, head) {source}
        ON CONFLICT (room_id) DO UPDATE SET head = room_heads.head + 1
        RETURNING head
    )"""


def _logged(after_write: bool) -> str:
    """The log's row: the message around its seq, or around the version ``v`` assigned and its seq."""
    payload, sources = "CAST(:before AS text) || h.head || CAST(:after AS text)", "h"
    if after_write:
        payload = (
            "CAST(:before AS text) || v.version || CAST(:middle AS text) || h.head || CAST(:after AS text)"
        )
        sources = "h, v"
    return f"""c AS (
        INSERT INTO changes (room_id, seq, kind, time, payload)
        SELECT CAST(:room_id AS text), h.head, CAST(:kind AS text), CAST(:time AS timestamptz), {payload}
        FROM {sources}
        RETURNING seq, payload
    )"""


#: What retention drops once the new row is in (nothing when no row went in: ``h`` is empty): by count,
#: within :data:`.changelog.TRIM_BAND` below the window, and by age — two statements, each a range of its
#: own index whatever plan the server makes. One ``DELETE`` with their ``OR`` got, as the server's
#: generic plan (its own choice after five runs of a prepared statement, made when the table was still
#: empty), a scan of every index entry of the room's in ``changes_room_time``, dead rows included: the
#: server's CPU a write grew from ~0.5 to 1.7 and 2.6 ms (two runs) over 12,000 writes of one room
#: (bench/RESULTS.md, session 20). Should both drop a row, the second finds it dropped by the same
#: statement and skips it.
_TRIM = f"""t AS (
        DELETE FROM changes
        WHERE room_id = CAST(:room_id AS text) AND EXISTS (SELECT FROM h)
          AND seq <= (SELECT head FROM h) - CAST(:keep AS bigint)
          AND seq > (SELECT head FROM h) - CAST(:keep AS bigint) - {changelog.TRIM_BAND}
    ), t_age AS (
        DELETE FROM changes
        WHERE room_id = CAST(:room_id AS text) AND EXISTS (SELECT FROM h)
          AND time < CAST(:cutoff AS timestamptz)
    )"""

#: The count trim of every room at once, to ``:keep`` (:meth:`.postgresql.PostgresBackend.open`).
TRIM_ALL = sa.text(
    "DELETE FROM changes AS c USING room_heads AS h"
    " WHERE c.room_id = h.room_id AND c.seq <= h.head - CAST(:keep AS bigint)"
)


#: ``previous`` of a write's messages from ``v``: the value it replaced and that value's version, in
#: :func:`.outbox.previous_text`'s text (NULL, as ``||`` with NULL is, when the variable was unset).
_PREVIOUS_OF_V = """'{"value":' || v.previous_value || ',"version":' || (v.version - 1) || '}'"""


def _enqueue(after_write: bool) -> str:
    """The change's webhook messages, one row per endpoint of ``m_endpoints``: the payload is the logged
    row's; their ``previous`` is what ``v`` replaced, or else the caller's (``m_previous``)."""
    previous, sources = "CAST(:m_previous AS text)", "c"
    if after_write:
        previous, sources = _PREVIOUS_OF_V, "c, v"
    return f"""m AS (
        INSERT INTO webhook_messages
            (endpoint, id, room_id, payload, previous, status, attempts, due_time, created_time, log)
        SELECT e, CAST(:m_id AS text), CAST(:room_id AS text), c.payload, {previous},
               'pending', 0, CAST(:m_due AS timestamptz), CAST(:time AS timestamptz), '[]'
        FROM {sources}, unnest(CAST(:m_endpoints AS text[])) AS e
    )"""


_NOTIFY = "pg_notify(CAST(:channel AS text), c.payload)"

#: The log's append of a change (:meth:`.postgresql.PostgresBackend._log`): head + 1, the row, the trim,
#: the NOTIFY; the new seq.
APPEND = sa.text(f"WITH {_head(False)}, {_logged(False)}, {_TRIM} SELECT c.seq, {_NOTIFY} FROM c").bindparams(
    *_TIMES
)
#: The same with the change's webhook messages (``m_previous``: their ``previous``, computed by the caller).
APPEND_AND_ENQUEUE = sa.text(
    f"WITH {_head(False)}, {_logged(False)}, {_TRIM}, {_enqueue(False)} SELECT c.seq, {_NOTIFY} FROM c"
).bindparams(*_TIMES, _DUE)


def _variable(deletes: bool, expected: str, keep_previous: bool) -> str:
    """The variable's write, its new ``version`` returned with ``previous_value``: the value it replaced
    when ``keep_previous`` (NULL: unset before), else NULL, which it also clears in the row
    (:meth:`.base.SqlBackend._variable_write`'s statement, in SQL: the same rows written).

    :param expected: ``"any"`` (no compare-and-set), ``"unset"`` (``expected_version == 0``) or
        ``"version"`` (only at ``w_expected``).
    """
    previous = "variables.value" if keep_previous else "NULL"  # in SET, the row as it was
    if deletes or expected == "version":
        value = "NULL" if deletes else "CAST(:w_value AS text)"
        at_version = "AND version = CAST(:w_expected AS bigint)" if expected == "version" else ""
        return f"""v AS (
        UPDATE variables
        SET value = {value}, version = version + 1, update_time = CAST(:w_now AS timestamptz),
            previous_value = {previous}
        WHERE room_id = CAST(:room_id AS text) AND name = CAST(:w_name AS text) AND value IS NOT NULL
          {at_version}
        RETURNING version, previous_value
    )"""
    # An upsert whose update keeps counting from the row's last version (deletions included).
    only_unset = "WHERE variables.value IS NULL" if expected == "unset" else ""
    return f"""v AS (
        INSERT INTO variables (room_id, name, value, version, update_time)
        VALUES (CAST(:room_id AS text), CAST(:w_name AS text), CAST(:w_value AS text), 1,
                CAST(:w_now AS timestamptz))
        ON CONFLICT (room_id, name) DO UPDATE
        SET value = excluded.value, version = variables.version + 1, update_time = excluded.update_time,
            previous_value = {previous}
        {only_unset}
        RETURNING version, previous_value
    )"""


@functools.cache
def variable_write(deletes: bool, expected: str, enqueue: bool) -> sa.TextClause:
    """A variable write and its append in one statement (see the module); ``enqueue``: with the change's
    webhook messages, whose ``previous`` the write returns. Its row: the new ``version`` and ``seq``; none
    when the write's guard held it back.

    A watched deletion is not one of them: it would keep the deleted value in the row.
    """
    assert not (deletes and enqueue), "a deletion keeps no value"
    ctes = [_variable(deletes, expected, enqueue), _head(True), _logged(True), _TRIM]
    if enqueue:
        ctes.append(_enqueue(True))
    statement = sa.text(f"WITH {', '.join(ctes)} SELECT v.version, c.seq, {_NOTIFY} FROM v, c")
    return statement.bindparams(*_TIMES, _NOW, *((_DUE,) if enqueue else ()))


# -- the webhook outbox's bookkeeping: each one statement, sent by itself, committed without waiting for
# the disk -----------------------------------------------------------------------------------------------

#: Joined to a bookkeeping statement: ``set_config(…, true)`` lasts until its transaction ends, and sent by
#: itself the statement is its own transaction, so its commit does not wait for the WAL's flush
#: ("Asynchronous Commit" in PostgreSQL's manual; a server crash may lose the last of them, never
#: corrupts nor reorders them) — as ``SET LOCAL synchronous_commit = off`` did, without a ``BEGIN``, the
#: ``SET`` and a ``COMMIT`` around it: one round trip, not four (bench/RESULTS.md, session 20).
_ASYNC_COMMIT = sa.select(
    sa.literal_column("set_config('synchronous_commit', 'off', true)").label("set")
).cte("async_commit")
_ASYNC_COMMIT_SQL = "async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS set)"

#: A claim (:data:`.outbox.CLAIM`), committed asynchronously.
CLAIM = outbox_sql.CLAIM.where(_ASYNC_COMMIT.c.set.is_not(None))


def _record(succeeded: bool) -> str:
    """:func:`.outbox.record_outcomes` in SQL, only if the settle ``s`` wrote an attempt."""
    change = "failing_since = excluded.failing_since, last_success_time = excluded.last_success_time"
    if not succeeded:
        change = "failing_since = coalesce(webhook_endpoints.failing_since, excluded.failing_since)"
    return f"""r AS (
        INSERT INTO webhook_endpoints (name, enabled, disabled_reason, failing_since, last_success_time)
        SELECT CAST(:r_endpoint AS text), true, '', CAST(:r_failing_since AS timestamptz),
               CAST(:r_last_success AS timestamptz)
        WHERE EXISTS (SELECT FROM s)
        ON CONFLICT (name) DO UPDATE SET {change}
        RETURNING enabled, disabled_reason, failing_since, last_success_time
    )"""


@functools.cache
def settle(succeeded: bool) -> sa.TextClause:
    """A settle's outcomes and the endpoint's state after them, in one statement committed asynchronously
    (:meth:`.postgresql.PostgresBackend.outbox_settle`).

    Each attempt's row is written if the attempt is still its message's current one (pending, the same
    attempt number: the update locks the row, and a claim that took it meanwhile makes the condition
    false). The rows are found by their keys whatever the server knows of the table: ``m.id = ANY(ids)`` is
    a condition of the primary key's, and the pending test is written so that no index can take it
    (``IS TRUE``). Written plainly, a plan made without the table's statistics (a new store, before
    autovacuum's first ``ANALYZE``) took the endpoint's pending messages from ``webhook_messages_due`` and
    joined every one of them to the array: a settle of 8 took 16 to 21 ms beside 10,000 to 50,000 pending
    messages, against under 1 ms now, so a receiver back from an outage drained its backlog in quadratic
    time (bench/outbox_backlog.py; bench/RESULTS.md, session 21). Below a few thousand rows such a plan
    may still read the endpoint's entries of that index, which costs little there. The
    caller sorts the attempts by id, so a scan of the key locks the rows in id order and two settles of the
    same messages wait for each other. A plan that reads the rows in the heap's order instead may
    deadlock; that answers UNAVAILABLE, and the attempts are claimed again. Then the endpoint's state, as
    :func:`.outbox.record_outcomes` (``succeeded``: a batch with a success), if any was written. A row per
    attempt written, each with the state.
    """
    statement = f"""
    WITH {_ASYNC_COMMIT_SQL}, s AS (
        UPDATE webhook_messages AS m SET status = v.status, due_time = v.due, log = v.log
        FROM unnest(CAST(:u_ids AS text[]), CAST(:u_attempts AS integer[]), CAST(:u_statuses AS text[]),
                    CAST(:u_dues AS timestamptz[]), CAST(:u_logs AS text[]))
             AS v(id, attempts, status, due, log), async_commit
        WHERE m.endpoint = CAST(:u_endpoint AS text) AND m.id = v.id AND m.id = ANY(CAST(:u_ids AS text[]))
          AND m.attempts = v.attempts
          AND (m.status = 'pending') IS TRUE AND async_commit.set IS NOT NULL
        RETURNING m.id, m.attempts
    ), {_record(succeeded)}
    SELECT s.id, s.attempts, r.enabled, r.disabled_reason, r.failing_since, r.last_success_time FROM s, r
    """
    times = ("r_failing_since", "r_last_success")
    return sa.text(statement).bindparams(*(sa.bindparam(name, type_=UTCDateTime()) for name in times))
