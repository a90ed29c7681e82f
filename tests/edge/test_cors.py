"""CORS (``http.cors``, API.md "Browsers"): an allowed origin's preflight is answered before authentication
and rate limits; every answer to it (results, errors, 401s, 429s, the compatibility surfaces') carries the
CORS headers and exposes ``RateLimit-*``, ``Retry-After`` and ``X-Request-Id``; other origins get none.

The whole gateway runs in-process (:func:`gateway.app.create_gateway`), so the surfaces are the real ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from gateway.app import create_gateway
from gateway.config import CorsConfig, GatewayConfig

KEY = "cors-admin-key-0123456789abcdef"
ALLOWED = "http://app.example.test:3000"
OTHER = "http://evil.example.test"
EXPOSED = {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after", "x-request-id"}


def config(**overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "auth": {"keys": [{"name": "admin", "key": KEY, "permissions": ["*"]}]},
        "http": {"cors": {"allow_origins": [ALLOWED], "max_age_seconds": 120}},
        "rate_limits": {"limits": []},
        "surfaces": {
            "reflect": {"enabled": True, "apps": ["app"]},
            "signalwire": {"enabled": True, "project_id": "proj"},
        },
        **overrides,
    }
    return GatewayConfig.model_validate(data)


@asynccontextmanager
async def gateway_client(cfg: GatewayConfig) -> AsyncIterator[httpx.AsyncClient]:
    gateway = create_gateway(cfg)
    await gateway.backend.open()
    try:
        transport = httpx.ASGITransport(app=gateway.http_app, client=("198.51.100.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client
    finally:
        await gateway.backend.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(config()) as c:
        yield c


def preflight(origin: str, method: str = "GET", headers: str = "authorization") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def assert_cors(response: httpx.Response) -> None:
    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert exposed == EXPOSED
    assert response.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in response.headers  # no cookies, ever


@pytest.mark.parametrize(
    "path",
    [
        "/v1/rooms/lobby/variables/v",
        "/v1/rooms/lobby:listen",
        "/v1/apps/app/rooms",  # Reflect
        "/api/video/rooms",  # SignalWire
    ],
)
async def test_preflight_of_an_allowed_origin_is_answered_without_credentials(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.options(path, headers=preflight(ALLOWED, "PUT", "authorization, content-type"))
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_cors(response)
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key", "last-event-id"} <= allowed
    assert response.headers["access-control-max-age"] == "120"
    assert response.headers["x-request-id"]


async def test_preflight_of_another_origin_gets_no_cors_headers(client: httpx.AsyncClient) -> None:
    response = await client.options("/v1/rooms/lobby", headers=preflight(OTHER))
    assert response.status_code == 401  # not answered early: authenticated like any call, and refused
    assert cors_headers(response) == {}
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("origin", [OTHER, None, "http://app.example.test:3001", ALLOWED + "/"])
async def test_answers_to_other_origins_have_no_cors_headers(
    client: httpx.AsyncClient, origin: str | None
) -> None:
    headers = {"X-API-Key": KEY, **({"Origin": origin} if origin else {})}
    response = await client.put("/v1/rooms/lobby/variables/v", json={"value": 1}, headers=headers)
    assert response.status_code == 200
    assert cors_headers(response) == {}
    assert "vary" not in response.headers


async def test_results_and_errors_to_an_allowed_origin_carry_the_headers(client: httpx.AsyncClient) -> None:
    ok = await client.put(
        "/v1/rooms/lobby/variables/v", json={"value": 1}, headers={"X-API-Key": KEY, "Origin": ALLOWED}
    )
    assert ok.status_code == 200
    assert_cors(ok)
    cases = [
        ("GET", "/v1/rooms/lobby/variables/v", {}, 401),  # no credentials
        ("GET", "/v1/rooms/nowhere/variables/v", {"X-API-Key": KEY}, 404),
        ("GET", "/no/such/route", {"X-API-Key": KEY}, 404),  # Starlette's own 404
        ("POST", "/v1/rooms", {"X-API-Key": KEY, "Content-Type": "text/plain"}, 415),
        ("GET", "/v1/rooms/lobby/variables/v", {"X-API-Key": KEY, "Content-Length": "1"}, 400),  # a body
        ("GET", "/v1/apps/app/rooms", {}, 401),  # Reflect's own refusal, in its shape
        ("GET", "/api/video/rooms/none", {"Authorization": "Basic eDp5"}, 401),  # SignalWire's
        ("GET", "/v1/apps/app/rooms", {"Authorization": f"Basic {KEY}"}, 200),
    ]
    for method, path, headers, status in cases:
        body = b"x" if method == "POST" or "Content-Length" in headers else None
        response = await client.request(method, path, headers={**headers, "Origin": ALLOWED}, content=body)
        assert response.status_code == status, (path, response.text)
        assert_cors(response)


async def test_rate_limits_do_not_count_preflights_and_429s_carry_the_headers() -> None:
    limited = config(rate_limits={"limits": [{"by": "ip", "limit": "2/minute"}]})
    async with gateway_client(limited) as client:
        for _ in range(5):  # answered before the limits: never counted, never refused
            assert (await client.options("/v1/rooms/r", headers=preflight(ALLOWED))).status_code == 204
        headers = {"X-API-Key": KEY, "Origin": ALLOWED}
        first = await client.get("/v1/rooms", headers=headers)
        assert first.status_code == 200
        assert_cors(first)
        assert first.headers["ratelimit-remaining"] == "1"
        await client.get("/v1/rooms", headers=headers)
        refused = await client.get("/v1/rooms", headers=headers)
        assert refused.status_code == 429
        assert_cors(refused)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        # Another origin's preflight is a call like any other: limited (and it carries no CORS header).
        other = await client.options("/v1/rooms/r", headers=preflight(OTHER))
        assert other.status_code == 429 and cors_headers(other) == {}


async def test_off_by_default() -> None:
    async with gateway_client(config(http={})) as client:
        response = await client.options("/v1/rooms/r", headers=preflight(ALLOWED))
        assert response.status_code == 401
        assert cors_headers(response) == {}
        get = await client.get("/v1/rooms", headers={"X-API-Key": KEY, "Origin": ALLOWED})
        assert get.status_code == 200 and cors_headers(get) == {}


async def test_any_origin() -> None:
    async with gateway_client(config(http={"cors": {"allow_origins": ["*"]}})) as client:
        response = await client.options("/v1/rooms/r", headers=preflight(OTHER))
        assert response.status_code == 204
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["access-control-max-age"] == "600"
        assert "vary" not in response.headers  # the same answer for every origin


@pytest.mark.parametrize(
    "origin", ["app.example.com", "https://app.example.com/", "https://app.example.com/path", "", "https://"]
)
def test_origins_are_validated(origin: str) -> None:
    with pytest.raises(ValidationError, match="expected an origin"):
        CorsConfig(allow_origins=[origin])


async def test_no_cors_stage_unless_configured() -> None:
    assert create_gateway(config(http={})).http_app._cors is None  # the default path pays nothing for it
    assert create_gateway(config()).http_app._cors is not None
