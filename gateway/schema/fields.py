"""The per-field rules both codecs follow, read from a field's descriptor.

The REST JSON codec (:mod:`gateway.edge.json_codec`) and the gRPC message codec (:mod:`gateway.rpc.codec`)
turn the same messages into the same domain values: proto field names, nested messages as dicts,
``Value``/``Struct``/``ListValue`` as plain JSON, a ``FieldMask`` as a list of snake_case paths, an enum as
its proto name, a field with presence left out when it is not set. What decides each of those is here, so
the two cannot drift apart. Both codecs call these while they compile a message type's plan, never per
call.

The domain's "not set": a field with presence is absent when its domain value is :func:`absent_value` —
``None``, except in a singular ``google.protobuf.Value``, where ``None`` is the JSON ``null`` and
:data:`~gateway.core.models.UNSET` (a deleted variable's value) means "not set".
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.core.models import UNSET

VALUE = "google.protobuf.Value"
STRUCT = "google.protobuf.Struct"
LIST_VALUE = "google.protobuf.ListValue"
TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
FIELD_MASK = "google.protobuf.FieldMask"
EMPTY = "google.protobuf.Empty"
NULL_VALUE = "google.protobuf.NullValue"
#: The package of the well-known types.
WELL_KNOWN_PACKAGE = "google.protobuf."

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
#: Well-known types whose domain value is plain JSON, the same in both codecs.
JSON_VALUES = frozenset({VALUE, STRUCT, LIST_VALUE})
#: Message types whose JSON form is not an object of their fields (the well-known types both codecs serve).
SPECIAL_MESSAGES = frozenset({*JSON_VALUES, TIMESTAMP, DURATION, FIELD_MASK, EMPTY, *WRAPPERS})

INT32_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
    }
)
#: 64-bit integers: strings in proto3 JSON.
INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)
UNSIGNED_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)
FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


class UnsupportedField(RuntimeError):
    """A field (or a method's message) of a kind a codec does not serve, found when it compiles its plans.

    :param where: the field's full name (``pkg.Message.field``), or the method's for a request or response.
    :param kind: what it is (``"google.protobuf.Any"``, ``"a map with bool keys"``, …).
    :param codec: which codec refuses it.
    """

    def __init__(self, where: str, kind: str, codec: str) -> None:
        super().__init__(f"{where}: {kind} is not served by the {codec}")
        self.where = where
        self.kind = kind


def int_range(kind: int) -> tuple[int, int]:
    """The lowest and highest value of an integer field type (``FieldDescriptor.TYPE_*``)."""
    bits = 64 if kind in INT64_TYPES else 32
    if kind in UNSIGNED_TYPES:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def message_name(field: FieldDescriptor) -> str | None:
    """The full name of the field's message type (``google.protobuf.Value``); ``None`` for other fields."""
    message = field.message_type
    return None if message is None else message.full_name


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


def is_map(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a ``map<…>`` (on the wire, a repeated map-entry message)."""
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_list(field: FieldDescriptor) -> bool:
    """Whether ``field`` is ``repeated`` and not a map: its domain value is a list."""
    return bool(field.is_repeated) and not is_map(field)  # protobuf 7 removed ``FieldDescriptor.label``


def is_wkt(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a message with a JSON form of its own (:data:`SPECIAL_MESSAGES`)."""
    return message_name(field) in SPECIAL_MESSAGES


def is_well_known(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a message of the ``google.protobuf`` package (served or not)."""
    name = message_name(field)
    return name is not None and name.startswith(WELL_KNOWN_PACKAGE)


def is_json_value(field: FieldDescriptor) -> bool:
    """Whether the field's domain value is plain JSON (a ``Value``, ``Struct`` or ``ListValue``)."""
    return message_name(field) in JSON_VALUES


def is_field_mask(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a ``FieldMask``: its domain value is a list of snake_case paths."""
    return message_name(field) == FIELD_MASK


def is_value(field: FieldDescriptor) -> bool:
    """Whether ``field`` is one ``google.protobuf.Value`` (not repeated): there ``None`` is the JSON null."""
    return message_name(field) == VALUE and not field.is_repeated


def has_presence(field: FieldDescriptor) -> bool:
    """Whether "not set" differs from the default: a singular message, an ``optional`` scalar, a oneof
    member. Such a field is left out (of the JSON, of the keyword arguments) when it is not set."""
    return bool(field.has_presence)


def absent_value(field: FieldDescriptor) -> object:
    """The domain value meaning "not set": :data:`~gateway.core.models.UNSET` for a :func:`is_value` field
    (where ``None`` is the JSON null), ``None`` for any other."""
    return UNSET if is_value(field) else None


def oneof_name(field: FieldDescriptor) -> str | None:
    """The real oneof ``field`` belongs to; ``None`` for none, and for the synthetic oneof of one field
    (named ``_<field>``) that holds a proto3 ``optional`` field."""
    oneof = field.containing_oneof
    if oneof is None or (len(oneof.fields) == 1 and oneof.name == "_" + field.name):
        return None
    return str(oneof.name)


def enum_names(field: FieldDescriptor) -> dict[int, str]:
    """number → proto name of the field's enum values: an enum's domain value is its proto name."""
    return {value.number: value.name for value in enum_of(field).values}
