"""The column types of the sql backend's tables, shared by the migrations and the queries.

Ids compare in code-point order: PostgreSQL columns use ``COLLATE "C"`` (byte order of UTF-8, which is
code-point order); SQLite's default ``BINARY`` collation already compares UTF-8 bytes. Times are UTC
(:mod:`gateway.core.times`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from gateway.core import times

#: Text compared and ordered by code point on every dialect.
CodePointText = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime with microseconds (``timestamptz`` on PostgreSQL, ISO text on SQLite)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = times.utc(value)  # refuses a naive time
        # SQLite's DateTime type stores naive text; PostgreSQL's timestamptz takes the aware value.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return times.assume_utc(value) if isinstance(value, datetime) else None
