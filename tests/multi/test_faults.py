"""The store goes away under load, and comes back: the gateway answers UNAVAILABLE meanwhile, in the
documented shape, ends its streams so that clients reconnect, and recovers by itself — no restart.

Redis: a private ``redis-server`` of the test, killed and started again (nothing saved: it comes back empty).
PostgreSQL: the machine's server behind a TCP proxy of the test, cut and restored. The machine's own servers
are never touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import (
    GetVariableRequest,
    ListenVariableRequest,
    RoomServiceStub,
    SetVariableRequest,
)
from tests.multi.conftest import (
    WAIT,
    PrivateRedis,
    StartGateway,
    TcpProxy,
    assert_unavailable_body,
    eventually,
    grpc,
    grpc_listen,
    rest,
    sse_listen,
    with_query,
)
from tests.server.conftest import GatewayProcess

#: Load: workers per transport, the pause between two calls of a worker, and a bound on each worker's calls.
WORKERS = 3
PAUSE = 0.02
MAX_CALLS = 2000


@dataclass
class Outage:
    url: str
    take_away: Callable[[], None]
    bring_back: Callable[[], None]


@pytest.fixture(params=["redis", "postgresql"])
def outage(request: pytest.FixtureRequest) -> Iterator[Outage]:
    if request.param == "redis":
        server: PrivateRedis = request.getfixturevalue("private_redis")
        prefix = f"rg-faults-{uuid.uuid4().hex[:8]}:"
        yield Outage(with_query(server.url, prefix=prefix), server.kill, server.start)
    else:
        proxy: TcpProxy
        proxy, url = request.getfixturevalue("postgres_proxy")
        yield Outage(url, proxy.cut, proxy.restore)


@dataclass
class Load:
    """Bounded write load on one room over REST and gRPC; every outcome recorded with its time."""

    http: httpx.AsyncClient
    rpc: RoomServiceStub
    rest_outcomes: list[tuple[float, int, Any]] = field(default_factory=list)
    grpc_outcomes: list[tuple[float, Status]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def rest_worker(self, worker: int) -> None:
        for n in range(MAX_CALLS):
            if self.stop.is_set():
                return
            try:
                response = await self.http.put(f"/v1/rooms/load/variables/rest-{worker}", json={"value": n})
            except httpx.TimeoutException as exc:  # a hang is a failure of its own: record it
                self.rest_outcomes.append((time.monotonic(), 0, repr(exc)))
                continue
            body = response.json() if response.status_code != 200 else None
            self.rest_outcomes.append((time.monotonic(), response.status_code, body))
            await asyncio.sleep(PAUSE)

    async def grpc_worker(self, worker: int) -> None:
        for n in range(MAX_CALLS):
            if self.stop.is_set():
                return
            request = SetVariableRequest(room_id="load", name=f"grpc-{worker}", value=Value.from_dict(n))
            try:
                await self.rpc.set_variable(request)
                status = Status.OK
            except GRPCError as exc:
                status = exc.status
            self.grpc_outcomes.append((time.monotonic(), status))
            await asyncio.sleep(PAUSE)

    def successes_since(self, since: float) -> tuple[int, int]:
        return (
            sum(1 for at, code, _ in self.rest_outcomes if at > since and code == 200),
            sum(1 for at, status in self.grpc_outcomes if at > since and status is Status.OK),
        )


async def test_the_store_goes_away_and_comes_back(outage: Outage, start_gateway: StartGateway) -> None:
    gateway: GatewayProcess = await asyncio.to_thread(start_gateway, outage.url)
    async with rest(gateway) as http, grpc(gateway) as rpc:
        assert (await http.put("/v1/rooms/r/variables/v", json={"value": 1})).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        load = Load(http, rpc)
        workers = [
            *(asyncio.create_task(load.rest_worker(n)) for n in range(WORKERS)),
            *(asyncio.create_task(load.grpc_worker(n)) for n in range(WORKERS)),
        ]
        try:
            async with (
                sse_listen(http, "/v1/rooms/r/variables/v:listen") as sse,
                grpc_listen(rpc.listen_variable(ListenVariableRequest(room_id="r", name="v"))) as stream,
            ):
                await sse.wait_for(1)
                await stream.wait_for(1)
                await eventually(lambda: all(load.successes_since(0)), what="the load to be under way")

                # -- the store goes away ------------------------------------------------------------------
                outage.take_away()
                away = time.monotonic()
                # Open streams end with UNAVAILABLE, so that clients reconnect.
                assert_unavailable_body(await sse.wait_end())
                error = await stream.wait_end()
                assert isinstance(error, GRPCError) and error.status is Status.UNAVAILABLE, error
                # Calls under load get 503 / UNAVAILABLE …
                await eventually(
                    lambda: (
                        any(code == 503 for at, code, _ in load.rest_outcomes if at > away)
                        and any(
                            status is Status.UNAVAILABLE for at, status in load.grpc_outcomes if at > away
                        )
                    ),
                    what="UNAVAILABLE answers to the load",
                )
                # … and so do single calls, and /readyz says so.
                assert_unavailable_body((await http.get("/v1/rooms/r/variables/v")).json())
                ready = await http.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert_unavailable_body(ready.json())
                with pytest.raises(GRPCError) as refused:
                    await rpc.get_variable(GetVariableRequest(room_id="r", name="v"))
                assert refused.value.status is Status.UNAVAILABLE
                with pytest.raises(GRPCError) as no_stream:
                    async for _ in rpc.listen_variable(ListenVariableRequest(room_id="r", name="v")):
                        pass
                assert no_stream.value.status is Status.UNAVAILABLE

            # -- it comes back: the same process serves again ---------------------------------------------
            outage.bring_back()
            back = time.monotonic()

            async def ready_again() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready_again, what="/readyz to be 200 again")
            await eventually(
                lambda: all(load.successes_since(back)), what="the load to succeed again (REST and gRPC)"
            )
        finally:
            load.stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), WAIT)
        assert gateway.proc.poll() is None, "the gateway must recover without a restart"

        # Never anything but success or UNAVAILABLE: no 500, no hang, always the documented shape.
        assert {code for _, code, _ in load.rest_outcomes} <= {200, 503}, load.rest_outcomes
        for _, code, body in load.rest_outcomes:
            if code == 503:
                assert_unavailable_body(body)
        assert {status for _, status in load.grpc_outcomes} <= {Status.OK, Status.UNAVAILABLE}

        # New streams receive writes again, over both transports.
        assert (await http.put("/v1/rooms/r/variables/v", json={"value": 2})).status_code == 200
        async with (
            sse_listen(http, "/v1/rooms/r/variables/v:listen") as sse,
            grpc_listen(rpc.listen_variable(ListenVariableRequest(room_id="r", name="v"))) as stream,
        ):
            await sse.wait_for(1)
            await stream.wait_for(1)
            written = await rpc.set_variable(
                SetVariableRequest(room_id="r", name="v", value=Value.from_dict(3))
            )
            assert [m["value"] for m in await sse.wait_for(2)][-1] == 3
            assert [m.version for m in await stream.wait_for(2)][-1] == written.version
