"""JSON text that reads back exactly as written, with orjson on the fast path.

What a backend stores or sends as JSON — a variable's value, a room's settings, a notification — must
come back as the same Python value: ``1`` an int and ``1.0`` a float, keys in their order, and integers of
any size, since the gateway accepts them. orjson does all of that but the last one: it refuses integers
outside 64 bits and reads them back as floats. Such values are written by the standard library instead,
behind one leading space (valid JSON whitespace) that tells :func:`loads` to read them back with the
standard library too, so they stay exact. Non-finite floats are not JSON (RFC 8259 §6): orjson writes
them as ``null``, as the proto3 JSON mapping of ``google.protobuf.Value`` cannot carry them either.

Text written here is UTF-8 and never starts with any other whitespace, so a reader can tell it apart
from other framing by its first character (``{``, ``[``, a value, or the space).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: The first character of text that only the standard library reads exactly.
SLOW_MARK = b" "


def dumps(value: Any) -> bytes:
    """UTF-8 JSON text of ``value``."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits (anything else fails the same way below)
        return SLOW_MARK + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def loads(text: bytes | str) -> Any:
    """The value of JSON text written by :func:`dumps` (as bytes or as the ``str`` they decode to)."""
    if text[:1] in (" ", SLOW_MARK):
        return json.loads(text)
    return orjson.loads(text)
