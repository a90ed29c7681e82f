"""Presence across instances: an instance killed with SIGKILL stops counting within the presence timeout.

Two gateways on one store (PostgreSQL, Redis); alice listens through both, bob through A only. A is killed:
its connections leave within ``presence.timeout_seconds`` plus a heartbeat interval and a little slack, and
the survivor logs one MEMBER_LEFT — for bob, whose last connection A held; alice stays, with one connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.multi.conftest import WAIT, eventually, gateway_config, rest, sse_listen
from tests.server.conftest import KEY, GatewayProcess, gateway_env

TIMEOUT = 2.0
SECRET = "multi-presence-room-token-secret-0123456789"


@pytest.fixture
def start_present_gateway(tmp_path: Path) -> Iterator[Any]:
    """A gateway with room tokens and a short presence timeout; all are stopped afterwards."""
    started: list[GatewayProcess] = []

    def start(backend: str) -> GatewayProcess:
        config = tmp_path / f"gateway-{len(started)}.yaml"
        text = gateway_config(backend).replace(
            "auth:\n", f'auth:\n  room_tokens: {{secret: "{SECRET}", roles: {{guest: ["events:listen"]}}}}\n'
        )
        config.write_text(text + f"presence: {{timeout_seconds: {TIMEOUT}}}\n", encoding="utf-8")
        process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=KEY))
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def token(http: httpx.AsyncClient, user: str) -> str:
    response = await http.post("/v1/rooms/r/tokens", json={"userName": user, "role": "guest"})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def as_user(gateway: GatewayProcess, user_token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.http_url, headers={"Authorization": f"Bearer {user_token}"}, timeout=WAIT
    )


async def test_a_killed_instance_stops_counting_within_the_timeout(
    shared_store: str, start_present_gateway: Any
) -> None:
    a, b = start_present_gateway(shared_store), start_present_gateway(shared_store)
    async with rest(b) as admin, contextlib.AsyncExitStack() as streams:
        assert (await admin.post("/v1/rooms", json={"roomId": "r"})).status_code == 200
        alice, bob = await token(admin, "alice"), await token(admin, "bob")
        for gateway, user_token in ((a, alice), (a, bob), (b, alice)):
            client = await streams.enter_async_context(as_user(gateway, user_token))
            await streams.enter_async_context(sse_listen(client, "/v1/rooms/r/events/chat:listen"))

        async def presence() -> dict[str, Any]:
            return dict((await admin.get("/v1/rooms/r/presence")).json())

        got = await presence()
        assert (got["numUsers"], got["numConnections"]) == (2, 3), got

        a.proc.kill()  # SIGKILL: no leave is ever written by A
        killed = time.monotonic()

        async def only_alice_left() -> bool:
            now = await presence()
            return [(m["userId"], m["connections"]) for m in now.get("members", [])] == [("alice", 1)]

        await eventually(only_alice_left, within=TIMEOUT + TIMEOUT / 3 + 5, what="A's connections to expire")
        assert time.monotonic() - killed >= TIMEOUT - 0.5  # not before the timeout: A might have lived
        changes = await admin.get("/v1/rooms/r/changes", params={"kinds": "MEMBER_LEFT"})
        assert changes.status_code == 200, changes.text
        left = [c["member"]["userId"] for c in changes.json().get("changes", [])]
        assert left == ["bob"]
