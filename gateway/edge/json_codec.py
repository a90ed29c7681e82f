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

What decides presence, lists and maps, the well-known types, enum names and "not set" is shared with the
gRPC codec (:mod:`gateway.schema.fields`). A field kind this codec does not serve (``Any``, a group, a
``NullValue`` enum, a map with bool keys) is an :class:`~gateway.schema.fields.UnsupportedField` when
:class:`Codecs` is built, at start-up, naming the field.

This is the REST hot path: per field it costs one dict lookup and one small function call, with no
reflection at request time (betterproto2's ``to_dict`` costs ~110 µs a message, measured
when this codec was written).
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from gateway import schema
from gateway.errors import InvalidArgument
from gateway.schema import fields
from gateway.schema.fields import (
    DURATION,
    EMPTY,
    FIELD_MASK,
    INT32_TYPES,
    INT64_TYPES,
    LIST_VALUE,
    NULL_VALUE,
    STRUCT,
    TIMESTAMP,
    VALUE,
    WRAPPERS,
    UnsupportedField,
)

Decoder = Callable[[Any, str], Any]
Encoder = Callable[[Any], Any]

#: The "absent" value of a field without presence: no domain value is it, so the field is always written.
_NEVER_ABSENT = object()
#: How this codec names itself in an :class:`~gateway.schema.fields.UnsupportedField`.
_CODEC = "REST JSON codec"

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_DURATION = re.compile(r"(-)?(\d+)(?:\.(\d{1,9}))?s")
_MASK_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


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


def _enum_codec(field: FieldDescriptor) -> tuple[Decoder, Encoder]:
    if fields.enum_of(field).full_name == NULL_VALUE:
        # Its JSON form is `null`, which means "not set" everywhere else: nothing here would tell them apart.
        raise UnsupportedField(field.full_name, f"an enum of type {NULL_VALUE}", _CODEC)
    by_number = fields.enum_names(field)
    by_name = {name: name for name in by_number.values()}
    # The zero value named *_UNSPECIFIED means "not set" (AIP-126): decoded, but never offered as a choice.
    offered = sorted(name for n, name in by_number.items() if n or not name.endswith("_UNSPECIFIED"))

    def decode(value: Any, where: str) -> str:
        kind = type(value)
        name = by_name.get(value) if kind is str else by_number.get(value) if kind is int else None
        if name is None:
            raise InvalidArgument(f"{where} must be one of {offered}")
        return name

    def encode(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.name
        return by_number.get(value, value)  # an unknown number stays a number (proto3 JSON)

    return decode, encode


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


#: The second last formatted, as its fields in UTC, and its text up to the seconds
#: (``2026-01-02T03:04:05``): answers and streams carry the times of writes made moments apart, and the
#: date and time cost three times the lookup to format (``isoformat`` goes through
#: ``PyUnicode_FromFormat``). One tuple, replaced whole, so that no reader pairs a second with another's text.
_last_second: tuple[tuple[int, int, int, int, int, int], str] = ((0, 0, 0, 0, 0, 0), "")


def format_timestamp(moment: datetime) -> str:
    """An aware (or UTC-naive) datetime → RFC 3339 in UTC with ``Z``, 0, 3 or 6 fractional digits
    (the forms ``google.protobuf.json_format`` writes). Every JSON answer that holds a variable or a room
    carries a time: the seconds' text is kept from the last call in the same second."""
    global _last_second
    if moment.tzinfo is not None and moment.tzinfo is not UTC and moment.utcoffset():
        moment = moment.astimezone(UTC)
    second = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    last, text = _last_second
    if second != last:
        text = moment.replace(microsecond=0, tzinfo=None).isoformat()
        _last_second = (second, text)
    micros = moment.microsecond
    if not micros:
        return text + "Z"
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}Z"  # milliseconds: 3 digits, not 6
    return f"{text}.{micros:06d}Z"


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
        paths.append(schema.snake_case(path))
    return paths


def format_field_mask(paths: Iterable[str]) -> str:
    """``["display_name", "settings"]`` → ``"displayName,settings"``."""
    return ",".join(schema.camel_case(path) for path in paths)


# -- one value of a field: its decoder and encoder, chosen together -----------------------------------------


def _same(value: Any) -> Any:
    return value


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _float_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")  # proto3 JSON spellings


#: Field types no decoder is written for, by name (proto2 groups: no proto3 file has one).
_TYPE_NAMES = {FieldDescriptor.TYPE_GROUP: "group"}
#: The well-known types: the decoder and encoder of each one's own JSON form.
_WKT_CODECS: dict[str, tuple[Decoder, Encoder]] = {
    VALUE: (_value, _same),
    STRUCT: (_struct, _same),
    LIST_VALUE: (_list_value, _same),
    TIMESTAMP: (parse_timestamp, format_timestamp),
    DURATION: (_duration, _format_duration),
    FIELD_MASK: (parse_field_mask, format_field_mask),
    EMPTY: (_empty, lambda value: {}),
}


def _scalar_codec(field: FieldDescriptor) -> tuple[Decoder, Encoder]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string, _same
    if kind == FieldDescriptor.TYPE_BOOL:
        return _bool, _same
    if kind in INT32_TYPES or kind in INT64_TYPES:
        # proto3 JSON: 64-bit integers are written as strings
        return _int_decoder(*fields.int_range(kind)), str if kind in INT64_TYPES else _same
    if kind in fields.FLOAT_TYPES:
        return _float, _float_json
    if kind == FieldDescriptor.TYPE_BYTES:
        return _bytes, _base64
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum_codec(field)
    raise UnsupportedField(field.full_name, f"a field of type {_TYPE_NAMES.get(kind, kind)}", _CODEC)


def _value_codec(field: FieldDescriptor, codecs: Codecs | None) -> tuple[Decoder, Encoder]:
    """The decoder and encoder of one (non-repeated) value of ``field``.

    :param codecs: where nested messages' codecs come from; ``None`` where a message cannot stand (a query
        parameter).
    :raises UnsupportedField: a kind this codec does not serve.
    """
    name = fields.message_name(field)
    if name is None or field.type == FieldDescriptor.TYPE_GROUP:  # a group has a message type too
        return _scalar_codec(field)
    if name in _WKT_CODECS:
        return _WKT_CODECS[name]
    if name in WRAPPERS:
        return _scalar_codec(fields.message_of(field).fields_by_name["value"])
    if fields.is_well_known(field):  # Any, Type, …: a JSON form this codec does not write
        raise UnsupportedField(field.full_name, f"a field of type {name}", _CODEC)
    if codecs is None:
        raise UnsupportedField(field.full_name, "a message in a query parameter", _CODEC)
    codec = codecs.get(fields.message_of(field))
    return codec.decode, codec.encode


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
        #: (JSON name, proto name, encoder or ``None`` for a value written as it is, the domain value that
        #: leaves the field out or :data:`_NEVER_ABSENT`), per field.
        self._encoders: list[tuple[str, str, Encoder | None, object]] = []
        self._oneofs: dict[str, str] = {}

    def _compile(self, codecs: Codecs) -> None:
        for field in self.descriptor.fields:
            name = field.name
            self.fields[name] = field
            self.names[name] = name
            self.names[field.json_name] = name
            decode, encode, absent = self._field_codec(field, codecs)
            # `null` means "not set" (proto3 JSON), except for a Value, where it is the JSON null.
            null_is_value = fields.is_value(field)
            self._decoders[name] = (field.json_name, decode, null_is_value)
            self._decoders[field.json_name] = (field.json_name, decode, null_is_value)
            self._encoders.append((field.json_name, name, None if encode is _same else encode, absent))
            oneof = fields.oneof_name(field)
            if oneof is not None:
                self._oneofs[name] = oneof

    @staticmethod
    def _field_codec(field: FieldDescriptor, codecs: Codecs) -> tuple[Decoder, Encoder, object]:
        """The field's decoder, its encoder, and the domain value that leaves it out of the JSON."""
        if fields.is_map(field):
            entry = fields.message_of(field)
            key_field = entry.fields_by_name["key"]
            if key_field.type == FieldDescriptor.TYPE_BOOL:  # JSON keys "true"/"false": not written here
                raise UnsupportedField(field.full_name, "a map with bool keys", _CODEC)
            decode_key = _scalar_codec(key_field)[0]  # JSON keys are strings, which integer decoders take
            decode_val, encode_val = _value_codec(entry.fields_by_name["value"], codecs)
            key_is_string = key_field.type == FieldDescriptor.TYPE_STRING

            def decode_map(value: Any, where: str) -> dict[Any, Any]:
                if type(value) is not dict:
                    raise InvalidArgument(f"{where} must be a JSON object")
                return {
                    (key if key_is_string else decode_key(key, f"{where} key")): decode_val(
                        v, f"{where}.{key}"
                    )
                    for key, v in value.items()
                }

            return (
                decode_map,
                lambda value: {str(k): encode_val(v) for k, v in (value or {}).items()},
                _NEVER_ABSENT,
            )
        decode_one, encode_one = _value_codec(field, codecs)
        if fields.is_list(field):

            def decode_list(value: Any, where: str) -> list[Any]:
                if type(value) is not list:
                    raise InvalidArgument(f"{where} must be a JSON array")
                return [decode_one(item, f"{where}[{i}]") for i, item in enumerate(value)]

            return decode_list, lambda value: [encode_one(item) for item in value or ()], _NEVER_ABSENT
        if fields.has_presence(field):  # messages and `optional` scalars: left out when not set
            return decode_one, encode_one, fields.absent_value(field)
        return decode_one, encode_one, _NEVER_ABSENT

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
        # No call for what is written as it is (strings, a Value) nor for what is left out: every answer's
        # fields pass here.
        if isinstance(value, Mapping):
            for json_name, name, encode, absent in self._encoders:
                item = value.get(name)
                if item is not absent:
                    out[json_name] = item if encode is None else encode(item)
        else:
            for json_name, name, encode, absent in self._encoders:
                item = getattr(value, name, None)
                if item is not absent:
                    out[json_name] = item if encode is None else encode(item)
        return out


class Codecs:
    """The codecs of every message type reached from the services served, compiled once.

    Building it compiles the request and response codecs of every method of ``services`` (and so of every
    message they reach): a field kind this codec does not serve fails here, at start-up, not on the first
    call that meets it.

    :param services: the services whose REST JSON is served; ``None``: the native service.
    :raises UnsupportedField: a field (or a request or response type) this codec does not serve, named.
    """

    def __init__(self, services: Iterable[ServiceDescriptor] | None = None) -> None:
        self._by_name: dict[str, MessageCodec] = {}
        for service in (schema.service(),) if services is None else services:
            for method in service.methods:
                for message in (method.input_type, method.output_type):
                    name = message.full_name
                    if name.startswith(fields.WELL_KNOWN_PACKAGE) and name != EMPTY:
                        # A Value or a Timestamp is not a JSON object of fields: no body could carry it.
                        raise UnsupportedField(
                            method.full_name, f"a request or response of type {name}", _CODEC
                        )
                    self.get(message)

    def get(self, descriptor: Descriptor) -> MessageCodec:
        """The codec of ``descriptor``, compiled on first use.

        :raises UnsupportedField: a field of it (or of a message it reaches) this codec does not serve.
        """
        codec = self._by_name.get(descriptor.full_name)
        if codec is None:
            codec = self._by_name[descriptor.full_name] = MessageCodec(descriptor)
            try:
                codec._compile(self)  # registered first, so recursive messages terminate
            except UnsupportedField:
                del self._by_name[descriptor.full_name]
                raise
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
        decode = _value_codec(field, None)[0]
        if field.type == FieldDescriptor.TYPE_ENUM:
            return lambda value, where: decode(int(value) if _INTEGER.fullmatch(value) else value, where)
        return decode
