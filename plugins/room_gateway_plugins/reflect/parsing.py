"""Strict request parsing, as Reflect's REST overview requires: "Unless included in the command
specification, query strings and request bodies must be empty / unset."

A query parameter a command does not name, a parameter given twice that is not repeatable, a body sent to
a command that takes none, or a body field the command does not know: each is a 400 about the request.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson

from gateway.core import validation
from gateway.errors import InvalidArgument
from room_gateway_plugins.reflect.errors import bad_request

#: The jurisdictions Reflect accepts when creating a room (``""`` is the default, no restriction).
JURISDICTIONS = ("", "eu")


def parse_query(
    raw: bytes, allowed: Collection[str], repeatable: Collection[str] = ()
) -> dict[str, list[str]]:
    """The query string as ``name → values``, refusing what the command does not specify.

    Decoded as ``URLSearchParams`` does (``+`` is a space, percent-escapes are UTF-8), as Reflect does.

    :raises ReflectError: 400 for an unexpected or repeated parameter, or an undecodable query.
    """
    if not raw:
        return {}
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise bad_request("the query string is not valid UTF-8 URL encoding") from None
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            raise bad_request(f"unexpected query parameter {name!r} (this command takes: {expected})")
        if name in params and name not in repeatable:
            raise bad_request(f"query parameter {name!r} is given more than once")
        params.setdefault(name, []).append(value)
    return params


def room_id(params: Mapping[str, Sequence[str]], name: str = "roomID") -> str:
    """The required ``roomID`` parameter, checked as a room id (1 to 512 characters, no control characters).

    :raises ReflectError: 400 when missing or invalid.
    """
    values = params.get(name)
    if not values:
        raise bad_request(f"query parameter {name!r} is required")
    return checked_room_id(values[0], name)


def checked_room_id(value: str, name: str = "roomID") -> str:
    try:
        return validation.room_id(value, name)
    except InvalidArgument as exc:
        raise bad_request(exc.message) from None


def max_results(params: Mapping[str, Sequence[str]]) -> int | None:
    """``maxResults`` as a number, ``None`` when absent.

    :raises ReflectError: 400 unless it is a non-negative decimal integer.
    """
    values = params.get("maxResults")
    if not values:
        return None
    value = values[0]
    if not (value.isascii() and value.isdigit()):
        raise bad_request(f"maxResults must be a non-negative integer, got {value!r}")
    return int(value)


def no_body(body: bytes) -> None:
    """:raises ReflectError: 400 when the command takes no body and one was sent."""
    if body:
        raise bad_request("this command takes no request body")


def json_object(body: bytes, fields: Collection[str], what: str) -> dict[str, Any]:
    """The required JSON object body, with no field but ``fields``.

    The ``Content-Type`` is not checked: Reflect's own example sends the body with ``curl -d``, which labels
    it ``application/x-www-form-urlencoded``.

    :raises ReflectError: 400 when the body is missing, not a JSON object, or has an unknown field.
    """
    if not body.strip():
        raise bad_request(f"a JSON body is required: {what}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request(f"the request body is not valid JSON: {what}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the request body must be a JSON object: {what}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise bad_request(f"unexpected field(s) {unknown} in the request body: {what}")
    return value


def jurisdiction(body: Mapping[str, Any]) -> str:
    value = body.get("jurisdiction", "")
    if value not in JURISDICTIONS:
        raise bad_request(f'jurisdiction must be "eu" (or "" for none), got {orjson.dumps(value).decode()}')
    return str(value)
