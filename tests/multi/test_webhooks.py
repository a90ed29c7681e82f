"""Webhooks that lose nothing, with real ``room-gateway serve`` processes and a real receiver that verifies
every signature with ``standardwebhooks``: ``kill -9`` under write load while the receiver is down, then
every acknowledged change reaches it once restarted (SQLite, PostgreSQL, Redis); two instances on one
PostgreSQL or Redis deliver every message, none twice; the webhook worker of a gateway killed with
``kill -9`` does not outlive it. These gateways deliver in their worker process (the default on these
stores), so the kill -9 tests cover it too."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.multi.conftest import WAIT, eventually, gateway_config, rest, write_until_gone
from tests.server.conftest import KEY, GatewayProcess, gateway_env
from tests.webhooks.receiver import SECRET, Receiver

ROOM = "hooked"
WRITERS = 6
#: Acknowledged writes to wait for before the kill.
BEFORE_KILL = 150

StartHooked = Callable[[str, str], GatewayProcess]
WORKER_STARTED = re.compile(r"webhooks worker started \(pid (\d+)\)")


def hooked_config(backend: str, url: str) -> str:
    # Retries every half second for long enough to outlast the test; timeout 1 s, so a lease is 7 s.
    schedule = [0] + [0.5] * 99
    return gateway_config(backend) + (
        "webhooks:\n"
        "  endpoints:\n"
        f"    - {{name: app, url: {json.dumps(url)}, secret: {json.dumps(SECRET)}, timeout_seconds: 1}}\n"
        f"  retry_schedule_seconds: {json.dumps(schedule)}\n"
        "  poll_seconds: 0.2\n"
    )


@pytest.fixture
def start_hooked(tmp_path: Path) -> Iterator[StartHooked]:
    """``start_hooked(backend, receiver_url)`` → a running gateway posting to the receiver."""
    started: list[GatewayProcess] = []

    def start(backend: str, url: str) -> GatewayProcess:
        config = tmp_path / f"gateway-{uuid.uuid4().hex[:8]}.yaml"
        config.write_text(hooked_config(backend, url), encoding="utf-8")
        process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=KEY))
        started.append(process)
        if len(process.addresses) < 2:
            process.stop()
            raise AssertionError(f"the gateway on {backend} did not start:\n{process.log}")
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rooms.db'}"
    return str(request.getfixturevalue("postgres_url" if request.param == "postgresql" else "redis_url"))


def set_names(receiver: Receiver) -> dict[str, object]:
    """Variable name → value of every variable.set the receiver got."""
    found = {}
    for delivery in list(receiver.delivered.values()):
        change = delivery.body["data"]["change"]
        if delivery.body["type"] == "variable.set":
            found[change["variable"]["name"]] = change["variable"]["value"]
    return found


async def test_kill_9_with_the_receiver_down_loses_no_acknowledged_change(
    store: str, start_hooked: StartHooked
) -> None:
    receiver = Receiver().start()
    url = receiver.url
    receiver.stop()  # down: its port refuses connections until it starts again on it
    gateway = await asyncio.to_thread(start_hooked, store, url)
    acknowledged: dict[str, int] = {}
    deadline = time.monotonic() + 20

    async with rest(gateway, timeout=5) as http:
        assert (await http.post("/v1/rooms", json={"roomId": ROOM})).status_code == 200

        writers = [
            asyncio.create_task(write_until_gone(http, ROOM, f"w{n}-", 1000, acknowledged, deadline))
            for n in range(WRITERS)
        ]
        try:
            await eventually(
                lambda: len(acknowledged) >= BEFORE_KILL, what=f"{BEFORE_KILL} acknowledged writes"
            )
            gateway.proc.kill()  # SIGKILL, mid-load, with every message still undelivered
        finally:
            await asyncio.wait_for(asyncio.gather(*writers), WAIT)
    assert gateway.wait(WAIT) == -9

    restarted = Receiver(port=int(url.rsplit(":", 1)[1].split("/")[0])).start()
    try:
        await asyncio.to_thread(start_hooked, store, url)
        await asyncio.to_thread(restarted.wait_for, lambda r: set(acknowledged) <= set(set_names(r)), 30.0)
        got = set_names(restarted)
        assert all(got[name] == value for name, value in acknowledged.items())
        assert restarted.bad_signatures == 0
    finally:
        restarted.stop()


@pytest.mark.parametrize("shared", ["postgres_url", "redis_url"], ids=["postgresql", "redis"])
async def test_two_instances_deliver_every_message_once(
    shared: str, request: pytest.FixtureRequest, start_hooked: StartHooked
) -> None:
    store = str(request.getfixturevalue(shared))
    receiver = Receiver().start()
    try:
        one, two = await asyncio.gather(
            asyncio.to_thread(start_hooked, store, receiver.url),
            asyncio.to_thread(start_hooked, store, receiver.url),
        )
        async with rest(one) as first, rest(two) as second:
            assert (await first.post("/v1/rooms", json={"roomId": ROOM})).status_code == 200

            async def writer(client: httpx.AsyncClient, worker: int) -> None:
                for n in range(50):
                    response = await client.put(
                        f"/v1/rooms/{ROOM}/variables/w{worker}-{n}", json={"value": n}
                    )
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(writer(client, n) for n, client in enumerate([first, second] * 2)))
        expected = 1 + 4 * 50  # room.created and every set
        await asyncio.to_thread(receiver.wait_for, lambda r: len(r.delivered) >= expected, 30.0)
        await asyncio.sleep(1.0)  # anything sent twice would come by now
        assert len(receiver.delivered) == expected
        twice = {message_id: n for message_id, n in receiver.attempts.items() if n > 1}
        assert not twice, f"sent more than once: {twice}"
        assert receiver.bad_signatures == 0
    finally:
        receiver.stop()


def worker_pid(gateway: GatewayProcess) -> int:
    """The pid of the webhook worker that ``gateway`` logged starting (its last one)."""
    found = [int(m.group(1)) for line in gateway.lines if (m := WORKER_STARTED.search(line))]
    assert found, f"no webhook worker started:\n{gateway.log}"
    return found[-1]


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by its new parent counts as exited)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True


async def test_the_worker_of_a_gateway_killed_with_kill_9_exits_too(
    start_hooked: StartHooked, tmp_path: Path
) -> None:
    receiver = Receiver().start()
    try:
        gateway = await asyncio.to_thread(start_hooked, f"sqlite:///{tmp_path / 'rooms.db'}", receiver.url)
        # Its log lines come on the gateway's output, in its format, named as the worker's.
        await eventually(
            lambda: "room_gateway.webhooks[worker]: webhooks worker (pid" in gateway.log,
            what="the worker's line saying it delivers",
        )
        pid = worker_pid(gateway)
        assert not gone(pid)
        gateway.proc.kill()
        assert gateway.wait(WAIT) == -9
        await eventually(lambda: gone(pid), what=f"the orphaned worker {pid} to exit")
    finally:
        receiver.stop()
