"""Bad input of any kind gets a 4xx in the native error shape, never a 500 or a stack trace."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from tests.conftest import ADMIN_KEY

JSON = {"content-type": "application/json"}


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == status and body["error"]["status"] == code
    assert "Traceback" not in response.text
    for word in words:
        assert word in body["error"]["message"], body


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": ', ["not valid JSON"]),
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": NaN}', ["not valid JSON"]),
        ("PUT", "/v1/rooms/r/variables/v", b"[1, 2]", ["must be a JSON object"]),
        ("PUT", "/v1/rooms/r/variables/v", b'"text"', ["must be a JSON object"]),
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": 1, "extra": 2}', ["unknown field", "extra"]),
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": 1, "expectedVersion": "x"}', ["expectedVersion"]),
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": 1, "expectedVersion": 1.5}', ["expectedVersion"]),
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": 1, "expectedVersion": true}', ["expectedVersion"]),
        (
            "PUT",
            "/v1/rooms/r/variables/v",
            b'{"value": 1, "expectedVersion": "99999999999999999999"}',
            ["out of range"],
        ),
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": 1, "expectedVersion": -1}', ["expectedVersion"]),
        (
            "PUT",
            "/v1/rooms/r/variables/v",
            b'{"value": 1, "expectedVersion": 1, "expected_version": 1}',
            ["twice"],
        ),
        ("PUT", "/v1/rooms/r/variables/v", b'{"value": 1, "name": "w"}', ["name"]),
        ("POST", "/v1/rooms", b'{"roomId": 5}', ["room.roomId"]),
        ("POST", "/v1/rooms", b'{"roomId": "r", "settings": [1]}', ["room.settings"]),
        ("POST", "/v1/rooms", b'{"roomId": "r", "settings": "big"}', ["room.settings"]),
        ("POST", "/v1/rooms", b'{"roomId": "r", "status": "MAYBE"}', ["room.status"]),
        ("POST", "/v1/rooms", b'{"roomId": "r", "createTime": "yesterday"}', ["room.createTime"]),
        ("POST", "/v1/rooms", b'{"roomId": "r", "jurisdiction": "us"}', ["jurisdiction"]),
        ("POST", "/v1/rooms", b'{"roomId": "r", "nested": {"x": 1}}', ["unknown field", "room.nested"]),
        ("POST", "/v1/rooms", b'{"room": {"roomId": "r"}}', ["unknown field"]),
        ("POST", "/v1/rooms", b"{}", ["room_id"]),
        ("POST", "/v1/rooms", b'{"roomId": "' + b"x" * 513 + b'"}', ["longer than 512"]),
        ("POST", "/v1/rooms", b'{"roomId": "a\\u0000b"}', ["control"]),
        ("PATCH", "/v1/rooms/r", b'{"displayName": 1}', ["room.displayName"]),
        ("POST", "/v1/rooms/r/events/e", b'{"data": 1, "time": 5}', ["time"]),
        ("POST", "/v1/rooms/r:close", b'{"force": true}', ["unknown field", "force"]),
        ("POST", "/v1/rooms/r:close", b'{"roomId": "other"}', ["differs"]),
        ("GET", "/v1/rooms/r", b'{"x": 1}', ["takes no body"]),
        ("POST", "/v1/rooms", b"\xff\xfe", ["not valid JSON"]),
    ],
)
async def test_bad_bodies_are_400(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, words: list[str]
) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    response = await client.request(method, path, content=body, headers=JSON)
    assert_error(response, 400, "INVALID_ARGUMENT", *words)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/v1/rooms?unknown=1", ["unknown query parameter", "unknown"]),
        ("/v1/rooms?maxResults=ten", ["maxResults"]),
        ("/v1/rooms?maxResults=1&maxResults=2", ["more than once"]),
        ("/v1/rooms?maxResults=4294967296", ["out of range"]),
        ("/v1/rooms?startKey=%FF", ["UTF-8"]),
        ("/v1/rooms/r?view=full", ["unknown query parameter"]),
        ("/v1/rooms/r/variables/v?name=w", ["unknown query parameter"]),
        ("/v1/rooms/" + "x" * 513, ["longer than 512"]),
        ("/v1/rooms/r/variables/" + "n" * 257, ["longer than 256"]),
        ("/v1/rooms/a%00b", ["control"]),
        ("/v1/rooms/%FF", ["UTF-8"]),
        ("/v1/rooms/r/variables/a%2Fb", ["must not contain '/'"]),
    ],
)
async def test_bad_urls_are_400(client: httpx.AsyncClient, path: str, words: list[str]) -> None:
    assert_error(await client.get(path), 400, "INVALID_ARGUMENT", *words)


async def test_query_parameters_on_a_body_star_binding_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/rooms/r/variables/v?value=1", json={"value": 1})
    assert_error(response, 400, "INVALID_ARGUMENT", "unknown query parameter")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json"]
)
async def test_non_json_body_is_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.put("/v1/rooms/r/variables/v", content=b'{"value": 1}', headers=headers)
    assert_error(response, 415, "INVALID_ARGUMENT", "application/json")


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_content_types_are_accepted(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.put(
        "/v1/rooms/r/variables/v", content=b'{"value": 1}', headers={"content-type": content_type}
    )
    assert response.status_code == 200


async def test_empty_body_needs_no_content_type(client: httpx.AsyncClient) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    assert (await client.post("/v1/rooms/r:close")).status_code == 200


@pytest.fixture
def small_app(dispatcher: Dispatcher) -> Starlette:
    return create_http_app(dispatcher, max_body_bytes=64)


async def test_body_over_the_limit_is_413(small_app: Starlette) -> None:
    body = b'{"value": "' + b"x" * 100 + b'"}'
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(small_app), base_url="http://t", headers={"X-API-Key": ADMIN_KEY}
    ) as client:
        response = await client.put("/v1/rooms/r/variables/v", content=body, headers=JSON)
        assert_error(response, 413, "INVALID_ARGUMENT", "64 bytes")

        async def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(10):
                yield b"x" * 10

        response = await client.put("/v1/rooms/r/variables/v", content=chunks(), headers=JSON)
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "INVALID_ARGUMENT")
        ok = await client.put("/v1/rooms/r/variables/v", content=b'{"value": 1}', headers=JSON)
        assert ok.status_code == 200


async def test_default_limit_is_one_mebibyte(client: httpx.AsyncClient) -> None:
    body = b'{"value": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.put("/v1/rooms/r/variables/v", content=body, headers=JSON)
    assert_error(response, 413, "INVALID_ARGUMENT")


async def test_unexpected_errors_are_a_generic_500(
    client: httpx.AsyncClient,
    dispatcher: Dispatcher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(**kwargs: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setitem(dispatcher._handlers, "GetRoom", broken)
    response = await client.get("/v1/rooms/r")
    assert_error(response, 500, "INTERNAL")
    assert "secret" not in response.text
    assert "secret detail" in caplog.text  # logged with its traceback instead
