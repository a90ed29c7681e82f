"""The golden corpus against ``google.protobuf.json_format``, the reference proto3 JSON implementation.

Decoding: every JSON request body of the corpus (setup steps too) is decoded by our codec and by
``json_format.ParseDict`` into the body's message type. Either both refuse it, or both accept it and mean
the same message: our decoded keyword arguments, made a message by the gRPC codec (``to_message``, the way
a gRPC request arrives as the same arguments), equal ParseDict's.

Encoding: every successful answer of the corpus is exactly what ``json_format.MessageToDict`` writes for
the same message (with fields without presence printed, as the gateway does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.edge.http_rules import Binding, bindings
from gateway.edge.json_codec import Codecs
from gateway.errors import InvalidArgument
from gateway.rpc import codec as rpc_codec
from tests.golden.test_rest_golden import CASES, _load

CODECS = Codecs()
#: Matching order as the edge's (custom verbs first, then the most literal segments).
BINDINGS = sorted(bindings(), key=lambda b: (0 if b.template.verb else 1, -b.template.literal_count))


def _binding(method: str, path: str) -> Binding | None:
    raw = path.partition("?")[0]
    for binding in BINDINGS:
        if binding.http_method == method and binding.template.pattern.fullmatch(raw):
            return binding
    return None


def _body_type(binding: Binding) -> Descriptor:
    """The message type a binding's JSON body is (``body: "*"``: the request; ``body: "room"``: a Room)."""
    if binding.body == "*":
        return binding.method.input
    message = binding.method.input.fields_by_name[binding.body].message_type
    assert message is not None, "every body field of the native API is a message"
    return message


def _requests() -> Iterator[Any]:
    for path in CASES:
        case = _load(path)
        for i, request in enumerate([*case.get("setup", []), case["request"]]):
            if "body" in request:
                yield pytest.param(request, id=f"{path.stem}-{i}")


def _answers() -> Iterator[Any]:
    for path in CASES:
        case = _load(path)
        if case["expected"]["status"] == 200 and "xfail" not in case:
            yield pytest.param(case["request"], case["expected"]["json"], id=path.stem)


def _message_class(descriptor: Descriptor) -> type[Message]:
    return GetMessageClass(descriptor)


@pytest.mark.parametrize("request_", list(_requests()))
def test_decoding_matches_parse_dict(request_: dict[str, Any]) -> None:
    binding = _binding(request_["method"], request_["path"])
    assert binding is not None and binding.body, request_
    body_type = _body_type(binding)
    body = request_["body"]
    try:
        ours: dict[str, Any] | None = CODECS.get(body_type).decode(body)
    except InvalidArgument:
        ours = None
    theirs = _message_class(body_type)()
    try:
        json_format.ParseDict(body, theirs)
    except json_format.ParseError:
        assert ours is None, f"ParseDict refuses {body!r}, our codec decodes it to {ours!r}"
        return
    assert ours is not None, f"our codec refuses {body!r}, ParseDict accepts it"
    converted = _message_class(body_type).FromString(bytes(rpc_codec.to_message(ours, body_type)))
    assert converted == theirs


def test_the_decoding_check_sees_enough_bodies() -> None:
    assert len(list(_requests())) >= 25


@pytest.mark.parametrize(("request_", "expected"), list(_answers()))
def test_encoding_matches_message_to_dict(request_: dict[str, Any], expected: Any) -> None:
    binding = _binding(request_["method"], request_["path"])
    assert binding is not None and not binding.method.server_streaming
    message = json_format.ParseDict(expected, _message_class(binding.method.output)())
    assert json_format.MessageToDict(message, always_print_fields_with_no_presence=True) == expected
