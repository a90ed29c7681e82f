"""``?access_token=`` (RFC 6750 §2.3, API.md "Browsers"): accepted on streaming GET routes, for keys and room
tokens, as a browser's ``EventSource`` needs; refused with a 400 anywhere else, when given twice, or beside
a credential header. (That it never reaches a log or a metric: tests/security/test_accesslog.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from room_gateway_plugins.memory import MemoryBackend
from starlette.applications import Starlette

from gateway.auth.policy import AuthPolicy
from gateway.auth.tokens import RoomTokenIssuer
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from tests.conftest import ADMIN_KEY, FrozenClock
from tests.edge.conftest import BASE_URL, AsgiCall

SECRET = "access-token-test-secret-0123456789abcdef"


@pytest.fixture
def dispatcher(backend: MemoryBackend, clock: FrozenClock, policy: AuthPolicy) -> Dispatcher:
    issuer = RoomTokenIssuer(SECRET, roles={"guest": ["variables:read", "events:listen"]}, clock=clock)
    service = RoomService(backend, clock=clock, tokens=issuer)
    presence = PresenceRegistry(backend, clock=clock)
    return Dispatcher(service, AuthPolicy(policy.keys, tokens=issuer), presence=presence)


@pytest.fixture
async def anonymous(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE_URL) as c:
        yield c


async def open_stream(app: Starlette, path: str, headers: dict[str, str] | None = None) -> AsgiCall:
    call = AsgiCall(app, "GET", path, headers or {})
    await call.start()
    return call


async def guest_token(client: httpx.AsyncClient, room: str = "r") -> str:
    response = await client.post(f"/v1/rooms/{room}/tokens", json={"userName": "ann", "role": "guest"})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def assert_refused(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == ("INVALID_ARGUMENT" if status == 400 else "UNAUTHENTICATED")
    for needle in needles:
        assert needle in error["message"]


async def test_a_key_opens_a_stream(app: Starlette, client: httpx.AsyncClient) -> None:
    await client.put("/v1/rooms/r/variables/v", json={"value": 1})
    call = await open_stream(app, f"/v1/rooms/r/variables/v:listen?access_token={quote(ADMIN_KEY)}")
    try:
        assert call.status == 200
        assert call.headers["content-type"] == "text/event-stream"
        assert b'"value":1' in await call.chunk()
    finally:
        await call.disconnect()


async def test_the_name_may_be_percent_encoded(app: Starlette, client: httpx.AsyncClient) -> None:
    call = await open_stream(app, f"/v1/rooms/r:listen?access%5Ftoken={quote(ADMIN_KEY)}")
    try:
        assert call.status == 200
    finally:
        await call.disconnect()
    refused = await client.get(f"/v1/rooms/r?access%5Ftoken={ADMIN_KEY}")
    assert_refused(refused, 400, "only on streaming GET routes")


async def test_a_room_token_opens_a_resumable_stream_and_is_present(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await client.put("/v1/rooms/r/variables/v", json={"value": 1})
    token = await guest_token(client)
    # The other query parameters are still bound: access_token is taken out before the transcoder sees it.
    call = await open_stream(app, f"/v1/rooms/r:listen?access_token={token}&afterSeq=0&kinds=VARIABLE_SET")
    try:
        assert call.status == 200
        assert await call.chunk() == b"retry: 1000\n\n"
        assert b"VARIABLE_SET" in await call.chunk()
        presence = (await client.get("/v1/rooms/r/presence")).json()
        assert [m["userId"] for m in presence["members"]] == ["ann"]
    finally:
        await call.disconnect()


async def test_a_value_that_mentions_access_token_is_only_a_value(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await client.put("/v1/rooms/r/variables/access_token", json={"value": 1})
    call = await open_stream(app, "/v1/rooms/r:listen?namePrefix=access_token", {"x-api-key": ADMIN_KEY})
    try:
        assert call.status == 200
    finally:
        await call.disconnect()
    response = await client.get("/v1/rooms/r/variables/access_token")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/rooms/r/variables/v"),  # not a stream
        ("GET", "/v1/rooms"),
        ("PUT", "/v1/rooms/r/variables/v"),
        ("POST", "/v1/rooms/r/tokens"),
        ("GET", "/healthz"),  # public paths too: a token has no business in any other URL
        ("GET", "/metrics"),
        ("GET", "/v1/apps/app/rooms"),  # a compatibility surface's path
        ("GET", "/nowhere"),
    ],
)
async def test_refused_off_streaming_gets(anonymous: httpx.AsyncClient, method: str, path: str) -> None:
    response = await anonymous.request(method, f"{path}?access_token={ADMIN_KEY}", json={"value": 1})
    assert_refused(response, 400, "only on streaming GET routes")
    assert ADMIN_KEY not in response.text


async def test_refused_beside_a_header_or_twice(app: Starlette, anonymous: httpx.AsyncClient) -> None:
    path = "/v1/rooms/r/variables/v:listen"
    for headers in ({"X-API-Key": ADMIN_KEY}, {"Authorization": f"Bearer {ADMIN_KEY}"}):
        response = await anonymous.get(f"{path}?access_token={ADMIN_KEY}", headers=headers)
        assert_refused(response, 400, "one way")
    response = await anonymous.get(f"{path}?access_token={ADMIN_KEY}&access_token={ADMIN_KEY}")
    assert_refused(response, 400, "more than once")
    assert ADMIN_KEY not in response.text


async def test_a_wrong_token_is_a_401_that_does_not_repeat_it(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/v1/rooms/r/variables/v:listen?access_token=not-a-key-123456789")
    assert_refused(response, 401)
    assert "not-a-key" not in response.text
    assert "www-authenticate" in response.headers


async def test_a_token_for_another_room_is_refused(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    token = await guest_token(client, "other")
    refused = await anonymous.get(f"/v1/rooms/r:listen?access_token={token}")
    assert refused.status_code == 403
    assert token not in refused.text
