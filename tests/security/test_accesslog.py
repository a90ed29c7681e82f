"""Access logs: one line per call on REST and gRPC, with the key's *name* and never a secret.

Every credential form of API.md is used with a secret marker in the body and the query string; no log
record of any logger, at DEBUG, holds a key, a credential header value, the marker or a body.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import httpx
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from gateway._gen.google import protobuf as wkt
from gateway._gen.roomgateway.v1 import GetRoomRequest, RoomServiceStub, SetVariableRequest
from gateway.edge.accesslog import LOGGER_NAME
from tests.security.live import ADMIN_KEY, READER_KEY, live_config, live_gateway

SECRET_MARKER = "body-secret-9f2c1e"
WRONG_KEY = "wrong-key-that-looks-real-0123456789"
TOKENS = {"secret": "access-log-token-secret-0123456789abcdef", "roles": {"guest": ["variables:read"]}}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CREDENTIALS: list[dict[str, str]] = [
    {"X-API-Key": ADMIN_KEY},
    {"Authorization": f"Bearer {ADMIN_KEY}"},
    {"Authorization": f"Basic {_b64('project:' + ADMIN_KEY)}"},
    {"Authorization": f"Basic {ADMIN_KEY}"},
    {"X-API-Key": READER_KEY},
    {"X-API-Key": WRONG_KEY},
    {"Authorization": f"Bearer {WRONG_KEY}"},
]
SECRETS = [ADMIN_KEY, READER_KEY, WRONG_KEY, SECRET_MARKER, _b64("project:" + ADMIN_KEY)]


#: Loggers of the test's own HTTP client, which logs the URLs it requests (query strings included).
CLIENT_LOGGERS = ("httpx", "httpcore")


def everything_logged(records: list[logging.LogRecord]) -> str:
    """All a handler or formatter could write: messages, args, extras, exception text (the test client's
    own records aside; hpack, shared by the gRPC client and server, is held at WARNING by the gateway)."""
    parts: list[str] = []
    for record in records:
        if record.name.startswith(CLIENT_LOGGERS):
            continue
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        parts.append(repr(record.__dict__))
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def access_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    return [r.access for r in records if r.name == LOGGER_NAME and hasattr(r, "access")]  # type: ignore[attr-defined]


async def test_rest_lines_and_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    async with live_gateway(live_config()) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        for headers in CREDENTIALS:
            await client.put(
                f"/v1/rooms/logged/variables/v?token={SECRET_MARKER}",
                json={"value": SECRET_MARKER},
                headers=headers,
            )
            await client.put("/v1/rooms/logged/variables/v", json={"value": SECRET_MARKER}, headers=headers)
            await client.get("/v1/rooms/logged/variables/v", headers=headers)
        await client.post("/v1/rooms", content=b"not json " + SECRET_MARKER.encode(), headers=CREDENTIALS[0])
        await client.get("/healthz")
        await client.get("/v1/rooms/a%0Ab%1B", headers=CREDENTIALS[0])  # a log-forging attempt

    lines = access_lines(caplog.records)
    assert len(lines) == 3 * len(CREDENTIALS) + 3
    by_request = {(line["method"], line["path"], line["key"], line["status"]) for line in lines}
    assert ("PUT", "/v1/rooms/logged/variables/v", "admin", 200) in by_request
    assert ("PUT", "/v1/rooms/logged/variables/v", "reader", 403) in by_request
    assert ("PUT", "/v1/rooms/logged/variables/v", "-", 401) in by_request
    assert ("GET", "/v1/rooms/logged/variables/v", "reader", 200) in by_request
    assert ("POST", "/v1/rooms", "admin", 415) in by_request
    assert ("GET", "/healthz", "-", 200) in by_request
    assert ("GET", "/v1/rooms/a%0Ab%1B", "admin", 400) in by_request
    for line in lines:
        assert line["transport"] == "http" and line["client"] == "127.0.0.1"
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    for record in caplog.records:
        if record.name == LOGGER_NAME:
            assert record.levelno == logging.INFO and "\n" not in record.getMessage()
    logged = everything_logged(caplog.records)
    for secret in SECRETS:
        assert secret not in logged, secret
    assert "?" not in " ".join(line["path"] for line in lines)  # no query string at all


async def test_grpc_lines_and_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with live_gateway(live_config()) as gw:
        channel = Channel(*gw.grpc)
        try:
            stub = RoomServiceStub(channel)
            request = SetVariableRequest(room_id="g", name="v", value=wkt.Value(string_value=SECRET_MARKER))
            grpc_metadata = [
                {"x-api-key": ADMIN_KEY},
                {"authorization": f"Bearer {ADMIN_KEY}"},
                {"authorization": f"Basic {_b64('u:' + ADMIN_KEY)}"},
                {"x-api-key": READER_KEY},
                {"x-api-key": WRONG_KEY},
            ]
            for metadata in grpc_metadata:
                try:
                    await stub.set_variable(request, metadata=metadata)
                except GRPCError:
                    pass
            await stub.get_room(GetRoomRequest(room_id="g"), metadata={"x-api-key": READER_KEY})
        finally:
            channel.close()

    lines = [line for line in access_lines(caplog.records) if line["transport"] == "grpc"]
    seen = [(line["method"].rsplit("/", 1)[-1], line["status"], line["key"]) for line in lines]
    assert seen == [
        ("SetVariable", "OK", "admin"),
        ("SetVariable", "OK", "admin"),
        ("SetVariable", "OK", "admin"),
        ("SetVariable", "PERMISSION_DENIED", "reader"),
        ("SetVariable", "UNAUTHENTICATED", "-"),
        ("GetRoom", "OK", "reader"),
    ]
    assert all(line["client"] == "127.0.0.1" and line["latency_ms"] >= 0 for line in lines)
    logged = everything_logged(caplog.records)
    for secret in SECRETS:
        assert secret not in logged, secret


async def test_access_tokens_are_never_logged_nor_counted(caplog: pytest.LogCaptureFixture) -> None:
    """``?access_token=`` (API.md "Browsers"), accepted or refused, for a key or a room token: in no log
    record, no error body and no metric; the access line names the caller as a header would."""
    caplog.set_level(logging.DEBUG)
    config = live_config(auth={"room_tokens": TOKENS})  # merged into the admin and reader keys
    async with live_gateway(config) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        admin = {"X-API-Key": ADMIN_KEY}
        guest = {"userName": "ann", "role": "guest"}
        minted = await client.post("/v1/rooms/t/tokens", json=guest, headers=admin)
        token = minted.json()["token"]
        secrets = [*SECRETS, token]
        for credential in (ADMIN_KEY, token):
            async with client.stream("GET", f"/v1/rooms/t:listen?access_token={credential}") as stream:
                assert stream.status_code == 200
                async for _ in stream.aiter_bytes():
                    break
        refusals = [
            await client.get(f"/v1/rooms/t:listen?access_token={WRONG_KEY}"),  # 401
            await client.get(f"/v1/rooms/t?access_token={ADMIN_KEY}"),  # 400: not a stream
            await client.get(f"/v1/rooms/t:listen?access_token={ADMIN_KEY}", headers=admin),  # 400: both
        ]
        assert [r.status_code for r in refusals] == [401, 400, 400]
        for refusal in refusals:
            assert not any(secret in refusal.text for secret in secrets)
        metrics = (await client.get("/metrics", headers=admin)).text
        for _ in range(100):  # a stream's line is written when the server has seen it end
            lines = access_lines(caplog.records)
            keys = {line["key"] for line in lines if line["path"] == "/v1/rooms/t:listen"}
            if {"admin", "token:ann"} <= keys:
                break
            await asyncio.sleep(0.02)
    assert {"admin", "token:ann", "-"} <= keys
    logged = everything_logged(caplog.records)
    for secret in secrets:
        assert secret not in logged, secret
        assert secret not in metrics, secret
