"""``/openapi.json``: an OpenAPI 3.1 document derived from the same bindings and descriptors as the routes.

Paths and methods come from the HttpRules, parameters from the template variables and the transcoder's
query fields, request and response schemas from the message descriptors (proto3 JSON shapes), so nothing
about a route is written twice. Every operation shares the error schema and the three credential forms.

The domain's input rules (:mod:`gateway.core.validation`) are stated where the API enforces them, from one
table by proto field name (:data:`FIELD_RULES`) applied to every path parameter, query parameter and body
field of that name. Which fields are required and which are read-only comes from the proto's
``google.api.field_behavior`` (``REQUIRED``, ``OUTPUT_ONLY``), as the service reads it. Proto3 JSON shapes
are spelled out: ``null`` is "not set" for any field of an object (so every optional field also admits
``null``), and integers travel as JSON numbers or decimal strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway import schema
from gateway.core import validation
from gateway.core.models import ChangeKind
from gateway.edge.http_rules import Binding
from gateway.edge.streams import NDJSON, SSE
from gateway.errors import Code
from gateway.schema.fields import (
    FIELD_MASK,
    FLOAT_TYPES,
    INT32_TYPES,
    INT64_TYPES,
    WRAPPERS,
    enum_of,
    int_range,
    is_map,
    message_of,
)

_REF = "#/components/schemas/"
_NON_NEGATIVE = {"minimum": 0}
_NO_CONTROL = f"^[^{validation.CONTROL_CHARACTERS}]*$"
_ROOM_ID = {"minLength": 1, "maxLength": validation.MAX_ROOM_ID, "pattern": _NO_CONTROL}
_JSON_VALUE = (
    "Any JSON value, at most `input.max_value_bytes` (default "
    f"{validation.DEFAULT_MAX_VALUE_BYTES} bytes) as compact JSON and `input.max_json_depth` (default "
    f"{validation.DEFAULT_MAX_JSON_DEPTH}) levels deep."
)
#: The domain's input rules (gateway.core.validation) as JSON Schema keywords, by proto field name, merged
#: into the schema of every path parameter, query parameter (each item, for a repeated one) and body field
#: so named. A ``minLength`` holds on a field the proto marks REQUIRED, and on each item of a repeated one:
#: an optional string may be ``""`` (the global InvalidateConnections has no room id). What JSON Schema
#: cannot say (sizes of JSON values) is said in the description.
FIELD_RULES: dict[str, dict[str, Any]] = {
    "room_id": _ROOM_ID,
    # ListRooms: where to start, "" for the first room.
    "start_key": {"maxLength": validation.MAX_ROOM_ID, "pattern": _NO_CONTROL},
    "start_after_key": {"maxLength": validation.MAX_ROOM_ID, "pattern": _NO_CONTROL},
    "name": {
        "minLength": 1,
        "maxLength": validation.MAX_VARIABLE_NAME,
        "pattern": f"^[^/{validation.CONTROL_CHARACTERS}]*$",
    },
    "display_name": {"maxLength": validation.MAX_DISPLAY_NAME, "pattern": _NO_CONTROL},
    "description": {
        "maxLength": validation.MAX_DESCRIPTION,
        "pattern": f"^[^{validation.CONTROL_CHARACTERS_BUT_WHITESPACE}]*$",
    },
    "jurisdiction": {"enum": list(validation.JURISDICTIONS)},
    "settings": {
        "description": f"A JSON object of at most {validation.MAX_SETTINGS_BYTES} bytes as compact JSON, "
        f"at most {validation.DEFAULT_MAX_JSON_DEPTH} levels deep."
    },
    "value": {"description": _JSON_VALUE},
    "data": {"description": _JSON_VALUE},
    "max_results": _NON_NEGATIVE,
    "expected_version": _NON_NEGATIVE,
    "ttl_seconds": _NON_NEGATIVE,
    "after_seq": _NON_NEGATIVE,
    "min_users": _NON_NEGATIVE,
    # KIND_UNSPECIFIED (proto3's zero) names no kind: a filter naming it is refused.
    "kinds": {"enum": [kind.value for kind in ChangeKind]},
}
_WKT_SCHEMAS: dict[str, dict[str, Any]] = {
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.Struct": {"type": "object", "description": "A JSON object."},
    "google.protobuf.ListValue": {"type": "array", "description": "A JSON array."},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated lowerCamel field paths."},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "enum": [code.name for code in Code if code is not Code.OK]},
                "message": {"type": "string"},
            },
        }
    },
}
SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key or a room token."},
    "basic": {"type": "http", "scheme": "basic", "description": "base64(user:key), or the raw key."},
}
#: Streaming GETs only (RFC 6750 §2.3, for EventSource): see docs/browsers.md.
ACCESS_TOKEN_SCHEME: dict[str, Any] = {
    "type": "apiKey",
    "in": "query",
    "name": "access_token",
    "description": "A room token or an API key, on streaming GET routes only (EventSource cannot send "
    "headers); never with a credential header.",
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def message(self, message: Descriptor) -> dict[str, Any]:
        if message.full_name in _WKT_SCHEMAS:
            return dict(_WKT_SCHEMAS[message.full_name])
        if message.full_name not in self.components:
            self.components[message.full_name] = {}  # placeholder: recursive messages terminate
            self.components[message.full_name] = self.object(message.fields)
        return {"$ref": _REF + message.full_name}

    def object(self, fields: Sequence[FieldDescriptor]) -> dict[str, Any]:
        """An object of ``fields``: each field with its domain rule, nullable unless required, read-only
        when output only (a request may send it; it is ignored)."""
        required = [field.json_name for field in fields if schema.is_required(field)]
        properties = {}
        for field in fields:
            one = _with_rule(self.field(field), field)
            one = one if field.json_name in required else _nullable(one)
            properties[field.json_name] = {**one, "readOnly": True} if schema.is_output_only(field) else one
        return {
            "type": "object",
            **({"required": required} if required else {}),
            "properties": properties,
            "additionalProperties": False,
        }

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if is_map(field):
            return {
                "type": "object",
                "additionalProperties": self.one(message_of(field).fields_by_name["value"]),
            }
        one = self.one(field)
        return {"type": "array", "items": one} if field.is_repeated else one

    def one(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            message = field.message_type
            if message.full_name in WRAPPERS:
                return self.one(message.fields_by_name["value"])  # wrappers: the wrapped scalar
            return self.message(message)
        kind = field.type
        if kind == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in enum_of(field).values]}
        if kind in INT32_TYPES or kind in INT64_TYPES:  # proto3 JSON: a number or a decimal string
            return _integer(*int_range(kind), "int64" if kind in INT64_TYPES else "int32")
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind in FLOAT_TYPES:
            return {"type": "number"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}


class Documented(Protocol):
    """What a route's operation is documented from: its binding and its query parameters (a native
    :class:`~gateway.edge.transcoder.Transcoder`, or an upstream's binder)."""

    @property
    def binding(self) -> Binding: ...

    @property
    def query(self) -> Mapping[str, tuple[tuple[str, ...], Any, bool]]: ...


def openapi_document(transcoders: Sequence[Documented], *, title: str = "room-gateway") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the native REST API (and of the upstreams' routes given with it)."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: dict[str, int] = {}
    for transcoder in transcoders:
        binding = transcoder.binding
        method = binding.method
        template = binding.template
        names = {
            v.field_path: schema.field_at(method.input, v.field_path).json_name for v in template.variables
        }
        parameters: list[dict[str, Any]] = [
            {
                "name": names[v.field_path],
                "in": "path",
                "required": True,
                "description": f"Binds `{'.'.join(v.field_path)}`; percent-encode '/' and ':' in it.",
                "schema": _with_rule({"type": "string"}, schema.field_at(method.input, v.field_path)),
            }
            for v in template.variables
        ]
        by_path = {field_path: repeated for field_path, _decode, repeated in transcoder.query.values()}
        for field_path, repeated in by_path.items():
            leaf = schema.field_at(method.input, field_path)
            parameters.append(
                {
                    "name": schema.json_path(method.input, field_path),
                    "in": "query",
                    "required": False,
                    "schema": _mask_schema(transcoder, leaf)
                    or _with_rule(schemas.field(leaf) if repeated else schemas.one(leaf), leaf),
                    **({"style": "form", "explode": True} if repeated else {}),
                }
            )
        count = seen_ids.get(method.name, 0) + 1
        seen_ids[method.name] = count
        operation: dict[str, Any] = {
            "operationId": method.name if count == 1 else f"{method.name}{count}",
            "tags": [getattr(transcoder, "tag", None) or schema.service().name],
            "parameters": parameters,
            "responses": {
                "200": _success(schemas, method.output, method.server_streaming),
                "default": {
                    "description": "An error.",
                    "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
                },
            },
        }
        body = _request_body(schemas, transcoder)
        if body is not None:
            operation["requestBody"] = body
        if method.server_streaming and binding.http_method == "GET":
            operation["security"] = [*({name: []} for name in SECURITY_SCHEMES), {"accessToken": []}]
        paths.setdefault(template.openapi_path(names), {})[binding.http_method.lower()] = operation
    for path, status in (("/healthz", "200"), ("/readyz", "200")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "security": [],
                "responses": {
                    status: {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "default": {
                        "description": "Not ready.",
                        "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
                    },
                },
            }
        }
    schemas.components["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": schema.service().file.package},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {**SECURITY_SCHEMES, "accessToken": ACCESS_TOKEN_SCHEME},
        },
        "security": [{name: []} for name in SECURITY_SCHEMES],
    }


def _success(schemas: _Schemas, output: Descriptor, streaming: bool) -> dict[str, Any]:
    ref = schemas.message(output)
    if not streaming:
        return {"description": "OK", "content": {"application/json": {"schema": ref}}}
    return {
        "description": "A stream: Server-Sent Events (`data: <message>`) or, on "
        '`Accept: application/x-ndjson`, one `{"result": <message>}` per line; an error ends it.',
        "content": {
            SSE: {"schema": {"type": "string"}, "itemSchema": ref},
            NDJSON: {
                "schema": {
                    "type": "object",
                    "properties": {"result": ref, "error": ERROR_SCHEMA["properties"]["error"]},
                }
            },
        },
    }


def _request_body(schemas: _Schemas, transcoder: Documented) -> dict[str, Any] | None:
    binding = transcoder.binding
    if not binding.body:
        return None
    message = binding.method.input
    bound = {v.field_path for v in binding.template.variables}
    if binding.body == "*":
        body_schema = schemas.object([f for f in message.fields if (f.name,) not in bound])
    else:
        field = message.fields_by_name[binding.body]
        inner = {path[1] for path in bound if len(path) == 2 and path[0] == binding.body}
        if inner and field.message_type is not None and not field.is_repeated:
            # A field of the body also bound by the path (PATCH /v1/rooms/{room.room_id}) comes from the
            # path, as with `body: "*"`: the body may only repeat it unchanged, so the schema leaves it out.
            body_schema = schemas.object([f for f in field.message_type.fields if f.name not in inner])
        else:
            body_schema = schemas.field(field)
    resolved = (
        schemas.components.get(body_schema["$ref"][len(_REF) :], {}) if "$ref" in body_schema else body_schema
    )
    # A body that must name a field cannot be left out (no body is an empty message).
    required = bool(resolved.get("required"))
    return {"required": required, "content": {"application/json": {"schema": body_schema}}}


def _mask_schema(transcoder: Documented, leaf: FieldDescriptor) -> dict[str, Any] | None:
    """The ``update_mask`` of a binding whose body is a message field: its paths name that message's fields
    (either spelling, spaces around each allowed), as the service checks; ``None`` for any other parameter."""
    body = transcoder.binding.body
    if leaf.name != "update_mask" or body in ("", "*") or leaf.message_type is None:
        return None
    target = transcoder.binding.method.input.fields_by_name[body].message_type
    if leaf.message_type.full_name != FIELD_MASK or target is None:
        return None
    names = "|".join(sorted({name for f in target.fields for name in (f.name, f.json_name)}))
    path = rf"\s*({names})\s*"
    return {
        "type": "string",
        "description": f"Comma-separated field paths of `{target.name}` (lowerCamel or snake_case); "
        "without it, the fields the body names.",
        "pattern": f"^({path}(,{path})*)?$",
    }


def _with_rule(field_schema: dict[str, Any], field: FieldDescriptor) -> dict[str, Any]:
    """``field_schema`` with the domain rule of ``field``'s name (on the items of a repeated field)."""
    rule = FIELD_RULES.get(field.name)
    if rule is None:
        return field_schema
    if not field.is_repeated and not schema.is_required(field):
        rule = {key: value for key, value in rule.items() if key != "minLength"}
    if field_schema.get("type") == "array":
        return {**field_schema, "items": _merge(field_schema["items"], rule)}
    return _merge(field_schema, rule)


def _merge(field_schema: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
    if "minimum" in rule and field_schema.get("format") in ("int32", "int64"):  # the string form too
        low = max(rule["minimum"], field_schema["minimum"])
        return {**_integer(low, field_schema["maximum"], field_schema["format"]), **rule, "minimum": low}
    return {**field_schema, **rule}


def _integer(low: int, high: int, fmt: str) -> dict[str, Any]:
    """An integer in ``[low, high]``: a JSON number, or a decimal string (whose pattern bounds it alike)."""
    negative = f"-({_up_to(-low)})" if low < 0 else "-0"  # "-0" is zero to the decoder
    return {
        "type": ["integer", "string"],
        "format": fmt,
        "minimum": low,
        "maximum": high,
        "pattern": f"^({_up_to(high)}|{negative})$",
    }


def _up_to(high: int) -> str:
    """A regular expression of the decimal numbers 0 to ``high`` (no leading zeros)."""
    digits = str(high)
    width = len(digits)
    alternatives = ["0"]
    if width > 1:
        alternatives.append(f"[1-9][0-9]{{0,{width - 2}}}")  # fewer digits than high
    for i, digit in enumerate(digits):  # as many digits: high's prefix, then a smaller digit, then any
        first = 1 if i == 0 else 0
        if int(digit) > first:
            alternatives.append(f"{digits[:i]}[{first}-{int(digit) - 1}][0-9]{{{width - i - 1}}}")
    alternatives.append(digits)
    return "|".join(alternatives)


def _nullable(field_schema: dict[str, Any]) -> dict[str, Any]:
    """``field_schema`` admitting ``null`` too: proto3 JSON reads ``null`` as "not set"."""
    kind = field_schema.get("type")
    if kind is None:
        if "$ref" in field_schema:
            return {"anyOf": [field_schema, {"type": "null"}]}
        return field_schema  # a Value: any JSON value, null included
    out = {**field_schema, "type": [*kind, "null"] if isinstance(kind, list) else [kind, "null"]}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out
