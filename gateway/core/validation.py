"""Input rules of the domain: ids, names, settings. Each violation is an INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import InvalidArgument

MAX_ROOM_ID = 512
MAX_VARIABLE_NAME = 256
MAX_DISPLAY_NAME = 1024
MAX_DESCRIPTION = 8192
MAX_SETTINGS_BYTES = 16 * 1024
JURISDICTIONS = ("", "eu")

# C0, DEL and C1 control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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
    """1–512 characters, no control characters (a URL is a valid id)."""
    return _text(field, value, MAX_ROOM_ID)


def variable_name(value: object, field: str = "name") -> str:
    """1–256 characters, no ``/``, no control characters."""
    name = _text(field, value, MAX_VARIABLE_NAME)
    if "/" in name:
        raise InvalidArgument(f"{field} must not contain '/'")
    return name


def display_name(value: object) -> str:
    return _text("display_name", value, MAX_DISPLAY_NAME, required=False)


def description(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument("description must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")
    return value


def jurisdiction(value: object) -> str:
    if value not in JURISDICTIONS:
        raise InvalidArgument('jurisdiction must be "" or "eu"')
    return str(value)


def settings(value: object) -> dict[str, Any]:
    """A JSON object of at most 16 KiB (serialized)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("settings must be a JSON object")
    if len(orjson.dumps(value)) > MAX_SETTINGS_BYTES:
        raise InvalidArgument(f"settings are larger than {MAX_SETTINGS_BYTES} bytes")
    return value
