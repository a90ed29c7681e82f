"""``roomApi.RoomApi`` on a real gateway, called by grpcio with stubs from ``protos/roomApi/room-api.proto``
(an implementation independent of ours), over h2c and TLS; and seen from the native REST API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

from tests.compat.workadventure.conftest import (
    ADMIN_KEY,
    LIMITED_KEY,
    ROOM,
    Certificate,
    RoomApiStubs,
    StartWorkAdventure,
)
from tests.server.conftest import GatewayProcess

ADMIN = (("x-api-key", ADMIN_KEY),)
TIMEOUT = 10.0


def value(json_value: Any) -> struct_pb2.Value:
    return ParseDict(json_value, struct_pb2.Value())


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status a call fails with (not ``pytest.raises``: its traceback would keep the call alive)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call succeeded")


async def first_while_writing(stream: Any, write: Callable[[int], Awaitable[Any]]) -> Any:
    """The first message of a server stream, writing (``write(round)``) every 100 ms until it comes: a
    listener is subscribed some time after its call starts, and hears only what is written after that."""
    first = asyncio.ensure_future(stream.read())
    try:
        for round_ in range(1, 51):
            await write(round_)
            done, _ = await asyncio.wait({first}, timeout=0.1)
            if done:
                break
        return await asyncio.wait_for(first, TIMEOUT)
    finally:
        stream.cancel()


async def run_scenario(stub: Any, pb: Any, room: str) -> None:
    """The calls a WorkAdventure integration makes, checked one by one."""
    # readVariable: an unset variable (in a room nobody created) is an empty Value.
    unset = await stub.readVariable(pb.VariableRequest(room=room, name="never-set"), metadata=ADMIN)
    assert unset.WhichOneof("kind") is None

    # saveVariable / readVariable: any JSON, the room created on the way; integers stay integers.
    saved = {"open": True, "count": 3, "tags": ["a", "b"], "nothing": None, "ratio": 0.5}
    await stub.saveVariable(
        pb.SaveVariableRequest(room=room, name="doors", value=value("initial")), metadata=ADMIN
    )
    await stub.saveVariable(
        pb.SaveVariableRequest(room=room, name="shared", value=value(saved)), metadata=ADMIN
    )
    read = await stub.readVariable(pb.VariableRequest(room=room, name="shared"), metadata=ADMIN)
    assert MessageToDict(read) == saved

    # listenVariable: only later changes — never the current value "initial".
    listen = stub.listenVariable(pb.VariableRequest(room=room, name="doors"), metadata=ADMIN, timeout=TIMEOUT)
    changed = await first_while_writing(
        listen,
        lambda n: stub.saveVariable(
            pb.SaveVariableRequest(room=room, name="doors", value=value({"round": n})), metadata=ADMIN
        ),
    )
    assert MessageToDict(changed) == {"round": 1}

    # broadcastEvent (targetUserIds accepted) → listenToEvent, with no senderId.
    events = stub.listenToEvent(pb.EventRequest(room=room, name="ring"), metadata=ADMIN, timeout=TIMEOUT)
    event = await first_while_writing(
        events,
        lambda n: stub.broadcastEvent(
            pb.DispatchEventRequest(room=room, name="ring", data=value({"round": n}), targetUserIds=[1, 2]),
            metadata=ADMIN,
        ),
    )
    assert MessageToDict(event.data) == {"round": 1}
    assert not event.HasField("senderId")

    # WorkAdventure's errors.
    request = pb.VariableRequest(room=room, name="shared")
    assert await status_of(stub.readVariable(request)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "X-API-Key metadata not defined!",
    )
    assert await status_of(stub.readVariable(request, metadata=(("x-api-key", "not-a-configured-key"),))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "Wrong API key",
    )
    # Only x-api-key, as WorkAdventure: a valid key in another header is not looked at.
    bearer = (("authorization", f"Bearer {ADMIN_KEY}"),)
    assert (await status_of(stub.readVariable(request, metadata=bearer)))[
        0
    ] == grpc.StatusCode.UNAUTHENTICATED
    # A key bound to other rooms, as WorkAdventure's check of a key against its front URL.
    limited = (("x-api-key", LIMITED_KEY),)
    code, _ = await status_of(stub.readVariable(request, metadata=limited))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    listen_other = stub.listenVariable(request, metadata=limited, timeout=TIMEOUT)
    assert (await status_of(listen_other.read()))[0] == grpc.StatusCode.PERMISSION_DENIED
    public = pb.SaveVariableRequest(room="public-lobby", name="v", value=value(1))
    await stub.saveVariable(public, metadata=limited)


@pytest.fixture
async def h2c(wa_gateway: GatewayProcess, room_api: RoomApiStubs) -> AsyncIterator[Any]:
    host, port = wa_gateway.grpc_address
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        yield room_api.grpc.RoomApiStub(channel)


async def test_the_workadventure_calls_over_h2c(h2c: Any, room_api: RoomApiStubs) -> None:
    await run_scenario(h2c, room_api.pb2, ROOM)


async def test_the_workadventure_calls_over_tls(
    start_wa: StartWorkAdventure, certificate: Certificate, room_api: RoomApiStubs
) -> None:
    gateway = start_wa(tls=certificate)
    _, port = gateway.grpc_address
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate.cert_file.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        await run_scenario(room_api.grpc.RoomApiStub(channel), room_api.pb2, ROOM)
    # A plaintext client gets no answer from a TLS listener.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
        stub = room_api.grpc.RoomApiStub(plain)
        call = stub.readVariable(room_api.pb2.VariableRequest(room=ROOM, name="v"), metadata=ADMIN, timeout=5)
        assert (await status_of(call))[0] == grpc.StatusCode.UNAVAILABLE
    # Logged after the "listening" lines the process fixture waits for: read it last.
    assert any(line.startswith("room-gateway: grpc: TLS with") for line in gateway.lines), gateway.log


async def test_a_saved_variable_is_seen_by_the_native_api(
    wa_gateway: GatewayProcess, h2c: Any, room_api: RoomApiStubs
) -> None:
    pb = room_api.pb2
    room_path = quote(ROOM, safe="")
    await h2c.saveVariable(
        pb.SaveVariableRequest(room=ROOM, name="light", value=value("off")), metadata=ADMIN
    )
    headers = {"X-API-Key": ADMIN_KEY}
    async with httpx.AsyncClient(base_url=wa_gateway.http_url, headers=headers, timeout=TIMEOUT) as http:
        contents = await http.get(f"/v1/rooms/{room_path}/contents")
        assert contents.status_code == 200, contents.text
        snapshot = contents.json()
        assert snapshot.pop("epoch") and snapshot.pop("seq") == "2"  # the log position it was read at
        assert snapshot == {"contents": {"light": "off"}}

        async with http.stream("GET", f"/v1/rooms/{room_path}/variables/light:listen") as sse:
            assert sse.status_code == 200
            data = (json.loads(line[6:]) async for line in sse.aiter_lines() if line.startswith("data: "))
            assert (await anext(data))["value"] == "off"  # the current value: the listener is subscribed
            await h2c.saveVariable(
                pb.SaveVariableRequest(room=ROOM, name="light", value=value({"level": 7})), metadata=ADMIN
            )
            changed = await asyncio.wait_for(anext(data), TIMEOUT)
        assert changed["value"] == {"level": 7}
        assert changed["version"] == "2"

    # And the other way: a native write is read and heard through roomApi.
    listen = h2c.listenVariable(pb.VariableRequest(room=ROOM, name="light"), metadata=ADMIN, timeout=TIMEOUT)
    async with httpx.AsyncClient(base_url=wa_gateway.http_url, headers=headers, timeout=TIMEOUT) as http:

        async def put(n: int) -> None:
            response = await http.put(f"/v1/rooms/{room_path}/variables/light", json={"value": n})
            assert response.status_code == 200, response.text

        heard = await first_while_writing(listen, put)
    assert MessageToDict(heard) == 1


async def test_bad_input_is_answered_not_crashed_on(h2c: Any, room_api: RoomApiStubs) -> None:
    pb = room_api.pb2
    # No value (or an empty Value) is not a JSON value.
    code, _ = await status_of(h2c.saveVariable(pb.SaveVariableRequest(room=ROOM, name="v"), metadata=ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    empty = pb.SaveVariableRequest(room=ROOM, name="v", value=struct_pb2.Value())
    assert (await status_of(h2c.saveVariable(empty, metadata=ADMIN)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    # The room and the name follow the gateway's rules.
    code, _ = await status_of(h2c.readVariable(pb.VariableRequest(room="", name="v"), metadata=ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await status_of(h2c.readVariable(pb.VariableRequest(room=ROOM, name="a/b"), metadata=ADMIN))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # An event without data is null.
    await h2c.broadcastEvent(pb.DispatchEventRequest(room=ROOM, name="e"), metadata=ADMIN)
