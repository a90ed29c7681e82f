"""Fixtures of the multi-instance tests: real ``room-gateway serve`` processes on shared stores, and ways to
take a store away from under them.

* Stores: the machine's PostgreSQL (``ROOM_GATEWAY_TEST_POSTGRESQL_URL``, default
  ``postgresql://postgres@127.0.0.1:5432/test``) in a fresh schema per test, dropped afterwards, and its Redis
  (``ROOM_GATEWAY_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) under a fresh key prefix per test,
  deleted afterwards. Without a reachable server a test skips, naming it; under ``CI`` it fails instead.
* Outages, without ever touching the machine's servers: a private ``redis-server`` that a test kills and
  starts again (:class:`PrivateRedis`), and a TCP proxy in front of PostgreSQL that a test cuts and restores
  (:class:`TcpProxy`).
* Gateways: :class:`tests.server.conftest.GatewayProcess` (``python -m gateway serve`` on free loopback
  ports), each with its own configuration file; every one is stopped at the end of its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import redis
import redis.exceptions
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from sqlalchemy.engine import make_url

from gateway._gen.roomgateway.v1 import RoomServiceStub
from tests.server.conftest import KEY, GatewayProcess, gateway_env

POSTGRES_URL = os.environ.get("ROOM_GATEWAY_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ROOM_GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HEADERS = {"X-API-Key": KEY}
#: Every wait of these tests is bounded by this (seconds), so a hang fails instead of stalling CI.
WAIT = 15.0


# -- the machine's servers -----------------------------------------------------------------------------------


def _unreachable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the multi-instance tests")
    pytest.skip(message)


@functools.cache
def _postgres_error(url: str) -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.cache
def _redis_error(url: str) -> str | None:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except redis.exceptions.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def with_query(url: str, **params: str) -> str:
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def postgres_schema_url(base: str = POSTGRES_URL) -> Iterator[str]:
    """A backend URL on ``base`` with a fresh schema, dropped afterwards (skips/fails without a server)."""
    error = _postgres_error(POSTGRES_URL)
    if error is not None:
        _unreachable(f"PostgreSQL server not reachable at {POSTGRES_URL} ({error})")
    schema = f"rg_multi_{uuid.uuid4().hex[:12]}"
    yield with_query(base, schema=schema, connect_timeout="2")

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The machine's PostgreSQL, in a schema of this test's own."""
    yield from postgres_schema_url()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The machine's Redis, under a key prefix of this test's own (its keys are deleted afterwards)."""
    error = _redis_error(REDIS_URL)
    if error is not None:
        _unreachable(
            f"no Redis server at {REDIS_URL} ({error}); set ROOM_GATEWAY_TEST_REDIS_URL or start one"
        )
    prefix = f"rg-multi-{uuid.uuid4().hex[:12]}:"
    yield with_query(REDIS_URL, prefix=prefix)
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))  # a test's clean-up: SCAN is fine
        if keys:
            client.delete(*keys)


@pytest.fixture(params=["postgres", "redis"], ids=["postgresql", "redis"])
def shared_store(request: pytest.FixtureRequest) -> str:
    """The URL of each store that several gateway processes can share."""
    return str(request.getfixturevalue(f"{request.param}_url"))


# -- gateways ------------------------------------------------------------------------------------------------


def gateway_config(backend: str) -> str:
    return textwrap.dedent(
        f"""
        listen: {{http: "127.0.0.1:0", grpc: "127.0.0.1:0"}}
        backend: {json.dumps(backend)}
        auth:
          keys:
            - name: admin
              key: "${{ROOM_API_SECRET_KEY}}"
              permissions: ["*"]
        rate_limits:
          limits: [{{by: ip, limit: "100000/second"}}]   # these tests load one IP; rate limits are not theirs
        shutdown_grace_seconds: 2
        """
    )


StartGateway = Callable[[str], GatewayProcess]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """``start_gateway(backend_url)`` → a running gateway (thread-safe); all are stopped afterwards."""
    started: list[GatewayProcess] = []
    lock = threading.Lock()

    def start(backend: str) -> GatewayProcess:
        config = tmp_path / f"gateway-{uuid.uuid4().hex[:8]}.yaml"
        config.write_text(gateway_config(backend), encoding="utf-8")
        process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=KEY))
        with lock:
            started.append(process)
        if len(process.addresses) < 2:  # it exited instead of listening
            process.stop()
            raise AssertionError(f"the gateway on {backend} did not start:\n{process.log}")
        return process

    yield start
    for process in started:
        process.stop()


async def start_gateways(start: StartGateway, backend: str, count: int) -> list[GatewayProcess]:
    """``count`` gateways on one store, started at the same time (their migrations race, as in production)."""
    return list(await asyncio.gather(*(asyncio.to_thread(start, backend) for _ in range(count))))


def rest(gateway: GatewayProcess, timeout: float = WAIT) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.http_url, headers=HEADERS, timeout=timeout)


async def write_until_gone(
    http: httpx.AsyncClient,
    room: str,
    prefix: str,
    writes: int,
    acknowledged: dict[str, int],
    deadline: float,
) -> None:
    """PUT ``{prefix}{n} = n`` for n in ``range(writes)`` until ``deadline`` or until the gateway is gone (a
    killed instance), noting in ``acknowledged`` each write answered 200: what must survive the kill."""
    for n in range(writes):
        name = f"{prefix}{n}"
        try:
            response = await http.put(f"/v1/rooms/{room}/variables/{name}", json={"value": n})
        except httpx.TransportError:
            return  # the gateway is gone
        assert response.status_code == 200, response.text
        acknowledged[name] = n
        if time.monotonic() > deadline:
            return


@contextlib.asynccontextmanager
async def grpc(gateway: GatewayProcess) -> AsyncIterator[RoomServiceStub]:
    channel = Channel(*gateway.grpc_address)
    try:
        yield RoomServiceStub(channel, metadata={"x-api-key": KEY}, timeout=WAIT)
    finally:
        channel.close()


class Received:
    """What a stream read in the background has received so far, and how it ended."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        #: The SSE error body (``{"error": …}``) or the :class:`GRPCError` that ended the stream.
        self.error: Any = None
        self.task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    async def wait_for(self, count: int, what: str = "messages") -> list[Any]:
        await eventually(lambda: len(self.items) >= count or self.ended, what=f"{count} {what}")
        assert len(self.items) >= count, f"the stream ended early ({self.error!r}) after {self.items}"
        return self.items

    async def wait_end(self) -> Any:
        """The error the stream ended with (``None``: it ended without one)."""
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), WAIT)
        return self.error


@contextlib.asynccontextmanager
async def sse_listen(http: httpx.AsyncClient, path: str) -> AsyncIterator[Received]:
    """Open an SSE stream and read it in the background: each ``data:`` as JSON in ``items``, except the
    error event's, which goes to ``error``."""
    received = Received()
    async with http.stream("GET", path) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())

        async def read() -> None:
            with contextlib.suppress(httpx.TransportError):
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        data = json.loads(line.removeprefix("data: "))
                        if "error" in data:
                            received.error = data
                        else:
                            received.items.append(data)

        received.task = asyncio.create_task(read())
        try:
            yield received
        finally:
            received.task.cancel()
            await asyncio.gather(received.task, return_exceptions=True)


@contextlib.asynccontextmanager
async def grpc_listen(messages: AsyncIterator[Any]) -> AsyncIterator[Received]:
    """Read a gRPC stream in the background: messages in ``items``, the closing GRPCError in ``error``."""
    received = Received()

    async def read() -> None:
        try:
            async for message in messages:
                received.items.append(message)
        except GRPCError as exc:
            received.error = exc

    received.task = asyncio.create_task(read())
    try:
        yield received
    finally:
        received.task.cancel()
        await asyncio.gather(received.task, return_exceptions=True)


def assert_unavailable_body(body: Any) -> None:
    """The native shape of UNAVAILABLE: ``{"error": {"code": 503, "status": "UNAVAILABLE", "message"}}``."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] == 503, body
    assert body["error"]["status"] == "UNAVAILABLE", body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


async def eventually(check: Callable[[], Any], within: float = WAIT, what: str = "condition") -> None:
    """Call (and await, if need be) ``check()`` until it returns truthy, for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


# -- outages -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of this test alone (nothing saved to disk), killed and started again at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
                    client.ping()
                return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        _unreachable("no redis-server binary to start a private Redis with")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


class TcpProxy:
    """A TCP relay on a loopback port, in a thread of its own (so a blocked test thread does not stall it).

    :meth:`cut` closes every relayed connection and stops listening (new connections are refused), as when
    the server goes away; :meth:`restore` listens again on the same port.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()
        self.restore()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT)

    def restore(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

        self._call(listen())

    def cut(self) -> None:
        async def cut() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()  # a reset, as when the server's host is gone
            self._writers.clear()

        self._call(cut())

    def close(self) -> None:
        self.cut()

        async def settle() -> None:  # let the relays finish, so no transport is left for the collector
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=5)

        self._call(settle())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
            )
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
def postgres_proxy() -> Iterator[tuple[TcpProxy, str]]:
    """A :class:`TcpProxy` to the machine's PostgreSQL and a backend URL through it (its own schema)."""
    error = _postgres_error(POSTGRES_URL)
    if error is not None:
        _unreachable(f"PostgreSQL server not reachable at {POSTGRES_URL} ({error})")
    parsed = make_url(POSTGRES_URL)
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    try:
        through = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        for url in postgres_schema_url(through):
            yield proxy, url
    finally:
        proxy.close()
