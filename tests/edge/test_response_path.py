"""The guarded protocol's own response path (gateway.edge.cycle) against uvicorn's: the same bytes on the
wire for the same calls (every header, its value, the framing), the gateway's own header lines right as a
limit's window turns, and a header taken from input still refused as uvicorn refuses it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import limits
import pytest
import uvicorn
from room_gateway_plugins.memory import MemoryBackend
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth.policy import AuthPolicy
from gateway.config import RateLimits
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.edge.cors import Cors
from gateway.edge.cycle import Cycle
from gateway.edge.ratelimit import rate_limit_headers, rate_limit_lines
from gateway.edge.timeouts import guarded_protocol
from gateway.ratelimit import LocalWindows, RateLimiter, Verdict
from gateway.ratelimit.counter import Usage
from gateway.ratelimit.policy import RateLimited
from tests.conftest import ADMIN_KEY, FrozenClock

ORIGIN = "https://app.example.com"
GUARDED = guarded_protocol(header_timeout=5, max_header_bytes=8192)


@contextlib.asynccontextmanager
async def serving(app: Any, protocol: Any, *, idle: float = 5) -> AsyncIterator[int]:
    """``app`` on a loopback port with the HTTP ``protocol``, as the gateway runs it (uvicorn's access log
    off)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none",
        http=protocol,
        server_header=False,
        timeout_keep_alive=idle,  # type: ignore[arg-type]  # uvicorn says int, a float works
        timeout_graceful_shutdown=2,  # a stream that never ends fails its test instead of hanging it
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def read_response(reader: asyncio.StreamReader, *, head: bool = False, chunks: int = 0) -> bytes:
    """One response as it came: its head, then its body by its framing (none for ``HEAD``); a stream's
    first ``chunks`` chunks only, when given."""
    data = await reader.readuntil(b"\r\n\r\n")
    lines = data.lower().split(b"\r\n")
    if head:
        return data
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), None)
    if length is not None:
        return data + await reader.readexactly(length)
    if b"transfer-encoding: chunked" in lines:
        read = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            chunk = await reader.readexactly(int(size_line, 16) + 2)
            data += size_line + chunk
            read += 1
            if size_line == b"0\r\n" or read == chunks:
                return data
    return data + await reader.read()  # neither: until the server closes


async def exchange(
    port: int, requests: list[tuple[bytes, dict[str, Any]]], *, closing: bool = False
) -> list[bytes]:
    """The answers to ``requests`` (raw bytes, :func:`read_response` options) on one connection, in order;
    ``closing``: then ``b"<closed>"`` if the server closed it (else ``b"<open>"``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request, options in requests:
            writer.write(request)
            answers.append(await asyncio.wait_for(read_response(reader, **options), 5))
        if closing:
            try:
                answers.append(
                    b"<closed>" if await asyncio.wait_for(reader.read(), 0.5) == b"" else b"<more>"
                )
            except TimeoutError:
                answers.append(b"<open>")
    finally:
        writer.close()
    return answers


def normalized(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    """The status line, the header lines sorted (the date and the request id masked; the gateway's own
    lines come in another order), and the body."""
    if raw.startswith(b"<"):
        return raw, [], b""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    lines = [
        re.sub(rb"^(x-request-id): .*", rb"\1: <id>", line) for line in lines if not line.startswith(b"date:")
    ]
    return status, sorted(lines), body


def request(method: str, path: str, *extra: str, body: bytes = b"", version: str = "1.1") -> bytes:
    headers = [f"{method} {path} HTTP/{version}", "Host: gateway.test", f"X-API-Key: {ADMIN_KEY}", *extra]
    if body:
        headers += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def edge(policy: AuthPolicy) -> Any:
    """A fresh gateway edge (its own backend and limits): a per-IP limit of 3 a minute, CORS for ORIGIN."""
    backend = MemoryBackend()
    service = RoomService(backend, clock=FrozenClock())
    limiter = RateLimiter.from_config(
        RateLimits.model_validate({"limits": [{"by": "ip", "limit": "3/minute"}]})
    )
    app = create_http_app(Dispatcher(service, policy), limiter=limiter, cors=Cors([ORIGIN], 120))
    return backend, app


CALLS: list[tuple[bytes, dict[str, Any]]] = [
    (request("PUT", "/v1/rooms/r/variables/v", body=b'{"value": {"n": 1}}'), {}),
    (request("GET", "/v1/rooms/r/variables/v", f"Origin: {ORIGIN}"), {}),
    (request("GET", "/v1/rooms/r/variables/missing"), {}),
    (request("GET", "/v1/rooms/r/variables/v"), {}),  # the fourth: refused, 429 with Retry-After
    (request("HEAD", "/healthz"), {"head": True}),  # not limited; a length, no body
    (request("GET", "/healthz", "Connection: close"), {}),
]


@pytest.mark.parametrize(
    "calls",
    [
        pytest.param(CALLS, id="kept-alive, then closed by the client"),
        pytest.param([(request("GET", "/healthz", version="1.0"), {})], id="HTTP/1.0"),
        pytest.param([(request("GET", "/v1/rooms/r/variables/v:listen"), {"chunks": 1})], id="SSE stream"),
        pytest.param(
            [(request("GET", "/v1/rooms/r/variables/v"), {}), (request("GET", "/healthz"), {})],
            id="kept alive",
        ),
        pytest.param(
            [
                (
                    request("GET", "/v1/rooms/r/variables/v:listen", "Accept: application/x-ndjson"),
                    {"chunks": 1},
                )
            ],
            id="NDJSON stream",
        ),
        pytest.param([(request("GET", "/nowhere"), {}), (request("POST", "/healthz"), {})], id="404, 405"),
    ],
)
async def test_the_same_bytes_as_uvicorns_own_response_path(
    policy: AuthPolicy, calls: list[tuple[bytes, dict[str, Any]]]
) -> None:
    answers = []
    for protocol in ("httptools", GUARDED):
        backend, app = edge(policy)
        await backend.open()
        try:
            if "listen" in calls[0][0].decode():  # a variable to listen to
                async with serving(app, protocol) as port:
                    await exchange(
                        port, [(request("PUT", "/v1/rooms/r/variables/v", body=b'{"value": 1}'), {})]
                    )
            async with serving(app, protocol) as port:
                answers.append([normalized(raw) for raw in await exchange(port, calls, closing=True)])
        finally:
            await backend.close()
    uvicorns, ours = answers
    assert ours == uvicorns
    headers = {line.split(b":")[0] for _, lines, _ in ours for line in lines}
    assert b"x-request-id" in headers
    if calls is CALLS:  # what the gateway's own lines carry, as uvicorn wrote them
        assert {b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"retry-after"} <= headers
        assert ours[3][0] == b"HTTP/1.1 429 Too Many Requests"
        assert ours[4][2] == b"" and b"content-length: 15" in ours[4][1]  # HEAD: the length, no body
        assert b"connection: close" in ours[5][1] and ours[-1][0] == b"<closed>"
    if "listen" in calls[0][0].decode():
        assert b"transfer-encoding: chunked" in ours[0][1]


async def test_the_gateway_serves_with_its_own_cycle(policy: AuthPolicy) -> None:
    cycles: list[type] = []

    class Watched(GUARDED):  # type: ignore[misc,valid-type]
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycles.append(type(self.cycle))

    backend, app = edge(policy)
    await backend.open()
    try:
        async with serving(app, Watched) as port:
            (answer,) = await exchange(port, [(request("GET", "/healthz"), {})])
    finally:
        await backend.close()
    assert cycles == [Cycle]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-echo", "a\r\nset-cookie: stolen=1"),
        ("x-echo", "a\nb"),
        ("x-echo", "nul\x00"),
        ("x echo", "v"),
        ("content-type", "text/plain\r\nset-cookie: stolen=1"),  # a type is checked once, then known
        ("content-length", "1\r\nset-cookie: stolen=1"),
    ],
)
async def test_a_header_from_input_is_still_refused(name: str, value: str) -> None:
    """A route writing a header it took from a request: uvicorn refuses a value (or name) that could split
    the response, closing the connection with nothing sent; so does the gateway's path."""

    async def echo(request: Any) -> Response:
        return Response("x", headers={name: value})

    app = Starlette(routes=[Route("/echo", echo)])
    answers = []
    for protocol in ("httptools", GUARDED):
        async with serving(app, protocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
    assert answers == [b"", b""]


def lines_of(limit: int, remaining: int, reset: float, refused: bool = False) -> bytes:
    verdict = Verdict()
    verdict.usage = Usage(limit, remaining, reset)
    if refused:
        verdict.limited = RateLimited(verdict.usage)
    return rate_limit_lines(verdict)


def test_rate_limit_lines_as_the_headers_say() -> None:
    assert (
        lines_of(100, 99, 0.25)
        == b"ratelimit-limit: 100\r\nratelimit-remaining: 99\r\nratelimit-reset: 1\r\n"
    )
    assert (
        lines_of(100, 98, 1.0) == b"ratelimit-limit: 100\r\nratelimit-remaining: 98\r\nratelimit-reset: 1\r\n"
    )
    assert lines_of(100, 0, 1.01, refused=True) == (
        b"ratelimit-limit: 100\r\nratelimit-remaining: 0\r\nratelimit-reset: 2\r\nretry-after: 2\r\n"
    )
    assert lines_of(5, 4, 59.5) == b"ratelimit-limit: 5\r\nratelimit-remaining: 4\r\nratelimit-reset: 60\r\n"
    assert (
        lines_of(100, 97, 0.5) == b"ratelimit-limit: 100\r\nratelimit-remaining: 97\r\nratelimit-reset: 1\r\n"
    )
    assert lines_of(1, 0, 0.0) == b"ratelimit-limit: 1\r\nratelimit-remaining: 0\r\nratelimit-reset: 0\r\n"


def test_rate_limit_lines_kept_per_window_stay_right_past_what_a_window_keeps() -> None:
    """A large limit's counts: more than a window keeps (formatted per call beyond), twice over (kept)."""
    for _ in range(2):
        for remaining in range(999, -1, -1):
            for reset in (0.2, 1.5):
                expected = b"ratelimit-limit: 1000\r\nratelimit-remaining: %d\r\nratelimit-reset: %d\r\n" % (
                    remaining,
                    1 if reset < 1 else 2,
                )
                assert lines_of(1000, remaining, reset) == expected


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_rate_limit_headers_across_a_window_boundary(policy: AuthPolicy, strategy: str) -> None:
    """Over the gateway's own path, the ``RateLimit-*`` values of calls just before, at and after the window
    turns are those its window computes (a second window, counting the same calls on the same hand-moved
    clock, says what they must be)."""
    now = [1_000_000.0]
    limiter = RateLimiter.from_config(
        RateLimits.model_validate({"limits": [{"by": "ip", "limit": "2/second"}]})
    )
    object.__setattr__(
        limiter.quotas[0], "counter", LocalWindows(limits.parse("2/second"), strategy, lambda: now[0])
    )
    shadow = LocalWindows(limits.parse("2/second"), strategy, clock=lambda: now[0])
    backend = MemoryBackend()
    await backend.open()
    app = create_http_app(Dispatcher(RoomService(backend, clock=FrozenClock()), policy), limiter=limiter)
    expected: list[tuple[bool, bytes]] = []
    seen: list[tuple[bool, bytes]] = []
    try:
        async with serving(app, GUARDED) as port:
            for moment in (0.0, 0.4, 0.9, 0.99, 1.0, 1.01, 1.5, 2.2, 2.25, 3.3):
                now[0] = 1_000_000.0 + moment
                allowed, usage = shadow.hit_now("127.0.0.1")
                verdict = Verdict()
                verdict.count(allowed, usage)
                if not allowed:
                    verdict.limited = RateLimited(usage)
                # As the headers other servers get say them (gateway.edge.ratelimit.rate_limit_headers).
                expected.append(
                    (allowed, b"".join(b"%s: %s\r\n" % header for header in rate_limit_headers(verdict)))
                )
                (raw,) = await exchange(port, [(request("GET", "/v1/rooms/r/variables/v"), {})])
                head = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")
                ours = [line for line in head if line.startswith((b"ratelimit-", b"retry-after"))]
                seen.append(
                    (not head[0].startswith(b"HTTP/1.1 429"), b"".join(line + b"\r\n" for line in ours))
                )
    finally:
        await backend.close()
    assert seen == expected
    assert [allowed for allowed, _ in seen].count(False) >= 2 and seen[-1][0]


async def test_a_stream_goes_on_in_chunks_over_the_gateways_path(policy: AuthPolicy) -> None:
    """A stream's messages, each its own chunk as it happens (no length: chunked), over the gateway's path."""
    backend, app = edge(policy)
    await backend.open()
    try:
        async with serving(app, GUARDED) as port:
            put = request("PUT", "/v1/rooms/r/variables/v", body=b'{"value": 1}')
            await exchange(port, [(put, {})])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("GET", "/v1/rooms/r/variables/v:listen", "Accept: application/x-ndjson"))
            first = await asyncio.wait_for(read_response(reader, chunks=1), 5)
            await exchange(port, [(put.replace(b'{"value": 1}', b'{"value": 2}'), {})])
            size = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            chunk = await reader.readexactly(int(size, 16) + 2)
            writer.close()
    finally:
        await backend.close()
    assert b"transfer-encoding: chunked\r\n" in first and b'"value":1' in first
    assert b'"value":2' in chunk and chunk.endswith(b"\n\r\n")


async def test_pipelined_requests_are_answered_in_order_as_uvicorn_answers_them(policy: AuthPolicy) -> None:
    """Three requests in one write (the second with a body): three answers, in order, the same bytes."""
    put = request("PUT", "/v1/rooms/r/variables/v", body=b'{"value": 7}')
    get = request("GET", "/v1/rooms/r/variables/v")
    answers = []
    for protocol in ("httptools", GUARDED):
        backend, app = edge(policy)
        await backend.open()
        try:
            async with serving(app, protocol) as port:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(get + put + get)
                answers.append(
                    [normalized(await asyncio.wait_for(read_response(reader), 5)) for _ in range(3)]
                )
                writer.close()
        finally:
            await backend.close()
    uvicorns, ours = answers
    assert ours == uvicorns
    assert [status for status, _, _ in ours] == [
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
    ]
    assert b'"value":7' in ours[2][2]


async def test_the_idle_deadline_closes_a_kept_alive_connection_but_not_a_request_under_way(
    policy: AuthPolicy,
) -> None:
    """The idle deadline is the connection's timer's (not a timer per response): an idle connection is
    closed after it, a request that began before it keeps the header deadline (longer) instead."""
    backend, app = edge(policy)
    await backend.open()
    slow = guarded_protocol(header_timeout=2, max_header_bytes=8192)
    try:
        async with serving(app, slow, idle=0.3) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            get = request("GET", "/healthz")
            for _ in range(2):  # two answers, then the next request trickled past the idle deadline
                writer.write(get)
                assert (await asyncio.wait_for(read_response(reader), 5)).startswith(b"HTTP/1.1 200")
            started = asyncio.get_running_loop().time()
            for byte in range(len(get)):
                writer.write(get[byte : byte + 1])
                await asyncio.sleep(0.6 / len(get))
            answer = await asyncio.wait_for(read_response(reader), 5)
            assert answer.startswith(b"HTTP/1.1 200") and asyncio.get_running_loop().time() - started > 0.5
            assert await asyncio.wait_for(reader.read(), 2) == b""  # then idle: closed
            assert asyncio.get_running_loop().time() - started < 1.5
            writer.close()
    finally:
        await backend.close()
