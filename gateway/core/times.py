"""Timestamps as backends keep them: aware datetimes in UTC, or ISO-8601 text in UTC with microseconds.

Every backend, built-in or not, uses these, so a time reads back the same from any store and from any
notification: :func:`utc` on the way in (the service's clock is UTC; a naive datetime is refused rather
than guessed), :func:`to_text` / :func:`from_text` where a store or a message keeps text, and
:func:`assume_utc` for a store that keeps UTC without its zone (SQLAlchemy's SQLite ``DateTime``).

Text is ``2026-01-02T03:04:05.000000+00:00``: fixed width, so that it also sorts in time order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC.

    :raises ValueError: ``moment`` is naive: its zone is unknown, and a guess would shift it silently.
    """
    if moment.tzinfo is UTC:  # what the service's clock gives: no conversion on the hot path
        return moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: the gateway keeps UTC times only")
    return moment.astimezone(UTC)


def assume_utc(moment: datetime) -> datetime:
    """A time read back from a store, in UTC: a naive one is taken as UTC (the store dropped the zone)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@overload
def to_text(moment: datetime) -> str: ...
@overload
def to_text(moment: None) -> None: ...
def to_text(moment: datetime | None) -> str | None:
    """ISO-8601 text of ``moment`` in UTC with microseconds (``None`` stays ``None``)."""
    return None if moment is None else utc(moment).isoformat(timespec="microseconds")


@overload
def from_text(text: str) -> datetime: ...
@overload
def from_text(text: None) -> None: ...
def from_text(text: str | None) -> datetime | None:
    """The UTC time of ISO-8601 text (as :func:`to_text` writes it; ``None`` stays ``None``)."""
    return None if text is None else assume_utc(datetime.fromisoformat(text))
