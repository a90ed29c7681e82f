"""Acknowledged writes are never lost: ``kill -9`` the gateway in the middle of a write load, start it again
on the same store, and find every write it acknowledged (SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import SetVariableRequest
from tests.multi.conftest import WAIT, StartGateway, eventually, grpc, rest, write_until_gone

ROOM = "durable"
REST_WRITERS, GRPC_WRITERS = 6, 2
#: Bounds of each writer: calls, and seconds.
MAX_WRITES, MAX_SECONDS = 1000, 20.0
#: Acknowledged writes to wait for before the kill.
BEFORE_KILL = 150


@pytest.fixture(params=["sqlite", "postgresql"])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rooms.db'}"
    return str(request.getfixturevalue("postgres_url"))


async def test_kill_9_loses_no_acknowledged_write(durable_store: str, start_gateway: StartGateway) -> None:
    gateway = await asyncio.to_thread(start_gateway, durable_store)
    acknowledged: dict[str, int] = {}  # variable name -> the value the gateway acknowledged writing
    deadline = time.monotonic() + MAX_SECONDS

    async with rest(gateway, timeout=5) as http, grpc(gateway) as rpc:
        assert (await http.post("/v1/rooms", json={"roomId": ROOM})).status_code == 200

        async def rest_writer(worker: int) -> None:
            await write_until_gone(http, ROOM, f"rest-{worker}-", MAX_WRITES, acknowledged, deadline)

        async def grpc_writer(worker: int) -> None:
            for n in range(MAX_WRITES):
                name = f"grpc-{worker}-{n}"
                request = SetVariableRequest(room_id=ROOM, name=name, value=Value.from_dict(n))
                try:
                    await rpc.set_variable(request, timeout=5)
                except (OSError, StreamTerminatedError, TimeoutError):
                    return  # the gateway is gone
                except GRPCError as exc:
                    assert exc.status is Status.UNAVAILABLE, exc  # the connection was reset mid-call
                    return
                acknowledged[name] = n
                if time.monotonic() > deadline:
                    return

        writers = [
            *(asyncio.create_task(rest_writer(n)) for n in range(REST_WRITERS)),
            *(asyncio.create_task(grpc_writer(n)) for n in range(GRPC_WRITERS)),
        ]
        try:
            await eventually(
                lambda: len(acknowledged) >= BEFORE_KILL, what=f"{BEFORE_KILL} acknowledged writes"
            )
            gateway.proc.kill()  # SIGKILL: no drain, no close, nothing flushed by the gateway itself
        finally:
            await asyncio.wait_for(asyncio.gather(*writers), WAIT)
    assert gateway.wait(WAIT) == -9
    assert any(name.startswith("grpc-") for name in acknowledged)

    again = await asyncio.to_thread(start_gateway, durable_store)
    async with rest(again) as http:
        response = await http.get(f"/v1/rooms/{ROOM}/contents")
        assert response.status_code == 200, response.text
        contents = response.json()["contents"]
    lost = {name: value for name, value in acknowledged.items() if contents.get(name) != value}
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes were lost: {sorted(lost)[:10]}"
