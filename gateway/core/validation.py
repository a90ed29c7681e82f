"""Input rules of the domain: ids, names, texts, settings and JSON values. Each violation is an
INVALID_ARGUMENT naming the field, on every transport (the REST edge and gRPC reach the same checks).

JSON values (a variable's value, an event's data, a room's settings) are bounded in serialized size and in
nesting depth, and must be representable as JSON: a ``google.protobuf.Value`` arriving over gRPC can carry
NaN or ±Infinity, which JSON cannot (the proto3 JSON mapping has no spelling for them inside a ``Value``).
Texts stored as such (``display_name``, ``description``) refuse NUL and other control characters, which
PostgreSQL's ``text`` rejects (a 500 otherwise); a description keeps tab, line feed and carriage return.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidArgument

MAX_ROOM_ID = 512
MAX_VARIABLE_NAME = 256
MAX_DISPLAY_NAME = 1024
MAX_DESCRIPTION = 8192
MAX_SETTINGS_BYTES = 16 * 1024
JURISDICTIONS = ("", "eu")
#: Defaults of ``input.max_value_bytes`` and ``input.max_json_depth`` (gateway.yaml).
DEFAULT_MAX_VALUE_BYTES = 64 * 1024
DEFAULT_MAX_JSON_DEPTH = 32

#: C0, DEL and C1 control characters, as the body of a regular expression's character class (the OpenAPI
#: document states the same rules as patterns).
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
#: The same, but tab, line feed and carriage return (multi-line text).
CONTROL_CHARACTERS_BUT_WHITESPACE = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
_CONTROL_BUT_WHITESPACE = re.compile(f"[{CONTROL_CHARACTERS_BUT_WHITESPACE}]")


@dataclass(frozen=True, slots=True)
class ValueLimits:
    """Bounds on a JSON value: its serialized size (bytes of compact UTF-8 JSON) and its nesting depth.

    :param max_bytes: ``input.max_value_bytes``.
    :param max_depth: ``input.max_json_depth``; a scalar has depth 0, ``[1]`` depth 1.
    """

    max_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_depth: int = DEFAULT_MAX_JSON_DEPTH

    def check(self, value: object, field: str = "value") -> Any:
        """``value`` itself, once it is known to be a bounded, finite JSON value.

        The size needs the serialized text anyway, and that text usually proves the rest at once (every
        write pays this check; the walk alone was 8k instructions of a small value's 12k):

        - it was made at all: orjson refuses a non-string key, a type it does not know, a subclass of
          ``str``/``int``/``dict``/``list``, a ``datetime`` or a dataclass (the options below), and
          integers beyond 64 bits;
        - it holds no ``null``: orjson writes NaN and ±Infinity as ``null``, so a text without one has
          only finite numbers;
        - it holds at most ``max_depth`` brackets: a value cannot nest deeper than its containers.

        Otherwise (a ``null``, many brackets — also inside strings —, or no text) the value is walked,
        which gives the precise error. The one difference from walking every value: orjson also writes a
        tuple, a UUID and an enum, which no decoder of the gateway produces (JSON and
        ``google.protobuf.Value`` decode to dicts, lists, strings, numbers, booleans and ``None``); an
        embedding application handing those to the service directly gets them stored as orjson writes
        them.

        :raises InvalidArgument: too deep, too large, a non-finite number, or not JSON at all.
        """
        try:
            text: bytes | None = orjson.dumps(value, option=_STRICT)
        except TypeError:  # orjson.JSONEncodeError: not a value it writes, or nested beyond its own limit
            text = None
        if text is None or b"null" in text or text.count(b"[") + text.count(b"{") > self.max_depth:
            _check_json(value, field, self.max_depth)
            if text is None:  # the walk found it JSON: an integer beyond 64 bits (never decoded from JSON)
                raise InvalidArgument(f"{field} holds an integer JSON numbers cannot carry exactly")
        if len(text) > self.max_bytes:
            raise InvalidArgument(f"{field} is larger than {self.max_bytes} bytes (as JSON)")
        return value


DEFAULT_VALUE_LIMITS = ValueLimits()
#: orjson refuses what the walk refuses among the types it would otherwise write.
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def _text(field: str, value: object, max_len: int, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string")
    if required and not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is longer than {max_len} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field} must not contain control characters")
    return value


def room_id(value: object, field: str = "room_id") -> str:
    """1 to 512 characters, no control characters (a URL is a valid id)."""
    return _text(field, value, MAX_ROOM_ID)


def variable_name(value: object, field: str = "name") -> str:
    """1 to 256 characters, no ``/``, no control characters."""
    name = _text(field, value, MAX_VARIABLE_NAME)
    if "/" in name:
        raise InvalidArgument(f"{field} must not contain '/'")
    return name


def display_name(value: object) -> str:
    return _text("display_name", value, MAX_DISPLAY_NAME, required=False)


def description(value: object) -> str:
    """At most 8192 characters; tab, line feed and carriage return are the only control characters."""
    if not isinstance(value, str):
        raise InvalidArgument("description must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")
    if _CONTROL_BUT_WHITESPACE.search(value):
        raise InvalidArgument("description must not contain control characters other than tab and newline")
    return value


def jurisdiction(value: object) -> str:
    if value not in JURISDICTIONS:
        raise InvalidArgument('jurisdiction must be "" or "eu"')
    return str(value)


def settings(value: object) -> dict[str, Any]:
    """A JSON object of at most 16 KiB (serialized), nested at most 32 deep, with finite numbers."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("settings must be a JSON object")
    _check_json(value, "settings", DEFAULT_MAX_JSON_DEPTH)
    if len(orjson.dumps(value)) > MAX_SETTINGS_BYTES:
        raise InvalidArgument(f"settings are larger than {MAX_SETTINGS_BYTES} bytes")
    return value


def json_value(value: object, field: str = "value", limits: ValueLimits = DEFAULT_VALUE_LIMITS) -> Any:
    """A variable's value or an event's data: see :class:`ValueLimits`."""
    return limits.check(value, field)


#: The types of JSON's scalars but numbers, which a value's walk passes by (floats are checked for NaN).
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})


def _check_json(value: object, field: str, max_depth: int) -> None:
    """Walk ``value`` one nesting level at a time, without recursion (a hostile value must not exhaust the
    stack): every variable write walks its value, and a level's items in one list cost half the
    instructions of an (item, depth) pair for each."""
    level = [value]
    depth = 0
    while level:
        inner: list[object] = []
        for item in level:
            kind = type(item)
            if kind in _PLAIN_SCALARS:
                continue
            if kind is dict or kind is list:
                if depth >= max_depth:
                    raise InvalidArgument(f"{field} is nested deeper than {max_depth} levels")
                if kind is list:
                    inner.extend(item)  # type: ignore[arg-type]  # type(item) is list
                    continue
                for key in item:  # type: ignore[attr-defined]  # type(item) is dict
                    if type(key) is not str:
                        raise InvalidArgument(f"{field} has a non-string object key")
                inner.extend(item.values())  # type: ignore[attr-defined]  # type(item) is dict
            elif kind is float:
                if not math.isfinite(item):  # type: ignore[arg-type]  # type(item) is float
                    raise InvalidArgument(f"{field} holds a number JSON cannot carry (NaN or Infinity)")
            else:
                raise InvalidArgument(f"{field} is not a JSON value")
        level = inner
        depth += 1
