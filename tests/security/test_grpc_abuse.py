"""HTTP/2 abuse on the gRPC port: one abusive client must not take the port from everybody else.

A real ``room-gateway serve`` process (the runner, :mod:`gateway.rpc.h2limits`, default limits, rate limiting
on so that new connections are counted per IP) is flooded from 127.0.0.2 on two connections at once — each
reconnecting when closed, bounded in time and frames (:mod:`tests.security.h2raw`) — while a well-behaved
client on 127.0.0.1 calls GetVariable one call after another. The well-behaved client's p99 must stay under
100 ms, every flooding connection must end with GOAWAY ENHANCE_YOUR_CALM, and the log must hold no traceback.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterator

import pytest
from grpclib.client import Channel

from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import GetVariableRequest, RoomServiceStub, SetVariableRequest
from tests.security.h2raw import ENHANCE_YOUR_CALM, FLOODS, Outcome
from tests.server.conftest import KEY, ROOT, GatewayProcess, gateway_env, write_config

FLOOD_SECONDS = 3.0
P99_LIMIT_MS = 100.0
ABUSER = "127.0.0.2"  # loopback too, but another client IP than the well-behaved client's 127.0.0.1
EXTRA = """
rate_limits:
  limits: [{by: ip, limit: "1000000/second"}]   # on (new connections are counted per IP), never refusing
access_log: false
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = write_config(tmp_path_factory.mktemp("abuse"), extra=EXTRA)
    process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=KEY))
    try:
        yield process
    finally:
        process.stop()


async def well_behaved(host: str, port: int, stop: asyncio.Event) -> list[float]:
    """GetVariable latencies (ms), one call after another until ``stop``."""
    channel = Channel(host, port)
    stub = RoomServiceStub(channel, metadata={"x-api-key": KEY})
    latencies = []
    try:
        await stub.set_variable(SetVariableRequest(room_id="calm", name="v", value=Value(number_value=1)))
        while not stop.is_set():
            start = time.perf_counter()
            await stub.get_variable(GetVariableRequest(room_id="calm", name="v"), timeout=5)
            latencies.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.002)
    finally:
        channel.close()
    return latencies


async def abuser(host: str, port: int, kind: str) -> list[Outcome]:
    """Two flooding connections from another process (so that its work is not the measuring client's),
    each connecting again whenever the server closes it, for :data:`FLOOD_SECONDS`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.security.h2raw",
        kind,
        host,
        str(port),
        KEY,
        ABUSER,
        str(FLOOD_SECONDS),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), FLOOD_SECONDS + 30)
    assert process.returncode == 0
    outcomes = []
    for line in out.decode().splitlines():
        fields = json.loads(line)
        outcomes.append(Outcome(**{**fields, "debug": fields["debug"].encode("latin-1")}))
    return outcomes


@pytest.mark.parametrize("kind", FLOODS)
async def test_a_flood_does_not_take_the_port(gateway: GatewayProcess, kind: str) -> None:
    host, port = gateway.grpc_address
    before = len(gateway.lines)
    stop = asyncio.Event()
    calm = asyncio.create_task(well_behaved(host, port, stop))
    await asyncio.sleep(0.3)  # the well-behaved client is connected before the flood starts
    outcomes = await abuser(host, port, kind)
    stop.set()
    latencies = await calm

    assert len(latencies) > 100, latencies
    p99 = statistics.quantiles(latencies, n=100)[98]
    assert p99 < P99_LIMIT_MS, f"p99 {p99:.1f} ms; max {max(latencies):.1f} ms over {len(latencies)} calls"
    assert outcomes and all(o.goaway == ENHANCE_YOUR_CALM and o.closed for o in outcomes), outcomes[:3]
    assert any(o.batches > 0 for o in outcomes)
    log = gateway.lines[before:]
    assert not [line for line in log if "Traceback" in line or "ERROR" in line], "\n".join(log[-30:])
    assert any("GOAWAY ENHANCE_YOUR_CALM" in line for line in log), "\n".join(log[-30:])
