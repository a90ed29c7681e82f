"""Versioned schema migrations: a ``schema_version`` table and an ordered list of migration functions.

:func:`upgrade` runs at every :meth:`open`, in one transaction: it reads the version, applies each newer
migration in order and records the new version, so opening an up-to-date database changes nothing and a
failed upgrade leaves the old schema whole (PostgreSQL and SQLite both have transactional DDL). On
PostgreSQL a transaction-scoped advisory lock serializes gateway processes that start together.

Why not Alembic: its strengths — autogenerate, a CLI, branching histories — serve an application whose
operators run migrations by hand. Here the schema belongs to a plugin and must upgrade itself at start-up
from inside the running event loop, on whichever database the URL names (schema chosen at run time), with
concurrent starters serialized. With Alembic that means a programmatic ``Config``, an ``env.py`` and a script
directory shipped in the wheel, its synchronous API run through ``run_sync`` — and still our own advisory
lock. A handful of tables do not pay for that; if the schema ever grows branches, moving to Alembic is one
migration that stamps ``alembic_version`` from ``schema_version``.

A migration is frozen once released. It *declares* what its version changes (tables, columns, indexes)
on a ``MetaData`` holding the schema of the version before, and *applies* that change to a database at the
version before. The current tables are the declarations of every migration in turn (:func:`metadata`): what
:mod:`.tables` gives the queries, so nothing is declared twice, and nothing a migration made is missing
from what the queries see.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa

from room_gateway_plugins.sql.columns import CodePointText, UTCDateTime


class Migration(NamedTuple):
    version: int
    summary: str
    #: Adds this version's changes to a ``MetaData`` at the version before.
    declare: Callable[[sa.MetaData], None]
    #: Changes a database at the version before, given the ``MetaData`` after :attr:`declare`.
    apply: Callable[[sa.Connection, sa.MetaData], None]


class SchemaTooNew(RuntimeError):
    """The database was upgraded by a newer gateway: this one must not write to it."""


def _declare_v1(md: sa.MetaData) -> None:
    sa.Table(
        "rooms",
        md,
        sa.Column("room_id", CodePointText, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("jurisdiction", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),  # JSON text (gateway.core.jsontext)
        sa.Column("create_time", UTCDateTime),
        sa.Column("update_time", UTCDateTime),
    )
    sa.Table(
        "variables",
        md,
        sa.Column("room_id", CodePointText, primary_key=True),
        sa.Column("name", CodePointText, primary_key=True),
        sa.Column("value", sa.Text),  # JSON text; NULL: unset (deleted)
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("update_time", UTCDateTime),
    )
    sa.Table(
        "notification_bodies",
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Index("notification_bodies_create_time", "create_time"),
    )


def _apply_v1(conn: sa.Connection, md: sa.MetaData) -> None:
    created = [md.tables["rooms"], md.tables["variables"]]
    if conn.dialect.name == "postgresql":  # only its notifications need bodies
        created.append(md.tables["notification_bodies"])
    md.create_all(conn, tables=created)


def _declare_v2(md: sa.MetaData) -> None:
    # The change log (issue 11). ``head`` is each room's last seq, kept apart from the log so that it
    # survives trimming and room deletion: seq never goes back, so it stays gap-free. Every write locks its
    # room's head row (an upsert that increments it), which orders a room's writers across processes.
    sa.Table(
        "room_heads",
        md,
        sa.Column("room_id", CodePointText, primary_key=True),
        sa.Column("head", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "changes",
        md,
        sa.Column("room_id", CodePointText, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("time", UTCDateTime, nullable=False),
        # The change's gateway.core.wire message: what PostgreSQL's NOTIFY sends too, made once.
        sa.Column("payload", sa.Text, nullable=False),
        sa.Index("changes_room_time", "room_id", "time"),  # trimming by age probes it
    )
    # Store-wide values: the log's epoch, made once with the tables, kept for as long as they are.
    sa.Table(
        "log_meta",
        md,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # Presence: connections per (room, user, instance), and when each instance last said it was alive.
    sa.Table(
        "presence",
        md,
        sa.Column("room_id", CodePointText, primary_key=True),
        sa.Column("user_id", CodePointText, primary_key=True),
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("connections", sa.Integer, nullable=False),
        sa.Column("info", sa.Text, nullable=False),  # JSON object text
        sa.Column("join_time", UTCDateTime, nullable=False),
        sa.Index("presence_instance", "instance"),
    )
    sa.Table(
        "presence_instances",
        md,
        sa.Column("instance", sa.Text, primary_key=True),
        sa.Column("last_seen", UTCDateTime, nullable=False),
    )


def _apply_v2(conn: sa.Connection, md: sa.MetaData) -> None:
    names = ("room_heads", "changes", "log_meta", "presence", "presence_instances")
    md.create_all(conn, tables=[md.tables[name] for name in names])
    rooms, variables, heads = md.tables["rooms"], md.tables["variables"], md.tables["room_heads"]
    # Rooms written before the log start at seq 0 (their first logged change is seq 1): a snapshot reads
    # the variables together with the head row, so every room with variables needs one.
    written = sa.union(sa.select(rooms.c.room_id), sa.select(variables.c.room_id)).subquery()
    conn.execute(heads.insert().from_select(["room_id", "head"], sa.select(written.c.room_id, sa.literal(0))))
    conn.execute(md.tables["log_meta"].insert().values(name="epoch", value=uuid.uuid4().hex[:16]))
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(_SQLITE_APPENDED)


# SQLite's append is one INSERT (room_gateway_plugins.sql.sqlite): this trigger moves the head to the new
# row's seq and trims retention, as the backend last set it in log_meta (a SQLite file has one owner).
# Times are SQLAlchemy's text, "YYYY-MM-DD HH:MM:SS.ffffff"; the cutoff has milliseconds, so a change within
# the same millisecond as it stays (retention keeps at least what it must).
_SQLITE_APPENDED = """
CREATE TRIGGER changes_appended AFTER INSERT ON changes BEGIN
    INSERT OR IGNORE INTO room_heads (room_id, head) VALUES (NEW.room_id, NEW.seq);
    UPDATE room_heads SET head = NEW.seq WHERE room_id = NEW.room_id;
    DELETE FROM changes
    WHERE room_id = NEW.room_id AND (
        seq <= NEW.seq - (SELECT CAST(value AS INTEGER) FROM log_meta WHERE name = 'max_changes')
        OR time < strftime(
            '%Y-%m-%d %H:%M:%f',
            NEW.time,
            (SELECT '-' || value || ' seconds' FROM log_meta WHERE name = 'max_age_seconds')
        )
    );
END
"""


def _declare_v3(md: sa.MetaData) -> None:
    # The webhook outbox (issue 14): a message per (endpoint, change), written in the change's transaction.
    sa.Table(
        "webhook_messages",
        md,
        sa.Column("endpoint", sa.Text, primary_key=True),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("room_id", CodePointText, nullable=False),
        sa.Column("payload", sa.Text),  # the change's wire message; NULL: a webhook.test
        sa.Column("previous", sa.Text),  # {"value", "version"} JSON of the variable before, if it had one
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("due_time", UTCDateTime),
        sa.Column("created_time", UTCDateTime, nullable=False),
        sa.Column("log", sa.Text, nullable=False),  # the settled attempts, JSON (gateway.core.outbox)
        sa.Index("webhook_messages_due", "endpoint", "status", "due_time"),  # claims
        sa.Index("webhook_messages_created", "endpoint", "created_time"),  # listing, replay
    )
    sa.Table(
        "webhook_endpoints",
        md,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.Text, nullable=False),
        sa.Column("failing_since", UTCDateTime),
        sa.Column("last_success_time", UTCDateTime),
    )


def _apply_v3(conn: sa.Connection, md: sa.MetaData) -> None:
    md.create_all(conn, tables=[md.tables["webhook_messages"], md.tables["webhook_endpoints"]])


def _declare_v4(md: sa.MetaData) -> None:
    # The value a webhook-watched write replaced (issue 14): SQLite's RETURNING sees only the row after the
    # write, so a write that sets ``previous_value = value`` returns what it overwrote without a read before
    # it (one statement less on the writer's thread: bench/RESULTS.md, session 18). NULL after every other
    # write, deletions included, so that a value is kept no longer than the write after it. PostgreSQL's
    # one-statement write (.pgstatements) keeps it the same way; its watched deletions return the old row
    # from the write itself (``UPDATE … FROM``) and leave it NULL.
    md.tables["variables"].append_column(sa.Column("previous_value", sa.Text))


def _apply_v4(conn: sa.Connection, md: sa.MetaData) -> None:
    # Nullable, no default: on both databases a change to the catalog only, whatever the table holds.
    conn.exec_driver_sql("ALTER TABLE variables ADD COLUMN previous_value TEXT")


#: Every migration, in order; ``MIGRATIONS[i].version == i + 1``.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "rooms, variables, notification bodies", _declare_v1, _apply_v1),
    Migration(2, "change log, room heads, epoch, presence", _declare_v2, _apply_v2),
    Migration(3, "webhook outbox and endpoint states", _declare_v3, _apply_v3),
    Migration(4, "the value a webhook-watched write replaced", _declare_v4, _apply_v4),
)
LATEST = MIGRATIONS[-1].version


def _bookkeeping(md: sa.MetaData) -> sa.Table:
    """The ``schema_version`` table (one row: the version the database is at), in ``md``."""
    return sa.Table("schema_version", md, sa.Column("version", sa.Integer, nullable=False))


def metadata(version: int = LATEST) -> sa.MetaData:
    """The tables as the migrations up to ``version`` leave them, ``schema_version`` included."""
    md = sa.MetaData()
    _bookkeeping(md)
    for migration in MIGRATIONS[:version]:
        migration.declare(md)
    return md


def _lock_key(schema: str) -> int:
    digest = hashlib.blake2b(f"room_gateway migrations {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def upgrade(conn: sa.Connection, schema: str | None = None) -> int:
    """Bring the schema to :data:`LATEST` inside the caller's transaction; return the version found.

    :param schema: PostgreSQL schema to create first (the connections' ``search_path`` names it).
    :raises SchemaTooNew: the database is at a version this code does not know.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(schema or ""))))
        if schema:
            conn.execute(
                sa.text(f"CREATE SCHEMA IF NOT EXISTS {conn.dialect.identifier_preparer.quote(schema)}")
            )
    md = sa.MetaData()
    schema_version = _bookkeeping(md)
    schema_version.create(conn, checkfirst=True)
    found = conn.execute(sa.select(schema_version.c.version)).scalar()
    if found is None:
        conn.execute(schema_version.insert().values(version=0))
        found = 0
    if found > LATEST:
        raise SchemaTooNew(
            f"the database schema is at version {found}, newer than this room-gateway knows ({LATEST}): "
            "upgrade room-gateway"
        )
    for migration in MIGRATIONS[:found]:
        migration.declare(md)
    for migration in MIGRATIONS[found:]:
        migration.declare(md)
        migration.apply(conn, md)
    if found != LATEST:
        conn.execute(schema_version.update().values(version=LATEST))
    return found
