"""Deliveries in the gateway's worker process (``webhooks.delivery: process``), on real stores and a real
receiver: the default per backend; each shared store (SQLite, PostgreSQL, Redis) delivering through the
worker with its metrics on the gateway's registry and ``:test`` reaching it; SQLite written by both
processes at once without a failed write; ``kill -9`` of the worker mid-delivery."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import delivery_of
from gateway.observability.metrics import Metrics
from gateway.webhooks.channel import read_settings, settings_line
from gateway.webhooks.supervisor import Supervisor
from tests.multi.conftest import postgres_url, redis_url  # noqa: F401 - fixtures
from tests.webhooks.conftest import running, webhook_config
from tests.webhooks.receiver import Receiver


def deliveries(metrics: Metrics, outcome: str = "delivered") -> float:
    return metrics.sample("room_gateway_webhook_deliveries_total", endpoint="app", outcome=outcome)


def test_process_is_the_default_where_another_process_sees_the_outbox(tmp_path: Path) -> None:
    hooks = webhook_config("memory://", {"app": "http://127.0.0.1:9/hooks"}).webhooks
    assert delivery_of("memory://", hooks) == "inline"
    assert delivery_of("sqlite:///:memory:", hooks) == "inline"
    for shared in (f"sqlite:///{tmp_path}/rooms.db", "postgresql://h/db", "redis://h/0"):
        assert delivery_of(shared, hooks) == "process"
    inline = hooks.model_copy(update={"delivery": "inline"})
    assert delivery_of("redis://h/0", inline) == "inline"
    with pytest.raises(ValidationError, match=r"webhooks\.delivery: process needs an outbox"):
        webhook_config("memory://", {"app": "http://127.0.0.1:9/hooks"}, delivery="process")
    with pytest.raises(ValidationError):
        webhook_config("memory://", {"app": "http://127.0.0.1:9/hooks"}, worker_nice=20)


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rooms.db'}"
    return str(request.getfixturevalue("postgres_url" if request.param == "postgresql" else "redis_url"))


async def test_the_worker_delivers_and_its_metrics_are_the_gateways(
    receiver: Receiver, shared_url: str
) -> None:
    async with running(webhook_config(shared_url, {"app": receiver.url})) as (gateway, client):
        assert isinstance(gateway.webhooks, Supervisor) and gateway.webhooks.pid not in (None, os.getpid())
        metrics = gateway.metrics
        assert metrics is not None
        for n in range(20):
            answer = await client.put(f"/v1/rooms/lobby/variables/v{n}", json={"value": n})
            assert answer.status_code == 200, answer.text
        await receiver.until(lambda r: len(r.delivered) == 21)  # and room.created
        sent = await client.post("/v1/webhooks/app:test", json={})
        assert sent.status_code == 200
        await receiver.until(lambda r: sent.json()["messageId"] in r.delivered)
        await receiver.until(lambda _: deliveries(metrics) == 22)  # relayed twice a second
        assert metrics.sample("room_gateway_webhook_delivery_latency_seconds_count", endpoint="app") == 22
        assert metrics.sample("room_gateway_webhook_attempt_duration_seconds_count", endpoint="app") == 22
        assert metrics.sample("room_gateway_webhook_endpoint_disabled", endpoint="app") == 0
        exposed = metrics.exposition()[0].decode()
        assert 'room_gateway_webhook_deliveries_total{endpoint="app",outcome="delivered"} 22.0' in exposed
    assert receiver.bad_signatures == 0
    assert max(receiver.attempts.values()) == 1


@pytest.mark.parametrize("nice", [None, 0, 12])
async def test_the_worker_runs_at_its_priority(receiver: Receiver, tmp_path: Path, nice: int | None) -> None:
    # +5 by default (session 8: at +10 the worker fell seconds behind busy writes), whatever is configured
    # otherwise, above the gateway's own (capped at 19, as nice(2) does).
    extra = {} if nice is None else {"worker_nice": nice}
    config = webhook_config(f"sqlite:///{tmp_path / 'rooms.db'}", {"app": receiver.url}, **extra)
    assert config.webhooks.worker_nice == (5 if nice is None else nice)
    async with running(config) as (gateway, _):
        assert isinstance(gateway.webhooks, Supervisor)
        pid = gateway.webhooks.pid
        assert pid is not None
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + config.webhooks.worker_nice)


async def test_sqlite_written_by_the_gateway_and_its_worker_at_once_fails_no_write(
    receiver: Receiver, tmp_path: Path
) -> None:
    # Every PUT commits in this process while the worker claims and settles in its own, on one file:
    # WAL, BEGIN IMMEDIATE and the busy timeout make them wait for each other, never fail.
    config = webhook_config(f"sqlite:///{tmp_path / 'rooms.db'}", {"app": receiver.url})
    async with running(config) as (_, client):

        async def writer(n: int) -> list[int]:
            statuses = []
            for i in range(40):
                answer = await client.put(f"/v1/rooms/r{n % 2}/variables/w{n}-{i}", json={"value": i})
                statuses.append(answer.status_code)
            return statuses

        statuses = [s for one in await asyncio.gather(*(writer(n) for n in range(8))) for s in one]
        assert statuses == [200] * 320
        await receiver.until(lambda r: len(r.delivered) == 322, timeout=30)  # 2 room.created
    assert max(receiver.attempts.values()) == 1


async def test_a_worker_killed_mid_delivery_is_restarted_and_loses_nothing(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock, seen = threading.Lock(), [0]

    def slowish(_id: str, _n: int) -> int:
        with lock:
            seen[0] += 1
        time.sleep(0.02)
        return 204

    receiver.answer = slowish
    config = webhook_config(f"sqlite:///{tmp_path / 'rooms.db'}", {"app": receiver.url})
    endpoint = config.webhooks.endpoints[0].model_copy(update={"timeout_seconds": 1, "max_in_flight": 4})
    config = config.model_copy(
        update={"webhooks": config.webhooks.model_copy(update={"endpoints": [endpoint]})}
    )
    async with running(config) as (gateway, client):
        supervisor = gateway.webhooks
        assert isinstance(supervisor, Supervisor)
        for n in range(150):
            assert (await client.put(f"/v1/rooms/r/variables/v{n}", json={"value": n})).status_code == 200
        await receiver.until(lambda _: seen[0] >= 20)
        first = supervisor.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # mid-delivery: attempts claimed, some sent, not all settled
        await receiver.until(lambda _: supervisor.pid not in (None, first), timeout=10)
        assert supervisor.started == 2
        assert "webhooks worker killed by SIGKILL; restarting in 0.5s" in caplog.text
        await supervisor.ready()
        # The dead worker's claims are due again when their leases end (twice the timeout, plus 5 s).
        await receiver.until(lambda r: len(r.delivered) == 151, timeout=20)
        for _ in range(100):  # the receiver counts an answer before the worker records it
            pending = await client.get("/v1/webhooks/app/messages", params={"status": "pending"})
            if not pending.json().get("messages"):
                break
            await asyncio.sleep(0.1)
        assert not pending.json().get("messages")
    twice = [message_id for message_id, n in receiver.attempts.items() if n > 1]
    assert max(receiver.attempts.values()) <= 2
    assert len(twice) <= 4, f"only what the killed worker had in flight is sent again: {twice}"


async def test_management_calls_reach_the_worker(receiver: Receiver, tmp_path: Path) -> None:
    down = True
    receiver.answer = lambda _id, _n: 500 if down else 204
    config = webhook_config(
        f"sqlite:///{tmp_path / 'rooms.db'}",
        {"app": receiver.url},
        retry_schedule_seconds=[0, 0.1],
        disable_after_seconds=0.1,
    )
    async with running(config) as (gateway, client):
        metrics = gateway.metrics
        assert metrics is not None
        await client.post("/v1/rooms", json={"roomId": "r"})
        await receiver.until(lambda _: deliveries(metrics, "failed") == 1)
        endpoint = (await client.get("/v1/webhooks")).json()["endpoints"][0]
        assert endpoint["enabled"] is False  # disabled by the worker, read by the gateway
        await receiver.until(
            lambda _: metrics.sample("room_gateway_webhook_endpoint_disabled", endpoint="app") == 1
        )
        down = False
        assert (await client.post("/v1/webhooks/app:enable", json={})).status_code == 200
        [failed] = (await client.get("/v1/webhooks/app/messages", params={"status": "failed"})).json()[
            "messages"
        ]
        retried = await client.post(f"/v1/webhooks/app/messages/{failed['messageId']}:retry", json={})
        assert retried.status_code == 200
        await receiver.until(lambda r: failed["messageId"] in r.delivered, timeout=5)
        assert isinstance(gateway.webhooks, Supervisor) and gateway.webhooks.started == 1


def test_the_worker_gets_the_configuration_as_loaded_secrets_included(tmp_path: Path) -> None:
    config = webhook_config(f"sqlite:///{tmp_path / 'rooms.db'}", {"app": "http://127.0.0.1:9/hooks"})
    settings = read_settings(settings_line(config))
    assert settings.webhooks == config.webhooks  # SecretStr compares its secret
    assert settings.backend == config.backend and settings.history == config.history.to_history()


#: The worker's entry point, with a probe: when it starts delivering, how many objects the GC's full
#: collections would rescan (tracked, not frozen) and how many are frozen.
_PROBED_WORKER = """
import asyncio, gc, sys
from gateway.webhooks import deliverer, worker

start = deliverer.Deliverers.start

async def probed(self):
    print(len(gc.get_objects()), gc.get_freeze_count(), flush=True)
    await start(self)

deliverer.Deliverers.start = probed
sys.exit(asyncio.run(worker.run(int(sys.argv[1]))))
"""


def test_the_worker_keeps_what_start_up_built_out_of_full_collections(tmp_path: Path) -> None:
    # gc.freeze() once set up, as serve does: else every full collection rescans the modules, the backend
    # and the deliverers (bench/RESULTS.md, session 19: 9% of a delivery's instructions).
    config = webhook_config(f"sqlite:///{tmp_path / 'rooms.db'}", {"app": "http://127.0.0.1:9/hooks"})
    ours, theirs = socket.socketpair()
    with (
        ours,
        theirs,
        subprocess.Popen(
            [sys.executable, "-c", _PROBED_WORKER, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdout=subprocess.PIPE,
            text=True,
        ) as process,
    ):
        try:
            ours.sendall(settings_line(config))
            assert process.stdout is not None
            tracked, frozen = map(int, process.stdout.readline().split())
            ours.settimeout(30)
            assert ours.recv(64).startswith(b'{"ready": true}')
        finally:
            ours.shutdown(socket.SHUT_WR)  # EOF: the gateway is gone, the worker stops
            assert process.wait(timeout=30) == 0
    assert frozen > 10_000  # the imported modules alone are tens of thousands of objects
    assert tracked < frozen / 10
