"""Rate limits on both transports: exact counts, the headers, Retry-After honoured, where each ``by`` applies,
whom X-Forwarded-For is believed from, and what happens when the storage is down.

The apps are the real ones (:func:`gateway.edge.app.create_http_app` driven in-process with
``httpx.ASGITransport``, :func:`gateway.rpc.server.create_grpc_server` on a loopback port) over the shared
dispatcher of ``tests/conftest.py``, each with a :class:`~gateway.ratelimit.RateLimiter` built from a
``rate_limits`` configuration. Limits are small (5 a second, a minute or an hour) so counts are exact and
waits short.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from gateway._gen.roomgateway.v1 import GetVariableRequest, ListRoomsRequest, ListRoomsResponse, Variable
from gateway.auth.policy import ApiKey, AuthPolicy, digest
from gateway.config import GatewayConfig, RateLimits
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.ratelimit import LocalWindows, RateLimiter
from gateway.rpc.server import create_grpc_server
from tests.conftest import ADMIN_KEY, READER_KEY

BASE_URL = "http://gateway.test"
UNREACHABLE_REDIS = "redis://127.0.0.1:1"


def limiter_of(**rate_limits: Any) -> RateLimiter:
    return RateLimiter.from_config(RateLimits.model_validate(rate_limits))


def limited_by(dispatcher: Dispatcher, limiter: RateLimiter | None) -> Dispatcher:
    """``dispatcher``'s service and policy, with ``limiter``'s room limits (given when it is built)."""
    return Dispatcher(dispatcher.service, dispatcher.policy, limiter=limiter)


def rest(
    dispatcher: Dispatcher,
    limiter: RateLimiter | None,
    *,
    ip: str = "203.0.113.7",
    key: str | None = ADMIN_KEY,
) -> httpx.AsyncClient:
    app = create_http_app(limited_by(dispatcher, limiter), limiter=limiter)
    headers = {"X-API-Key": key} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app, client=(ip, 40000)), base_url=BASE_URL, headers=headers
    )


def assert_limited(response: httpx.Response, limit: int) -> int:
    """A 429 in the native error shape with every header; returns Retry-After."""
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == 429
    assert response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert int(response.headers["ratelimit-reset"]) <= retry_after
    return retry_after


# -- REST ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
@pytest.mark.parametrize("storage", ["memory://", "async+memory://"])
async def test_exactly_the_allowed_number_pass(dispatcher: Dispatcher, strategy: str, storage: str) -> None:
    # Per hour: no window boundary falls inside the test, so the sliding window counter is exact too.
    limiter = limiter_of(storage=storage, strategy=strategy, limits=[{"by": "ip", "limit": "5/hour"}])
    async with rest(dispatcher, limiter) as client:
        responses = [await client.get("/v1/rooms") for _ in range(8)]
    assert [r.status_code for r in responses] == [200] * 5 + [429] * 3
    for n, response in enumerate(responses[:5]):
        assert response.headers["ratelimit-limit"] == "5"
        assert response.headers["ratelimit-remaining"] == str(4 - n)
        assert 0 < int(response.headers["ratelimit-reset"]) <= 3600
        assert "retry-after" not in response.headers
    for response in responses[5:]:
        assert_limited(response, 5)
    assert limiter.limited["ip"] == 3


async def test_retry_after_is_honoured(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "ip", "limit": "5/second"}])
    async with rest(dispatcher, limiter) as client:
        passed = [(await client.get("/v1/rooms")).status_code for _ in range(5)]
        refused = await client.get("/v1/rooms")
        retry_after = assert_limited(refused, 5)
        assert retry_after == 1
        await asyncio.sleep(retry_after)
        again = [(await client.get("/v1/rooms")).status_code for _ in range(6)]
    assert passed == [200] * 5
    assert again == [200] * 5 + [429]


async def test_ip_limits_apply_before_authentication(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "ip", "limit": "3/minute"}])
    async with rest(dispatcher, limiter, key="wrong-key-0123456789abcdef") as flood:
        answers = [await flood.get("/v1/rooms") for _ in range(5)]
    assert [r.status_code for r in answers] == [401] * 3 + [429] * 2
    assert [r.headers["ratelimit-remaining"] for r in answers[:3]] == ["2", "1", "0"]
    assert_limited(answers[3], 3)
    async with rest(dispatcher, limiter, ip="198.51.100.1") as other:
        assert (await other.get("/v1/rooms")).status_code == 200  # another address, its own count


async def test_health_checks_are_not_limited(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "ip", "limit": "1/minute"}])
    async with rest(dispatcher, limiter) as client:
        for _ in range(3):
            response = await client.get("/healthz")
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers


async def test_key_limits_count_per_key(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "ip", "limit": "100/minute"}, {"by": "key", "limit": "2/minute"}])
    async with rest(dispatcher, limiter) as admin, rest(dispatcher, limiter, key=READER_KEY) as reader:
        first = [await admin.get("/v1/rooms") for _ in range(3)]
        assert [r.status_code for r in first] == [200, 200, 429]
        # The tightest limit is shown: the key's, not the address's 100.
        assert [r.headers["ratelimit-remaining"] for r in first] == ["1", "0", "0"]
        assert_limited(first[2], 2)
        assert (await reader.get("/v1/rooms")).status_code == 200  # same address, another key
    assert limiter.limited == {"ip": 0, "key": 1, "room": 0}


async def test_room_limits_count_per_room(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "room", "limit": "2/minute"}])
    async with rest(dispatcher, limiter) as client:
        answers = [await client.get("/v1/rooms/lobby/variables/score") for _ in range(3)]
        assert [r.status_code for r in answers[:2]] != [429, 429]
        assert answers[2].status_code == 429
        assert_limited(answers[2], 2)
        other = await client.get("/v1/rooms/garden/variables/score")
        assert other.status_code != 429
        assert other.headers["ratelimit-remaining"] == "1"
        listing = await client.get("/v1/rooms")  # no room: no room limit, no headers
        assert listing.status_code == 200 and "ratelimit-limit" not in listing.headers


async def test_no_limits_no_headers(dispatcher: Dispatcher) -> None:
    assert GatewayConfig.model_validate({"rate_limits": {"limits": []}}).rate_limits.limits == []
    async with rest(dispatcher, None) as client:
        response = await client.get("/v1/rooms")
    assert response.status_code == 200
    assert "ratelimit-limit" not in response.headers


# -- client address ------------------------------------------------------------------------------------------


async def test_forwarded_for_is_believed_only_from_trusted_proxies(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "ip", "limit": "1/minute"}], trusted_proxies=["10.0.0.0/8"])
    async with rest(dispatcher, limiter, ip="10.1.2.3") as proxy:
        for client in ("192.0.2.1", "192.0.2.2"):
            response = await proxy.get("/v1/rooms", headers={"X-Forwarded-For": f"{client}, 10.9.9.9"})
            assert response.status_code == 200  # two clients behind one proxy: two counts
        again = await proxy.get("/v1/rooms", headers={"X-Forwarded-For": "192.0.2.1"})
        assert again.status_code == 429
    async with rest(dispatcher, limiter, ip="198.51.100.9") as direct:
        assert (await direct.get("/v1/rooms", headers={"X-Forwarded-For": "192.0.2.50"})).status_code == 200
        spoofed = await direct.get("/v1/rooms", headers={"X-Forwarded-For": "192.0.2.51"})
        assert spoofed.status_code == 429  # not a proxy: its X-Forwarded-For changes nothing


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        ("10.0.0.1", ["1.1.1.1, 203.0.113.5, 10.0.0.2"], "203.0.113.5"),  # right-most untrusted
        ("10.0.0.1", ["1.1.1.1", "203.0.113.5"], "203.0.113.5"),  # several headers, in order
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # only proxies: the farthest one
        ("10.0.0.1", ["1.1.1.1, not-an-address"], "10.0.0.1"),  # garbage from a proxy: stop there
        ("198.51.100.1", ["203.0.113.5"], "198.51.100.1"),  # untrusted peer
        ("2001:db8::1", ["203.0.113.5"], "203.0.113.5"),
        (None, ["203.0.113.5"], ""),
    ],
)
def test_client_ip(peer: str | None, forwarded: list[str], client: str) -> None:
    limiter = limiter_of(trusted_proxies=["10.0.0.0/8", "2001:db8::/32"])
    assert limiter.client_ip(peer, forwarded) == client


# -- gRPC ----------------------------------------------------------------------------------------------------


@pytest.fixture
async def grpc_with() -> AsyncIterator[Callable[[Dispatcher, RateLimiter], Any]]:
    servers: list[Server] = []
    channels: list[Channel] = []

    async def start(dispatcher: Dispatcher, limiter: RateLimiter) -> Channel:
        server = create_grpc_server(limited_by(dispatcher, limiter), limiter=limiter)
        sock = socket.create_server(("127.0.0.1", 0))
        await server.start(sock=sock)
        servers.append(server)
        port = sock.getsockname()[1]
        channel = Channel("127.0.0.1", port)
        channels.append(channel)
        return channel

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def grpc_call(
    channel: Channel, method: str, request: Any, reply: type
) -> tuple[Status, dict[str, str]]:
    """One unary call; its status and trailing metadata."""
    async with channel.request(
        f"/roomgateway.v1.RoomService/{method}",
        Cardinality.UNARY_UNARY,
        type(request),
        reply,
        metadata={"x-api-key": ADMIN_KEY},
    ) as stream:
        await stream.send_message(request, end=True)
        try:
            await stream.recv_message()
            await stream.recv_trailing_metadata()
            status = Status.OK
        except GRPCError as err:
            status = err.status
        return status, dict(stream.trailing_metadata or {})


async def test_grpc_resource_exhausted_with_retry_after(
    dispatcher: Dispatcher, grpc_with: Callable[..., Any]
) -> None:
    channel = await grpc_with(dispatcher, limiter_of(limits=[{"by": "ip", "limit": "5/second"}]))
    answers = [await grpc_call(channel, "ListRooms", ListRoomsRequest(), ListRoomsResponse) for _ in range(6)]
    assert [status for status, _ in answers] == [Status.OK] * 5 + [Status.RESOURCE_EXHAUSTED]
    assert all("retry-after" not in trailers for _, trailers in answers[:5])
    retry_after = int(answers[5][1]["retry-after"])
    assert retry_after == 1
    await asyncio.sleep(retry_after)
    status, _ = await grpc_call(channel, "ListRooms", ListRoomsRequest(), ListRoomsResponse)
    assert status is Status.OK


async def test_grpc_room_and_key_limits(dispatcher: Dispatcher, grpc_with: Callable[..., Any]) -> None:
    limiter = limiter_of(limits=[{"by": "room", "limit": "2/minute"}, {"by": "key", "limit": "4/minute"}])
    channel = await grpc_with(dispatcher, limiter)
    lobby = GetVariableRequest(room_id="lobby", name="score")
    answers = [await grpc_call(channel, "GetVariable", lobby, Variable) for _ in range(3)]
    assert answers[2][0] is Status.RESOURCE_EXHAUSTED
    assert 1 <= int(answers[2][1]["retry-after"]) <= 60
    garden = GetVariableRequest(room_id="garden", name="score")
    assert (await grpc_call(channel, "GetVariable", garden, Variable))[0] is not Status.RESOURCE_EXHAUSTED
    status, trailers = await grpc_call(channel, "GetVariable", garden, Variable)  # the key's 5th call
    assert status is Status.RESOURCE_EXHAUSTED and "retry-after" in trailers
    assert limiter.limited == {"ip": 0, "key": 1, "room": 1}


# -- storage down --------------------------------------------------------------------------------------------


async def test_unreachable_storage_fails_open_and_is_counted(
    dispatcher: Dispatcher, grpc_with: Callable[..., Any]
) -> None:
    limiter = limiter_of(storage=UNREACHABLE_REDIS, limits=[{"by": "ip", "limit": "1/minute"}])
    async with rest(dispatcher, limiter) as client:
        answers = [await client.get("/v1/rooms") for _ in range(3)]
        metrics = await client.get("/metrics")
    assert [r.status_code for r in answers] == [200] * 3
    assert limiter.storage_failures >= 3
    assert "room_gateway_rate_limit_storage_failures_total" in metrics.text
    channel = await grpc_with(dispatcher, limiter)
    assert (await grpc_call(channel, "ListRooms", ListRoomsRequest(), ListRoomsResponse))[0] is Status.OK
    await limiter.close()


async def test_unreachable_storage_fails_closed_when_configured(
    dispatcher: Dispatcher, grpc_with: Callable[..., Any]
) -> None:
    limiter = limiter_of(
        storage=UNREACHABLE_REDIS, fail_closed=True, limits=[{"by": "ip", "limit": "9/minute"}]
    )
    async with rest(dispatcher, limiter) as client:
        response = await client.get("/v1/rooms")
    assert response.status_code == 503
    assert response.json()["error"]["status"] == "UNAVAILABLE"
    channel = await grpc_with(dispatcher, limiter)
    status, _ = await grpc_call(channel, "ListRooms", ListRoomsRequest(), ListRoomsResponse)
    assert status is Status.UNAVAILABLE
    assert limiter.storage_failures == 2
    await limiter.close()


async def test_metrics_count_refusals(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "ip", "limit": "1/minute"}])
    async with rest(dispatcher, limiter, ip="192.0.2.200") as client:
        await client.get("/v1/rooms")
        await client.get("/v1/rooms")
    async with rest(dispatcher, limiter, ip="192.0.2.201") as scraper:
        metrics = await scraper.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'room_gateway_rate_limited_total{by="ip"} 1' in metrics.text
    assert "room_gateway_rate_limit_storage_failures_total 0" in metrics.text


# -- the local counter against limits' own memory storage -------------------------------------------------


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_local_windows_agree_with_limits(strategy: str) -> None:
    local = limiter_of(storage="memory://", strategy=strategy, limits=[{"by": "ip", "limit": "4/hour"}])
    reference = limiter_of(
        storage="async+memory://", strategy=strategy, limits=[{"by": "ip", "limit": "4/hour"}]
    )
    assert isinstance(local.quotas[0].counter, LocalWindows)
    for _ in range(6):
        ours = await local.quotas[0].counter.hit("a")
        theirs = await reference.quotas[0].counter.hit("a")
        assert ours[0] == theirs[0]
        assert ours[1].remaining == theirs[1].remaining
        assert math.isclose(ours[1].reset, theirs[1].reset, abs_tol=1.5), (ours, theirs)


def test_local_moving_window_is_exact_over_time() -> None:
    import limits

    now = [1000.0]
    window = LocalWindows(limits.parse("3/second"), "moving-window", clock=lambda: now[0])

    def hit(at: float) -> tuple[bool, int]:
        now[0] = at
        allowed, usage = window.hit_now("x")
        return allowed, usage.remaining

    assert [hit(t) for t in (1000.0, 1000.2, 1000.4)] == [(True, 2), (True, 1), (True, 0)]
    assert hit(1000.9) == (False, 0)  # any interval of 1 s holds at most 3
    now[0] = 1000.9
    assert math.isclose(window.hit_now("x")[1].reset, 0.1)  # the call at 1000.0 leaves the window then
    assert hit(1001.05) == (True, 0)
    assert hit(1001.3) == (True, 0)
    assert hit(1001.35) == (False, 0)


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_count_now_counts_as_hit_now(strategy: str) -> None:
    """The edge's path for one limit (count_now: no Usage made) counts and answers as hit_now does, refusals
    and a window's turn included (two windows on one hand-moved clock, hit at the same moments)."""
    import limits

    now = [1000.0]
    counted = LocalWindows(limits.parse("3/second"), strategy, clock=lambda: now[0])
    hit = LocalWindows(limits.parse("3/second"), strategy, clock=lambda: now[0])
    for at in (1000.0, 1000.1, 1000.2, 1000.3, 1000.95, 1001.0, 1001.05, 1001.5, 1002.9, 1003.0, 1005.0):
        now[0] = at
        allowed, usage = hit.hit_now("x")
        assert counted.count_now("x") == (allowed, usage.remaining, usage.reset), at
        assert usage.limit == counted.amount


async def test_metrics_need_a_key_for_every_room(dispatcher: Dispatcher) -> None:
    """Deployment-wide counters: a key limited to some rooms (or a room token) may not read them."""
    limited_key = "limited-metrics-key-0123456789"
    limited = Dispatcher(
        dispatcher.service,
        AuthPolicy([ApiKey("limited", digest(limited_key), frozenset({"*"}), ("public-*",))]),
    )
    limiter = limiter_of(limits=[{"by": "ip", "limit": "100/second"}])
    async with rest(limited, limiter, key=limited_key) as client:
        denied = await client.get("/metrics")
    assert denied.status_code == 403
    assert denied.json()["error"]["status"] == "PERMISSION_DENIED"
    async with rest(dispatcher, limiter) as admin:
        assert (await admin.get("/metrics")).status_code == 200
