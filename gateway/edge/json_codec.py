"""Proto3 JSON ↔ the domain, compiled once per message type from the descriptors.

Decoding turns a parsed JSON object into the keyword arguments a :class:`~gateway.core.service.RoomService`
method takes (proto field names; nested messages as dicts; ``Value``/``Struct`` as plain JSON; ``Timestamp``
as an aware :class:`~datetime.datetime`; ``FieldMask`` as a list of snake_case paths). Encoding turns the
domain dataclasses of :mod:`gateway.core.models`, which mirror the messages field by field, into proto3 JSON.
Both follow the proto3 JSON mapping (https://protobuf.dev/programming-guides/json/): lowerCamel
``json_name`` on output, either name accepted on input, 64-bit integers as strings, enums by name,
``null`` meaning "not set" except inside a ``Value``.

Decoding is strict: an unknown field, a value of the wrong type, a non-finite number or an out-of-range
integer is an :class:`~gateway.errors.InvalidArgument` naming the field. Encoding emits every field without
presence (``""``, ``0``, ``false``, ``[]``), as grpc-gateway does by default, and leaves out unset fields
with presence (messages, ``optional`` scalars, a ``Value`` that is :data:`~gateway.core.models.UNSET`).

This is the REST hot path: per field it costs one dict lookup and one small function call, with no
reflection at request time (betterproto2's ``to_dict`` costs ~110 µs a message; see NOTES.md).
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.core.models import UNSET
from gateway.errors import InvalidArgument

Decoder = Callable[[Any, str], Any]
Encoder = Callable[[Any], Any]

#: Returned by an encoder for a field that is left out of the JSON object.
OMIT: Any = object()

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
#: The wrapper types, whose JSON form is their value.
WRAPPERS = frozenset(
    {
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
#: Message types whose JSON form is not an object of their fields (the well-known types).
SPECIAL_MESSAGES = frozenset(
    {
        "google.protobuf.Value",
        "google.protobuf.Struct",
        "google.protobuf.ListValue",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.Empty",
        *WRAPPERS,
    }
)

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_DURATION = re.compile(r"(-)?(\d+)(?:\.(\d{1,9}))?s")
_MASK_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_UPPER = re.compile(r"[A-Z]")
_SNAKE = re.compile(r"_([a-z0-9])")


def snake_case(path: str) -> str:
    """``displayName`` → ``display_name`` (FieldMask paths, proto3 JSON)."""
    return _UPPER.sub(lambda m: "_" + m.group().lower(), path)


def camel_case(path: str) -> str:
    """``display_name`` → ``displayName``."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), path)


def is_wkt(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a message with a special JSON form (a well-known type)."""
    return field.message_type is not None and field.message_type.full_name in SPECIAL_MESSAGES


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a field the caller knows is a message (or map) field."""
    if field.message_type is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return field.message_type


def enum_of(field: FieldDescriptor) -> EnumDescriptor:
    """The enum type of a field the caller knows is an enum field."""
    if field.enum_type is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return field.enum_type


# -- scalar decoders ----------------------------------------------------------------------------------------


def _string(value: Any, where: str) -> str:
    if type(value) is str:
        return value
    raise InvalidArgument(f"{where} must be a string")


def _bool(value: Any, where: str) -> bool:
    if type(value) is bool:
        return value
    raise InvalidArgument(f"{where} must be true or false")


def _int_decoder(low: int, high: int) -> Decoder:
    def decode(value: Any, where: str) -> int:
        kind = type(value)
        if kind is int:
            number: int = value
        elif kind is str and _INTEGER.fullmatch(value):
            number = int(value)
        elif kind is float and value.is_integer():
            number = int(value)
        else:
            raise InvalidArgument(f"{where} must be an integer")
        if not low <= number <= high:
            raise InvalidArgument(f"{where} is out of range")
        return number

    return decode


def _float(value: Any, where: str) -> float:
    kind = type(value)
    if kind is int or kind is float:
        number = float(value)
    elif kind is str:
        try:
            number = float(value)
        except ValueError:
            raise InvalidArgument(f"{where} must be a number") from None
    else:
        raise InvalidArgument(f"{where} must be a number")
    if not math.isfinite(number):
        raise InvalidArgument(f"{where} must be a finite number")
    return number


def _bytes(value: Any, where: str) -> bytes:
    if type(value) is str:
        try:
            padded = value + "=" * (-len(value) % 4)
            return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            pass
    raise InvalidArgument(f"{where} must be base64")


def _enum_decoder(field: FieldDescriptor) -> Decoder:
    values = enum_of(field).values
    by_name = {v.name: v.name for v in values}
    by_number = {v.number: v.name for v in values}

    def decode(value: Any, where: str) -> str:
        kind = type(value)
        name = by_name.get(value) if kind is str else by_number.get(value) if kind is int else None
        if name is None:
            raise InvalidArgument(f"{where} must be one of {sorted(by_name)}")
        return name

    return decode


# -- well-known types -------------------------------------------------------------------------------------


def _value(value: Any, where: str) -> Any:
    return value  # any JSON value: the parser produced it, there is nothing else it could be


def _struct(value: Any, where: str) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise InvalidArgument(f"{where} must be a JSON object")


def _list_value(value: Any, where: str) -> list[Any]:
    if type(value) is list:
        return value
    raise InvalidArgument(f"{where} must be a JSON array")


def _empty(value: Any, where: str) -> dict[str, Any]:
    if value == {}:
        return {}
    raise InvalidArgument(f"{where} must be an empty object")


def parse_timestamp(value: Any, where: str) -> datetime:
    """RFC 3339 (``2026-01-02T03:04:05.123Z``, any offset) → an aware UTC datetime (nanos truncated)."""
    match = _RFC3339.fullmatch(value) if type(value) is str else None
    if match is None:
        raise InvalidArgument(f"{where} must be an RFC 3339 timestamp such as 2026-01-02T03:04:05Z")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        tz = UTC
        if not zulu:  # an offset of 24 hours or more is a ValueError too
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            tz = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((fraction or "0").ljust(6, "0")[:6]), tzinfo=tz,
        )  # fmt: skip
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{where} is not a valid time") from None


def format_timestamp(moment: datetime) -> str:
    """An aware (or UTC-naive) datetime → RFC 3339 in UTC with ``Z``, 0, 3 or 6 fractional digits
    (the forms ``google.protobuf.json_format`` writes). ``datetime.isoformat`` does the formatting in C:
    every JSON answer that holds a variable or a room carries a time."""
    if moment.tzinfo is None:
        text = moment.isoformat()
    else:
        if moment.utcoffset():
            moment = moment.astimezone(UTC)
        text = moment.isoformat()[:-6]  # without "+00:00"
    micros = moment.microsecond
    if micros and micros % 1000 == 0:
        text = text[:-3]  # milliseconds: 3 digits, not 6
    return text + "Z"


def _duration(value: Any, where: str) -> timedelta:
    match = _DURATION.fullmatch(value) if type(value) is str else None
    if match is None:
        raise InvalidArgument(f"{where} must be a duration such as 1.5s")
    sign, seconds, fraction = match.groups()
    delta = timedelta(seconds=int(seconds), microseconds=int((fraction or "0").ljust(6, "0")[:6]))
    return -delta if sign else delta


def _format_duration(delta: timedelta) -> str:
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    seconds, rest = divmod(micros, 1_000_000)
    return f"{sign}{seconds}s" if rest == 0 else f"{sign}{seconds}.{rest:06d}".rstrip("0") + "s"


def parse_field_mask(value: Any, where: str) -> list[str]:
    """``"displayName,settings"`` → ``["display_name", "settings"]`` (snake_case paths are kept)."""
    if type(value) is not str:
        raise InvalidArgument(f"{where} must be a comma-separated string of field paths")
    paths = []
    for path in value.split(",") if value else ():
        path = path.strip()
        if not _MASK_PATH.fullmatch(path):
            raise InvalidArgument(f"{where} has an invalid path {path!r}")
        paths.append(snake_case(path))
    return paths


def _wrapper_decoder(message: Descriptor) -> Decoder:
    return _field_value_decoder(message.fields_by_name["value"], None)


_WKT_DECODERS: dict[str, Decoder] = {
    "google.protobuf.Value": _value,
    "google.protobuf.Struct": _struct,
    "google.protobuf.ListValue": _list_value,
    "google.protobuf.Timestamp": parse_timestamp,
    "google.protobuf.Duration": _duration,
    "google.protobuf.FieldMask": parse_field_mask,
    "google.protobuf.Empty": _empty,
}


def _scalar_decoder(field: FieldDescriptor) -> Decoder:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string
    if kind == FieldDescriptor.TYPE_BOOL:
        return _bool
    if kind in _INT_RANGES:
        return _int_decoder(*_INT_RANGES[kind])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _float
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum_decoder(field)
    raise NotImplementedError(f"{field.full_name}: field type {kind} is not supported")


def _field_value_decoder(field: FieldDescriptor, codecs: Codecs | None) -> Decoder:
    """The decoder of one (non-repeated) value of ``field``."""
    message = field.message_type
    if message is None:
        return _scalar_decoder(field)
    if message.full_name in _WKT_DECODERS:
        return _WKT_DECODERS[message.full_name]
    if message.full_name in WRAPPERS:
        return _wrapper_decoder(message)
    if codecs is None or message.full_name.startswith("google.protobuf."):
        raise NotImplementedError(f"{field.full_name}: {message.full_name} is not supported")
    codec = codecs.get(message)
    return lambda value, where: codec.decode(value, where)


# -- encoders ---------------------------------------------------------------------------------------------


def _same(value: Any) -> Any:
    return value


def _omit_none(encode: Encoder) -> Encoder:
    return lambda value: OMIT if value is None else encode(value)


def _enum_encoder(field: FieldDescriptor) -> Encoder:
    by_number = {v.number: v.name for v in enum_of(field).values}

    def encode(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.name
        return by_number.get(value, value)  # an unknown number stays a number (proto3 JSON)

    return encode


def _scalar_encoder(field: FieldDescriptor) -> Encoder:
    if field.type in _INT64:
        return str  # proto3 JSON: 64-bit integers are strings
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_encoder(field)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return lambda value: base64.b64encode(value).decode("ascii")
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _float_json
    return _same


def _float_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")  # proto3 JSON spellings


_WKT_ENCODERS: dict[str, Encoder] = {
    "google.protobuf.Value": _same,
    "google.protobuf.Struct": _same,
    "google.protobuf.ListValue": _same,
    "google.protobuf.Timestamp": format_timestamp,
    "google.protobuf.Duration": _format_duration,
    "google.protobuf.FieldMask": lambda paths: ",".join(camel_case(p) for p in paths),
    "google.protobuf.Empty": lambda value: {},
}


def _field_value_encoder(field: FieldDescriptor, codecs: Codecs) -> Encoder:
    message = field.message_type
    if message is None:
        return _scalar_encoder(field)
    if message.full_name in _WKT_ENCODERS:
        return _WKT_ENCODERS[message.full_name]
    if message.full_name in WRAPPERS:
        return _scalar_encoder(message.fields_by_name["value"])
    codec = codecs.get(message)
    return lambda value: codec.encode(value)


# -- messages ---------------------------------------------------------------------------------------------


class MessageCodec:
    """The JSON decoder and encoder of one message type (build through :class:`Codecs`)."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        #: JSON name and proto name → proto name.
        self.names: dict[str, str] = {}
        #: proto name → field descriptor.
        self.fields: dict[str, FieldDescriptor] = {}
        self._decoders: dict[str, tuple[str, Decoder, bool]] = {}
        self._encoders: list[tuple[str, str, Encoder]] = []
        # Real oneofs only; proto3 `optional` fields sit in a synthetic oneof of one field named "_<field>".
        self._oneofs: dict[str, str] = {}

    def _compile(self, codecs: Codecs) -> None:
        for field in self.descriptor.fields:
            name = field.name
            self.fields[name] = field
            self.names[name] = name
            self.names[field.json_name] = name
            decode, encode = self._field_codec(field, codecs)
            # `null` means "not set" (proto3 JSON), except for a Value, where it is the JSON null.
            null_is_value = field.message_type is not None and (
                field.message_type.full_name == "google.protobuf.Value" and not field.is_repeated
            )
            self._decoders[name] = (field.json_name, decode, null_is_value)
            self._decoders[field.json_name] = (field.json_name, decode, null_is_value)
            self._encoders.append((field.json_name, name, encode))
            oneof = field.containing_oneof
            if oneof is not None and not (len(oneof.fields) == 1 and oneof.name == "_" + name):
                self._oneofs[name] = oneof.name

    @staticmethod
    def _field_codec(field: FieldDescriptor, codecs: Codecs) -> tuple[Decoder, Encoder]:
        if is_map(field):
            entry = message_of(field)
            decode_key = _field_value_decoder(entry.fields_by_name["key"], codecs)
            decode_val = _field_value_decoder(entry.fields_by_name["value"], codecs)
            encode_val = _field_value_encoder(entry.fields_by_name["value"], codecs)
            key_is_string = entry.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING

            def decode_map(value: Any, where: str) -> dict[Any, Any]:
                if type(value) is not dict:
                    raise InvalidArgument(f"{where} must be a JSON object")
                return {
                    (key if key_is_string else decode_key(key, f"{where} key")): decode_val(
                        v, f"{where}.{key}"
                    )
                    for key, v in value.items()
                }

            return decode_map, lambda value: {str(k): encode_val(v) for k, v in (value or {}).items()}
        decode_one = _field_value_decoder(field, codecs)
        encode_one = _field_value_encoder(field, codecs)
        if field.is_repeated:

            def decode_list(value: Any, where: str) -> list[Any]:
                if type(value) is not list:
                    raise InvalidArgument(f"{where} must be a JSON array")
                return [decode_one(item, f"{where}[{i}]") for i, item in enumerate(value)]

            return decode_list, lambda value: [encode_one(item) for item in value or ()]
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Value":
            return decode_one, lambda value: OMIT if value is UNSET else value
        if field.has_presence:  # messages and `optional` scalars
            return decode_one, _omit_none(encode_one)
        return decode_one, encode_one

    def decode(self, value: Any, where: str = "") -> dict[str, Any]:
        """A JSON object → ``{proto_name: value}`` holding only the fields present (``null``: absent).

        :param where: the JSON path of ``value`` in the request, for error messages (``""`` at the top).
        :raises InvalidArgument: not an object, an unknown field, a wrong type; the message names the field.
        """
        if type(value) is not dict:
            raise InvalidArgument(f"{where or 'the request body'} must be a JSON object")
        prefix = where + "." if where else ""
        out: dict[str, Any] = {}
        names = self.names
        decoders = self._decoders
        for key, item in value.items():
            name = names.get(key)
            if name is None:
                raise InvalidArgument(f"unknown field {prefix + key!r}")
            json_name, decode, null_is_value = decoders[key]
            if name in out:
                raise InvalidArgument(f"field {prefix + json_name!r} is given twice")
            if item is None and not null_is_value:
                continue
            out[name] = decode(item, prefix + json_name)
        if self._oneofs:
            self._check_oneofs(out, prefix)
        return out

    def _check_oneofs(self, out: dict[str, Any], prefix: str) -> None:
        seen: dict[str, str] = {}
        for name in out:
            oneof = self._oneofs.get(name)
            if oneof is not None:
                if oneof in seen:
                    raise InvalidArgument(
                        f"fields {prefix + seen[oneof]!r} and {prefix + name!r} exclude each other"
                    )
                seen[oneof] = name

    def encode(self, value: Any) -> dict[str, Any]:
        """A domain object (a dataclass mirroring the message, a mapping, or ``None`` for Empty) → JSON."""
        if value is None:
            return {}
        out = {}
        if isinstance(value, Mapping):
            for json_name, name, encode in self._encoders:
                item = encode(value.get(name))
                if item is not OMIT:
                    out[json_name] = item
        else:
            for json_name, name, encode in self._encoders:
                item = encode(getattr(value, name, None))
                if item is not OMIT:
                    out[json_name] = item
        return out


class Codecs:
    """The codecs of every message type reached from the messages asked for, compiled once."""

    def __init__(self) -> None:
        self._by_name: dict[str, MessageCodec] = {}

    def get(self, descriptor: Descriptor) -> MessageCodec:
        codec = self._by_name.get(descriptor.full_name)
        if codec is None:
            codec = self._by_name[descriptor.full_name] = MessageCodec(descriptor)
            codec._compile(self)  # registered first, so recursive messages terminate
        return codec

    def query_decoder(self, field: FieldDescriptor) -> Decoder:
        """The decoder of one query-parameter (or path-variable) string for a non-message or WKT field.

        Query strings carry every scalar as text: booleans are ``true``/``false``, enums a name or a number.
        """
        if field.type == FieldDescriptor.TYPE_BOOL:

            def decode_bool(value: Any, where: str) -> bool:
                if value == "true":
                    return True
                if value == "false":
                    return False
                raise InvalidArgument(f"{where} must be true or false")

            return decode_bool
        decode = _field_value_decoder(field, None)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return lambda value, where: decode(int(value) if _INTEGER.fullmatch(value) else value, where)
        return decode
