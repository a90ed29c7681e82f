"""betterproto2 messages ↔ RoomService calls, generically from the proto descriptors.

A request message becomes the keyword arguments its RoomService method takes (``gateway.core.service``):
proto field names; nested messages as dicts of field names; ``Value``/``Struct``/``ListValue`` as plain
JSON; a ``FieldMask`` as its list of paths; a field with presence that is absent (an unset message, an unset
``optional`` scalar, an unset oneof member) is *not passed*, so the service sees its own default. A domain
result (the dataclasses of ``gateway.core.models``, which mirror the messages field by field) becomes the
response message the same way back; ``None`` becomes ``google.protobuf.Empty``.

Field kinds come from the ``google.protobuf`` descriptors, by the per-field rules the REST JSON codec follows
too (:mod:`gateway.schema.fields`: presence, lists and maps, the JSON well-known types, FieldMask, enum
names, "not set"); the betterproto2 classes come from the generated message pool (messages) and from the
generated class's field table (enums). Each message type's plan is built once and cached, so a call walks a
short list of precomputed converters.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from typing import Any

import betterproto2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway._gen.google import protobuf as wkt
from gateway._gen.message_pool import default_message_pool
from gateway.core.models import UNSET
from gateway.schema import fields

_Convert = Callable[[Any], Any]


def message_class(descriptor: Descriptor) -> type[betterproto2.Message]:
    """The generated betterproto2 class of a message type, by its full name."""
    return default_message_pool.url_to_type[f"type.googleapis.com/{descriptor.full_name}"]


# -- request → keyword arguments ------------------------------------------------------------------------


def to_kwargs(message: betterproto2.Message, descriptor: Descriptor) -> dict[str, Any]:
    """The keyword arguments of the RoomService method whose request ``message`` is.

    :param message: the request, as the generated server base class received it.
    :param descriptor: its message type (``Method.input``).
    """
    return _decoder(descriptor)(message)


@functools.cache
def _decoder(descriptor: Descriptor) -> Callable[[betterproto2.Message], dict[str, Any]]:
    plan = [(f.name, fields.has_presence(f), _field_decoder(f)) for f in descriptor.fields]

    def decode(message: betterproto2.Message) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for name, has_presence, convert in plan:
            value = getattr(message, name)
            if value is None and has_presence:
                continue  # absent: the service applies its default
            kwargs[name] = convert(value)
        return kwargs

    return decode


def _field_decoder(field: FieldDescriptor) -> _Convert:
    _refuse_map(field)
    one = _single_decoder(field)
    if fields.is_list(field):
        return lambda values: [one(v) for v in values]
    return one


def _single_decoder(field: FieldDescriptor) -> _Convert:
    if field.enum_type is not None:
        names = fields.enum_names(field)
        return lambda value: names.get(value, value)  # an unknown number stays a number
    message = field.message_type
    if message is None:
        return _identity
    if fields.is_json_value(field):
        return lambda value: _integral_numbers(value.to_dict())
    if fields.is_field_mask(field):
        return lambda value: list(value.paths)
    if fields.is_well_known(field):
        return _identity  # betterproto2 unwraps Timestamp, Duration and the wrappers into Python values
    return _decoder(message)


# -- domain result → response message -------------------------------------------------------------------


def to_message(result: Any, descriptor: Descriptor) -> betterproto2.Message:
    """The response message of type ``descriptor`` for a domain result.

    :param result: a dataclass (or mapping) with the message's field names; ``None`` for ``Empty``.
    :param descriptor: the response type (``Method.output``).
    """
    return _encoder(descriptor)(result)


@functools.cache
def _encoder(descriptor: Descriptor) -> Callable[[Any], betterproto2.Message]:
    cls = message_class(descriptor)
    plan = [(f.name, fields.absent_value(f), _field_encoder(f, cls)) for f in descriptor.fields]

    def encode(result: Any) -> betterproto2.Message:
        values: dict[str, Any] = {}
        if result is not None:
            for name, absent, convert in plan:
                value = (
                    result.get(name, UNSET) if isinstance(result, Mapping) else getattr(result, name, UNSET)
                )
                if value is UNSET or value is absent:
                    continue
                values[name] = convert(value)
        return cls(**values)

    return encode


def _field_encoder(field: FieldDescriptor, cls: type[betterproto2.Message]) -> _Convert:
    _refuse_map(field)
    one = _single_encoder(field, cls)
    if fields.is_list(field):
        return lambda values: [one(v) for v in values]
    return one


def _single_encoder(field: FieldDescriptor, cls: type[betterproto2.Message]) -> _Convert:
    if field.enum_type is not None:
        # betterproto2 types its ``_betterproto`` classproperty with ``cls: type[Self]``, which mypy cannot
        # bind on a class (betterproto2 ignores the same error where it defines it): ProtoClassMetadata.
        meta = cls._betterproto  # type: ignore[arg-type]
        enum_cls: Any = meta.cls_by_field[field.name]
        # By proto name, whatever betterproto2 calls its members; a domain enum is named as the proto's.
        members = {name: enum_cls(number) for number, name in fields.enum_names(field).items()}

        def encode_enum(value: Any) -> Any:
            return members[value.name if isinstance(value, enum.Enum) else value]

        return encode_enum
    message = field.message_type
    if message is None:
        return _identity
    if fields.is_json_value(field):
        json_cls: Any = message_class(message)
        return lambda value: json_cls.from_dict(value)
    if fields.is_field_mask(field):
        return lambda value: wkt.FieldMask(paths=list(value))
    if fields.is_well_known(field):
        return _identity  # unwrapped well-known types: a datetime stays a datetime
    return _encoder(message)


def _refuse_map(field: FieldDescriptor) -> None:
    """No proto served over gRPC has a map yet: refuse one clearly rather than convert it as a list."""
    if fields.is_map(field):
        raise fields.UnsupportedField(field.full_name, "a map", "gRPC message codec")


#: Doubles up to this magnitude hold every integer exactly (2**53).
_MAX_EXACT = 2**53


def _integral_numbers(value: Any) -> Any:
    """JSON from a ``Value``, with integral numbers as ``int``.

    A ``Value`` carries every number as a double, so ``{"n": 3}`` arrives as ``3.0``; JSON does not tell the
    two apart, and the REST edge stores ``3``. Making them ints here keeps a value written over gRPC and read
    over REST (or the reverse) the same.
    """
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _MAX_EXACT else value
    if isinstance(value, list):
        return [_integral_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_numbers(v) for k, v in value.items()}
    return value


def _identity(value: Any) -> Any:
    return value
