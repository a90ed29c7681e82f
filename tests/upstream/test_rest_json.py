"""The REST routes' JSON ↔ protobuf shortcut for flat messages (gateway/upstream/rest.py) against
``json_format``: the same bytes for every request it takes, json_format's way (and its error) for every one it
does not, and ``MessageToDict``'s dict, key order included, for every reply."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor

from gateway.upstream import rest

F = descriptor_pb2.FieldDescriptorProto


def _pool() -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(name="flat.proto", package="flat", syntax="proto3")
    flat = file.message_type.add(name="Flat")
    for number, (name, kind) in enumerate(
        [
            ("room_id", F.TYPE_STRING),
            ("ok", F.TYPE_BOOL),
            ("count", F.TYPE_INT32),
            ("big", F.TYPE_INT64),
            ("small", F.TYPE_UINT32),
            ("huge", F.TYPE_UINT64),
            ("signed", F.TYPE_SINT32),
            ("text", F.TYPE_STRING),
        ],
        start=1,
    ):
        # Declared out of number order: MessageToDict lists the set fields by number, then the rest.
        flat.field.add(name=name, number=9 - number, type=kind, label=F.LABEL_OPTIONAL)
    other = file.message_type.add(name="Other")
    other.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    other.field.add(name="ratio", number=2, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    other.field.add(name="tags", number=3, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    optional = file.message_type.add(name="WithOptional")
    optional.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    optional.field.add(
        name="maybe", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, proto3_optional=True
    )
    optional.field[1].oneof_index = 0
    optional.oneof_decl.add(name="_maybe")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


POOL = _pool()
FLAT = POOL.FindMessageTypeByName("flat.Flat")

VALUES: list[Any] = [
    "", "bench-room", "héllo ✓", "a\ud800", "\ud83d\ude00", 0, 1, -1, 2**31 - 1, 2**31, -(2**31) - 1,
    2**63, 2**64, -5, True, False, None, 1.0, 1.5, "42", {}, [], {"a": 1},
]  # fmt: skip
KEYS = [*(f.name for f in FLAT.fields), *(f.json_name for f in FLAT.fields), "unknown", "[flat.ext]"]


def _json_format(descriptor: Descriptor, request: dict[str, Any]) -> bytes | str:
    message = message_factory.GetMessageClass(descriptor)()
    try:
        json_format.ParseDict(request, message)
    except json_format.ParseError as exc:
        return f"error: {exc}"
    return message.SerializeToString()


def _requests() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [{}]
    found += [{key: value} for key, value in itertools.product(KEYS, VALUES)]
    chance = random.Random(15)
    for _ in range(3000):
        found.append({chance.choice(KEYS): chance.choice(VALUES) for _ in range(chance.randint(2, 6))})
    return found


def test_flat_requests_are_json_formats() -> None:
    keys = rest._flat_request(FLAT)
    assert keys is not None
    message_class = message_factory.GetMessageClass(FLAT)
    taken = 0
    for request in _requests():
        expected = _json_format(FLAT, request)
        data = rest._flat_message(message_class, keys, request)
        if data is not None:
            taken += 1
            assert data == expected, request
    assert taken > 80  # the shortcut is taken for the plain cases (112 with these seeds)


@pytest.mark.parametrize("name", ["flat.Other", "flat.WithOptional", "google.protobuf.Duration"])
def test_other_messages_take_json_format(name: str) -> None:
    pool = POOL if name.startswith("flat.") else descriptor_pool.Default()
    if not name.startswith("flat."):
        from google.protobuf import duration_pb2  # noqa: F401  # the default pool's well-known type

    descriptor = pool.FindMessageTypeByName(name)
    assert rest._flat_request(descriptor) is None
    assert rest._flat_reply(descriptor) is None


def _reply(descriptor: Descriptor, data: bytes) -> Any:
    """What :meth:`rest.Binder.reply` gives (its shortcut, else json_format), without a route around it."""
    binder = object.__new__(rest.Binder)
    binder.reply_class = message_factory.GetMessageClass(descriptor)
    binder._flat_reply = rest._flat_reply(descriptor)
    return binder.reply(data)


def test_flat_replies_are_message_to_dicts() -> None:
    message_class = message_factory.GetMessageClass(FLAT)
    chance = random.Random(7)
    samples = {
        "room_id": ["", "r", "héllo"], "text": ["", "t"], "ok": [False, True], "count": [0, -3, 2**31 - 1],
        "big": [0, -(2**63), 2**40], "small": [0, 7], "huge": [0, 2**64 - 1], "signed": [0, -9],
    }  # fmt: skip
    for _ in range(500):
        chosen = chance.sample(sorted(samples), chance.randint(0, len(samples)))
        message = message_class(**{name: chance.choice(samples[name]) for name in chosen})
        data = message.SerializeToString()
        expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
        got = _reply(FLAT, data)
        assert list(got.items()) == list(expected.items()), message


def test_other_replies_are_message_to_dicts() -> None:
    other = POOL.FindMessageTypeByName("flat.Other")
    message = message_factory.GetMessageClass(other)(name="n", ratio=0.5, tags=["a"])
    expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    assert _reply(other, message.SerializeToString()) == expected


def _message_to_dict(descriptor: Descriptor, data: bytes) -> Any:
    try:
        message = message_factory.GetMessageClass(descriptor).FromString(data)
    except Exception as exc:  # the parser's refusal: the reader must refuse too (its caller then raises)
        return type(exc)
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def test_flat_replies_from_any_bytes_are_the_parsers() -> None:
    """The wire reader against the parser on bytes a reply may hold: every field set, at its extremes,
    given twice, at its default, as a 10-byte varint; and those bytes cut, with a byte changed, with
    unknown fields, wrong wire types, invalid UTF-8. Whatever it takes is MessageToDict's dict, key order
    included; what it leaves (``None``) the parser reads."""
    message_class = message_factory.GetMessageClass(FLAT)
    reader = rest._flat_reply(FLAT)
    assert reader is not None
    chance = random.Random(15)
    samples = {
        "room_id": ["", "r", "héllo", "x" * 200], "text": ["", "✓"], "ok": [False, True],
        "count": [0, -1, -(2**31), 2**31 - 1], "big": [0, -1, -(2**63), 2**63 - 1], "small": [0, 2**32 - 1],
        "huge": [0, 2**64 - 1], "signed": [0, -1, 2**31 - 1, -(2**31)],
    }  # fmt: skip
    extras = [b"", b"\xc8\x01\x05", b"\x0d\x01\x00\x00\x00", b"\x42\x02\xff\xfe", b"\x08\x02", b"\x08"]
    taken = 0
    for _ in range(3000):
        chosen = chance.sample(sorted(samples), chance.randint(0, len(samples)))
        data = message_class(**{n: chance.choice(samples[n]) for n in chosen}).SerializeToString()
        if chance.random() < 0.3:  # a field given twice (the last wins), or a default on the wire
            data += message_class(**{n: chance.choice(samples[n]) for n in chosen[:2]}).SerializeToString()
            data += bytes((chance.choice([1, 2, 3, 4]) << 3,)) + b"\x00"  # a varint 0 (an int or a bool)
        if chance.random() < 0.3:
            data += chance.choice(extras)
        if data and chance.random() < 0.3:
            cut = chance.randrange(len(data))
            data = (
                data[:cut]
                if chance.random() < 0.5
                else data[:cut] + bytes((chance.randrange(256),)) + data[cut + 1 :]
            )
        got = reader.read(data)
        if got is None:
            continue
        taken += 1
        expected = _message_to_dict(FLAT, data)
        assert isinstance(expected, dict), (data, got)
        assert list(got.items()) == list(expected.items()), data
    assert taken > 1500
