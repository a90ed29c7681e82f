"""Valid request messages for every method of the gRPC port, and the mutations the fuzz test sends.

The native service's messages come from the golden-case corpus (``tests/golden/rest``): each case's request
is bound to its method by the method's HttpRule (path variables, body, query) and parsed with the official
protobuf runtime from the descriptors the server reflects; the other services (WorkAdventure's Room API,
health, reflection) get a few hand-written messages. Every message type also gets its empty message.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor

from gateway.edge.http_rules import bindings

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rest"

#: Messages of the services that have no golden corpus, as proto3 JSON, by message type.
HAND_WRITTEN: dict[str, list[dict[str, Any]]] = {
    "roomApi.VariableRequest": [{"room": "https://play.example.com/_/global/lobby", "name": "topic"}],
    "roomApi.SaveVariableRequest": [
        {"room": "lobby", "name": "topic", "value": {"a": [1, 2.5, "x", None, True]}},
        {"room": "lobby", "name": "n", "value": 3},
    ],
    "roomApi.EventRequest": [{"room": "lobby", "name": "wave"}],
    "roomApi.DispatchEventRequest": [
        {"room": "lobby", "name": "wave", "data": {"by": "ann"}, "targetUserIds": [1, 2, -3]}
    ],
    "grpc.health.v1.HealthCheckRequest": [{"service": ""}, {"service": "roomgateway.v1.RoomService"}],
    "grpc.reflection.v1.ServerReflectionRequest": [
        {"listServices": ""},
        {"fileContainingSymbol": "roomgateway.v1.RoomService"},
        {"fileByFilename": "roomApi/room-api.proto"},
        {"allExtensionNumbersOfType": "google.protobuf.MethodOptions"},
    ],
    "grpc.reflection.v1alpha.ServerReflectionRequest": [
        {"listServices": ""},
        {"fileContainingSymbol": "grpc.health.v1.Health"},
    ],
}


def message_class(pool: descriptor_pool.DescriptorPool, full_name: str) -> Any:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def golden_messages(pool: descriptor_pool.DescriptorPool) -> dict[str, list[bytes]]:
    """The request message of every golden case whose request binds to a native method, by input type."""
    found: dict[str, list[bytes]] = {}
    routes = bindings()
    for path in sorted(GOLDEN.glob("*.yaml")):
        case = yaml.safe_load(path.read_text(encoding="utf-8"))
        for request in [*case.get("setup", []), case["request"]]:
            raw_path, _, query = str(request["path"]).partition("?")
            for binding in routes:
                match = binding.template.pattern.fullmatch(raw_path)
                if binding.http_method != request["method"] or match is None:
                    continue
                message = _bound_message(
                    pool, binding.method.input, binding.body, match, binding, request, query
                )
                if message is not None:
                    found.setdefault(binding.method.input.full_name, []).append(message)
                break
    return found


def _bound_message(
    pool: descriptor_pool.DescriptorPool,
    descriptor: Descriptor,
    body_field: str,
    match: Any,
    binding: Any,
    request: dict[str, Any],
    query: str,
) -> bytes | None:
    fields: dict[str, Any] = {}
    try:
        variables = binding.template.decode(match)
    except UnicodeDecodeError:
        return None
    for field_path, value in variables.items():
        _put(fields, field_path, value)
    for name, value in parse_qsl(query):
        _put(fields, tuple(name.split(".")), value)
    body = request.get("body")
    if isinstance(body, dict) and body_field == "*":
        fields.update(body)
    elif body is not None and body_field:
        fields[body_field] = body
    try:
        message = json_format.ParseDict(fields, message_class(pool, descriptor.full_name)())
    except (json_format.ParseError, TypeError, ValueError):
        return None  # a case about a request the API refuses
    return bytes(message.SerializeToString())


def _put(fields: dict[str, Any], field_path: tuple[str, ...], value: Any) -> None:
    for name in field_path[:-1]:
        fields = fields.setdefault(name, {})
    fields[field_path[-1]] = value


def seeds(pool: descriptor_pool.DescriptorPool, input_types: set[str]) -> dict[str, list[bytes]]:
    """Valid messages for each of ``input_types``: golden, hand-written, and the empty message."""
    found = golden_messages(pool)
    for full_name, messages in HAND_WRITTEN.items():
        if full_name in input_types:
            cls = message_class(pool, full_name)
            found.setdefault(full_name, []).extend(
                bytes(json_format.ParseDict(m, cls()).SerializeToString()) for m in messages
            )
    return {name: [b"", *found.get(name, [])] for name in input_types}


# -- mutations --------------------------------------------------------------------------------------------

Mutation = Callable[[random.Random, bytes, list[bytes]], bytes]


def _random_bytes(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    return rng.randbytes(rng.choice([1, 2, 3, 5, 8, 16, 40, 100]))


def _flip_bits(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return _random_bytes(rng, data, pool)
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _set_byte(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if not data:
        return _random_bytes(rng, data, pool)
    out = bytearray(data)
    out[rng.randrange(len(out))] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    return bytes(out)


def _truncate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def _insert(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 12)) + data[at:]


def _delete(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    if len(data) < 2:
        return _insert(rng, data, pool)
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 8) :]


def _splice(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    other = rng.choice(pool)
    return data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]


def _repeat(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    return data * rng.randint(2, 5)


def _odd_field(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """A field with an edge-case tag and payload: groups, fixed widths, huge lengths and varints."""
    number = rng.choice([1, 2, 3, 4, 5, 6, 7, 15, 16, 2047, 536870911])
    wire = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
    tag = _varint((number << 3) | wire)
    payload = rng.choice(
        [
            b"",
            b"\xff" * 10,  # a varint longer than 64 bits
            b"\xff" * 9 + b"\x01",
            _varint(2**63),
            _varint(2**32 + 5),
            _varint(0x7FFFFFFF) + b"x",  # a length far beyond the message
            b"\x05\xff\xfe\xfd\xfc\xfb",  # invalid UTF-8 in a string field
            b"\x08\x01\x02\x03\x04\x05\x06\x07\x08",
        ]
    )
    at = rng.choice([0, len(data)])
    return data[:at] + tag + payload + data[at:]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


MUTATIONS: list[Mutation] = [
    _random_bytes,
    _flip_bits,
    _set_byte,
    _truncate,
    _insert,
    _delete,
    _splice,
    _repeat,
    _odd_field,
]


def cases(rng: random.Random, valid: list[bytes], count: int) -> Iterator[bytes]:
    """``count`` payloads: mutations (one to three in a row) of ``valid`` messages, some random bytes."""
    for _ in range(count):
        data = rng.choice(valid)
        for _ in range(rng.choice([1, 1, 2, 3])):
            data = rng.choice(MUTATIONS)(rng, data, valid)
        yield data
