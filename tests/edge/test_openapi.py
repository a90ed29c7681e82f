"""/openapi.json is derived from the HttpRules: every binding is in it, with its parameters and schemas."""

from __future__ import annotations

import httpx

from gateway import schema
from gateway.core.validation import MAX_ROOM_ID
from gateway.edge.http_rules import bindings


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"] == "3.1.0"
    operations = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    for binding in bindings():
        names = {v.field_path: schema.camel_case(v.field_path[-1]) for v in binding.template.variables}
        assert (binding.http_method, binding.template.openapi_path(names)) in operations
    list_rooms = doc["paths"]["/v1/rooms"]["get"]
    assert [(p["name"], p["in"]) for p in list_rooms["parameters"]] == [
        ("startKey", "query"), ("startAfterKey", "query"), ("roomId", "query"), ("maxResults", "query"),
        ("minUsers", "query"),
    ]  # fmt: skip
    room_id = list_rooms["parameters"][2]["schema"]
    assert room_id["type"] == "array" and room_id["items"]["minLength"] == 1
    assert room_id["items"]["maxLength"] == MAX_ROOM_ID  # the domain rule, from gateway.core.validation
    path_room_id = doc["paths"]["/v1/rooms/{roomId}"]["get"]["parameters"][0]["schema"]
    assert path_room_id == room_id["items"]
    set_variable = doc["paths"]["/v1/rooms/{roomId}/variables/{name}"]["put"]
    body = set_variable["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"value", "expectedVersion"}
    assert body["required"] == ["value"]
    assert body["properties"]["expectedVersion"]["minimum"] == 0
    room_schema = doc["components"]["schemas"]["roomgateway.v1.Room"]
    room = room_schema["properties"]
    assert room_schema["required"] == ["roomId"]
    # proto3 JSON: `null` is "not set" for every optional field.
    assert room["status"]["enum"] == ["STATUS_UNSPECIFIED", "OPEN", "CLOSED", "DELETED", None]
    # OUTPUT_ONLY in the proto (google.api.field_behavior): read-only; a request may send it, it is ignored.
    assert room["createTime"] == {"type": ["string", "null"], "format": "date-time", "readOnly": True}
    assert [name for name, prop in room.items() if prop.get("readOnly")] == [
        "status",
        "createTime",
        "updateTime",
        "numUsers",
    ]
    assert room["jurisdiction"]["enum"] == ["", "eu", None]
    listen = doc["paths"]["/v1/rooms/{roomId}/variables/{name}:listen"]["get"]["responses"]["200"]["content"]
    assert set(listen) == {"text/event-stream", "application/x-ndjson"}
    assert set(doc["components"]["securitySchemes"]) == {"ApiKey", "bearer", "basic", "accessToken"}
    assert doc["components"]["securitySchemes"]["accessToken"]["in"] == "query"
    streams = {path for path, item in doc["paths"].items() if "accessToken" in str(item.get("get", {}))}
    assert streams == {
        "/v1/rooms/{roomId}:listen",
        "/v1/rooms/{roomId}/variables/{name}:listen",
        "/v1/rooms/{roomId}/events/{name}:listen",
    }
    assert "accessToken" not in str(doc["security"])  # streaming GETs only
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


async def test_required_and_read_only_come_from_field_behavior(client: httpx.AsyncClient) -> None:
    """Every message schema's `required` and `readOnly` are the proto's REQUIRED and OUTPUT_ONLY fields."""
    components = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for name, component in components.items():
        if name == "Error":
            continue
        message = schema.message(name)
        assert component.get("required", []) == [f.json_name for f in message.fields if schema.is_required(f)]
        read_only = [json_name for json_name, prop in component["properties"].items() if prop.get("readOnly")]
        assert read_only == [f.json_name for f in message.fields if schema.is_output_only(f)], name
    token = components["roomgateway.v1.RoomToken"]["properties"]["token"]
    assert token["readOnly"] is True
    invalidate = (await client.get("/openapi.json")).json()["paths"][
        "/v1/rooms/{roomId}:invalidateConnections"
    ]
    # Not REQUIRED (the global form has none): the rule's minLength does not hold there.
    assert "minLength" not in invalidate["post"]["parameters"][0]["schema"]
