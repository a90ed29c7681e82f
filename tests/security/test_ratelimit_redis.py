"""Rate limits on a shared Redis: two gateway apps (two instances, each with its own limiter and connection
pool) count once.

The server is ``ROOM_GATEWAY_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); each test uses a fresh
key prefix and deletes its keys afterwards. Without a reachable server these tests skip, naming it — except
under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio
import redis.exceptions

from gateway.config import RateLimits
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.ratelimit import RateLimiter
from tests.conftest import ADMIN_KEY

SERVER = os.environ.get("ROOM_GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def key_prefix() -> AsyncIterator[str]:
    client = redis.asyncio.Redis.from_url(SERVER, socket_connect_timeout=2)
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        await client.aclose()
        message = f"Redis at {SERVER} is unreachable ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the Redis rate-limit tests")
        pytest.skip(message)
    prefix = f"room_gateway_test_{uuid.uuid4().hex}"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def instance(dispatcher: Dispatcher, limiter: RateLimiter) -> httpx.AsyncClient:
    app = create_http_app(dispatcher, limiter=limiter)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app, client=("203.0.113.7", 40000)),
        base_url="http://gateway.test",
        headers={"X-API-Key": ADMIN_KEY},
    )


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_two_instances_share_one_count(dispatcher: Dispatcher, key_prefix: str, strategy: str) -> None:
    config = RateLimits(
        storage=SERVER,
        strategy=strategy,
        key_prefix=key_prefix,
        limits=[{"by": "ip", "limit": "5/hour"}],  # type: ignore[list-item]
    )
    first, second = RateLimiter.from_config(config), RateLimiter.from_config(config)
    try:
        async with instance(dispatcher, first) as a, instance(dispatcher, second) as b:
            answers = [await (a if n % 2 else b).get("/v1/rooms") for n in range(8)]
    finally:
        await first.close()
        await second.close()
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 3
    assert [r.headers["ratelimit-remaining"] for r in answers] == ["4", "3", "2", "1", "0", "0", "0", "0"]
    assert all(r.headers["ratelimit-limit"] == "5" for r in answers)
    assert all(1 <= int(r.headers["retry-after"]) <= 3600 for r in answers[5:])
    assert first.storage_failures == second.storage_failures == 0


async def test_retry_after_is_honoured_across_instances(dispatcher: Dispatcher, key_prefix: str) -> None:
    import asyncio

    config = RateLimits(storage=SERVER, key_prefix=key_prefix, limits=[{"by": "ip", "limit": "2/second"}])  # type: ignore[list-item]
    first, second = RateLimiter.from_config(config), RateLimiter.from_config(config)
    try:
        async with instance(dispatcher, first) as a, instance(dispatcher, second) as b:
            assert (await a.get("/v1/rooms")).status_code == 200
            assert (await b.get("/v1/rooms")).status_code == 200
            refused = await a.get("/v1/rooms")
            assert refused.status_code == 429
            await asyncio.sleep(int(refused.headers["retry-after"]))
            assert (await b.get("/v1/rooms")).status_code == 200
    finally:
        await first.close()
        await second.close()
