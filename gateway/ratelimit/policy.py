"""The one rate-limit policy, transport-free: which limits apply to a call, counted where, and the verdict.

Every check of one call adds to one :class:`Verdict` (kept in a :class:`contextvars.ContextVar` for the
call's task), which the transport's adapter renders: ``RateLimit-Limit``/``-Remaining``/``-Reset`` of the
tightest limit on every REST response, ``Retry-After`` on a 429, ``retry-after`` trailing metadata on gRPC
RESOURCE_EXHAUSTED.

**Storage down.** A storage error lets the call through (fail open), logs a warning (at most once per
:data:`FAILURE_LOG_INTERVAL`) and counts it in ``room_gateway_rate_limit_storage_failures_total``;
``fail_closed: true`` refuses the call with UNAVAILABLE instead. Refusals are counted in
``room_gateway_rate_limited_total{by}`` (:mod:`gateway.observability.metrics`).
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.errors

from gateway.config import RateLimits
from gateway.errors import ResourceExhausted, Unavailable
from gateway.observability.metrics import Metrics
from gateway.ratelimit.counter import Counter, Usage
from gateway.ratelimit.local import LocalWindows
from gateway.ratelimit.storage import StorageWindows, close_storage, open_storage

log = logging.getLogger(__name__)

By = Literal["ip", "key", "room"]
#: Seconds between two warnings about an unreachable storage (every failure is still counted).
FAILURE_LOG_INTERVAL = 10.0
UNAVAILABLE_MESSAGE = "rate-limit storage unavailable"
#: What a storage raises when it cannot answer: the call is served (or refused, failing closed).
STORAGE_ERRORS = (TimeoutError, limits.errors.StorageError, OSError)


class RateLimited(ResourceExhausted):
    """A call over a limit: RESOURCE_EXHAUSTED (HTTP 429), retry after :attr:`retry_after` seconds."""

    def __init__(self, usage: Usage) -> None:
        self.usage = usage
        self.retry_after = retry_after(usage.reset)
        super().__init__(f"rate limit exceeded: retry after {self.retry_after} s")


def retry_after(reset: float) -> int:
    """Whole seconds to wait (``Retry-After`` is an integer), never 0: waiting that long is enough."""
    return max(1, math.ceil(reset))


class Verdict:
    """What the rate limits said about one call so far: the tightest :class:`Usage` and any refusal.

    A call ends at its first refusal (the check raises :class:`RateLimited`), so :attr:`refused` is the
    refusal of the check that raised.
    """

    __slots__ = ("limited", "refused", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        #: The refused limit that frees up last (its reset is the call's ``Retry-After``).
        self.refused: Usage | None = None
        self.limited: RateLimited | None = None

    def count(self, allowed: bool, usage: Usage) -> None:
        """Add one limit's answer to a call: its usage, and, when it refuses, the refusal."""
        if self.usage is None or usage.tighter_than(self.usage):
            self.usage = usage
        if not allowed and (self.refused is None or usage.reset > self.refused.reset):
            self.refused = usage


_verdict: contextvars.ContextVar[Verdict | None] = contextvars.ContextVar(
    "room_gateway_rate_limit", default=None
)


def begin_call(verdict: Verdict | None = None) -> tuple[Verdict, contextvars.Token[Verdict | None]]:
    """Start the :class:`Verdict` of the call running in this task (the adapters call it first); ``verdict``:
    one made already."""
    if verdict is None:
        verdict = Verdict()
    return verdict, _verdict.set(verdict)


def end_call(token: contextvars.Token[Verdict | None]) -> None:
    _verdict.reset(token)


def current_verdict() -> Verdict | None:
    return _verdict.get()


@dataclass(frozen=True, slots=True)
class Quota:
    """One configured limit: what it counts by, its rate, and where it is counted."""

    by: By
    item: limits.RateLimitItem
    counter: Counter


class RateLimiter:
    """The rate-limit policy of a gateway, built from ``rate_limits`` (:meth:`from_config`).

    :param quotas: the limits and their counters.
    :param trusted_proxies: networks whose ``X-Forwarded-For`` is believed.
    :param fail_closed: refuse calls (UNAVAILABLE) when the storage is unreachable, instead of serving them.
    :param storage: the shared ``limits`` storage, if any (closed by :meth:`close`).
    :param metrics: where refusals and storage failures are counted; default: metrics of its own.
    """

    def __init__(
        self,
        quotas: Sequence[Quota],
        *,
        trusted_proxies: Iterable[str] = (),
        fail_closed: bool = False,
        storage: limits.aio.storage.Storage | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.quotas = tuple(quotas)
        self._by: dict[str, tuple[Quota, ...]] = {
            by: tuple(q for q in self.quotas if q.by == by) for by in get_args(By)
        }
        self.by_ip, self.by_key, self.by_room = self._by["ip"], self._by["key"], self._by["room"]
        self.trusted_proxies = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.fail_closed = fail_closed
        self.storage = storage
        #: Every count is kept in this process: checks need no ``await`` (:meth:`check_now`).
        self.local = all(isinstance(q.counter, LocalWindows) for q in self.quotas)
        self.metrics = metrics if metrics is not None else Metrics()
        # Bound once: a refusal or a failure is one inc() (every ``by`` shows in /metrics, at 0 at first).
        self._refusals = {by: self.metrics.rate_limited.labels(by=by) for by in get_args(By)}
        self._failures = self.metrics.rate_limit_storage_failures
        self._failure_logged = -math.inf

    @classmethod
    def from_config(cls, config: RateLimits, *, metrics: Metrics | None = None) -> RateLimiter:
        """The limiter of ``config`` (``rate_limits``).

        :param metrics: where it counts refusals and storage failures; default: metrics of its own.
        :raises ValueError: the storage URL's scheme is not one ``limits`` knows (the message lists them).
        """
        storage = None
        url = config.storage
        local = url.partition("://")[0] == "memory"
        if not local and config.limits:
            storage = open_storage(url, key_prefix=config.key_prefix, timeout=config.storage_timeout_seconds)
        quotas = []
        for limit in config.limits:
            item = limits.parse(limit.limit)
            counter: Counter
            if storage is None:
                counter = LocalWindows(item, config.strategy)
            else:
                strategy = limits.aio.strategies.STRATEGIES[config.strategy](storage)  # type: ignore[abstract]  # a dict of concrete classes
                counter = StorageWindows(item, strategy, limit.by)
            quotas.append(Quota(limit.by, item, counter))
        return cls(
            quotas,
            trusted_proxies=config.trusted_proxies,
            fail_closed=config.fail_closed,
            storage=storage,
            metrics=metrics,
        )

    @property
    def limited(self) -> dict[str, int]:
        """Calls refused with 429 / RESOURCE_EXHAUSTED so far, by ``by`` (read from :attr:`metrics`)."""
        sample = self.metrics.sample
        return {by: int(sample("room_gateway_rate_limited_total", by=by)) for by in self._refusals}

    @property
    def storage_failures(self) -> int:
        """Checks that could not reach the storage so far (served anyway unless ``fail_closed``)."""
        return int(self.metrics.sample("room_gateway_rate_limit_storage_failures_total"))

    async def check(self, quotas: tuple[Quota, ...], identifier: str, verdict: Verdict | None) -> None:
        """Count one call of ``identifier`` against ``quotas`` (one ``by``) and add it to ``verdict``.

        :raises RateLimited: a limit is exceeded (also recorded in ``verdict``).
        :raises Unavailable: the storage is unreachable and the policy fails closed.
        """
        if self.local:
            self.check_now(quotas, identifier, verdict)
            return
        if verdict is None:
            verdict = Verdict()
        for quota in quotas:
            try:
                allowed, usage = await quota.counter.hit(identifier)
            except STORAGE_ERRORS as exc:
                self._storage_failed(exc)
                continue
            verdict.count(allowed, usage)
        refused = verdict.refused
        if refused is not None:
            self.refuse(quotas[0].by, refused, verdict)

    def check_now(self, quotas: tuple[Quota, ...], identifier: str, verdict: Verdict | None) -> None:
        """:meth:`check` without an ``await``, when every count is in this process (:attr:`local`): the
        per-request fast path of ``memory://``."""
        if verdict is None:
            verdict = Verdict()
        for quota in quotas:
            counter: LocalWindows = quota.counter  # type: ignore[assignment]  # self.local: all LocalWindows
            allowed, remaining, reset = counter.count_now(identifier)
            usage = Usage(counter.amount, remaining, reset)
            if allowed and verdict.usage is None:  # the call's first limit, allowing: as Verdict.count
                verdict.usage = usage
            else:
                verdict.count(allowed, usage)
        refused = verdict.refused
        if refused is not None:
            self.refuse(quotas[0].by, refused, verdict)

    def refuse(self, by: str, usage: Usage, verdict: Verdict) -> None:
        """Refuse a call over a limit of ``by`` (``usage``: that limit's): count it, say it in ``verdict``.

        :raises RateLimited: always.
        """
        self._refusals[by].inc()
        error = RateLimited(usage)
        verdict.usage, verdict.limited = usage, error
        raise error

    async def check_room(self, room_id: str) -> None:
        """The ``by: room`` limits of the call running in this task (a hook of the dispatcher)."""
        if self.by_room and room_id:
            await self.check(self.by_room, room_id, _verdict.get())

    def client_ip(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The client's address: the socket peer, or, when the peer is a trusted proxy, the right-most
        ``X-Forwarded-For`` address that is not one (each proxy appends the address it received from).

        :param peer: the socket peer's address (``None``: unknown, e.g. a Unix socket).
        :param forwarded_for: every ``X-Forwarded-For`` value, in the order received.
        """
        client = peer or ""
        if not self.trusted_proxies or not forwarded_for or not self._trusted(client):
            return client
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                # Written by a proxy we trust, yet not an address: believe no further than that proxy.
                return client
            client = hop
            if not self._trusted(hop):
                return hop
        return client

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)

    def _storage_failed(self, exc: BaseException) -> None:
        self._failures.inc()
        now = time.monotonic()
        if now - self._failure_logged >= FAILURE_LOG_INTERVAL:
            self._failure_logged = now
            log.warning(
                "rate-limit storage unreachable (%s: %s); %s (%d failures so far)",
                type(exc).__name__,
                exc,
                "refusing calls (fail_closed)" if self.fail_closed else "serving calls unlimited",
                self.storage_failures,
            )
        if self.fail_closed:
            raise Unavailable(UNAVAILABLE_MESSAGE) from None

    async def close(self) -> None:
        """Close the shared storage's connections, if any."""
        if self.storage is not None:
            await close_storage(self.storage)
