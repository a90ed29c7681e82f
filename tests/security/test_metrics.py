"""``GET /metrics``: who may read it (``metrics:read`` through the auth policy), what it answers (the
rate-limit counters, parsed as a Prometheus scraper would), and that each gateway counts on its own registry.

Also the room limits given to the :class:`~gateway.dispatch.Dispatcher` when it is built.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_gateway
from gateway.auth.policy import ApiKey, AuthPolicy, Principal, digest
from gateway.auth.tokens import TokenClaims
from gateway.config import GatewayConfig, RateLimits
from gateway.dispatch import Dispatcher
from gateway.edge.app import Edge, create_http_app
from gateway.errors import NotFound, PermissionDenied
from gateway.observability.metrics import Metrics
from gateway.ratelimit import RateLimited, RateLimiter
from gateway.rpc.errors import grpc_error, grpc_errors
from tests.conftest import ADMIN_KEY

BASE_URL = "http://gateway.test"
SCRAPER_KEY = "metrics-scraper-key-0123456789"
NO_METRICS_KEY = "no-metrics-key-0123456789abc"
ROOM_SCRAPER_KEY = "room-scraper-key-0123456789ab"
UNREACHABLE_REDIS = "redis://127.0.0.1:1"

KEYS = [
    ApiKey("admin", digest(ADMIN_KEY), frozenset({"*"})),
    ApiKey("scraper", digest(SCRAPER_KEY), frozenset({"metrics:read"})),
    ApiKey("no-metrics", digest(NO_METRICS_KEY), frozenset({"rooms:read", "variables:read"})),
    ApiKey("room-scraper", digest(ROOM_SCRAPER_KEY), frozenset({"metrics:read"}), ("public-*",)),
]


def limiter_of(**rate_limits: object) -> RateLimiter:
    return RateLimiter.from_config(RateLimits.model_validate(rate_limits))


def over(app: Edge, key: str = ADMIN_KEY, ip: str = "203.0.113.7") -> httpx.AsyncClient:
    """A client of ``app`` from ``ip`` with ``key``."""
    transport = httpx.ASGITransport(app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers={"X-API-Key": key})


def client(
    dispatcher: Dispatcher, limiter: RateLimiter, key: str, ip: str = "203.0.113.7"
) -> httpx.AsyncClient:
    return over(create_http_app(dispatcher, limiter=limiter), key, ip)


@pytest.fixture
def keyed(dispatcher: Dispatcher) -> Dispatcher:
    """The shared service behind the keys of this module."""
    return Dispatcher(dispatcher.service, AuthPolicy(KEYS))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus-client's own parser: (name, labels) → value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def refused(by: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("room_gateway_rate_limited_total", (("by", by),))


FAILURES = ("room_gateway_rate_limit_storage_failures_total", ())


# -- who may read it ---------------------------------------------------------------------------------------


async def test_a_metrics_read_key_reads_the_refusals(keyed: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "ip", "limit": "2/minute"}, {"by": "key", "limit": "100/minute"}])
    async with client(keyed, limiter, ADMIN_KEY, ip="192.0.2.10") as flood:
        statuses = [(await flood.get("/v1/rooms")).status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    async with client(keyed, limiter, SCRAPER_KEY, ip="192.0.2.11") as scraper:
        response = await scraper.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    assert found[refused("ip")] == 3
    assert found[refused("key")] == found[refused("room")] == 0
    assert found[FAILURES] == 0


async def test_storage_failures_are_counted(keyed: Dispatcher) -> None:
    limiter = limiter_of(storage=UNREACHABLE_REDIS, limits=[{"by": "ip", "limit": "1/minute"}])
    try:
        async with client(keyed, limiter, ADMIN_KEY) as caller:
            assert [(await caller.get("/v1/rooms")).status_code for _ in range(3)] == [200] * 3
            response = await caller.get("/metrics")  # its own check fails too: the fourth
        assert response.status_code == 200
        found = samples(response.text)
        assert found[FAILURES] == 4 == limiter.storage_failures
        assert found[refused("ip")] == 0
    finally:
        await limiter.close()


@pytest.mark.parametrize(
    ("key", "status"),
    [
        (SCRAPER_KEY, 200),  # metrics:read alone is enough
        (ADMIN_KEY, 200),  # so is *
        (NO_METRICS_KEY, 403),  # a key without metrics:read
        (ROOM_SCRAPER_KEY, 403),  # metrics:read, but limited to some rooms: the counters are every room's
    ],
)
async def test_metrics_need_metrics_read_on_a_key_for_every_room(
    keyed: Dispatcher, key: str, status: int
) -> None:
    async with client(keyed, limiter_of(limits=[{"by": "ip", "limit": "100/second"}]), key) as caller:
        response = await caller.get("/metrics")
    assert response.status_code == status
    if status == 403:
        error = response.json()["error"]
        assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")


def test_the_policy_decides_deployment_wide_reads() -> None:
    policy = AuthPolicy(KEYS)
    policy.authorize_deployment(Principal("scraper", frozenset({"metrics:read"})), "metrics:read", "/metrics")
    policy.authorize_deployment(Principal("admin", frozenset({"*"})), "metrics:read", "/metrics")
    everything = frozenset({"*"})
    claims = TokenClaims("ann", "lobby", everything, (), "moderator", 0, datetime.now(UTC), "t1")
    for principal in (
        Principal("reader", frozenset({"rooms:read"})),
        Principal("room-scraper", frozenset({"metrics:read"}), ("public-*",)),
        Principal("token:ann", everything, token=claims),  # a room token acts on its room only
    ):
        with pytest.raises(PermissionDenied):
            policy.authorize_deployment(principal, "metrics:read", "/metrics")


async def test_openmetrics_when_the_scraper_asks(keyed: Dispatcher) -> None:
    openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with client(keyed, limiter_of(limits=[{"by": "ip", "limit": "100/second"}]), SCRAPER_KEY) as caller:
        response = await caller.get("/metrics", headers=openmetrics)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


# -- one registry per gateway ------------------------------------------------------------------------------


def config(**rate_limits: object) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "auth": {"keys": [{"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]}]},
            "rate_limits": rate_limits,
        }
    )


async def metrics_text(app: Edge) -> str:
    async with over(app, ip="198.51.100.8") as scraper:
        response = await scraper.get("/metrics")
    assert response.status_code == 200
    return response.text


async def test_two_gateways_in_one_process_count_apart() -> None:
    one = create_gateway(config(limits=[{"by": "room", "limit": "1/minute"}]))
    two = create_gateway(config(limits=[{"by": "room", "limit": "1/minute"}]))
    assert one.limiter is not None and one.limiter.metrics is one.metrics
    assert one.metrics is not None and two.metrics is not None
    assert one.metrics.registry is not two.metrics.registry
    async with over(one.http_app) as caller:
        await caller.put("/v1/rooms/lobby/variables/n", json={"value": 1})
        assert (await caller.put("/v1/rooms/lobby/variables/n", json={"value": 2})).status_code == 429
    assert samples(await metrics_text(one.http_app))[refused("room")] == 1
    assert samples(await metrics_text(two.http_app))[refused("room")] == 0


async def test_metrics_are_served_without_limits_too() -> None:
    gateway = create_gateway(config(limits=[]))
    assert gateway.limiter is None
    text = await metrics_text(gateway.http_app)
    assert "# TYPE room_gateway_rate_limited_total counter" in text


def test_a_metrics_object_counts_on_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.rate_limited.labels(by="ip").inc()
    assert first.sample("room_gateway_rate_limited_total", by="ip") == 1
    assert second.sample("room_gateway_rate_limited_total", by="ip") == 0


# -- the dispatcher's room limits ----------------------------------------------------------------------------


async def test_the_dispatcher_built_with_a_limiter_applies_its_room_limits(dispatcher: Dispatcher) -> None:
    limiter = limiter_of(limits=[{"by": "room", "limit": "2/minute"}])
    limited = Dispatcher(dispatcher.service, dispatcher.policy, limiter=limiter)
    admin = Principal("admin", frozenset({"*"}))
    request = {"room_id": "lobby", "name": "n", "value": 1}
    for _ in range(2):
        await limited.call("SetVariable", admin, dict(request))
    with pytest.raises(RateLimited) as refusal:
        await limited.call("SetVariable", admin, dict(request))
    assert refusal.value.retry_after >= 1
    await limited.call("SetVariable", admin, {**request, "room_id": "garden"})  # another room, its own count
    assert limiter.limited == {"ip": 0, "key": 0, "room": 1}
    for _ in range(3):  # the dispatcher built without one is not limited
        await dispatcher.call("SetVariable", admin, dict(request))


# -- gRPC errors ---------------------------------------------------------------------------------------------


def answer(error: Exception) -> GRPCError:
    """What a handler's ``error`` becomes on gRPC."""
    with pytest.raises(GRPCError) as raised, grpc_errors("Test"):
        raise error
    return raised.value


def test_gateway_errors_become_their_grpc_status() -> None:
    converted = grpc_error(NotFound("no room"))
    assert (converted.status, converted.message) == (Status.NOT_FOUND, "no room")
    handled = answer(NotFound("no room"))
    assert (handled.status, handled.message) == (Status.NOT_FOUND, "no room")
    bug = answer(RuntimeError("secret detail"))
    assert (bug.status, bug.message) == (Status.INTERNAL, "internal error")  # never the exception's text
