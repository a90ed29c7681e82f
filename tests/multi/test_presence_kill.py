"""Presence across instances: a killed instance stops counting at its deadline, a paused one comes back.

* Killed: two gateways on one store (PostgreSQL, Redis); alice listens through both, bob through A only. A
  is killed with SIGKILL: its connections leave within ``presence.timeout_seconds`` of the kill plus a little
  slack — less than a heartbeat interval, so expiry cannot wait for a survivor's heartbeat — and the survivor
  logs one MEMBER_LEFT, for bob, whose last connection A held; alice stays, with one connection. On SQLite
  (one process at a time), the same across a restart: the new process expires its killed predecessor.
* Paused: A is stopped (SIGSTOP) past the timeout, so the store expires it (bob leaves) although its streams
  are still open; once continued (SIGCONT), its next heartbeat learns it and rejoins: bob joins again and
  presence is back to the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.multi.conftest import WAIT, eventually, gateway_config, rest, sse_listen
from tests.server.conftest import KEY, GatewayProcess, gateway_env

#: The presence timeout of these gateways: heartbeats every TIMEOUT / 3 = 1.33 s.
TIMEOUT = 4.0
INTERVAL = TIMEOUT / 3
#: How late past its deadline an instance may leave: the sweep, and this test's polling (0.1 s).
SLACK = 1.0
SECRET = "multi-presence-room-token-secret-0123456789"


@pytest.fixture
def start_present_gateway(tmp_path: Path) -> Iterator[Any]:
    """A gateway with room tokens and a short presence timeout; all are stopped (continued first)."""
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
        if process.proc.poll() is None:
            process.proc.send_signal(signal.SIGCONT)  # a test that failed while it was stopped
        process.stop()


async def token(http: httpx.AsyncClient, user: str) -> str:
    response = await http.post("/v1/rooms/r/tokens", json={"userName": user, "role": "guest"})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def as_user(gateway: GatewayProcess, user_token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.http_url, headers={"Authorization": f"Bearer {user_token}"}, timeout=WAIT
    )


@contextlib.asynccontextmanager
async def listening(admin: httpx.AsyncClient, *who: tuple[GatewayProcess, str]) -> AsyncIterator[None]:
    """Room-token streams of (gateway, user) in room ``r``, open until the block ends."""
    tokens: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as streams:
        for gateway, user in who:
            tokens.setdefault(user, await token(admin, user))
            client = await streams.enter_async_context(as_user(gateway, tokens[user]))
            await streams.enter_async_context(sse_listen(client, "/v1/rooms/r/events/chat:listen"))
        yield


async def members(admin: httpx.AsyncClient) -> list[tuple[str, int]]:
    got = (await admin.get("/v1/rooms/r/presence")).json()
    return [(m["userId"], m["connections"]) for m in got.get("members", [])]


async def member_log(admin: httpx.AsyncClient) -> list[tuple[str, str]]:
    changes = await admin.get("/v1/rooms/r/changes", params={"kinds": ["MEMBER_JOINED", "MEMBER_LEFT"]})
    assert changes.status_code == 200, changes.text
    return [(c["kind"], c["member"]["userId"]) for c in changes.json().get("changes", [])]


async def wait_members(
    admin: httpx.AsyncClient, want: list[tuple[str, int]], within: float, what: str
) -> float:
    """Wait until presence is ``want``; return when it was seen (``time.monotonic()``)."""

    async def seen() -> bool:
        return await members(admin) == want

    await eventually(seen, within=within, what=what)
    return time.monotonic()


JOINED, LEFT = "MEMBER_JOINED", "MEMBER_LEFT"


async def test_a_killed_instance_stops_counting_at_its_deadline(
    shared_store: str, start_present_gateway: Any
) -> None:
    a, b = start_present_gateway(shared_store), start_present_gateway(shared_store)
    async with rest(b) as admin:
        assert (await admin.post("/v1/rooms", json={"roomId": "r"})).status_code == 200
        async with listening(admin, (a, "alice"), (a, "bob"), (b, "alice")):
            assert await members(admin) == [("alice", 2), ("bob", 1)]
            a.proc.kill()  # SIGKILL: no leave is ever written by A
            killed = time.monotonic()
            gone = await wait_members(admin, [("alice", 1)], TIMEOUT + SLACK + 1, "A's connections to expire")
            # A's deadline is its last heartbeat (at most an interval before the kill) plus the timeout.
            assert TIMEOUT - INTERVAL - 0.2 <= gone - killed <= TIMEOUT + SLACK, gone - killed
            assert await member_log(admin) == [(JOINED, "alice"), (JOINED, "bob"), (LEFT, "bob")]


async def test_a_restarted_sqlite_gateway_expires_its_killed_predecessor(
    tmp_path: Path, start_present_gateway: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'rooms.db'}"
    first = start_present_gateway(url)
    async with rest(first) as admin:
        assert (await admin.post("/v1/rooms", json={"roomId": "r"})).status_code == 200
        async with listening(admin, (first, "alice")):
            assert await members(admin) == [("alice", 1)]
            first.proc.kill()
            killed = time.monotonic()
    second = start_present_gateway(url)  # another process: another instance id
    async with rest(second) as admin:
        assert await members(admin) == [("alice", 1)]  # the store still counts the dead instance
        gone = await wait_members(admin, [], TIMEOUT + SLACK + 1, "the killed instance to expire")
        assert gone - killed <= TIMEOUT + SLACK, gone - killed
        assert await member_log(admin) == [(JOINED, "alice"), (LEFT, "alice")]


async def test_a_paused_instance_rejoins_when_it_comes_back(
    shared_store: str, start_present_gateway: Any
) -> None:
    a, b = start_present_gateway(shared_store), start_present_gateway(shared_store)
    async with rest(b) as admin:
        assert (await admin.post("/v1/rooms", json={"roomId": "r"})).status_code == 200
        async with listening(admin, (a, "alice"), (a, "bob"), (b, "alice")):
            assert await members(admin) == [("alice", 2), ("bob", 1)]
            a.proc.send_signal(signal.SIGSTOP)  # alive, streams open, but silent past the timeout
            try:
                await wait_members(
                    admin, [("alice", 1)], TIMEOUT + SLACK + 1, "the paused instance to expire"
                )
                assert await member_log(admin) == [(JOINED, "alice"), (JOINED, "bob"), (LEFT, "bob")]
            finally:
                a.proc.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            back = await wait_members(admin, [("alice", 2), ("bob", 1)], INTERVAL + SLACK + 1, "A to rejoin")
            assert back - resumed <= INTERVAL + SLACK, back - resumed  # at its next heartbeat (overdue: now)
            # alice never left (B kept her); bob joins again; and nothing else happens after that.
            want = [(JOINED, "alice"), (JOINED, "bob"), (LEFT, "bob"), (JOINED, "bob")]
            assert await member_log(admin) == want
            await asyncio.sleep(INTERVAL * 2)  # more heartbeats: alive now, they rejoin nothing
            assert await member_log(admin) == want
            assert await members(admin) == [("alice", 2), ("bob", 1)]
        # A's streams still work after the pause: closing them leaves as ever.
        await wait_members(admin, [], WAIT, "every stream's leave")
        assert sorted((await member_log(admin))[4:]) == [(LEFT, "alice"), (LEFT, "bob")]
