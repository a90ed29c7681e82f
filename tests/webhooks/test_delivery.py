"""Delivery to a real receiver that verifies every signature with ``standardwebhooks``: the body, retries
with one ``webhook-id``, the schedule running out, filters, disabling, metrics."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.observability.metrics import Metrics
from gateway.webhooks import deliverer
from tests.webhooks.conftest import running, webhook_config
from tests.webhooks.receiver import Receiver


def deliveries(metrics: Metrics, outcome: str) -> float:
    return metrics.sample("room_gateway_webhook_deliveries_total", endpoint="app", outcome=outcome)


async def put(client: httpx.AsyncClient, room: str, name: str, value: object) -> dict[str, object]:
    response = await client.put(f"/v1/rooms/{room}/variables/{name}", json={"value": value})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_each_change_is_posted_signed_with_previous_and_patch(
    receiver: Receiver, backend_url: str
) -> None:
    async with running(webhook_config(backend_url, {"app": receiver.url})) as (_, client):
        assert (await client.post("/v1/rooms", json={"roomId": "lobby"})).status_code == 200
        await put(client, "lobby", "doc", {"a": 1, "b": {"c": 2}, "gone": True})
        await put(client, "lobby", "doc", {"a": 1, "b": {"c": 3}, "new": [1]})
        await receiver.until(lambda r: len(r.delivered) == 3)
    assert receiver.bad_signatures == 0
    bodies = sorted((d.body for d in receiver.delivered.values()), key=lambda b: int(b["data"]["seq"]))
    assert [b["type"] for b in bodies] == ["room.created", "variable.set", "variable.set"]
    created, first, second = bodies
    assert created["data"]["change"]["room"]["roomId"] == "lobby"
    assert first["data"]["roomId"] == "lobby" and first["data"]["seq"] == "2"
    assert "previous" not in first["data"] and "patch" not in first["data"]
    assert first["data"]["change"]["variable"] == {
        "name": "doc",
        "value": {"a": 1, "b": {"c": 2}, "gone": True},
        "version": "1",
        "updateTime": first["data"]["change"]["time"],
    }
    assert second["data"]["previous"] == {"value": {"a": 1, "b": {"c": 2}, "gone": True}, "version": "1"}
    assert second["data"]["patch"] == {"b": {"c": 3}, "gone": None, "new": [1]}  # RFC 7386
    assert second["timestamp"] == second["data"]["change"]["time"]
    for delivery in receiver.delivered.values():
        assert delivery.headers["webhook-id"].startswith("msg_")
        assert delivery.headers["webhook-signature"].startswith("v1,")


async def test_a_receiver_failing_twice_gets_the_third_attempt_with_the_same_id(
    receiver: Receiver, backend_url: str
) -> None:
    receiver.answer = lambda _id, n: 503 if n <= 2 else 200
    config = webhook_config(backend_url, {"app": receiver.url}, retry_schedule_seconds=[0, 0.2, 0.2, 5])
    async with running(config) as (gateway, client):
        await put(client, "r1", "v", 1)  # auto-created room: room.created, then variable.set
        metrics = gateway.metrics
        assert metrics is not None
        # The receiver counts a delivery before the deliverer has read its answer: wait for the settles.
        await receiver.until(lambda r: deliveries(metrics, "delivered") == 2)
        assert deliveries(metrics, "retrying") == 4
        assert metrics.sample("room_gateway_webhook_delivery_latency_seconds_count", endpoint="app") == 2
    assert sorted(receiver.attempts.values()) == [3, 3]  # each id tried three times, delivered once


async def test_filters_by_type_and_room(receiver: Receiver) -> None:
    config = webhook_config("memory://", {"app": receiver.url})
    endpoint = config.webhooks.endpoints[0].model_copy(update={"events": ["variable.*"], "rooms": ["pub-*"]})
    config = config.model_copy(
        update={"webhooks": config.webhooks.model_copy(update={"endpoints": [endpoint]})}
    )
    async with running(config) as (_, client):
        await put(client, "pub-1", "v", 1)
        await put(client, "private", "v", 1)
        assert (await client.delete("/v1/rooms/pub-1/variables/v")).status_code == 200
        await receiver.until(lambda r: len(r.delivered) == 2)
    assert sorted(d.body["type"] for d in receiver.delivered.values()) == ["variable.deleted", "variable.set"]
    assert {d.body["data"]["roomId"] for d in receiver.delivered.values()} == {"pub-1"}


async def test_delivered_messages_are_pruned_after_their_retention(
    receiver: Receiver, backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliverer, "PRUNE_SECONDS", 0.05)  # in this process: inline
    retention = {"delivered_seconds": 0.3, "failed_seconds": 1e6}
    config = webhook_config(backend_url, {"app": receiver.url}, retention=retention, delivery="inline")
    async with running(config) as (_, client):
        assert (await client.post("/v1/rooms", json={"roomId": "lobby"})).status_code == 200
        await receiver.until(lambda r: len(r.delivered) == 1)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not (await client.get("/v1/webhooks/app/messages")).json().get("messages"):
                break
        assert (await client.get("/v1/webhooks/app/messages")).json().get("messages", []) == []


def failing_once(method: Callable[..., Awaitable[Any]], calls: list[int]) -> Callable[..., Awaitable[Any]]:
    """``method``, raising an error no backend maps (a bug, an unmapped driver error) at its first call."""

    async def once(self: MemoryBackend, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return await method(self, *args, **kwargs)

    return once


@pytest.mark.parametrize("operation", ["outbox_claim", "outbox_settle"])
async def test_an_unexpected_error_of_a_claim_or_a_settle_does_not_stop_the_deliveries(
    receiver: Receiver, operation: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Ended by it, the loop (a claim) or its settler (a settle: no slot ever came free again, so the loop
    # stopped claiming after max_in_flight, 16, more attempts) left every later message undelivered.
    calls: list[int] = []
    monkeypatch.setattr(MemoryBackend, operation, failing_once(getattr(MemoryBackend, operation), calls))
    async with running(webhook_config("memory://", {"app": receiver.url})) as (_, client):
        for n in range(40):
            await put(client, "lobby", f"v{n}", n)
        await receiver.until(lambda r: len(r.delivered) == 41)  # room.created and 40 variable.set
    assert len(calls) > 1
    assert f"a {operation.removeprefix('outbox_')} failed unexpectedly" in caplog.text


async def test_deliveries_keep_their_connections_alive(receiver: Receiver) -> None:
    # An answer closed unread cannot be reused (h11 has not seen its end): every delivery then paid a
    # connect. Read to its end, a lane's connection carries the next delivery.
    async with running(webhook_config("memory://", {"app": receiver.url})) as (_, client):
        for n in range(30):
            await put(client, "lobby", f"v{n}", n)
        await receiver.until(lambda r: len(r.delivered) == 31)
    assert receiver.connections <= 10, f"{receiver.connections} connections for 31 deliveries"


async def test_a_slow_receiver_gets_more_lanes_but_never_more_than_max_in_flight(receiver: Receiver) -> None:
    lock, running_now, most = threading.Lock(), [0], [0]

    def slow(_id: str, _n: int) -> int:
        with lock:
            running_now[0] += 1
            most[0] = max(most[0], running_now[0])
        time.sleep(0.2)
        with lock:
            running_now[0] -= 1
        return 204

    receiver.answer = slow
    config = webhook_config("memory://", {"app": receiver.url})
    endpoint = config.webhooks.endpoints[0].model_copy(update={"max_in_flight": 3})
    config = config.model_copy(
        update={"webhooks": config.webhooks.model_copy(update={"endpoints": [endpoint]})}
    )
    async with running(config) as (_, client):
        for n in range(9):
            await put(client, "lobby", f"v{n}", n)
        await receiver.until(lambda r: len(r.delivered) == 10)
    assert most[0] == 3  # widened from one lane to the limit, and no further


def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def test_deliveries_go_through_the_proxy_of_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{receiver.port}")  # the receiver plays the proxy
    async with running(webhook_config("memory://", {"app": "http://hooks.invalid/in"})) as (_, client):
        await put(client, "lobby", "v", 1)
        await receiver.until(lambda r: len(r.delivered) == 2)
    assert set(receiver.targets) == {"http://hooks.invalid/in"}


def test_no_proxy_names_the_hosts_posted_to_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_proxy_env(monkeypatch)
    assert deliverer.env_proxy("http://hooks.internal/in") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "hooks.internal")
    assert deliverer.env_proxy("https://app.example/in") == "http://proxy.internal:3128"
    assert deliverer.env_proxy("https://hooks.internal/in") is None
    assert deliverer.env_proxy("http://app.example/in") is None  # HTTPS_PROXY is for https:// only


def test_https_receivers_are_verified_against_ssl_cert_file_else_certifi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    assert deliverer.ssl_context().cert_store_stats()["x509_ca"] > 100  # certifi's bundle
    one = tmp_path / "ca.pem"
    one.write_text(
        Path(certifi.where()).read_text().split("-----END CERTIFICATE-----")[0]
        + "-----END CERTIFICATE-----\n"
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(one))
    context = deliverer.ssl_context()
    assert context.cert_store_stats()["x509_ca"] == 1
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
