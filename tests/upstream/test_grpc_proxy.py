"""gRPC through a front gateway to a real grpclib upstream (``echo_server.py``): every RPC kind, the
upstream's metadata, status and trailers, credentials that never cross, permissions and rooms, deadlines,
an upstream that stops and comes back, and a slow stream next to quick calls."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

# Registers google.rpc.ErrorInfo, so that grpclib's client decodes the upstream's status details.
from google.rpc import error_details_pb2  # noqa: F401
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from tests.server.conftest import GatewayProcess
from tests.upstream.conftest import (
    ADMIN_KEY,
    ECHO_UPSTREAM_KEY,
    PUBLIC_KEY,
    SAY_KEY,
    EchoUpstream,
    StartEcho,
    StartFront,
    echo_upstream,
    front_config,
    wait_for,
)

Pb2 = tuple[Path, ModuleType]


@pytest.fixture
def echo(start_echo: StartEcho) -> EchoUpstream:
    return start_echo()


@pytest.fixture
def front(start_front: StartFront, echo: EchoUpstream) -> GatewayProcess:
    return start_front(front_config(echo_upstream(echo.port)))


@pytest.fixture
async def channel(front: GatewayProcess) -> AsyncIterator[Channel]:
    host, port = front.grpc_address
    channel = Channel(host, port)
    yield channel
    channel.close()


def _md(key: str = ADMIN_KEY, **extra: str) -> dict[str, str]:
    return {"x-api-key": key, **extra}


async def _unary(
    channel: Channel, pb: ModuleType, method: str, request: Any, key: str = ADMIN_KEY, **kwargs: Any
) -> Any:
    reply = pb.Seen if method == "Whoami" else pb.EchoReply
    async with channel.request(
        f"/echo.v1.Echo/{method}", Cardinality.UNARY_UNARY, pb.EchoRequest, reply, metadata=_md(key), **kwargs
    ) as stream:
        await stream.send_message(request, end=True)
        return await stream.recv_message()


async def test_every_rpc_kind_passes_through(channel: Channel, echo_pb2: Pb2) -> None:
    pb = echo_pb2[1]
    async with channel.request(
        "/echo.v1.Echo/Say", Cardinality.UNARY_UNARY, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as stream:
        await stream.send_message(pb.EchoRequest(text="hi", room="r1", shout=True), end=True)
        assert await stream.recv_message() == pb.EchoReply(text="HI", room="r1")
        assert stream.initial_metadata is not None and stream.initial_metadata["x-upstream"] == "echo"
        await stream.recv_trailing_metadata()
        assert (
            stream.trailing_metadata is not None and stream.trailing_metadata["x-upstream-trailer"] == "said"
        )

    async with channel.request(
        "/echo.v1.Echo/Repeat", Cardinality.UNARY_STREAM, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as stream:
        await stream.send_message(pb.EchoRequest(text="r", count=5), end=True)
        assert [reply.index async for reply in stream] == [0, 1, 2, 3, 4]

    async with channel.request(
        "/echo.v1.Echo/Collect", Cardinality.STREAM_UNARY, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as stream:
        for text in ("a", "b", "c"):
            await stream.send_message(pb.EchoRequest(text=text))
        await stream.end()
        assert await stream.recv_message() == pb.EchoReply(text="a b c", index=3)

    async with channel.request(
        "/echo.v1.Echo/Chat", Cardinality.STREAM_STREAM, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as stream:
        for index, text in enumerate(("abc", "xyz")):  # one reply per request: truly both ways at once
            await stream.send_message(pb.EchoRequest(text=text))
            assert await stream.recv_message() == pb.EchoReply(text=text[::-1], index=index)
        await stream.end()
        assert await stream.recv_message() is None


async def test_a_large_stream_flows_both_ways(channel: Channel, echo_pb2: Pb2) -> None:
    """Far more than one HTTP/2 window (64 KiB) in each direction: flow control is passed on, not buffered."""
    pb = echo_pb2[1]
    text = "x" * 16_000
    async with channel.request(
        "/echo.v1.Echo/Chat", Cardinality.STREAM_STREAM, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as stream:

        async def send() -> None:
            for _ in range(200):  # ~3 MB
                await stream.send_message(pb.EchoRequest(text=text))
            await stream.end()

        await stream.send_request()
        sender = asyncio.create_task(send())
        received = [reply.index async for reply in stream]
        await sender
    assert received == list(range(200))


async def test_the_upstream_status_and_trailers_come_back_as_they_are(
    channel: Channel, echo_pb2: Pb2
) -> None:
    pb = echo_pb2[1]
    async with channel.request(
        "/echo.v1.Echo/Fail", Cardinality.UNARY_UNARY, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as stream:
        await stream.send_message(pb.EchoRequest(), end=True)
        with pytest.raises(GRPCError) as failure:
            await stream.recv_message()
    assert (failure.value.status, failure.value.message) == (Status.FAILED_PRECONDITION, "the echo is tired")
    # grpc-status-details-bin as the upstream wrote it (decoded here by grpclib's client).
    [detail] = failure.value.details
    assert (detail.reason, detail.domain) == ("TIRED", "echo.test")
    assert stream.trailing_metadata is not None and stream.trailing_metadata["x-why"] == "tired"


async def test_only_the_configured_metadata_reaches_the_upstream(
    channel: Channel, echo_pb2: Pb2, echo: EchoUpstream
) -> None:
    pb = echo_pb2[1]
    async with channel.request(
        "/echo.v1.Echo/Whoami",
        Cardinality.UNARY_UNARY,
        pb.EchoRequest,
        pb.Seen,
        metadata={
            "authorization": f"Bearer {ADMIN_KEY}",
            "x-client-tag": "tag-1",  # in forward_metadata
            "x-other": "not-forwarded",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    ) as stream:
        await stream.send_message(pb.EchoRequest(), end=True)
        seen = await stream.recv_message()
        await stream.recv_trailing_metadata()
        answered = [*(stream.initial_metadata or {}).values(), *(stream.trailing_metadata or {}).values()]
    keys = dict(line.split("=", 1) for line in seen.metadata)
    assert keys["x-api-key"] == ECHO_UPSTREAM_KEY  # the upstream's own key, from the config
    assert keys["x-origin"] == "front"
    assert keys["x-client-tag"] == "tag-1"
    assert keys["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert "x-request-id" in keys
    assert "authorization" not in keys and "x-other" not in keys
    assert all(ADMIN_KEY not in line for line in echo.lines)  # the client's key never reached the upstream
    assert all(ECHO_UPSTREAM_KEY not in str(value) for value in answered)  # nor the upstream's the client


async def test_permissions_and_rooms_apply(channel: Channel, echo_pb2: Pb2) -> None:
    pb = echo_pb2[1]
    assert (await _unary(channel, pb, "Say", pb.EchoRequest(text="ok"), SAY_KEY)).text == "ok"
    with pytest.raises(GRPCError) as denied:
        await _unary(channel, pb, "Fail", pb.EchoRequest(), SAY_KEY)
    assert denied.value.status is Status.PERMISSION_DENIED
    assert "echo:Fail" in (denied.value.message or "")

    assert (await _unary(channel, pb, "Say", pb.EchoRequest(room="public-1"), PUBLIC_KEY)).room == "public-1"
    for room in ("private-1", ""):
        with pytest.raises(GRPCError) as outside:
            await _unary(channel, pb, "Say", pb.EchoRequest(room=room), PUBLIC_KEY)
        assert outside.value.status is Status.PERMISSION_DENIED

    # A client stream's every request is checked: the second one names another room.
    async with channel.request(
        "/echo.v1.Echo/Collect",
        Cardinality.STREAM_UNARY,
        pb.EchoRequest,
        pb.EchoReply,
        metadata=_md(PUBLIC_KEY),
    ) as stream:
        await stream.send_message(pb.EchoRequest(room="public-1", text="a"))
        await stream.send_message(pb.EchoRequest(room="private-1", text="b"))
        await stream.end()
        with pytest.raises(GRPCError) as streamed:
            await stream.recv_message()
    assert streamed.value.status is Status.PERMISSION_DENIED

    with pytest.raises(GRPCError) as wrong:
        await _unary(channel, pb, "Say", pb.EchoRequest(), "not-a-key-of-this-gateway")
    assert wrong.value.status is Status.UNAUTHENTICATED


async def test_the_client_deadline_is_passed_on(channel: Channel, echo_pb2: Pb2, echo: EchoUpstream) -> None:
    pb = echo_pb2[1]
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # grpclib's client keeps the deadline itself too
        async with channel.request(
            "/echo.v1.Echo/Repeat",
            Cardinality.UNARY_STREAM,
            pb.EchoRequest,
            pb.EchoReply,
            metadata=_md(),
            timeout=0.8,
        ) as stream:
            await stream.send_message(pb.EchoRequest(count=1, delay_ms=5000), end=True)
            await stream.recv_message()
    assert time.monotonic() - started < 3
    [line] = echo.metadata_lines("Repeat")
    remaining = float(line.partition("deadline=")[2].split()[0])
    assert 0 < remaining <= 0.8  # the upstream got the client's deadline, less what the hop took


async def test_a_unary_call_without_a_deadline_gets_timeout_seconds(
    start_echo: StartEcho, start_front: StartFront, echo_pb2: Pb2
) -> None:
    pb = echo_pb2[1]
    echo = start_echo()
    front = start_front(front_config(echo_upstream(echo.port, timeout=0.5)))
    channel = Channel(*front.grpc_address)
    try:
        with pytest.raises(GRPCError) as late:
            await _unary(channel, pb, "Say", pb.EchoRequest(delay_ms=3000))
        assert late.value.status is Status.DEADLINE_EXCEEDED
        # A server stream has no default deadline: the slow reply arrives.
        async with channel.request(
            "/echo.v1.Echo/Repeat", Cardinality.UNARY_STREAM, pb.EchoRequest, pb.EchoReply, metadata=_md()
        ) as stream:
            await stream.send_message(pb.EchoRequest(text="late", count=1, delay_ms=800), end=True)
            assert [reply.text async for reply in stream] == ["late"]
    finally:
        channel.close()


async def test_a_slow_stream_does_not_block_other_calls(channel: Channel, echo_pb2: Pb2) -> None:
    pb = echo_pb2[1]
    async with channel.request(
        "/echo.v1.Echo/Repeat", Cardinality.UNARY_STREAM, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as slow:
        await slow.send_message(pb.EchoRequest(text="slow", count=2, delay_ms=1500), end=True)
        started = time.monotonic()
        for index in range(20):
            assert (await _unary(channel, pb, "Say", pb.EchoRequest(text=str(index)))).text == str(index)
        assert time.monotonic() - started < 1.4  # all done before the slow stream's first reply
        assert [reply.text async for reply in slow] == ["slow", "slow"]


async def test_a_cancelled_call_is_cancelled_upstream(
    channel: Channel, echo_pb2: Pb2, echo: EchoUpstream
) -> None:
    pb = echo_pb2[1]

    async def listen() -> None:
        async with channel.request(
            "/echo.v1.Echo/Repeat", Cardinality.UNARY_STREAM, pb.EchoRequest, pb.EchoReply, metadata=_md()
        ) as stream:
            await stream.send_message(pb.EchoRequest(count=1000, delay_ms=20), end=True)
            async for _ in stream:
                pass

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    wait_for(lambda: any(line.startswith("ended Repeat after") for line in echo.lines))
    [ended] = [line for line in echo.lines if line.startswith("ended Repeat after")]
    assert int(ended.rsplit(" ", 1)[1]) < 100  # the upstream's handler was cancelled, not left running
    # The connection is healthy afterwards: the reset reached both sides.
    assert (await _unary(channel, pb, "Say", pb.EchoRequest(text="after"))).text == "after"


async def test_an_upstream_that_stops_and_comes_back(
    start_echo: StartEcho, start_front: StartFront, echo_pb2: Pb2
) -> None:
    pb = echo_pb2[1]
    echo = start_echo()
    front = start_front(front_config(echo_upstream(echo.port)))
    host, port = front.grpc_address
    channel = Channel(host, port)
    try:
        assert (await _unary(channel, pb, "Say", pb.EchoRequest(text="1"))).text == "1"
        echo.stop()
        with pytest.raises(GRPCError) as down:
            await _unary(channel, pb, "Say", pb.EchoRequest(text="2"))
        assert down.value.status is Status.UNAVAILABLE
        assert "upstream 'echo' is unavailable" in (down.value.message or "")
        async with httpx.AsyncClient(base_url=front.http_url) as http:
            await _until(http, 503)
            # The gateway's own grpc.health.v1 says so too (a load balancer probing gRPC sees it).
            health = HealthStub(channel)
            status = (await health.Check(HealthCheckRequest())).status
            assert status == HealthCheckResponse.NOT_SERVING
            start_echo(echo.port)  # back, on the same port
            await _until(http, 200)
            deadline = time.monotonic() + 5  # grpclib's health service keeps a result for a second
            while (await health.Check(HealthCheckRequest())).status != HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert (await _unary(channel, pb, "Say", pb.EchoRequest(text="3"))).text == "3"
    finally:
        channel.close()


async def test_readiness_without_a_health_service(
    start_echo: StartEcho, start_front: StartFront, echo_pb2: Pb2
) -> None:
    """An upstream that serves no grpc.health.v1 is ready while it answers (UNIMPLEMENTED is an answer)."""
    echo = start_echo(health=False)
    front = start_front(front_config(echo_upstream(echo.port)))
    async with httpx.AsyncClient(base_url=front.http_url) as http:
        await _until(http, 200)
        echo.stop()
        await _until(http, 503)


async def _until(http: httpx.AsyncClient, status: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (response := await http.get("/readyz")).status_code != status:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)
    if status == 503:
        assert response.json()["error"]["status"] == "UNAVAILABLE"
        assert "upstream 'echo' is down" in response.json()["error"]["message"]


async def test_metrics_and_access_lines_name_the_upstream(
    channel: Channel, echo_pb2: Pb2, front: GatewayProcess
) -> None:
    pb = echo_pb2[1]
    await _unary(channel, pb, "Say", pb.EchoRequest(text="m"))
    async with httpx.AsyncClient(base_url=front.http_url) as http:
        text = (await http.get("/metrics", headers={"x-api-key": ADMIN_KEY})).text
    assert 'surface="upstream:echo"' in text
    assert 'method="Say"' in text
    assert any("/echo.v1.Echo/Say OK key=admin" in line for line in front.lines)

    async def streams_open() -> float:
        async with httpx.AsyncClient(base_url=front.http_url) as http:
            text = (await http.get("/metrics", headers={"x-api-key": ADMIN_KEY})).text
        for line in text.splitlines():
            family, _, rest = line.partition("{")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            wanted = {"transport": "grpc", "surface": "upstream:echo", "method": "Repeat"}
            if family == "room_gateway_streams_open" and labels == wanted:
                return float(line.rpartition(" ")[2])
        return 0.0

    async with channel.request(
        "/echo.v1.Echo/Repeat", Cardinality.UNARY_STREAM, pb.EchoRequest, pb.EchoReply, metadata=_md()
    ) as stream:  # a server stream through the proxy is counted open while it runs
        await stream.send_message(pb.EchoRequest(text="s", count=50, delay_ms=100), end=True)
        assert (await stream.recv_message()).index == 0
        assert await streams_open() == 1.0
        await stream.cancel()
    deadline = time.monotonic() + 5
    while await streams_open() != 0.0:
        assert time.monotonic() < deadline, "the stream is still counted open after the client left"
        await asyncio.sleep(0.05)


async def test_by_room_limits_count_the_room_field(
    start_echo: StartEcho, start_front: StartFront, echo_pb2: Pb2
) -> None:
    pb = echo_pb2[1]
    echo = start_echo()
    limits = '{limits: [{by: room, limit: "2/minute"}]}'
    front = start_front(front_config(echo_upstream(echo.port), rate_limits=limits))
    channel = Channel(*front.grpc_address)
    try:
        for _ in range(2):
            await _unary(channel, pb, "Say", pb.EchoRequest(room="busy"))
        with pytest.raises(GRPCError) as limited:
            await _unary(channel, pb, "Say", pb.EchoRequest(room="busy"))
        assert limited.value.status is Status.RESOURCE_EXHAUSTED
        assert (await _unary(channel, pb, "Say", pb.EchoRequest(room="quiet", text="ok"))).text == "ok"
        assert len(echo.metadata_lines("Say")) == 3  # the refused call never reached the upstream
    finally:
        channel.close()


def grpcurl(front: GatewayProcess, *after: str, flags: tuple[str, ...] = ()) -> str:
    """grpcurl's output: ``grpcurl -plaintext <key> FLAGS <gateway> AFTER…``."""
    host, port = front.grpc_address
    binary = Path(sys.executable).parent / "grpcurl"
    result = subprocess.run(
        [str(binary), "-plaintext", "-H", f"x-api-key: {ADMIN_KEY}", *flags, f"{host}:{port}", *after],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_server_reflection_serves_the_upstream(front: GatewayProcess) -> None:
    """grpcurl needs no proto: the gateway's reflection has the upstream's descriptors."""
    assert "echo.v1.Echo" in grpcurl(front, "list").split()
    assert "rpc Repeat ( .echo.v1.EchoRequest ) returns ( stream .echo.v1.EchoReply );" in grpcurl(
        front, "describe", "echo.v1.Echo"
    )
    reply = json.loads(grpcurl(front, "echo.v1.Echo/Say", flags=("-d", '{"text": "reflected", "room": "r"}')))
    assert reply == {"text": "reflected", "room": "r"}
