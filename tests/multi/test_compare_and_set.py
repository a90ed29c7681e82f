"""No lost update: 50 concurrent clients increment one variable with compare-and-set (read, then SetVariable
with ``expectedVersion``, again on ABORTED), through two gateway processes on the stores several processes
can share, and through one on the others. The final value is the number of successful sets, and those sets
got every version from 2 up, each exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import GetVariableRequest, RoomServiceStub, SetVariableRequest
from tests.multi.conftest import WAIT, StartGateway, grpc, rest, start_gateways

CLIENTS = 50
#: Each client stops after this many successful sets, or this many attempts, or this many seconds.
GOAL, MAX_ATTEMPTS, MAX_SECONDS = 2, 4, 15.0
PATH = "/v1/rooms/counter/variables/n"


@pytest.fixture(
    params=[("postgres", 2), ("redis", 2), ("sqlite", 1), ("memory", 1)],
    ids=["postgresql-2-instances", "redis-2-instances", "sqlite", "memory"],
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int]:
    """A backend URL and how many gateway processes to run on it."""
    kind, instances = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'rooms.db'}", instances
    if kind == "memory":
        return "memory://", instances
    return str(request.getfixturevalue(f"{kind}_url")), instances


class Tally:
    def __init__(self) -> None:
        self.versions: list[int] = []  # the version of each successful set
        self.conflicts = 0


async def rest_client(http: httpx.AsyncClient, tally: Tally, deadline: float) -> None:
    done = 0
    for _ in range(MAX_ATTEMPTS):
        if done == GOAL or time.monotonic() > deadline:
            return
        current = await http.get(PATH)
        assert current.status_code == 200, current.text
        value, version = current.json()["value"], current.json()["version"]
        written = await http.put(PATH, json={"value": value + 1, "expectedVersion": version})
        if written.status_code == 409:
            assert written.json()["error"]["status"] == "ABORTED", written.text
            tally.conflicts += 1
            continue
        assert written.status_code == 200, written.text
        tally.versions.append(int(written.json()["version"]))
        done += 1


async def grpc_client(rpc: RoomServiceStub, tally: Tally, deadline: float) -> None:
    done = 0
    for _ in range(MAX_ATTEMPTS):
        if done == GOAL or time.monotonic() > deadline:
            return
        current = await rpc.get_variable(GetVariableRequest(room_id="counter", name="n"))
        assert current.value is not None
        request = SetVariableRequest(
            room_id="counter",
            name="n",
            value=Value.from_dict(current.value.to_dict() + 1),
            expected_version=current.version,
        )
        try:
            written = await rpc.set_variable(request)
        except GRPCError as exc:
            assert exc.status is Status.ABORTED, exc
            tally.conflicts += 1
            continue
        tally.versions.append(written.version)
        done += 1


async def test_concurrent_compare_and_set_loses_no_update(
    store: tuple[str, int], start_gateway: StartGateway
) -> None:
    url, instances = store
    gateways = await start_gateways(start_gateway, url, instances)
    tally = Tally()
    deadline = time.monotonic() + MAX_SECONDS
    https = [rest(gateway) for gateway in gateways]
    try:
        async with grpc(gateways[0]) as rpc1, grpc(gateways[-1]) as rpc2:
            rpcs: Sequence[RoomServiceStub] = (rpc1, rpc2)
            first = await https[0].put(PATH, json={"value": 0})
            assert first.status_code == 200 and first.json()["version"] == "1", first.text
            # Client i talks to instance i % 2, over REST when i % 4 < 2, else over gRPC.
            clients = [
                rest_client(https[i % instances], tally, deadline)
                if i % 4 < 2
                else grpc_client(rpcs[i % 2 if instances == 2 else 0], tally, deadline)
                for i in range(CLIENTS)
            ]
            await asyncio.wait_for(asyncio.gather(*clients), MAX_SECONDS + WAIT)
            final = [(await http.get(PATH)).json() for http in https]
    finally:
        for http in https:
            await http.aclose()

    successes = len(tally.versions)
    assert successes > 0 and tally.conflicts > 0, (successes, tally.conflicts)
    # Every instance reads the same final value: one increment per successful set, none lost.
    for seen in final:
        assert seen["value"] == successes, (seen, successes, tally.conflicts)
        assert seen["version"] == str(successes + 1)
    assert sorted(tally.versions) == list(range(2, successes + 2))
