"""The path-template grammar of google/api/http.proto, and the bindings read from the proto."""

from __future__ import annotations

import pytest

from gateway.dispatch import native_methods
from gateway.edge.http_rules import Literal, TemplateError, Variable, Wildcard, bindings, parse_template


def test_every_method_is_bound_and_additional_bindings_are_read() -> None:
    found = {(b.method.name, b.http_method, b.template.template, b.body) for b in bindings()}
    assert {name for name, *_ in found} == set(native_methods())
    assert ("UpdateRoom", "PATCH", "/v1/rooms/{room.room_id}", "room") in found
    assert ("UpdateRoom", "PUT", "/v1/rooms/{room.room_id}", "room") in found
    assert ("InvalidateConnections", "POST", "/v1/connections:invalidate", "*") in found
    assert ("CloseRoom", "POST", "/v1/rooms/{room_id}:close", "*") in found


def test_grammar() -> None:
    t = parse_template("/v1/{name=shelves/*/books/**}:read")
    assert t.segments == (
        Literal("v1"),
        Variable(("name",), (Literal("shelves"), Wildcard(False), Literal("books"), Wildcard(True))),
    )
    assert t.verb == "read"
    assert parse_template("/v1/{room.room_id}").variables == (
        Variable(("room", "room_id"), (Wildcard(False),)),
    )
    assert parse_template("/v1/*/x/**").segments == (
        Literal("v1"),
        Wildcard(False),
        Literal("x"),
        Wildcard(True),
    )


@pytest.mark.parametrize(
    "template",
    ["v1/rooms", "/v1//rooms", "/v1/**/x", "/v1/{a={b}}", "/v1/{1a}", "/v1/{a", "/v1/x:", "/v1/{a.}", "/"],
)
def test_grammar_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_matching_is_on_the_raw_path_and_decodes_after() -> None:
    single = parse_template("/v1/rooms/{room_id}:close")
    match = single.pattern.fullmatch("/v1/rooms/https%3A%2F%2Fexample.com%2Fx:close")
    assert match is not None and single.decode(match) == {("room_id",): "https://example.com/x"}
    assert single.pattern.fullmatch("/v1/rooms/a/b:close") is None
    multi = parse_template("/v1/{name=files/**}")
    match = multi.pattern.fullmatch("/v1/files/a/b%2Fc%20d")
    # http.proto: multi-segment variables are decoded "except %2F and %2f".
    assert match is not None and multi.decode(match) == {("name",): "files/a/b%2Fc d"}
    assert parse_template("/v1/**").pattern.fullmatch("/v1") is not None
