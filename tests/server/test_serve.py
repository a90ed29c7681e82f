"""``room-gateway serve`` as a real process on loopback: REST and gRPC side by side, then a SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway._gen.roomgateway.v1 import GetVariableRequest, ListenVariableRequest, RoomServiceStub
from tests.server.conftest import KEY, GatewayProcess, StartGateway, gateway_env, run_cli, write_config

HEADERS = {"X-API-Key": KEY}
SHUTDOWN_MESSAGE = "server shutting down; reconnect"


def stub(channel: Channel) -> RoomServiceStub:
    return RoomServiceStub(channel, metadata={"x-api-key": KEY}, timeout=10)


async def test_rest_and_grpc_serve_the_same_rooms(start_gateway: StartGateway) -> None:
    gateway = start_gateway()
    async with httpx.AsyncClient(base_url=gateway.http_url, headers=HEADERS, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        created = await http.post("/v1/rooms", json={"roomId": "lobby", "displayName": "Lobby"})
        assert created.status_code == 200, created.text
        assert created.json()["roomId"] == "lobby"
        written = await http.put("/v1/rooms/lobby/variables/greeting", json={"value": {"text": "hi"}})
        assert written.status_code == 200, written.text
        unauthenticated = await http.get("/v1/rooms/lobby", headers={"X-API-Key": "wrong-key-0123456789"})
        assert unauthenticated.status_code == 401
    channel = Channel(*gateway.grpc_address)
    try:
        variable = await stub(channel).get_variable(GetVariableRequest(room_id="lobby", name="greeting"))
        assert variable.name == "greeting"
        assert variable.version == 1
        with pytest.raises(GRPCError) as denied:
            await RoomServiceStub(channel, timeout=10).get_variable(
                GetVariableRequest(room_id="lobby", name="greeting")
            )
        assert denied.value.status is Status.UNAUTHENTICATED
    finally:
        channel.close()


async def test_sigterm_ends_open_streams_cleanly_and_exits_0(start_gateway: StartGateway) -> None:
    grace = 5.0
    gateway = start_gateway(grace=grace)
    async with httpx.AsyncClient(base_url=gateway.http_url, headers=HEADERS, timeout=30) as http:
        await http.put("/v1/rooms/lobby/variables/v", json={"value": 1})
        channel = Channel(*gateway.grpc_address)
        try:
            grpc_seen: list[int] = []
            grpc_listening = asyncio.Event()

            async def listen_grpc() -> GRPCError | None:
                try:
                    async for variable in stub(channel).listen_variable(
                        ListenVariableRequest(room_id="lobby", name="v"), timeout=30
                    ):
                        grpc_seen.append(variable.version)
                        grpc_listening.set()
                except GRPCError as exc:
                    return exc
                return None

            grpc_task = asyncio.create_task(listen_grpc())
            async with http.stream("GET", "/v1/rooms/lobby/variables/v:listen") as sse:
                assert sse.status_code == 200
                assert sse.headers["content-type"].startswith("text/event-stream")
                lines = sse.aiter_lines()
                sse_events = [await anext_data(lines)]  # the current value: the stream is open
                await asyncio.wait_for(grpc_listening.wait(), 10)

                started = time.monotonic()
                gateway.terminate()
                sse_events += [event async for event in data_lines(lines)]  # to the end of the response

            grpc_error = await asyncio.wait_for(grpc_task, 10)
            code = await asyncio.to_thread(gateway.wait, grace + 10)
            elapsed = time.monotonic() - started
        finally:
            channel.close()

    assert code == 0, gateway.log
    assert elapsed < grace + 3, f"drained in {elapsed:.1f}s with a grace of {grace}s"
    assert sse_events[0]["version"] == "1"
    # The SSE stream ends with its error event, then the response ends (no reset, no hang).
    assert sse_events[-1] == {"error": {"code": 503, "status": "UNAVAILABLE", "message": SHUTDOWN_MESSAGE}}
    # The gRPC stream ends with a status, UNAVAILABLE so that clients reconnect.
    assert grpc_seen == [1]
    assert grpc_error is not None and grpc_error.status is Status.UNAVAILABLE, grpc_error
    assert grpc_error.message == SHUTDOWN_MESSAGE
    assert "SIGTERM received" in gateway.log
    assert "stopped" in gateway.lines[-1]
    assert KEY not in gateway.log


async def test_sigint_drains_too(start_gateway: StartGateway) -> None:
    gateway = start_gateway(grace=2)
    gateway.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(gateway.wait, 10) == 0
    assert "SIGINT received" in gateway.log


async def anext_data(lines: AsyncIterator[str]) -> Any:
    async for data in data_lines(lines):
        return data
    raise AssertionError("the stream ended before its first message")


async def data_lines(lines: AsyncIterator[str]) -> AsyncIterator[Any]:
    """The JSON of each ``data:`` line of an SSE stream (keep-alive comments and ids skipped)."""
    async for line in lines:
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path)
        config.write_text(config.read_text().replace('http: "127.0.0.1:0"', f'http: "127.0.0.1:{port}"'))
        result = run_cli("serve", "--config", str(config), env=gateway_env(ROOM_API_SECRET_KEY=KEY))
    assert result.returncode == 1
    assert f"listen.http: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_log_never_shows_the_key(start_gateway: StartGateway) -> None:
    gateway: GatewayProcess = start_gateway()
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        http.get("/v1/rooms", headers=HEADERS)
        http.get("/v1/rooms", headers={"Authorization": f"Bearer {KEY}x"})
    gateway.terminate()
    assert gateway.wait(15) == 0
    assert KEY not in gateway.log


async def test_a_second_sigterm_stops_at_once_without_a_traceback(start_gateway: StartGateway) -> None:
    """The forced stop skips uvicorn's wait for the application's shutdown; the lifespan is still ended,
    rather than left waiting for a message and then cancelled with the loop (which uvicorn logs as an
    error with its traceback)."""
    gateway = start_gateway(grace=30)
    host, port = gateway.http_url.removeprefix("http://").rsplit(":", 1)
    # A request whose body is still coming: the drain waits for it (up to the 30 s grace).
    with socket.create_connection((host, int(port)), timeout=10) as held:
        held.sendall(
            b"PUT /v1/rooms/lobby/variables/v HTTP/1.1\r\nHost: gw\r\nX-API-Key: "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        await asyncio.sleep(0.3)
        gateway.terminate()
        await asyncio.sleep(0.5)  # the drain has begun, the request still open
        started = time.monotonic()
        gateway.terminate()
        code = await asyncio.to_thread(gateway.wait, 20)
    assert code == 0, gateway.log
    assert time.monotonic() - started < 10, "the second SIGTERM did not cut the 30 s grace short"
    assert "SIGTERM again" in gateway.log
    assert "Traceback" not in gateway.log, gateway.log
    assert "stopped" in gateway.lines[-1]
