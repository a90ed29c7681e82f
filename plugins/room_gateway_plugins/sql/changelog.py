"""The change log in SQL: the statements that append to it, trim it and read it, shared by both dialects.

A room's ``room_heads`` row holds its last seq. Appending a change increments it with an upsert (``… ON
CONFLICT DO UPDATE SET head = head + 1 RETURNING head``) inside the write's transaction: the row lock that
takes orders the room's writers — on every process sharing the database — so seqs are gap-free and commit
in seq order (which is also the order PostgreSQL delivers their NOTIFYs in). The head is kept apart from
the log so that trimming and deletion never make a seq come back.

Each row's payload is the change's :mod:`gateway.core.wire` message, the text PostgreSQL's NOTIFY sends:
encoded once per write. Retention is trimmed on append, in the same transaction: by count (seqs at or below
``head - max_changes``, down to :data:`TRIM_BAND` below it: a range of the primary key) and by age (older
than the new change's time minus ``max_age_seconds``, a range of ``changes_room_time``), so a read finds
exactly what is retained.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from gateway.core import wire
from gateway.core.backend import History, LogPage
from gateway.core.models import Change, ChangeKind
from room_gateway_plugins.sql.tables import changes, room_heads

# -- reads: each one statement, so one snapshot (and one trip through a SQLite reader) ---------------------

_FIRST_SEQ = (
    sa.select(sa.func.min(changes.c.seq))
    .where(changes.c.room_id == sa.bindparam("room_id"))
    .scalar_subquery()
)


def _page(kinds: bool) -> sa.Select[Any]:
    """The head, the first retained seq and up to ``limit`` changes after ``after_seq``: one row per change,
    or one row with ``payload`` NULL when none is there (no row at all: the room was never written)."""
    joined = (changes.c.room_id == room_heads.c.room_id) & (changes.c.seq > sa.bindparam("after_seq"))
    if kinds:
        joined &= changes.c.kind.in_(sa.bindparam("kinds", expanding=True))
    return (
        sa.select(room_heads.c.head, _FIRST_SEQ.label("first_seq"), changes.c.payload)
        .select_from(room_heads.outerjoin(changes, joined))
        .where(room_heads.c.room_id == sa.bindparam("room_id"))
        .order_by(changes.c.seq)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )


PAGE = _page(kinds=False)
PAGE_OF_KINDS = _page(kinds=True)


def page_params(
    room_id: str, after_seq: int, limit: int, kinds: frozenset[ChangeKind] | None
) -> tuple[sa.Select[Any], dict[str, Any]]:
    """The read of :meth:`~gateway.core.backend.Backend.read_changes` and its parameters."""
    params: dict[str, Any] = {"room_id": room_id, "after_seq": after_seq, "limit": max(limit, 1)}
    if kinds is None:
        return PAGE, params
    return PAGE_OF_KINDS, {**params, "kinds": sorted(kind.value for kind in kinds)}


def log_page(rows: Sequence[Any], epoch: str, limit: int) -> LogPage:
    """The :class:`LogPage` of :func:`page_params`' rows."""
    if not rows:
        return LogPage(changes=[], head_seq=0, epoch=epoch, first_seq=1)
    head = rows[0].head
    first = rows[0].first_seq
    found = [wire.decode(row.payload).note for row in rows if row.payload is not None][: max(limit, 0)]
    return LogPage(
        changes=[note for note in found if isinstance(note, Change)],
        head_seq=head,
        epoch=epoch,
        first_seq=head + 1 if first is None else first,
    )


# -- appends ------------------------------------------------------------------------------------------------


def cutoff(change: Change, history: History) -> datetime:
    """Changes of the room older than this are dropped when ``change`` is appended."""
    if change.time is None:
        raise ValueError("a logged change needs its time")
    return change.time - timedelta(seconds=history.max_age_seconds)


def row(room_id: str, change: Change, payload: str) -> dict[str, Any]:
    """The ``changes`` row of ``change``."""
    return {
        "room_id": room_id,
        "seq": change.seq,
        "kind": change.kind.value,
        "time": change.time,
        "payload": payload,
    }


_BEFORE_SEQ, _AFTER_SEQ = wire.tail_format(("seq",)).split("%d")


def around_seq(room_id: str, change: Change) -> tuple[str, str]:
    """The change's wire message before and after its seq, for an append that splices in the seq the store
    assigns (``change.seq`` is ignored)."""
    return wire.head(room_id, change, ("seq",)).decode() + _BEFORE_SEQ, _AFTER_SEQ


_BEFORE_VERSION, _BETWEEN_VERSION_AND_SEQ, _AFTER_VERSION_AND_SEQ = wire.tail_format(
    ("version", "seq")
).split("%d")


def around_version_and_seq(room_id: str, change: Change) -> tuple[str, str, str]:
    """A variable change's wire message before its version, between its version and its seq, and after its
    seq, for a write that splices in both as the store assigns them (``change.seq`` and the variable's
    version are ignored)."""
    head = wire.head(room_id, change, ("version", "seq")).decode()
    return head + _BEFORE_VERSION, _BETWEEN_VERSION_AND_SEQ, _AFTER_VERSION_AND_SEQ


#: How many seqs below the window a count trim looks at: ``head - max_changes - TRIM_BAND`` (exclusive) to
#: ``head - max_changes``. Every append trims, so what is older was dropped already; on PostgreSQL a range
#: from the room's first seq met every row dropped since the last vacuum (an index entry each, and a heap
#: tuple each for a bitmap scan: 7,000 of them and 1.5 ms after 8,000 writes of one room, bench/RESULTS.md,
#: session 20). Rows left beyond the window when ``max_changes`` is lowered are dropped when a backend
#: opens with it (:meth:`.postgresql.PostgresBackend.open`).
TRIM_BAND = 64


def trim(room_id: str, seq: int, change: Change, history: History) -> tuple[sa.Delete, sa.Delete]:
    """The statements that drop what retention no longer keeps once ``change`` (at ``seq``) is in: by count
    (within :data:`TRIM_BAND`), then by age. Two, not one with an ``OR``: each is a range of its own index
    whatever plan the server makes of it (:data:`.pgstatements._TRIM` says what one made)."""
    window = seq - history.max_changes
    by_count = changes.delete().where(
        changes.c.room_id == room_id, changes.c.seq <= window, changes.c.seq > window - TRIM_BAND
    )
    by_age = changes.delete().where(changes.c.room_id == room_id, changes.c.time < cutoff(change, history))
    return by_count, by_age
