"""The tables as the queries see them (the schema itself is made by :mod:`.migrations`, never from here).

Ids compare in code-point order: PostgreSQL columns use ``COLLATE "C"`` (byte order of UTF-8, which is
code-point order); SQLite's default ``BINARY`` collation already compares UTF-8 bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

#: Text compared and ordered by code point on every dialect.
CodePointText = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime with microseconds (``timestamptz`` on PostgreSQL, ISO text on SQLite)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the gateway stores UTC times only")
        value = value.astimezone(UTC)
        # SQLite's DateTime type stores naive text; PostgreSQL's timestamptz takes the aware value.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData()

rooms = sa.Table(
    "rooms",
    metadata,
    sa.Column("room_id", CodePointText, primary_key=True),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("jurisdiction", sa.Text, nullable=False),
    sa.Column("settings", sa.Text, nullable=False),  # JSON text (codec)
    sa.Column("create_time", UTCDateTime),
    sa.Column("update_time", UTCDateTime),
)

variables = sa.Table(
    "variables",
    metadata,
    sa.Column("room_id", CodePointText, primary_key=True),
    sa.Column("name", CodePointText, primary_key=True),
    sa.Column("value", sa.Text),  # JSON text; NULL: unset (deleted), the row stays so versions never repeat
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("update_time", UTCDateTime),
)

#: PostgreSQL only: notification bodies too big for a NOTIFY payload, read by id by the receivers.
notification_bodies = sa.Table(
    "notification_bodies",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)
