"""Every metric family of API.md ("Operability"), scraped from ``/metrics`` and parsed as Prometheus does,
after REST, gRPC, surface, stream and failing-backend calls: values, not just names."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families
from room_gateway_plugins.memory import MemoryBackend

from gateway._gen.google import protobuf as wkt
from gateway._gen.roomApi import RoomApiStub, VariableRequest
from gateway._gen.roomgateway.v1 import GetVariableRequest, RoomServiceStub, SetVariableRequest
from gateway.auth.policy import ApiKey, AuthPolicy, digest
from gateway.core.backend import Backend
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.observability.backends import instrument
from gateway.observability.metrics import Metrics
from gateway.observability.observer import Observer
from tests.security.live import ADMIN_KEY, live_config, live_gateway

PROJECT = "metrics-project"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    answer = await client.get("/metrics", headers={"X-API-Key": ADMIN_KEY})
    assert answer.status_code == 200
    return parse(answer.text)


@pytest.fixture
async def live() -> AsyncIterator[tuple[httpx.AsyncClient, Channel]]:
    config = live_config(
        surfaces={"workadventure": {"enabled": True}, "signalwire": {"enabled": True, "project_id": PROJECT}}
    )
    async with live_gateway(config) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        channel = Channel(*gw.grpc)
        try:
            yield client, channel
        finally:
            channel.close()


async def test_call_families_on_every_transport_and_surface(live: tuple[httpx.AsyncClient, Channel]) -> None:
    client, channel = live
    admin = {"X-API-Key": ADMIN_KEY}
    for _ in range(3):
        assert (await client.put("/v1/rooms/m/variables/v", json={"value": 1}, headers=admin)).is_success
    assert (await client.get("/v1/rooms/m/variables/v", headers=admin)).status_code == 200
    assert (await client.get("/v1/rooms/m/variables/nope", headers=admin)).status_code == 404
    assert (await client.get("/v1/rooms/m/variables/v")).status_code == 401
    assert (await client.get("/no/such/path", headers=admin)).status_code == 404
    basic = base64.b64encode(f"{PROJECT}:{ADMIN_KEY}".encode()).decode()
    assert (
        await client.get("/api/video/rooms", headers={"Authorization": f"Basic {basic}"})
    ).status_code == 200
    native = RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY})
    await native.get_variable(GetVariableRequest(room_id="m", name="v"))
    await native.set_variable(SetVariableRequest(room_id="m", name="w", value=wkt.Value(number_value=2)))
    with pytest.raises(GRPCError):
        await native.get_variable(GetVariableRequest(room_id="m", name="nope"))
    workadventure = RoomApiStub(channel, metadata={"x-api-key": ADMIN_KEY})
    await workadventure.read_variable(VariableRequest(room="m", name="v"))

    samples = await scrape(client)
    requests = "room_gateway_requests_total"
    rest = {"transport": "rest", "surface": "native"}
    assert value(samples, requests, **rest, method="SetVariable", code="OK") == 3
    assert value(samples, requests, **rest, method="GetVariable", code="OK") == 1
    assert value(samples, requests, **rest, method="GetVariable", code="NOT_FOUND") == 1
    assert value(samples, requests, **rest, method="GetVariable", code="UNAUTHENTICATED") == 1
    assert value(samples, requests, **rest, method="-", code="NOT_FOUND") == 1
    signalwire = [
        v for (name, labels), v in samples.items()
        if name == requests and ("surface", "signalwire") in labels and ("code", "OK") in labels
    ]  # fmt: skip
    assert signalwire == [1]
    grpc = {"transport": "grpc", "surface": "native"}
    assert value(samples, requests, **grpc, method="GetVariable", code="OK") == 1
    assert value(samples, requests, **grpc, method="GetVariable", code="NOT_FOUND") == 1
    assert value(samples, requests, **grpc, method="SetVariable", code="OK") == 1
    wa = {"transport": "grpc", "surface": "workadventure", "method": "readVariable"}
    assert value(samples, requests, **wa, code="OK") == 1
    duration = "room_gateway_request_duration_seconds"
    assert value(samples, f"{duration}_count", **rest, method="SetVariable") == 3
    assert value(samples, f"{duration}_bucket", **rest, method="SetVariable", le="+Inf") == 3
    assert value(samples, f"{duration}_sum", **rest, method="SetVariable") > 0
    assert value(samples, f"{duration}_count", **grpc, method="GetVariable") == 2
    backend = {"backend": "memory"}
    ops = "room_gateway_backend_operation_duration_seconds_count"
    assert value(samples, ops, **backend, operation="write_variable") == 4  # 3 REST + 1 gRPC
    assert value(samples, ops, **backend, operation="get_variable") >= 4
    assert value(samples, "room_gateway_backend_errors_total", **backend, operation="get_variable") == 0
    assert value(samples, "room_gateway_backend_up") == 1
    assert ("room_gateway_presence_connections", frozenset()) in samples
    assert ("room_gateway_rate_limited_total", frozenset({("by", "ip")})) not in samples  # no refusal yet
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0


async def test_stream_families(live: tuple[httpx.AsyncClient, Channel]) -> None:
    client, _ = live
    admin = {"X-API-Key": ADMIN_KEY}
    labels = {"transport": "rest", "surface": "native", "method": "ListenVariable"}
    async with client.stream(
        "GET", "/v1/rooms/s/variables/v:listen", headers={**admin, "Accept": "application/x-ndjson"}
    ) as stream:
        lines = stream.aiter_lines()
        for n in range(2):
            await client.put("/v1/rooms/s/variables/v", json={"value": n}, headers=admin)
            line = await asyncio.wait_for(anext(lines), 5)
            assert line
        samples = await scrape(client)
        assert value(samples, "room_gateway_streams_open", **labels) == 1
        assert value(samples, "room_gateway_stream_messages_total", **labels) >= 2
    for _ in range(100):  # the stream's end is noticed by the server a moment later
        samples = await scrape(client)
        if value(samples, "room_gateway_streams_open", **labels) == 0:
            break
        await asyncio.sleep(0.02)
    assert value(samples, "room_gateway_streams_open", **labels) == 0
    assert value(samples, "room_gateway_requests_total", **labels, code="OK") == 1
    assert value(samples, "room_gateway_request_duration_seconds_count", **labels) == 0  # no latency


class FlakyBackend(MemoryBackend):
    """Memory, whose reads fail while ``down`` (a driver error: wrapped into UNAVAILABLE)."""

    down = False

    async def get_variable(self, room_id: str, name: str):  # type: ignore[no-untyped-def]
        if self.down:
            raise ConnectionError("store gone")
        return await super().get_variable(room_id, name)


async def test_failing_backend() -> None:
    backend: Backend = FlakyBackend()
    metrics = Metrics()
    instrument(backend, metrics)
    # One wrapper frame per operation: the timing wrapper calls the driver-error wrapper's inner method.
    assert backend.get_variable.__wrapped__.__func__ is FlakyBackend.get_variable.__wrapped__  # type: ignore[attr-defined]
    await backend.open()
    try:
        policy = AuthPolicy([ApiKey("admin", digest(ADMIN_KEY), frozenset({"*"}))])
        app = create_http_app(Dispatcher(RoomService(backend), policy), observer=Observer(metrics))
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"X-API-Key": ADMIN_KEY}
        ) as c:
            await c.put("/v1/rooms/f/variables/v", json={"value": 1})
            assert metrics.sample("room_gateway_backend_up") == 1
            FlakyBackend.down = True
            assert (await c.get("/v1/rooms/f/variables/v")).status_code == 503
            assert metrics.sample("room_gateway_backend_up") == 0
            FlakyBackend.down = False
            assert (await c.get("/v1/rooms/f/variables/v")).status_code == 200
        labels = {"backend": "memory", "operation": "get_variable"}
        assert metrics.sample("room_gateway_backend_errors_total", **labels) == 1
        assert metrics.sample("room_gateway_backend_operation_duration_seconds_count", **labels) == 2
        assert metrics.sample("room_gateway_backend_up") == 1
        rest = {"transport": "rest", "surface": "native", "method": "GetVariable"}
        assert metrics.sample("room_gateway_requests_total", **rest, code="UNAVAILABLE") == 1
        assert metrics.sample("room_gateway_requests_total", **rest, code="OK") == 1
    finally:
        FlakyBackend.down = False
        await backend.close()


async def test_metrics_listener_serves_only_metrics_without_a_key() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = live_config(listen={"metrics": f"127.0.0.1:{port}"})
    async with live_gateway(config) as gw, httpx.AsyncClient() as client:
        await client.get(f"{gw.http_url}/healthz")
        answer = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert answer.status_code == 200
        assert value(parse(answer.text), "room_gateway_requests_total", transport="rest", surface="native",
                     method="healthz", code="OK") == 1  # fmt: skip
        assert (await client.get(f"http://127.0.0.1:{port}/v1/rooms")).status_code == 404
        assert (await client.get(f"{gw.http_url}/metrics")).status_code == 401  # the main one wants a key


async def test_presence_connections_counts_room_token_streams() -> None:
    """``room_gateway_presence_connections`` is this instance's open room-token streams, read at scrape."""
    config = live_config(
        auth={
            "room_tokens": {"secret": "metrics-presence-secret-0123456789abcdef", "roles": {"guest": ["*"]}}
        }
    )
    async with live_gateway(config) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        admin = {"X-API-Key": ADMIN_KEY}
        assert (await client.post("/v1/rooms", json={"roomId": "p"}, headers=admin)).status_code == 200
        minted = await client.post(
            "/v1/rooms/p/tokens", json={"userName": "ana", "role": "guest"}, headers=admin
        )
        token = minted.json()["token"]
        assert value(await scrape(client), "room_gateway_presence_connections") == 0
        path, bearer = "/v1/rooms/p/events/e:listen", {"Authorization": f"Bearer {token}"}
        async with (
            client.stream("GET", path, headers=bearer) as one,
            client.stream("GET", path, headers=bearer),
        ):
            assert one.status_code == 200  # headers go out once the join is written
            assert value(await scrape(client), "room_gateway_presence_connections") == 2
        async with asyncio.timeout(5):
            while value(await scrape(client), "room_gateway_presence_connections") != 0:
                await asyncio.sleep(0.05)
