"""JSON text as stored and as sent in notifications: exact round trips, with orjson on the fast path.

Values are stored as JSON *text* rather than through a driver's JSON adapter or PostgreSQL ``jsonb``: text
keeps what was written (key order, ``1.0`` vs ``1``) identically on SQLite and PostgreSQL, and SQL ``NULL``
stays free to mean "unset" while the JSON ``null`` is the text ``null``.

orjson refuses integers outside 64 bits and reads them back as floats. Such values are written by the
standard library instead, behind one leading space (valid JSON whitespace) that tells :func:`loads` to read
them back with the standard library too, so they stay exact. Non-finite floats are not JSON (RFC 8259 §6):
orjson writes them as ``null``, as the proto3 JSON mapping of ``google.protobuf.Value`` cannot carry them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson

_SLOW_MARK = " "


def dumps(value: Any) -> str:
    """JSON text of ``value``."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits (anything else fails the same way below)
        return _SLOW_MARK + json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def loads(text: str) -> Any:
    """The value of JSON text written by :func:`dumps`."""
    if text.startswith(_SLOW_MARK):
        return json.loads(text)
    return orjson.loads(text)


def time_out(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def time_in(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None
