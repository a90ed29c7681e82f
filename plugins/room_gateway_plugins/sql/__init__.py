"""The sql backend plugin: SQLite (embedded default) and PostgreSQL (shared by many gateway processes).

Both run on SQLAlchemy 2's asyncio engine — aiosqlite and asyncpg — share their queries (:mod:`.base`),
their tables (:mod:`.tables`) and their versioned migrations (:mod:`.migrations`). Registered through the
same hook and entry point (``room_gateway`` group, name ``sql``) that a third-party backend uses.
"""

from __future__ import annotations

from gateway.core.backend import Backend
from gateway.hookspecs import hookimpl
from room_gateway_plugins.sql.postgresql import PostgresBackend
from room_gateway_plugins.sql.sqlite import SQLiteBackend

__all__ = ["PostgresBackend", "SQLiteBackend"]


@hookimpl
def gateway_backend_classes() -> list[type[Backend]]:
    return [SQLiteBackend, PostgresBackend]
