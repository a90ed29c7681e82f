"""One room seen through every surface at once, on a real gateway with WorkAdventure and Reflect switched on:
a variable saved through WorkAdventure's ``saveVariable`` is in Reflect's ``rooms/contents`` and reaches a
native SSE listener; a room closed through Reflect refuses new WorkAdventure streams."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import httpx
from google.protobuf import struct_pb2
from google.protobuf.json_format import ParseDict

from tests.compat.workadventure.conftest import ADMIN_KEY, RoomApiStubs, config_text
from tests.server.conftest import GatewayProcess, gateway_env

ROOM = "cross-surface-room"
TIMEOUT = 10.0


async def sse_values(client: httpx.AsyncClient, url: str, wanted: int, seen: list[object]) -> None:
    async with client.stream("GET", url, headers={"X-API-Key": ADMIN_KEY}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:])["value"])
                if len(seen) == wanted:
                    return


async def test_one_room_through_every_surface(room_api: RoomApiStubs, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        config_text().replace(
            "workadventure: {enabled: true}",
            "workadventure: {enabled: true}\n  reflect: {enabled: true, apps: [my-app]}",
        ),
        encoding="utf-8",
    )
    gateway = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=ADMIN_KEY))
    reflect = f"{gateway.http_url}/v1/apps/my-app"
    reflect_auth = {"Authorization": f"Basic {ADMIN_KEY}"}
    host, port = gateway.grpc_address
    try:
        async with (
            grpc.aio.insecure_channel(f"{host}:{port}") as channel,
            httpx.AsyncClient(base_url=gateway.http_url, timeout=TIMEOUT) as http,
        ):
            stub = room_api.grpc.RoomApiStub(channel)
            pb = room_api.pb2
            metadata = (("x-api-key", ADMIN_KEY),)

            async def save(value: object) -> None:
                request = pb.SaveVariableRequest(
                    room=ROOM, name="door", value=ParseDict(value, struct_pb2.Value())
                )
                await stub.saveVariable(request, metadata=metadata, timeout=TIMEOUT)

            # WorkAdventure writes; Reflect reads it in the room's contents.
            await save({"state": "open"})
            contents = await http.get(
                f"{reflect}/rooms/contents", params={"roomID": ROOM}, headers=reflect_auth
            )
            assert contents.status_code == 200, contents.text
            assert contents.json()["result"] == {"contents": {"door": {"state": "open"}}}

            # A native SSE listener hears the current value, then WorkAdventure's next write.
            seen: list[object] = []
            listener = asyncio.create_task(
                sse_values(http, f"/v1/rooms/{ROOM}/variables/door:listen", 2, seen)
            )
            async with asyncio.timeout(TIMEOUT):
                while not seen:
                    await asyncio.sleep(0.02)
            await save({"state": "closed"})
            await asyncio.wait_for(listener, TIMEOUT)
            assert seen == [{"state": "open"}, {"state": "closed"}]

            # Reflect closes the room; WorkAdventure can no longer start a stream on it.
            closed = await http.post(f"{reflect}/rooms:close", params={"roomID": ROOM}, headers=reflect_auth)
            assert closed.status_code == 200, closed.text
            stream = stub.listenVariable(
                pb.VariableRequest(room=ROOM, name="door"), metadata=metadata, timeout=TIMEOUT
            )
            try:
                await stream.read()
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
                assert "closed" in (err.details() or "")
            else:
                raise AssertionError("a closed room accepted a new WorkAdventure stream")
    finally:
        gateway.stop()
