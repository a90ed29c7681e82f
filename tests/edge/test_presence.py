"""Presence over REST: room-token SSE streams make their users present, GetPresence and numUsers show it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from room_gateway_plugins.memory import MemoryBackend
from starlette.applications import Starlette

from gateway.auth.policy import AuthPolicy
from gateway.auth.tokens import RoomTokenIssuer
from gateway.core.models import ChangeKind
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from tests.conftest import FrozenClock
from tests.edge.conftest import AsgiCall

SECRET = "rest-presence-token-secret-0123456789abcdef"


@pytest.fixture
def presence(backend: MemoryBackend, clock: FrozenClock) -> PresenceRegistry:
    return PresenceRegistry(backend, clock=clock)


@pytest.fixture
def dispatcher(
    backend: MemoryBackend, clock: FrozenClock, policy: AuthPolicy, presence: PresenceRegistry
) -> Dispatcher:
    issuer = RoomTokenIssuer(SECRET, roles={"guest": ["variables:read", "events:listen"]}, clock=clock)
    service = RoomService(backend, clock=clock, tokens=issuer)
    return Dispatcher(service, AuthPolicy(policy.keys, tokens=issuer), presence=presence)


@pytest.fixture
def token_stream(app: Starlette) -> Iterator[Any]:
    """Open a stream with a room token only (no API key beside it)."""
    calls: list[AsgiCall] = []

    def start(path: str, token: str) -> AsgiCall:
        call = AsgiCall(app, "GET", path, {"authorization": f"Bearer {token}"})
        calls.append(call)
        return call

    yield start
    for call in calls:
        call.task.cancel()


async def mint(client: httpx.AsyncClient, user: str, **fields: Any) -> str:
    response = await client.post("/v1/rooms/r/tokens", json={"userName": user, "role": "guest", **fields})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


async def members_left(backend: MemoryBackend) -> list[str]:
    page = await backend.read_changes("r", after_seq=0, limit=100, kinds=frozenset({ChangeKind.MEMBER_LEFT}))
    return [c.member.user_id for c in page.changes if c.member is not None]


async def test_two_listeners_of_one_user_and_one_of_another(
    client: httpx.AsyncClient, token_stream: Any, backend: MemoryBackend, presence: PresenceRegistry
) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    alice = await mint(client, "alice", info={"name": "Alice"})
    bob = await mint(client, "bob")
    calls = [
        token_stream("/v1/rooms/r/events/chat:listen", alice),
        token_stream("/v1/rooms/r/variables/v:listen", alice),
        token_stream("/v1/rooms/r/events/chat:listen", bob),
    ]
    for call in calls:
        assert await call.start() == 200  # headers come once the join is written

    got = (await client.get("/v1/rooms/r/presence")).json()
    assert (got["numUsers"], got["numConnections"]) == (2, 3)
    assert [(m["userId"], m["connections"]) for m in got["members"]] == [("alice", 2), ("bob", 1)]
    assert got["members"][0]["info"] == {"name": "Alice"}
    assert got["members"][0]["joinTime"] == "2026-01-02T03:04:05Z"
    assert (await client.get("/v1/rooms/r")).json()["numUsers"] == 2
    listed = (await client.get("/v1/rooms", params={"minUsers": 2})).json()["results"]
    assert [(room["roomId"], room["numUsers"]) for room in listed] == [("r", 2)]
    assert (await client.get("/v1/rooms", params={"minUsers": 3})).json()["results"] == []

    expected: list[str] = []
    for call, leaver in zip(calls, [None, "alice", "bob"], strict=True):
        await call.disconnect()
        await presence.drain()
        expected += [leaver] if leaver else []
        assert await members_left(backend) == expected  # one MEMBER_LEFT per user's last connection
    got = (await client.get("/v1/rooms/r/presence")).json()
    assert got.get("numUsers", 0) == 0 and got.get("members", []) == []


async def test_presence_needs_its_permission(client: httpx.AsyncClient, reader: httpx.AsyncClient) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    response = await reader.get("/v1/rooms/r/presence")
    assert response.status_code == 403
    assert "presence:read" in response.json()["error"]["message"]


async def test_token_info_over_rest_is_checked(client: httpx.AsyncClient) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    response = await client.post(
        "/v1/rooms/r/tokens", json={"userName": "a", "role": "guest", "info": {"x": "y" * 2000}}
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
