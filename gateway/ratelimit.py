"""The one rate-limit policy, transport-free: which limits apply to a call, counted where, and the verdict.

Both transports use it through thin adapters (:mod:`gateway.edge.ratelimit`, :mod:`gateway.rpc.ratelimit`),
at three points of a call (``rate_limits.limits[].by``):

- ``ip`` — before authentication, so an unauthenticated flood is refused before a key is hashed;
- ``key`` — after authentication, by the :class:`~gateway.auth.policy.Principal`'s key name;
- ``room`` — once the request is bound and authorized (:meth:`gateway.dispatch.Dispatcher.call`), by room id.

Every check of one call adds to one :class:`Verdict` (kept in a :class:`contextvars.ContextVar` for the
call's task), which the adapter renders: ``RateLimit-Limit``/``-Remaining``/``-Reset`` of the tightest limit
on every REST response, ``Retry-After`` on a 429, ``retry-after`` trailing metadata on gRPC
RESOURCE_EXHAUSTED.

**Where the counts live.** ``memory://`` counts in this process, with :class:`LocalWindows`: the
strategies of ``limits`` without its storage's locks and expiry timer (a single event loop needs neither;
``limits``' ``MemoryStorage`` costs 5 to 13 µs a hit there,
:class:`LocalWindows` under 1 µs: ``bench/RESULTS.md``).
Any other URL is a ``limits`` async storage (``redis://…`` becomes ``async+redis://…`` on redis-py, keys
prefixed with ``key_prefix``), so every instance on it shares one count; ``async+memory://`` selects
``limits``' own in-process storage (the reference the local path is tested against).

**Strategies** (``limits``' names; how much a client can send, for a limit of *N* per period *T*):

- ``moving-window`` (default) — exact: at most *N* calls in **any** interval of length *T*. A refused
  client may retry when its oldest counted call is *T* old. Costs one entry per counted call (bounded by
  *N*) per client.
- ``sliding-window-counter`` — approximates the moving window from two fixed-window counters, weighting the
  previous window by how much of it still overlaps; may admit somewhat more or less than *N* in an
  interval when traffic is uneven. Two counters per client.
- ``fixed-window`` — *N* per window that starts at the client's first call; up to *2N* in a short burst
  that straddles the end of one window and the start of the next. One counter per client.

**Storage down.** A storage error lets the call through (fail open), logs a warning (at most once per
:data:`FAILURE_LOG_INTERVAL`) and counts it in :attr:`RateLimiter.storage_failures`;
``fail_closed: true`` refuses the call with UNAVAILABLE instead.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.errors
import limits.storage

from gateway.config import RateLimits
from gateway.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

By = Literal["ip", "key", "room"]
#: Seconds between two warnings about an unreachable storage (every failure is still counted).
FAILURE_LOG_INTERVAL = 10.0
UNAVAILABLE_MESSAGE = "rate-limit storage unavailable"


@dataclass(slots=True)
class Usage:
    """One limit as it stands for one client after a call: what the ``RateLimit-*`` headers say.

    :param limit: calls allowed per period.
    :param remaining: calls left now.
    :param reset: seconds until a call is allowed again (for a refused call), or until the count
        next goes down.
    """

    limit: int
    remaining: int
    reset: float

    def tighter_than(self, other: Usage) -> bool:
        return (self.remaining, -self.reset) < (other.remaining, -other.reset)


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
    """What the rate limits said about one call so far: the tightest :class:`Usage` and any refusal."""

    __slots__ = ("limited", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.limited: RateLimited | None = None

    def add(self, usage: Usage) -> None:
        if self.usage is None or usage.tighter_than(self.usage):
            self.usage = usage


_verdict: contextvars.ContextVar[Verdict | None] = contextvars.ContextVar(
    "room_gateway_rate_limit", default=None
)


def begin_call() -> tuple[Verdict, contextvars.Token[Verdict | None]]:
    """Start the :class:`Verdict` of the call running in this task (the adapters call it first)."""
    verdict = Verdict()
    return verdict, _verdict.set(verdict)


def end_call(token: contextvars.Token[Verdict | None]) -> None:
    _verdict.reset(token)


def current_verdict() -> Verdict | None:
    return _verdict.get()


# -- counting -----------------------------------------------------------------------------------------


class Counter(Protocol):
    """Counts hits of one limit (a ``limits.RateLimitItem``) per identifier."""

    async def hit(self, identifier: str) -> tuple[bool, Usage]:
        """Count one call of ``identifier``; ``(allowed, usage after it)``.

        :raises limits.errors.StorageError: the storage cannot be reached.
        """
        ...


class LocalWindows:
    """The three ``limits`` strategies for one limit, counted in this process (``memory://``).

    Same semantics as ``limits``' strategies on its ``MemoryStorage`` (``tests/security`` checks the two
    against each other), minus what a single event loop does not need: locks, a timer thread, and an
    ``await`` per hit. Idle clients are swept once per period, so memory follows the active clients.
    """

    def __init__(
        self, item: limits.RateLimitItem, strategy: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.amount = item.amount
        self.period = float(item.get_expiry())
        self._clock = clock
        self._hit = {
            "moving-window": self._moving,
            "fixed-window": self._fixed,
            "sliding-window-counter": self._sliding,
        }[strategy]
        self._log: dict[str, deque[float]] = {}
        self._fixed_windows: dict[str, list[float]] = {}  # [count, window end]
        self._counters: dict[str, list[float]] = {}  # [window index, count, previous count]
        self._next_sweep = self._clock() + self.period

    async def hit(self, identifier: str) -> tuple[bool, Usage]:
        return self.hit_now(identifier)

    def hit_now(self, identifier: str) -> tuple[bool, Usage]:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        return self._hit(identifier, now)

    def _moving(self, identifier: str, now: float) -> tuple[bool, Usage]:
        # The times of the last `amount` counted calls, oldest first: exact, O(1) amortized.
        hits = self._log.get(identifier)
        if hits is None:
            hits = self._log[identifier] = deque(maxlen=self.amount)
        cutoff = now - self.period
        while hits and hits[0] <= cutoff:
            hits.popleft()
        if len(hits) >= self.amount:
            return False, Usage(self.amount, 0, hits[0] - cutoff)
        hits.append(now)
        return True, Usage(self.amount, self.amount - len(hits), hits[0] - cutoff)

    def _fixed(self, identifier: str, now: float) -> tuple[bool, Usage]:
        window = self._fixed_windows.get(identifier)
        if window is None or now >= window[1]:
            window = self._fixed_windows[identifier] = [0, now + self.period]
        window[0] += 1
        count = int(window[0])
        return count <= self.amount, Usage(self.amount, max(0, self.amount - count), window[1] - now)

    def _sliding(self, identifier: str, now: float) -> tuple[bool, Usage]:
        # limits' sliding window counter: windows aligned on multiples of the period; the previous
        # window's count weighted by the part of it still inside the moving period.
        index, into = divmod(now, self.period)
        state = self._counters.get(identifier)
        if state is None or index - state[0] >= 2:
            state = self._counters[identifier] = [index, 0, 0]
        elif index > state[0]:
            state[:] = [index, 0, state[1]]
        current, previous = state[1], state[2]
        weight = 1 - into / self.period
        allowed = math.floor(previous * weight + current) + 1 <= self.amount
        if allowed:
            current = state[1] = current + 1
        remaining = max(0, self.amount - math.floor(previous * weight + current))
        return allowed, Usage(self.amount, remaining, self._sliding_reset(previous, current, into))

    def _sliding_reset(self, previous: float, current: float, into: float) -> float:
        """Seconds until one more call would be allowed (the weighted count drops below ``amount``)."""
        period, amount = self.period, self.amount
        if current >= amount:  # not in this window: in the next one, ``current`` becomes ``previous``
            return period - into + period * max(0.0, 1 - amount / current)
        if previous == 0:
            return period - into
        return max(0.0, period * (1 - (amount - current) / previous) - into)

    def _sweep(self, now: float) -> None:
        cutoff = now - self.period
        for identifier in [k for k, hits in self._log.items() if not hits or hits[-1] <= cutoff]:
            del self._log[identifier]
        for identifier in [k for k, w in self._fixed_windows.items() if now >= w[1]]:
            del self._fixed_windows[identifier]
        index = now // self.period
        for identifier in [k for k, s in self._counters.items() if index - s[0] >= 2]:
            del self._counters[identifier]
        self._next_sweep = now + self.period


class StorageWindows:
    """One limit counted by a ``limits`` async strategy on a shared storage (Redis, …).

    Two storage calls a hit: the strategy's ``hit`` then ``get_window_stats`` (the headers need the
    count and the reset time, which ``hit`` does not return).
    """

    def __init__(
        self, item: limits.RateLimitItem, limiter: limits.aio.strategies.RateLimiter, by: str
    ) -> None:
        self.item = item
        self.limiter = limiter
        self.by = by

    async def hit(self, identifier: str) -> tuple[bool, Usage]:
        allowed = await self.limiter.hit(self.item, self.by, identifier)
        stats = await self.limiter.get_window_stats(self.item, self.by, identifier)
        reset = max(0.0, stats.reset_time - time.time())
        return allowed, Usage(self.item.amount, max(0, stats.remaining), reset)


@dataclass(frozen=True, slots=True)
class Quota:
    by: By
    item: limits.RateLimitItem
    counter: Counter


# -- the policy ---------------------------------------------------------------------------------------


class RateLimiter:
    """The rate-limit policy of a gateway, built from ``rate_limits`` (:meth:`from_config`).

    :param quotas: the limits and their counters.
    :param trusted_proxies: networks whose ``X-Forwarded-For`` is believed.
    :param fail_closed: refuse calls (UNAVAILABLE) when the storage is unreachable, instead of serving them.
    :param storage: the shared ``limits`` storage, if any (closed by :meth:`close`).
    """

    def __init__(
        self,
        quotas: Sequence[Quota],
        *,
        trusted_proxies: Iterable[str] = (),
        fail_closed: bool = False,
        storage: limits.aio.storage.Storage | None = None,
    ) -> None:
        self.quotas = tuple(quotas)
        self._by: dict[str, tuple[Quota, ...]] = {
            by: tuple(q for q in self.quotas if q.by == by) for by in ("ip", "key", "room")
        }
        self.by_ip, self.by_key, self.by_room = self._by["ip"], self._by["key"], self._by["room"]
        self.trusted_proxies = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.fail_closed = fail_closed
        self.storage = storage
        #: Every count is kept in this process: checks need no ``await`` (:meth:`check_now`).
        self.local = all(isinstance(q.counter, LocalWindows) for q in self.quotas)
        #: Calls refused with 429 / RESOURCE_EXHAUSTED, by ``by``.
        self.limited: dict[str, int] = {"ip": 0, "key": 0, "room": 0}
        #: Checks that could not reach the storage (served anyway unless ``fail_closed``).
        self.storage_failures = 0
        self._failure_logged = -math.inf

    @classmethod
    def from_config(cls, config: RateLimits) -> RateLimiter:
        """The limiter of ``config`` (``rate_limits``).

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
            quotas, trusted_proxies=config.trusted_proxies, fail_closed=config.fail_closed, storage=storage
        )

    async def check(self, quotas: tuple[Quota, ...], identifier: str, verdict: Verdict | None) -> None:
        """Count one call of ``identifier`` against ``quotas`` (one ``by``) and add it to ``verdict``.

        :raises RateLimited: a limit is exceeded (also recorded in ``verdict``).
        :raises Unavailable: the storage is unreachable and the policy fails closed.
        """
        if self.local:
            self.check_now(quotas, identifier, verdict)
            return
        refused: Usage | None = None
        for quota in quotas:
            try:
                allowed, usage = await quota.counter.hit(identifier)
            except (TimeoutError, limits.errors.StorageError, OSError) as exc:
                self._storage_failed(exc)
                continue
            if verdict is not None:
                verdict.add(usage)
            if not allowed and (refused is None or usage.reset > refused.reset):
                refused = usage
        if refused is not None:
            self._refuse(quotas[0].by, refused, verdict)

    def check_now(self, quotas: tuple[Quota, ...], identifier: str, verdict: Verdict | None) -> None:
        """:meth:`check` without an ``await``, when every count is in this process (:attr:`local`): the
        per-request fast path of ``memory://``."""
        refused: Usage | None = None
        for quota in quotas:
            allowed, usage = quota.counter.hit_now(identifier)  # type: ignore[attr-defined]  # self.local: all LocalWindows
            if verdict is not None:
                verdict.add(usage)
            if not allowed and (refused is None or usage.reset > refused.reset):
                refused = usage
        if refused is not None:
            self._refuse(quotas[0].by, refused, verdict)

    def _refuse(self, by: str, usage: Usage, verdict: Verdict | None) -> None:
        self.limited[by] += 1
        error = RateLimited(usage)
        if verdict is not None:
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
        self.storage_failures += 1
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

    def metrics(self) -> str:
        """The counters in the Prometheus text exposition format (version 0.0.4)."""
        lines = [
            "# HELP room_gateway_rate_limited_total Calls refused by a rate limit.",
            "# TYPE room_gateway_rate_limited_total counter",
            *(f'room_gateway_rate_limited_total{{by="{by}"}} {n}' for by, n in self.limited.items()),
            "# HELP room_gateway_rate_limit_storage_failures_total Rate-limit checks that could not reach "
            "the storage.",
            "# TYPE room_gateway_rate_limit_storage_failures_total counter",
            f"room_gateway_rate_limit_storage_failures_total {self.storage_failures}",
        ]
        return "\n".join(lines) + "\n"

    async def close(self) -> None:
        """Close the shared storage's connections, if any."""
        if self.storage is None:
            return
        bridge = getattr(self.storage, "bridge", None)
        storage = getattr(bridge, "storage", None)
        aclose = getattr(storage, "aclose", None)
        if aclose is not None:
            await aclose()


def open_storage(url: str, *, key_prefix: str, timeout: float) -> limits.aio.storage.Storage:
    """A ``limits`` async storage for ``url``: ``redis://…`` → ``async+redis://…`` on redis-py.

    :raises ValueError: no storage serves the scheme (the message lists those that do).
    """
    scheme = url.partition("://")[0]
    full = url if scheme.startswith("async+") else f"async+{url}"
    options: dict[str, float | str | bool] = {"wrap_exceptions": True}
    if "redis" in scheme or "valkey" in scheme:
        options.update(
            implementation="redispy",
            key_prefix=key_prefix,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
    try:
        storage = limits.storage.storage_from_string(full, **options)
    except limits.errors.ConfigurationError as exc:
        schemes = limits.storage.SCHEMES  # type: ignore[attr-defined]  # limits' registry, not re-exported
        known = sorted(s for s in schemes if s.startswith("async+"))
        raise ValueError(
            f"rate_limits.storage: {exc} (schemes: memory, {', '.join(s[6:] for s in known)})"
        ) from None
    if not isinstance(storage, limits.aio.storage.Storage):  # storage_from_string types both families
        raise ValueError(f"rate_limits.storage: {url!r} is not an async storage")
    return storage
