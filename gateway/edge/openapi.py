"""``/openapi.json``: an OpenAPI 3.1 document derived from the same bindings and descriptors as the routes.

Paths and methods come from the HttpRules, parameters from the template variables and the transcoder's
query fields, request and response schemas from the message descriptors (proto3 JSON shapes), so nothing
about a route is written twice. Every operation shares the error schema and the three credential forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway import schema
from gateway.edge.json_codec import enum_of, is_map, message_of
from gateway.edge.streams import NDJSON, SSE
from gateway.edge.transcoder import Transcoder
from gateway.errors import Code

_REF = "#/components/schemas/"
_INT32 = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
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
        return {
            "type": "object",
            "properties": {field.json_name: self.field(field) for field in fields},
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
            if (
                message.full_name.startswith("google.protobuf.")
                and message.full_name.endswith("Value")
                and (message.full_name not in _WKT_SCHEMAS)
            ):
                return self.one(message.fields_by_name["value"])  # wrappers: the wrapped scalar
            return self.message(message)
        kind = field.type
        if kind == FieldDescriptor.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in enum_of(field).values]}
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _INT64:
            return {"type": "string", "format": "int64"}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}


def openapi_document(transcoders: Sequence[Transcoder], *, title: str = "room-gateway") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the native REST API."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: dict[str, int] = {}
    for transcoder in transcoders:
        binding = transcoder.binding
        method = binding.method
        template = binding.template
        names = {v.field_path: _last_json_name(method.input, v.field_path) for v in template.variables}
        parameters: list[dict[str, Any]] = [
            {
                "name": names[v.field_path],
                "in": "path",
                "required": True,
                "description": f"Binds `{'.'.join(v.field_path)}`; percent-encode '/' and ':' in it.",
                "schema": {"type": "string"},
            }
            for v in template.variables
        ]
        by_path = {field_path: repeated for field_path, _decode, repeated in transcoder.query.values()}
        for field_path, repeated in by_path.items():
            leaf = _leaf(method.input, field_path)
            parameters.append(
                {
                    "name": _json_path(method.input, field_path),
                    "in": "query",
                    "required": False,
                    "schema": schemas.field(leaf) if repeated else schemas.one(leaf),
                    **({"style": "form", "explode": True} if repeated else {}),
                }
            )
        count = seen_ids.get(method.name, 0) + 1
        seen_ids[method.name] = count
        operation: dict[str, Any] = {
            "operationId": method.name if count == 1 else f"{method.name}{count}",
            "tags": [schema.service().name],
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
        "components": {"schemas": schemas.components, "securitySchemes": SECURITY_SCHEMES},
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


def _request_body(schemas: _Schemas, transcoder: Transcoder) -> dict[str, Any] | None:
    binding = transcoder.binding
    if not binding.body:
        return None
    message = binding.method.input
    if binding.body == "*":
        bound = {v.field_path[0] for v in binding.template.variables if len(v.field_path) == 1}
        body_schema = schemas.object([f for f in message.fields if f.name not in bound])
    else:
        body_schema = schemas.field(message.fields_by_name[binding.body])
    return {"required": False, "content": {"application/json": {"schema": body_schema}}}


def _leaf(message: Descriptor, field_path: tuple[str, ...]) -> FieldDescriptor:
    for name in field_path[:-1]:
        message = message_of(message.fields_by_name[name])
    return message.fields_by_name[field_path[-1]]


def _last_json_name(message: Descriptor, field_path: tuple[str, ...]) -> str:
    return _leaf(message, field_path).json_name


def _json_path(message: Descriptor, field_path: tuple[str, ...]) -> str:
    *parents, leaf = field_path  # never empty: http_rules.resolve checked every path at start-up
    names = []
    for name in parents:
        field = message.fields_by_name[name]
        names.append(field.json_name)
        message = message_of(field)
    names.append(message.fields_by_name[leaf].json_name)
    return ".".join(names)
