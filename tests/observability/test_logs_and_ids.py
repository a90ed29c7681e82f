"""Request ids round-trip on both transports; logs in JSON parse line by line, carry the fields API.md lists
and, like the text ones, never a secret (the whole log grepped); error lines name their call."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest, ServerReflectionResponse

from gateway._gen.google import protobuf as wkt
from gateway._gen.roomgateway.v1 import GetVariableRequest, RoomServiceStub, SetVariableRequest, Variable
from gateway.logs import JsonFormatter, RequestIdFilter, TextFormatter
from gateway.observability.calls import CURRENT, Call
from tests.security.live import ADMIN_KEY, live_config, live_gateway
from tests.security.test_accesslog import CLIENT_LOGGERS, CREDENTIALS, SECRET_MARKER, SECRETS

GENERATED = re.compile(r"[0-9a-f]{16}")
ACCESS_FIELDS = {"time", "level", "logger", "message", "transport", "method", "status", "key", "latency_ms",
                 "client", "request_id", "route"}  # fmt: skip


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record of every logger, at DEBUG, formatted as ``logging.format: json`` writes it (the test's
    own HTTP client aside: it logs the URLs it requests)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(lambda record: not record.name.startswith(CLIENT_LOGGERS))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def lines_of(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_rest_request_ids(json_log: io.StringIO) -> None:
    trusted = live_config(rate_limits={"limits": [], "trusted_proxies": ["127.0.0.1"]})
    async with live_gateway(trusted) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        answer = await client.get("/healthz", headers={"X-Request-Id": "edge-7f3a"})
        assert answer.headers["x-request-id"] == "edge-7f3a"
        forged = await client.get("/healthz", headers={"X-Request-Id": "bad id"})
        assert GENERATED.fullmatch(forged.headers["x-request-id"])
    async with live_gateway(live_config()) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        answer = await client.get("/healthz", headers={"X-Request-Id": "edge-7f3a"})  # untrusted peer
        generated = answer.headers["x-request-id"]
        assert GENERATED.fullmatch(generated)
        other = (await client.get("/v1/rooms/x", headers={"X-API-Key": ADMIN_KEY})).headers["x-request-id"]
        assert other != generated
    ids = [line["request_id"] for line in lines_of(json_log) if line["logger"] == "room_gateway.access"]
    assert ids == ["edge-7f3a", forged.headers["x-request-id"], generated, other]


async def test_grpc_request_ids(json_log: io.StringIO) -> None:
    trusted = live_config(rate_limits={"limits": [], "trusted_proxies": ["127.0.0.1"]})
    async with live_gateway(trusted) as gw:
        channel = Channel(*gw.grpc)
        try:
            for given in ("rpc-1", None):
                metadata = {"x-api-key": ADMIN_KEY, **({"x-request-id": given} if given else {})}
                async with channel.request(
                    "/roomgateway.v1.RoomService/GetVariable",
                    Cardinality.UNARY_UNARY,
                    GetVariableRequest,
                    Variable,
                    metadata=metadata,
                ) as stream:
                    await stream.send_message(GetVariableRequest(room_id="r", name="v"), end=True)
                    with pytest.raises(GRPCError):  # NOT_FOUND: a trailers-only answer
                        await stream.recv_message()
                    echoed = stream.trailing_metadata or stream.initial_metadata
                    assert echoed is not None
                    if given:
                        assert echoed["x-request-id"] == given
                    else:
                        assert GENERATED.fullmatch(str(echoed["x-request-id"]))
            stub = RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY, "x-request-id": "rpc-2"})
            await stub.set_variable(
                SetVariableRequest(room_id="r", name="v", value=wkt.Value(number_value=1))
            )
        finally:
            channel.close()
    access = [line for line in lines_of(json_log) if line["logger"] == "room_gateway.access"]
    assert access[0]["request_id"] == "rpc-1"
    assert access[-1]["request_id"] == "rpc-2" and access[-1]["status"] == "OK"


async def test_json_logs_parse_carry_fields_and_no_secret(json_log: io.StringIO) -> None:
    async with live_gateway(live_config()) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        for headers in CREDENTIALS:
            await client.put(
                f"/v1/rooms/j/variables/v?token={SECRET_MARKER}",
                json={"value": SECRET_MARKER},
                headers=headers,
            )
            await client.put("/v1/rooms/j/variables/v", json={"value": SECRET_MARKER}, headers=headers)
        channel = Channel(*gw.grpc)
        try:
            stub = RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY})
            await stub.set_variable(
                SetVariableRequest(room_id="j", name="v", value=wkt.Value(string_value="x"))
            )
        finally:
            channel.close()
    text = json_log.getvalue()
    lines = lines_of(json_log)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["time"])) for line in lines)
    access = [line for line in lines if line["logger"] == "room_gateway.access"]
    assert len(access) == 2 * len(CREDENTIALS) + 1
    for line in access:
        assert ACCESS_FIELDS <= set(line), line
    rest = [line for line in access if line["transport"] == "http"]
    assert {(line["route"], line["status"], line["key"]) for line in rest} >= {
        ("SetVariable", 200, "admin"),
        ("SetVariable", 401, "-"),
        ("SetVariable", 403, "reader"),
    }
    assert [line["route"] for line in access if line["transport"] == "grpc"] == ["SetVariable"]
    for secret in SECRETS:
        assert secret not in text, secret


def test_error_lines_name_their_call() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    for formatter in (TextFormatter(), JsonFormatter()):
        records.clear()
        handler = Collect()
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
        logger = logging.getLogger("room_gateway.test_error_lines")
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        token = CURRENT.set(Call("call-42"))
        try:
            logger.error("it broke")
            logger.info("just saying")
        finally:
            CURRENT.reset(token)
            logger.removeHandler(handler)
        logger.warning("outside any call")
        if isinstance(formatter, JsonFormatter):
            first, second = (json.loads(r) for r in records)
            assert first["request_id"] == "call-42" and first["level"] == "error"
            assert second["request_id"] == "call-42"
        else:
            assert re.fullmatch(
                r"\S+Z room_gateway.test_error_lines: ERROR: it broke request_id=call-42", records[0]
            )
            assert records[1].endswith("room_gateway.test_error_lines: just saying")


async def test_a_stream_the_client_resets_is_logged_cancelled(json_log: io.StringIO) -> None:
    """A bidirectional call the client resets while the handler waits for its next message: grpclib's
    server still dispatches UNKNOWN trailers (which never leave); the access line says CANCELLED."""
    async with live_gateway(live_config()) as gw:
        channel = Channel(*gw.grpc)
        try:
            async with channel.request(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Cardinality.STREAM_STREAM,
                ServerReflectionRequest,
                ServerReflectionResponse,
                metadata={"x-api-key": ADMIN_KEY},
            ) as stream:
                await stream.send_message(ServerReflectionRequest(list_services=""))
                assert (await stream.recv_message()) is not None
                await stream.cancel()  # RST_STREAM while the server's handler waits in `async for`
            for _ in range(100):  # the server's task ends after the reset reaches it
                if any(line["logger"] == "room_gateway.access" for line in lines_of(json_log)):
                    break
                await asyncio.sleep(0.02)
        finally:
            channel.close()
    access = [line for line in lines_of(json_log) if line["logger"] == "room_gateway.access"]
    assert [line["status"] for line in access] == ["CANCELLED"]
