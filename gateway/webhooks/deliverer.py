"""The deliverers: one loop per endpoint that claims due messages, posts them and settles each attempt.

Every instance runs them — in its own event loop, or in its worker process (:mod:`.supervisor`,
``webhooks.delivery``); the backend's claims (:meth:`~gateway.core.backend.Backend.outbox_claim`, a lease
per attempt) share the work so that no attempt is sent twice. A loop keeps at most the endpoint's
``max_in_flight`` attempts running, so one slow receiver holds up only its own messages, and wakes when this
instance writes messages (``Outbox.on_written``), when an attempt ends, or every ``poll_seconds`` (for what
other instances wrote, and retries coming due).

An attempt is a 2xx within ``timeout_seconds``; anything else is retried on ``retry_schedule_seconds``
(each entry the delay after the previous attempt, the first included) until the schedule runs out and the
message is ``failed``. An endpoint with no success for ``disable_after_seconds`` since its first failure is
disabled (its messages wait; ``:enable`` resumes them). Each lane of a loop sends on a keep-alive
connection of the endpoint's pool (:class:`~gateway.webhooks.http.Pool`, :class:`EndpointLoop`).

The client is the gateway's own (:mod:`gateway.webhooks.http`: an asyncio protocol per connection, the
answer parsed by httptools), not a library's: posting one webhook over a kept-alive HTTP/1.1 connection took
2.62 M instructions with httpx (its pool, anyio's cancel scopes, h11's pure-Python parser) and ~0.4 M with
aiohttp's ``ClientSession`` (session 6) — half of a whole delivery in the worker on Redis (session 8) —
against the few tens of thousands of a protocol that writes the request's bytes itself
(``bench/http_clients.py``, ``bench/RESULTS.md``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import certifi

from gateway.config import WebhookEndpoint, Webhooks
from gateway.core.backend import Backend
from gateway.core.outbox import Attempt, EndpointState, Outbox, OutboxMessage, Route, Settled
from gateway.errors import GatewayError
from gateway.observability.metrics import Metrics
from gateway.webhooks.http import HTTPError, Pool
from gateway.webhooks.payload import Signer, body

log = logging.getLogger("room_gateway.webhooks")

Clock = Callable[[], datetime]
#: Seconds a woken loop waits before it claims: long enough to gather a burst, short next to delivery.
LINGER_SECONDS = 0.005
#: Seconds a loop lingers at most while a burst goes on (more writes, or more attempts ending, during each
#: linger), so that a claim or a settle takes many messages at once (:meth:`EndpointLoop._linger`).
BURST_SECONDS = 0.025
#: Bytes of an answer's body read (and dropped) at most: enough for any acknowledgement.
MAX_ANSWER_BYTES = 64 * 1024
#: Seconds between two prunings of an endpoint's settled messages (``webhooks.retention``), and how many
#: one deletes at most: a full batch prunes again at the next round instead.
PRUNE_SECONDS = 60.0
PRUNE_BATCH = 1000
#: Seconds a request runs, while messages wait, before another lane opens beside it (:class:`EndpointLoop`).
WIDEN_SECONDS = 0.01


def _now() -> datetime:
    return datetime.now(UTC)


def ssl_context() -> ssl.SSLContext:
    """The TLS context of every endpoint's connections, as httpx made it before (``docs/webhooks.md``): the
    CA file or directory of ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set, else certifi's bundle."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def env_proxy(url: str) -> str | None:
    """The proxy of ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` for ``url`` unless ``NO_PROXY`` names
    its host (what httpx read from the environment), found once per endpoint, not per request."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def outbox_of(config: Webhooks) -> Outbox:
    """What the backend writes messages for: every configured endpoint, with its filters."""
    routes = [Route(e.name, tuple(e.events), tuple(e.rooms)) for e in config.endpoints]
    return Outbox(routes, first_delay_seconds=config.retry_schedule_seconds[0])


def lease_seconds(endpoint: WebhookEndpoint) -> float:
    """How long a claimed attempt is this instance's: its timeout, with room to settle it."""
    return endpoint.timeout_seconds * 2 + 5.0


class EndpointLoop:
    """Delivery to one endpoint.

    Claimed messages wait in a queue for a *lane*: a task that sends them one after another, each request on
    a keep-alive connection of the endpoint's pool (:class:`~gateway.webhooks.http.Pool`, at most
    ``max_in_flight`` connections). One lane starts with the first message; another opens whenever a
    request has run for :data:`WIDEN_SECONDS` while messages wait (each running request opens one per
    period, so lanes double), up to ``max_in_flight``; a lane ends when the queue is empty. A fast receiver
    is so served by one or two connections, a slow one by as many as it needs: one request per claimed
    message at once opened a
    connection each (64 under bench/webhooks.py).
    """

    def __init__(
        self,
        endpoint: WebhookEndpoint,
        config: Webhooks,
        backend: Backend,
        ssl_context: ssl.SSLContext | None,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self._config = config
        self._backend = backend
        #: The connections: opened as lanes need them, closed when :meth:`run` ends.
        self._pool = Pool(
            endpoint.url,
            ssl_context=ssl_context,
            proxy=env_proxy(endpoint.url),
            max_connections=endpoint.max_in_flight,
            timeout=endpoint.timeout_seconds,
            max_answer_bytes=MAX_ANSWER_BYTES,
        )
        self._clock = clock
        self._signer = Signer(endpoint.secret.get_secret_value())
        self._wake = asyncio.Event()
        #: Writes told of by :meth:`wake`, ever: what a linger counts.
        self._written = 0
        #: Set by :meth:`Deliverers.stop`: the loop ends at its next turn even if a cancellation is lost.
        self.stopping = False
        #: Claimed messages not yet settled (queued, being sent, or waiting for their settle): at most
        #: ``max_in_flight``.
        self._held = 0
        self._queue: collections.deque[OutboxMessage] = collections.deque()
        self._lanes: set[asyncio.Task[None]] = set()
        self._state = EndpointState()
        # Finished attempts wait here to be settled in batches: one transaction (one fsync on SQLite) or
        # one Redis round trip for all those that ended meanwhile, not one per delivery.
        self._finished: list[tuple[Settled, float]] = []
        self._settling = asyncio.Event()
        self._state_read = -1e9  # monotonic time of the last read of the state and the backlog
        self._pruned = -1e9  # monotonic time of the last pruning
        self._prune_more = False
        self._outcomes = {
            outcome: metrics.webhook_deliveries.labels(endpoint=self.name, outcome=outcome)
            for outcome in ("delivered", "retrying", "failed")
        }
        self._duration = metrics.webhook_duration.labels(endpoint=self.name)
        self._latency = metrics.webhook_latency.labels(endpoint=self.name)
        self._backlog = metrics.webhook_backlog.labels(endpoint=self.name)
        self._disabled = metrics.webhook_disabled.labels(endpoint=self.name)

    def wake(self) -> None:
        """Messages were written (``Outbox.on_written``): counted, so that a burst is claimed at once."""
        self._written += 1
        self._wake.set()

    def refresh(self) -> None:
        """Read the endpoint's state again at once (it was enabled or disabled through the API)."""
        self._state_read = -1e9
        self._wake.set()

    async def run(self) -> None:
        """Claim and send until cancelled; store errors are logged and waited out."""
        settler = asyncio.create_task(self._settler(), name=f"webhooks {self.name} settler")
        try:
            while not self.stopping:
                try:
                    more = await self._round()
                except GatewayError as exc:  # the store is away: try again at the next poll
                    log.warning("webhooks %s: %s", self.name, exc)
                    more = False
                except Exception:
                    # A bug, or a driver error no backend mapped to UNAVAILABLE: ending here would stop
                    # this endpoint's deliveries until a restart. Logged, then waited out a whole poll
                    # interval (not cut short by the writes' wake-ups, which would log it at every write).
                    log.exception("webhooks %s: a claim failed unexpectedly", self.name)
                    await asyncio.sleep(self._config.poll_seconds)
                    continue
                if more:
                    await asyncio.sleep(0)
                    continue
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for may swallow a cancellation that
                # comes as the event is set, and the loop would then never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.poll_seconds):
                        await self._wake.wait()
                await self._linger(lambda: self._written, lambda: self.endpoint.max_in_flight - self._held)
                self._wake.clear()
        finally:
            self._queue.clear()  # claimed again once their leases end
            for task in self._lanes:
                task.cancel()
            if self._lanes:
                await asyncio.gather(*self._lanes, return_exceptions=True)
            settler.cancel()
            await asyncio.gather(settler, return_exceptions=True)
            # What ended before the stop is recorded; an attempt cut short is claimed again after its lease.
            with contextlib.suppress(GatewayError):
                await self._settle_batch()
            self._pool.close()

    async def _round(self) -> bool:
        """Claim what fits in the free slots; ``True`` when more may be due right away."""
        # The state and the backlog once a poll interval, not once a claim: at a thousand deliveries a
        # second the claims come far more often.
        if time.monotonic() - self._state_read >= self._config.poll_seconds:
            self._state = await self._backend.get_endpoint_state(self.name)
            self._disabled.set(0 if self._state.enabled else 1)
            self._backlog.set(await self._backend.outbox_backlog(self.name))
            self._state_read = time.monotonic()
        if self._prune_more or time.monotonic() - self._pruned >= PRUNE_SECONDS:
            await self._prune()
        if not self._state.enabled:
            return False
        free = self.endpoint.max_in_flight - self._held
        if free <= 0:
            return False
        if self._queue and free < self.endpoint.max_in_flight // 2:
            # The lanes have work queued: wait until half the slots are free and claim them at once. Each
            # settle freeing a few slots made a claim of a few (bench/webhooks.py's drain: five a claim,
            # a claim costing about what two deliveries do).
            return False
        claimed = await self._backend.outbox_claim(
            self.name, now=self._clock(), lease_seconds=lease_seconds(self.endpoint), limit=free
        )
        self._held += len(claimed)
        self._queue.extend(claimed)
        if self._queue and not self._lanes:
            self._open_lane()
        return len(claimed) == free

    async def _linger(self, count: Callable[[], int], enough: Callable[[], int]) -> None:
        """Wait :data:`LINGER_SECONDS`, and again while ``count()`` still grows (a burst: writes coming, or
        attempts ending), until it has grown by ``enough()`` or :data:`BURST_SECONDS` have passed.

        A claim and a settle each cost about what a delivery does, whatever their size (a transaction, and
        on SQLite its trips through aiosqlite's thread): at the few hundred writes a second of
        bench/webhooks.py's PUT phase, one linger of 5 ms made claims and settles of two or three messages,
        and they took more than the deliveries. A lone write still waits only the first linger.
        """
        start, deadline = count(), time.monotonic() + BURST_SECONDS
        await asyncio.sleep(LINGER_SECONDS)
        while count() - start < enough() and time.monotonic() < deadline:
            before = count()
            await asyncio.sleep(LINGER_SECONDS)
            if count() == before:  # the burst is over
                return

    async def _prune(self) -> None:
        """Delete settled messages past their retention, one bounded batch (every instance does it:
        deleting what another instance deleted does nothing)."""
        now, kept = self._clock(), self._config.retention
        pruned = await self._backend.outbox_prune(
            self.name,
            delivered_before=now - timedelta(seconds=kept.delivered_seconds),
            failed_before=now - timedelta(seconds=kept.failed_seconds),
            limit=PRUNE_BATCH,
        )
        self._pruned, self._prune_more = time.monotonic(), pruned >= PRUNE_BATCH

    def _open_lane(self) -> None:
        task = asyncio.create_task(self._lane(), name=f"webhooks {self.name} lane")
        self._lanes.add(task)
        task.add_done_callback(self._lanes.discard)

    async def _lane(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue and not self.stopping:
                message = self._queue.popleft()
                timer: list[asyncio.TimerHandle] = []
                timer.append(loop.call_later(WIDEN_SECONDS, self._widen, timer))
                try:
                    await self._attempt(message)
                except Exception:  # a bug: the message is claimed again once its lease ends
                    self._held -= 1
                    log.exception("webhooks %s: an attempt failed unexpectedly", self.name)
                finally:
                    timer[0].cancel()
        finally:
            # Out of the set in the same step as the empty queue was seen, not in the task's done callback
            # (a loop turn later): a claim in between saw a lane still there, opened none, and its
            # messages waited in the queue until their leases ran out (bench/webhooks.py: p99 of 41 s).
            task = asyncio.current_task()
            if task is not None:
                self._lanes.discard(task)

    def _widen(self, timer: list[asyncio.TimerHandle]) -> None:
        """A request has run for :data:`WIDEN_SECONDS`: open a lane if messages wait, and look again."""
        if self._queue and len(self._lanes) < self.endpoint.max_in_flight:
            self._open_lane()
        timer[0] = asyncio.get_running_loop().call_later(WIDEN_SECONDS, self._widen, timer)

    async def _attempt(self, message: OutboxMessage) -> None:
        content = body(message)
        started = self._clock()
        headers = self._signer.headers(message.id, content, started)
        clock = time.perf_counter()
        status, error = 0, ""
        try:
            status = await self._post(content, headers)
        except (HTTPError, TimeoutError) as exc:
            error = type(exc).__name__  # never the message: it may quote the URL
        seconds = time.perf_counter() - clock
        self._duration.observe(seconds)
        attempt = Attempt(started, status, round(seconds * 1000, 3), error)
        await self._settle(message, attempt)

    async def _post(self, content: bytes, headers: dict[str, str]) -> int:
        """Post one attempt; its status code.

        The answer's body is read to its end and dropped, at most :data:`MAX_ANSWER_BYTES`: read to its end,
        the connection goes back to the pool for the next attempt, while one left unread is closed, and each
        attempt then paid a TCP connect and close (the profile of bench/webhooks.py: a connect() per
        delivery). A receiver answering more than the cap loses its connection, never makes us download
        everything.
        """
        return await self._pool.post(headers, content)

    async def _settle(self, message: OutboxMessage, attempt: Attempt) -> None:
        schedule = self._config.retry_schedule_seconds
        due = None
        if not attempt.succeeded and message.attempts < len(schedule):
            due = attempt.time + timedelta(seconds=schedule[message.attempts])
        self._finished.append((Settled(message, attempt, due), time.monotonic()))
        self._settling.set()

    async def _settler(self) -> None:
        while True:
            await self._settling.wait()
            if self._held > len(
                self._finished
            ):  # others are running or queued; an attempt alone is settled at once
                await self._linger(
                    lambda: len(self._finished), lambda: max(1, self.endpoint.max_in_flight // 2)
                )
            self._settling.clear()
            try:
                await self._settle_batch()
            except GatewayError as exc:  # not recorded: claimed again once their leases end
                log.warning("webhooks %s: %s", self.name, exc)
            except Exception:
                # The same, from a bug or an unmapped driver error. The settler must outlive it: without
                # it no attempt is settled, no slot comes free, and the loop never claims again.
                log.exception("webhooks %s: a settle failed unexpectedly", self.name)

    async def _settle_batch(self) -> None:
        batch, self._finished = self._finished, []
        if not batch:
            return
        try:
            states = await self._backend.outbox_settle([settled for settled, _ in batch])
        finally:
            self._held -= len(batch)
            self._wake.set()  # their slots are free
        failing = None
        for (settled, _), state in zip(batch, states, strict=True):
            if state is None:  # the lease ran out and another instance took it: its attempt counts
                continue
            message = settled.message
            if settled.attempt.succeeded:
                self._outcomes["delivered"].inc()
                if message.created_time is not None:
                    self._latency.observe(max(0.0, (self._clock() - message.created_time).total_seconds()))
            else:
                self._outcomes["retrying" if settled.due_time is not None else "failed"].inc()
                failing = (state, settled.attempt.time)
        if failing is not None:
            await self._disable_if_failing(*failing)

    async def _disable_if_failing(self, state: EndpointState, now: datetime) -> None:
        since = state.failing_since
        if since is None or not state.enabled:
            return
        if (now - since).total_seconds() < self._config.disable_after_seconds:
            return
        reason = f"no successful delivery since {since.isoformat()}"
        await self._backend.save_endpoint_state(
            self.name, EndpointState(False, reason, since, state.last_success_time)
        )
        self._disabled.set(1)
        self.refresh()
        log.warning("webhooks %s: disabled (%s)", self.name, reason)


class Delivery(Protocol):
    """What the gateway and the management API drive deliveries by, wherever they run:
    :class:`Deliverers` in the gateway's own event loop (``webhooks.delivery: inline``), or
    :class:`~gateway.webhooks.supervisor.Supervisor`'s worker process (``process``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def wake(self) -> None:
        """Messages were written or made due (``:retry``, ``:replay``, ``:test``): claim now."""

    def refresh(self, name: str) -> None:
        """Endpoint ``name`` was enabled or disabled through the API: read its state again."""


class Deliverers:
    """Every endpoint's loop, started and stopped with the gateway (:class:`Delivery`)."""

    def __init__(self, config: Webhooks, backend: Backend, metrics: Metrics, clock: Clock = _now) -> None:
        self.config = config
        self._backend = backend
        self._metrics = metrics
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self.loops: dict[str, EndpointLoop] = {}

    async def start(self) -> None:
        # One TLS context for every endpoint (each would load the CA bundle again), and none without an
        # https:// endpoint: loading certifi's bundle is some 240 M instructions.
        https = any(e.url.startswith("https://") for e in self.config.endpoints)
        context = ssl_context() if https else None
        for endpoint in self.config.endpoints:
            loop = EndpointLoop(endpoint, self.config, self._backend, context, self._metrics, self._clock)
            self.loops[endpoint.name] = loop
            self._tasks.append(asyncio.create_task(loop.run(), name=f"webhooks {endpoint.name}"))
        if self._backend.outbox is not None:
            self._backend.outbox.on_written(self.wake)

    def wake(self) -> None:
        for loop in self.loops.values():
            loop.wake()

    def refresh(self, name: str) -> None:
        loop = self.loops.get(name)
        if loop is not None:
            loop.refresh()

    async def stop(self) -> None:
        for loop in self.loops.values():
            loop.stopping = True
            loop.wake()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
