"""Every credential form of API.md, on REST: 401 with WWW-Authenticate, 403 without the permission."""

from __future__ import annotations

import base64

import httpx
import pytest

from gateway.auth.policy import WWW_AUTHENTICATE
from tests.conftest import ADMIN_KEY, READER_KEY


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def forms(key: str) -> list[dict[str, str]]:
    return [
        {"X-API-Key": key},
        {"Authorization": f"Bearer {key}"},
        {"Authorization": basic(f"user:{key}")},
        {"Authorization": basic(f":{key}")},
        {"Authorization": f"Basic {key}"},  # Reflect's raw form
    ]


@pytest.mark.parametrize(
    "headers", forms(ADMIN_KEY), ids=["x-api-key", "bearer", "basic", "basic-no-user", "raw"]
)
async def test_each_credential_form_authenticates(
    anonymous: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await anonymous.post("/v1/rooms", json={"roomId": "r"}, headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        *forms("wrong-key-0123456789"),
        {"Authorization": "Bearer"},
        {"Authorization": "Digest abc"},
        {"Authorization": basic("user:")},
        {"X-API-Key": ""},
    ],
)
async def test_missing_or_wrong_credentials_are_401(
    anonymous: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [("GET", "/v1/rooms"), ("GET", "/openapi.json"), ("GET", "/nowhere")]:
        response = await anonymous.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == WWW_AUTHENTICATE
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"
        assert ADMIN_KEY not in response.text


@pytest.mark.parametrize("headers", forms(READER_KEY))
async def test_reader_may_read_but_not_write(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await client.put("/v1/rooms/r/variables/v", json={"value": 1})
    assert (await anonymous.get("/v1/rooms/r/variables/v", headers=headers)).status_code == 200
    for method, path, body in [
        ("PUT", "/v1/rooms/r/variables/v", {"value": 2}),
        ("POST", "/v1/rooms", {"roomId": "s"}),
        ("POST", "/v1/rooms/r:close", None),
        ("POST", "/v1/connections:invalidate", None),
    ]:
        response = await anonymous.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["status"] == "PERMISSION_DENIED"
        assert "www-authenticate" not in response.headers
