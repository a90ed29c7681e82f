"""Field paths: a tuple of proto field names walking nested messages (``("room", "room_id")``), and their
proto3 JSON spelling (``room.roomId``).

HttpRule path variables, query parameters and FieldMask paths all name fields this way
(``google/api/http.proto``, ``google/protobuf/field_mask.proto``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_UPPER = re.compile(r"[A-Z]")
_SNAKE = re.compile(r"_([a-z0-9])")


def field_at(message: Descriptor, field_path: Sequence[str]) -> FieldDescriptor:
    """The field ``field_path`` names in ``message``.

    :raises LookupError: the path is empty, a name along it is not a field, or a field before the last is
        not a message; the error says which.
    """
    fields = _walk(message, field_path)
    if not fields:
        raise LookupError("empty field path")
    return fields[-1]


def json_path(message: Descriptor, field_path: Sequence[str]) -> str:
    """``("room", "room_id")`` → ``"room.roomId"``: the path in lowerCamel ``json_name`` spelling.

    :raises LookupError: as :func:`field_at`.
    """
    return ".".join(field.json_name for field in _walk(message, field_path))


def _walk(message: Descriptor, field_path: Sequence[str]) -> list[FieldDescriptor]:
    """The fields along ``field_path``, one a name."""
    fields: list[FieldDescriptor] = []
    for i, name in enumerate(field_path):
        if fields:
            inner = fields[-1].message_type
            if inner is None:
                raise LookupError(f"{'.'.join(field_path[:i])} is not a message")
            message = inner
        field = message.fields_by_name.get(name)
        if field is None:
            raise LookupError(f"{message.full_name} has no field {name!r}")
        fields.append(field)
    return fields


def snake_case(path: str) -> str:
    """``displayName`` → ``display_name`` (FieldMask paths in proto3 JSON)."""
    return _UPPER.sub(lambda m: "_" + m.group().lower(), path)


def camel_case(path: str) -> str:
    """``display_name`` → ``displayName``."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), path)
