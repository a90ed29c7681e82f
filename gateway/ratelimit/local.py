"""The local windows: ``limits``' three strategies counted in this process, for ``memory://``.

Same semantics as ``limits``' strategies on its ``MemoryStorage`` (``tests/security`` checks the two against
each other), minus what a single event loop does not need: locks, an expiry timer thread, and an ``await``
per hit. ``limits``' ``MemoryStorage`` costs 5 to 13 µs a hit there, :class:`LocalWindows` under 1 µs
(``bench/RESULTS.md``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import limits

from gateway.ratelimit.counter import Usage


class LocalWindows:
    """One limit, counted in this process with one of ``limits``' strategies (``memory://``).

    Idle clients are swept once per period, so memory follows the active clients.

    :param item: the limit (``limits.parse("20/second")``).
    :param strategy: ``moving-window``, ``fixed-window`` or ``sliding-window-counter``.
    :param clock: seconds since the epoch (tests move it by hand).
    """

    def __init__(
        self, item: limits.RateLimitItem, strategy: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.amount = item.amount
        self.period = float(item.get_expiry())
        self._clock = clock
        #: The counting of the other strategies (the moving window counts in :meth:`_moving` alone).
        self._windows: Callable[[str, float], tuple[bool, Usage]] | None = {
            "moving-window": None,
            "fixed-window": self._fixed,
            "sliding-window-counter": self._sliding,
        }[strategy]
        #: :meth:`hit` without an ``await`` (nothing here waits).
        self.hit_now: Callable[[str], tuple[bool, Usage]] = (
            self._moving_usage if self._windows is None else self._hit_now
        )
        #: :meth:`hit_now`'s answer as ``(allowed, remaining, reset)``, no :class:`Usage` made: the
        #: REST edge's path for one limit (:mod:`gateway.edge.ratelimit`). The moving window, the default,
        #: is counted in one frame: each Python call and object a hit went through cost ~1k instructions
        #: (a REST GET is ~250k, bench/RESULTS.md).
        self.count_now: Callable[[str], tuple[bool, int, float]] = (
            self._moving if self._windows is None else self._count_now
        )
        self._log: dict[str, deque[float]] = {}
        self._fixed_windows: dict[str, list[float]] = {}  # [count, window end]
        self._counters: dict[str, list[float]] = {}  # [window index, count, previous count]
        self._next_sweep = self._clock() + self.period

    async def hit(self, identifier: str) -> tuple[bool, Usage]:
        return self.hit_now(identifier)

    def _hit_now(self, identifier: str) -> tuple[bool, Usage]:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        return self._windows(identifier, now)  # type: ignore[misc]  # set: hit_now is _moving otherwise

    def _count_now(self, identifier: str) -> tuple[bool, int, float]:
        allowed, usage = self._hit_now(identifier)
        return allowed, usage.remaining, usage.reset

    def _moving_usage(self, identifier: str) -> tuple[bool, Usage]:
        allowed, remaining, reset = self._moving(identifier)
        return allowed, Usage(self.amount, remaining, reset)

    def _moving(self, identifier: str) -> tuple[bool, int, float]:
        # The times of the last `amount` counted calls, oldest first: exact, O(1) amortized.
        now = self._clock()
        if now >= self._next_sweep:  # as _hit_now does, here to spare the default a frame
            self._sweep(now)
        hits = self._log.get(identifier)
        if hits is None:
            hits = self._log[identifier] = deque(maxlen=self.amount)
        cutoff = now - self.period
        while hits and hits[0] <= cutoff:
            hits.popleft()
        amount = self.amount
        if len(hits) >= amount:
            return False, 0, hits[0] - cutoff
        hits.append(now)
        return True, amount - len(hits), hits[0] - cutoff

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
