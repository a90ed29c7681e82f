"""A flat reply read from its wire bytes: proto3 JSON without a message object.

``MessageToDict`` walks a parsed message in Python; for a flat message (every field a singular scalar
without presence: :func:`gateway.upstream.rest._flat_fields`) the same dict is a short read of the bytes
(the protobuf encoding, https://protobuf.dev/programming-guides/encoding/): the fields found, by number,
those set to something else than their default first (by number, as ``MessageToDict`` lists them), then the
others at their defaults, in declaration order. Anything this reader does not take as the parser would —
an unknown field or wire type, a truncated or overlong value, a string that is not UTF-8, a bool other than
0 or 1 — answers ``None``, and the caller parses the message instead, so its results and errors stay the
parser's. Measured on ``bench.Msg`` (two strings), the read took ~1.6 µs against ~2.9 µs for parsing and
listing the fields.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# What a field's value is read as: its wire type and how the number found is taken.
_STRING, _BOOL, _INT32, _INT64, _UINT32, _UINT64, _SINT32, _SINT64 = range(8)
_FIXED32, _SFIXED32, _FIXED64, _SFIXED64 = range(8, 12)
_KINDS = {
    FieldDescriptor.TYPE_STRING: (_LEN, _STRING),
    FieldDescriptor.TYPE_BOOL: (_VARINT, _BOOL),
    FieldDescriptor.TYPE_INT32: (_VARINT, _INT32),
    FieldDescriptor.TYPE_INT64: (_VARINT, _INT64),
    FieldDescriptor.TYPE_UINT32: (_VARINT, _UINT32),
    FieldDescriptor.TYPE_UINT64: (_VARINT, _UINT64),
    FieldDescriptor.TYPE_SINT32: (_VARINT, _SINT32),
    FieldDescriptor.TYPE_SINT64: (_VARINT, _SINT64),
    FieldDescriptor.TYPE_FIXED32: (_I32, _FIXED32),
    FieldDescriptor.TYPE_SFIXED32: (_I32, _SFIXED32),
    FieldDescriptor.TYPE_FIXED64: (_I64, _FIXED64),
    FieldDescriptor.TYPE_SFIXED64: (_I64, _SFIXED64),
}
_WIDE = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})  # strings in proto3 JSON


class _NotTaken(Exception):
    """The bytes are left to the parser."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A varint at ``pos`` (its first byte known to have the high bit set) and the position after it."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:  # more than 10 bytes
            raise _NotTaken
    if value >> 64:
        raise _NotTaken
    return value, pos


class FlatReply:
    """Reads one flat message type's replies (module docstring).

    :param fields: the message type's fields, each a flat scalar.
    """

    __slots__ = ("_defaults", "_fields", "_order")

    def __init__(self, fields: list[FieldDescriptor]) -> None:
        # tag (number and wire type) → (number, kind)
        self._fields: dict[int, tuple[int, int]] = {}
        for field in fields:
            wire, kind = _KINDS[field.type]
            self._fields[field.number << 3 | wire] = (field.number, kind)
        self._order = [(f.number, f.json_name, f.cpp_type in _WIDE) for f in sorted(fields, key=_number)]
        self._defaults = [
            (f.json_name, str(f.default_value) if f.cpp_type in _WIDE else f.default_value) for f in fields
        ]

    def read(self, data: bytes) -> dict[str, Any] | None:
        """The reply as ``MessageToDict`` gives it; ``None``: leave it to the parser."""
        try:
            values = self._values(data)
        except (_NotTaken, IndexError, UnicodeDecodeError):
            return None
        found: dict[str, Any] = {}
        for number, name, wide in self._order:
            value = values.get(number)
            if value:  # a default value is not listed among the set fields (implicit presence)
                found[name] = str(value) if wide else value
        for name, default in self._defaults:
            if name not in found:
                found[name] = default
        return found

    def _values(self, data: bytes) -> dict[int, Any]:
        values: dict[int, Any] = {}
        fields = self._fields
        pos, end = 0, len(data)
        while pos < end:
            tag = data[pos]
            pos += 1
            if tag >= 0x80:
                tag, pos = _varint(data, pos - 1)
            entry = fields.get(tag)
            if entry is None:  # unknown, or another wire type than the field's
                raise _NotTaken
            number, kind = entry
            value: Any
            if kind == _STRING:
                length = data[pos]
                pos += 1
                if length >= 0x80:
                    length, pos = _varint(data, pos - 1)
                if pos + length > end:
                    raise _NotTaken
                value = data[pos : pos + length].decode("utf-8")
                pos += length
            elif kind < _FIXED32:
                value = data[pos]
                pos += 1
                if value >= 0x80:
                    value, pos = _varint(data, pos - 1)
                if kind == _BOOL:
                    if value > 1:
                        raise _NotTaken
                    value = value == 1
                elif kind == _INT32:
                    value &= 0xFFFFFFFF
                    if value >= 1 << 31:
                        value -= 1 << 32
                elif kind == _INT64:
                    if value >= 1 << 63:
                        value -= 1 << 64
                elif kind == _UINT32:
                    value &= 0xFFFFFFFF
                elif kind == _SINT32:
                    value &= 0xFFFFFFFF
                    value = (value >> 1) ^ -(value & 1)
                elif kind == _SINT64:
                    value = (value >> 1) ^ -(value & 1)
            else:
                size = 4 if kind < _FIXED64 else 8
                if pos + size > end:
                    raise _NotTaken
                signed = kind in (_SFIXED32, _SFIXED64)
                value = int.from_bytes(data[pos : pos + size], "little", signed=signed)
                pos += size
            values[number] = value  # a field given twice: the last wins, as the parser's
        return values


def _number(field: FieldDescriptor) -> int:
    return field.number
