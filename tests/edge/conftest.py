"""Fixtures of the REST edge tests: the real app over the shared dispatcher, and clients for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from starlette.applications import Starlette

from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from tests.conftest import ADMIN_KEY, READER_KEY

BASE_URL = "http://gateway.test"


@pytest.fixture
def app(dispatcher: Dispatcher) -> Starlette:
    return create_http_app(dispatcher, keepalive_seconds=0.05)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url=BASE_URL, headers={"X-API-Key": ADMIN_KEY}
    ) as c:
        yield c


@pytest.fixture
async def reader(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url=BASE_URL, headers={"X-API-Key": READER_KEY}
    ) as c:
        yield c


@pytest.fixture
async def anonymous(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE_URL) as c:
        yield c


class AsgiCall:
    """One request driven by hand, to watch a streamed response chunk by chunk and to disconnect.

    httpx's ASGITransport buffers whole responses, so streams are tested through this.
    """

    def __init__(self, app: Starlette, method: str, raw_path: str, headers: dict[str, str]) -> None:
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        path, _, query = raw_path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("gateway.test", 80),
        }
        self._inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.task = asyncio.create_task(app(scope, self._inbox.get, self._outbox.put))
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False

    async def start(self) -> int:
        message = await asyncio.wait_for(self._outbox.get(), 2)
        assert message["type"] == "http.response.start"
        self.status = message["status"]
        self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        return self.status

    async def chunk(self) -> bytes:
        message = await asyncio.wait_for(self._outbox.get(), 2)
        assert message["type"] == "http.response.body"
        if not message.get("more_body", False):
            self.ended = True
        return bytes(message.get("body", b""))

    async def disconnect(self) -> None:
        await self._inbox.put({"type": "http.disconnect"})
        await asyncio.wait_for(self.task, 2)


@pytest.fixture
def asgi_call(app: Starlette) -> Any:
    calls: list[AsgiCall] = []

    def start(path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> AsgiCall:
        call = AsgiCall(app, method, path, {"x-api-key": ADMIN_KEY, **(headers or {})})
        calls.append(call)
        return call

    yield start
    for call in calls:
        call.task.cancel()
