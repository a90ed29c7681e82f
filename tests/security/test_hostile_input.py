"""Hostile input: oversized, deep or non-JSON values, control characters, slow and half-open clients.

Values are checked in the domain (``gateway.core.validation``), so REST and gRPC answer alike; slow clients
are cut by the edge's timeouts (``gateway.edge.timeouts``) on a real uvicorn, and gRPC's HTTP/2 keep-alive
closes connections whose peer never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway._gen.google import protobuf as wkt
from gateway._gen.roomgateway.v1 import (
    CreateRoomRequest,
    PublishEventRequest,
    Room,
    RoomServiceStub,
    SetVariableRequest,
)
from gateway.core import validation
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.errors import InvalidArgument
from tests.conftest import ADMIN_KEY
from tests.security.live import ADMIN_KEY as LIVE_KEY
from tests.security.live import live_config, live_gateway

JSON = {"content-type": "application/json"}


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "status", "message"} and error["code"] == status
    for word in words:
        assert word in error["message"], error


@pytest.fixture
async def rest(dispatcher: Dispatcher) -> AsyncIterator[httpx.AsyncClient]:
    app = create_http_app(dispatcher)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gateway.test", headers={"X-API-Key": ADMIN_KEY}
    ) as client:
        yield client


# -- values, in the domain ----------------------------------------------------------------------------------


def test_value_limits_in_the_domain() -> None:
    limits = validation.ValueLimits(max_bytes=100, max_depth=3)
    assert limits.check({"a": [1, 2.5, None, True, "x"]}) == {"a": [1, 2.5, None, True, "x"]}
    assert limits.check(nested(3)) == nested(3)
    for bad, words in [
        (nested(4), "nested deeper than 3"),
        ("x" * 200, "larger than 100 bytes"),
        (float("nan"), "NaN or Infinity"),
        ({"a": [float("-inf")]}, "NaN or Infinity"),
        ({1: "non-string key"}, "non-string"),
        (b"bytes", "not a JSON value"),
    ]:
        with pytest.raises(InvalidArgument, match=words):
            limits.check(bad)
    # What the serialized text cannot prove by itself is walked: brackets inside strings, nulls beside
    # numbers (orjson writes NaN as null), and an integer orjson cannot write (an answer, not a 500).
    assert limits.check({"a": "[[[[{{{{"}) == {"a": "[[[[{{{{"}
    assert limits.check([None, [1.5, None]]) == [None, [1.5, None]]
    for bad, words in [
        ({"a": "[[[[", "b": [[[[1]]]]}, "nested deeper than 3"),
        ([None, float("inf")], "NaN or Infinity"),
        ([2**70], "integer"),
        (["x", {"a": {1: None}}], "non-string"),
    ]:
        with pytest.raises(InvalidArgument, match=words):
            limits.check(bad)
    # A hostile depth does not exhaust the stack (the walk is iterative).
    with pytest.raises(InvalidArgument, match="nested"):
        validation.json_value(nested(100_000))


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("PUT", "/v1/rooms/r/variables/v", {"value": "x" * (64 * 1024)}, ["value", "larger than 65536"]),
        ("PUT", "/v1/rooms/r/variables/v", {"value": nested(33)}, ["value", "deeper than 32"]),
        ("POST", "/v1/rooms/r/events/e", {"data": "x" * (64 * 1024)}, ["data", "larger than 65536"]),
        ("POST", "/v1/rooms/r/events/e", {"data": nested(33)}, ["data", "deeper than 32"]),
        ("POST", "/v1/rooms", {"roomId": "r", "settings": {"a": nested(32)}}, ["settings", "deeper"]),
        ("POST", "/v1/rooms", {"roomId": "r", "description": "a\u0000b"}, ["description", "control"]),
        ("POST", "/v1/rooms", {"roomId": "r", "description": "bell\u0007"}, ["description", "control"]),
        ("POST", "/v1/rooms", {"roomId": "r", "displayName": "a\u0000b"}, ["display_name", "control"]),
        ("POST", "/v1/rooms", {"roomId": "r", "displayName": "a\nb"}, ["display_name", "control"]),
    ],
)
async def test_bad_values_are_400_over_rest(
    rest: httpx.AsyncClient, method: str, path: str, body: object, words: list[str]
) -> None:
    response = await rest.request(method, path, content=json.dumps(body), headers=JSON)
    assert_error(response, 400, *words)


async def test_values_at_the_limits_are_accepted(rest: httpx.AsyncClient) -> None:
    response = await rest.put("/v1/rooms/r/variables/v", json={"value": nested(32)})
    assert response.status_code == 200, response.text
    big = "x" * (64 * 1024 - 2)  # the JSON string's quotes make it 64 KiB exactly
    response = await rest.put("/v1/rooms/r/variables/w", json={"value": big})
    assert response.status_code == 200, response.text
    text = "line one\n\tline two\r\n"
    response = await rest.post("/v1/rooms", json={"roomId": "multi", "description": text})
    assert response.status_code == 200 and response.json()["description"] == text


async def test_the_value_limits_are_configured() -> None:
    config = live_config(input={"max_value_bytes": 10, "max_json_depth": 2})
    async with live_gateway(config) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        headers = {"X-API-Key": LIVE_KEY}
        response = await client.put("/v1/rooms/r/variables/v", json={"value": "0123456789"}, headers=headers)
        assert_error(response, 400, "larger than 10 bytes")
        response = await client.put("/v1/rooms/r/variables/v", json={"value": [[[1]]]}, headers=headers)
        assert_error(response, 400, "deeper than 2")
        response = await client.put("/v1/rooms/r/variables/v", json={"value": [[1]]}, headers=headers)
        assert response.status_code == 200, response.text


async def test_bad_values_are_invalid_argument_over_grpc() -> None:
    async with live_gateway(live_config()) as gw:
        channel = Channel(*gw.grpc)
        try:
            stub = RoomServiceStub(channel)
            meta = {"x-api-key": LIVE_KEY}
            cases = [
                stub.set_variable(
                    SetVariableRequest(room_id="r", name="v", value=wkt.Value(number_value=float("nan"))),
                    metadata=meta,
                ),
                stub.set_variable(
                    SetVariableRequest(room_id="r", name="v", value=wkt.Value(string_value="x" * 70_000)),
                    metadata=meta,
                ),
                stub.publish_event(
                    PublishEventRequest(room_id="r", name="e", data=wkt.Value(number_value=float("inf"))),
                    metadata=meta,
                ),
                stub.create_room(
                    CreateRoomRequest(room=Room(room_id="r2", description="nul\x00")), metadata=meta
                ),
            ]
            for call in cases:
                with pytest.raises(GRPCError) as caught:
                    await call
                assert caught.value.status is Status.INVALID_ARGUMENT, caught.value
        finally:
            channel.close()


# -- slow and half-open clients -----------------------------------------------------------------------------

TIMEOUTS = {
    "header_timeout_seconds": 0.6,
    "body_timeout_seconds": 0.6,
    "idle_timeout_seconds": 0.6,
    "max_header_bytes": 4096,
}


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (bounded: a hung test fails instead)."""
    return await asyncio.wait_for(reader.read(), 5.0)


def _status_and_error(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


async def test_stalled_clients_do_not_delay_others_and_are_cut() -> None:
    async with live_gateway(live_config(http=TIMEOUTS)) as gw:
        host, port = gw.http
        started = time.monotonic()
        # One client stalls in its headers, one in its body, one says nothing at all.
        half_headers = await asyncio.open_connection(host, port)
        half_headers[1].write(b"GET /v1/rooms HTTP/1.1\r\nHost: x\r\nX-API-Key: " + LIVE_KEY.encode())
        half_body = await asyncio.open_connection(host, port)
        half_body[1].write(
            b"PUT /v1/rooms/r/variables/v HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + LIVE_KEY.encode() + b'\r\nContent-Length: 100\r\n\r\n{"value": '
        )
        silent = await asyncio.open_connection(host, port)
        await asyncio.sleep(0.05)

        # Meanwhile everyone else is served at once.
        async with httpx.AsyncClient(base_url=gw.http_url, headers={"X-API-Key": LIVE_KEY}) as client:
            for _ in range(5):
                before = time.monotonic()
                response = await client.get("/v1/rooms")
                assert response.status_code == 200
                assert time.monotonic() - before < 0.3

        # Then each stalled client is cut after its timeout, with an answer in the error shape.
        raw = await _read_all(half_headers[0])
        status, error = _status_and_error(raw)
        assert status == 408 and error["status"] == "DEADLINE_EXCEEDED" and error["code"] == 408
        raw = await _read_all(half_body[0])
        status, error = _status_and_error(raw)
        assert status == 408 and "body" in str(error["message"])
        assert await _read_all(silent[0]) == b""  # closed without a word
        elapsed = time.monotonic() - started
        assert 0.5 < elapsed < 4, elapsed
        for _, writer in (half_headers, half_body, silent):
            writer.close()


async def test_a_trickling_body_is_cut_at_the_deadline() -> None:
    async with live_gateway(live_config(http=TIMEOUTS)) as gw:
        reader, writer = await asyncio.open_connection(*gw.http)
        writer.write(
            b"PUT /v1/rooms/r/variables/v HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + LIVE_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
        )
        started = time.monotonic()

        async def trickle() -> None:  # one byte every 50 ms: never idle, never done
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        raw = await _read_all(reader)
        trickling.cancel()
        assert _status_and_error(raw)[0] == 408
        assert time.monotonic() - started < 2
        writer.close()


async def test_each_request_on_a_kept_alive_connection_gets_its_own_deadlines() -> None:
    """The protocol keeps one timer per connection and moves deadlines per phase: a body that took a while
    (within its deadline) must not push out the next request's shorter header deadline, and a request that
    completes in time is never cut."""
    timeouts = {**TIMEOUTS, "header_timeout_seconds": 0.4, "body_timeout_seconds": 4.0}
    async with live_gateway(live_config(http=timeouts)) as gw:
        reader, writer = await asyncio.open_connection(*gw.http)
        body = b'{"value": 1}'
        head = (
            b"PUT /v1/rooms/r/variables/v HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + LIVE_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        writer.write(head + body[:5])
        await asyncio.sleep(0.9)  # past the header deadline, well within the body's
        writer.write(body[5:])
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        assert first.startswith(b"HTTP/1.1 200"), first
        length = int(next(line for line in first.split(b"\r\n") if line.lower().startswith(b"content-length"))
                     .split(b":")[1])  # fmt: skip
        await reader.readexactly(length)
        # The next request stalls in its headers: cut after the header deadline, not the body's.
        writer.write(b"GET /v1/rooms HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        status, error = _status_and_error(await _read_all(reader))
        assert status == 408 and "headers" in str(error["message"])
        assert 0.3 < time.monotonic() - started < 1.5
        writer.close()


async def test_oversized_headers_are_431_and_idle_connections_close() -> None:
    async with live_gateway(live_config(http=TIMEOUTS)) as gw:
        reader, writer = await asyncio.open_connection(*gw.http)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 5000 + b"\r\n\r\n")
        status, error = _status_and_error(await _read_all(reader))
        assert status == 431 and error["status"] == "INVALID_ARGUMENT"
        writer.close()

        # A kept-alive connection is closed after the idle timeout, once its response is complete.
        reader, writer = await asyncio.open_connection(*gw.http)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        raw = await _read_all(reader)
        assert raw.startswith(b"HTTP/1.1 200") and 0.4 < time.monotonic() - started < 3
        writer.close()


async def test_headers_trickled_past_the_limit_are_431_before_they_end() -> None:
    """Headers sent a few at a time, never finished: refused once those received pass the limit, well
    within the header deadline (the count is kept as they arrive, not redone per read)."""
    timeouts = {**TIMEOUTS, "header_timeout_seconds": 5.0}
    async with live_gateway(live_config(http=timeouts)) as gw:
        reader, writer = await asyncio.open_connection(*gw.http)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        # 42 headers of 100 bytes, a read each: just past the 4,096-byte limit, and no blank line.
        for n in range(42):
            writer.write(b"X-Filler-%03d: %s\r\n" % (n, b"a" * 84))
            await writer.drain()
            await asyncio.sleep(0.005)
        status, error = _status_and_error(await asyncio.wait_for(_read_all(reader), 5))
        assert status == 431 and error["status"] == "INVALID_ARGUMENT"
        assert time.monotonic() - started < 3  # not the 5 s header deadline's 408
        writer.close()


async def test_a_grpc_peer_that_never_answers_is_disconnected() -> None:
    grpc_limits = {"keepalive_seconds": 0.3, "keepalive_timeout_seconds": 0.3}
    async with live_gateway(live_config(grpc=grpc_limits)) as gw:
        reader, writer = await asyncio.open_connection(*gw.grpc)  # connects, then never speaks HTTP/2
        started = time.monotonic()
        await asyncio.wait_for(reader.read(), 5)  # the server's SETTINGS and PING, then EOF
        assert time.monotonic() - started < 3
        writer.close()
        # A live client is not disturbed by the pings.
        channel = Channel(*gw.grpc)
        try:
            stub = RoomServiceStub(channel)
            meta = {"x-api-key": LIVE_KEY}
            await stub.create_room(CreateRoomRequest(room=Room(room_id="alive")), metadata=meta)
            await asyncio.sleep(1.0)
            await stub.set_variable(
                SetVariableRequest(room_id="alive", name="v", value=wkt.Value(bool_value=True)), metadata=meta
            )
        finally:
            channel.close()
