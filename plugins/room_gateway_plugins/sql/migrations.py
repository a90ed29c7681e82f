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
lock. Three tables do not pay for that; if the schema ever grows branches, moving to Alembic is one
migration that stamps ``alembic_version`` from ``schema_version``.

A migration is frozen once released: it declares the tables as they were at its version (its own
``MetaData``), never the current ones of :mod:`.tables`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa

from room_gateway_plugins.sql.tables import CodePointText, UTCDateTime, schema_version


class Migration(NamedTuple):
    version: int
    summary: str
    apply: Callable[[sa.Connection], None]


class SchemaTooNew(RuntimeError):
    """The database was upgraded by a newer gateway: this one must not write to it."""


def _v1(conn: sa.Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "rooms",
        md,
        sa.Column("room_id", CodePointText, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("jurisdiction", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("create_time", UTCDateTime),
        sa.Column("update_time", UTCDateTime),
    )
    sa.Table(
        "variables",
        md,
        sa.Column("room_id", CodePointText, primary_key=True),
        sa.Column("name", CodePointText, primary_key=True),
        sa.Column("value", sa.Text),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("update_time", UTCDateTime),
    )
    if conn.dialect.name == "postgresql":
        sa.Table(
            "notification_bodies",
            md,
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("body", sa.Text, nullable=False),
            sa.Column(
                "create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
            ),
            sa.Index("notification_bodies_create_time", "create_time"),
        )
    md.create_all(conn)


#: Every migration, in order; ``MIGRATIONS[i].version == i + 1``.
MIGRATIONS: tuple[Migration, ...] = (Migration(1, "rooms, variables, notification bodies", _v1),)
LATEST = MIGRATIONS[-1].version


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
    for migration in MIGRATIONS[found:]:
        migration.apply(conn)
    if found != LATEST:
        conn.execute(schema_version.update().values(version=LATEST))
    return found
