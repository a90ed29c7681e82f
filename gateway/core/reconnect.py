"""Keeping one long-lived connection up: reconnection with capped exponential backoff and full jitter.

A backend that receives notifications from a server (PostgreSQL ``LISTEN``, Redis pub/sub, a third party's
broker) holds one connection for them per process, and must get it back by itself when it drops — without
hammering a server that is restarting, and without every gateway process of a deployment reconnecting in
step. :class:`Reconnector` runs that loop in one task; the backend supplies the *session*: one coroutine
that connects, says so, and serves the connection until it is lost. What a loss means to the backend
(ending its subscriptions with UNAVAILABLE, failing waiters) happens in the session, which knows the
transport; when and how often to try again, and what to log, is decided here, once.

This module is public and lives beside the backend contract, not among the built-in plugins, so that a
third-party backend reuses it instead of writing its own loop: the built-in PostgreSQL and Redis backends
use it exactly as a third party would (the built-ins take the public plugin path, STYLE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from gateway.core.cancelled import stop_if_cancelled

#: The ceiling of the first delay, the largest ceiling (seconds).
BASE, CAP = 0.1, 5.0
#: Seconds a connection must have stayed up for the backoff to start over once it is lost: a server that
#: accepts connections and drops them at once is still retried more and more slowly.
HEALTHY_AFTER = 10.0

#: A session: connects, calls its argument once the connection is up, then serves the connection until it
#: is lost, raising the error that ended it (returning counts as a loss too).
Session = Callable[[Callable[[], None]], Awaitable[None]]


class Backoff:
    """Capped exponential backoff with full jitter.

    The n-th delay after a reset (n = 0, 1, …) is drawn uniformly from ``[0, min(cap, base · 2ⁿ)]``: "full
    jitter" in Marc Brooker's "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015), the scheme
    that there spread competing clients best with the fewest calls.

    :param base: the ceiling of the first delay, in seconds.
    :param cap: the largest ceiling, in seconds.
    :param random: returns a float in ``[0, 1)``; tests pass their own.
    """

    def __init__(
        self, base: float = BASE, cap: float = CAP, *, random: Callable[[], float] = random.random
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, not base={base}, cap={cap}")
        self.base, self.cap = base, cap
        self._random = random
        #: The bound of the next delay.
        self.ceiling = base

    def next(self) -> float:
        """The next delay, in seconds; the one after may be twice as long, up to ``cap``."""
        delay = self.ceiling * self._random()
        self.ceiling = min(self.cap, self.ceiling * 2)
        return delay

    def reset(self) -> None:
        """Start over from ``base`` (after a healthy connection)."""
        self.ceiling = self.base


class Reconnector:
    """Runs a session again and again in one task, with a backoff between runs, until :meth:`close`.

    :param session: see :data:`Session`. Exceptions it raises are logged here; a cancellation ends the loop.
    :param name: what the log lines call the connection (``"redis pub/sub"``).
    :param logger: the backend's logger, so that its operators find the lines where they look.
    :param expected: exceptions that mean the server could not be reached or the connection dropped: logged
        on one line (the first failure of an outage as a warning, the retries that follow at debug level).
        Anything else is a bug, logged with its traceback — and retried all the same.
    :param backoff: the delays between runs (default: :class:`Backoff` with :data:`BASE` and :data:`CAP`).
    :param healthy_after: seconds a connection must have stayed up for the backoff to be reset when it ends.
    :param clock: a monotonic clock in seconds; tests pass their own.
    """

    def __init__(
        self,
        session: Session,
        *,
        name: str,
        logger: logging.Logger,
        expected: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError),
        backoff: Backoff | None = None,
        healthy_after: float = HEALTHY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.name = name
        self._log = logger
        self._expected = expected
        self.backoff = backoff if backoff is not None else Backoff()
        self._healthy_after = healthy_after
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the task is running (started, not closed)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task in the running event loop. Idempotent.

        :raises RuntimeError: after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: the reconnector is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"room-gateway {self.name}")

    def wake(self) -> None:
        """Someone waits for the connection: end the current backoff now, or skip the next one."""
        self._wake.set()

    async def close(self) -> None:
        """Cancel the session (its ``finally`` clauses run) and wait until the task has ended. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        this = asyncio.current_task()
        if this is None:  # pragma: no cover - always run as a task by start()
            raise RuntimeError("the reconnector runs as a task")
        failures = 0  # attempts in a row that did not connect
        ever_connected = False
        while True:
            attempt = _Attempt(self, again=ever_connected or failures > 0)
            self._wake.clear()  # from here on, a wake() asks for another attempt at once
            error: Exception | None = None
            try:
                await self._session(attempt.connected)
            except Exception as exc:
                error = exc
            # Cancelled during a call that swallowed it: stop, rather than reconnect a closing backend.
            stop_if_cancelled(this)
            if attempt.connected_at is not None:
                ever_connected, failures = True, 0
                if self._clock() - attempt.connected_at >= self._healthy_after:
                    self.backoff.reset()
            else:
                failures += 1
            delay = self.backoff.next()
            self._report(error, lost=attempt.connected_at is not None, first=failures <= 1, delay=delay)
            await self._sleep(delay)

    def _report(self, error: Exception | None, *, lost: bool, first: bool, delay: float) -> None:
        what = "connection lost" if lost else "cannot connect"
        if error is not None and not isinstance(error, self._expected):
            message = "%s: %s (unexpected error); retrying in %.2fs"
            self._log.error(message, self.name, what, delay, exc_info=error)
            return
        level = logging.WARNING if lost or first else logging.DEBUG
        reason = "the session ended" if error is None else str(error) or type(error).__name__
        self._log.log(level, "%s: %s (%s); retrying in %.2fs", self.name, what, reason, delay)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)


class _Attempt:
    """One run of the session: whether, and since when, its connection is up."""

    __slots__ = ("_again", "_reconnector", "connected_at")

    def __init__(self, reconnector: Reconnector, *, again: bool) -> None:
        self._reconnector = reconnector
        self._again = again
        self.connected_at: float | None = None

    def connected(self) -> None:
        """What the session calls once its connection is up (again: logged)."""
        if self.connected_at is not None:
            return
        self.connected_at = self._reconnector._clock()
        if self._again:
            self._reconnector._log.info("%s: connected again", self._reconnector.name)
