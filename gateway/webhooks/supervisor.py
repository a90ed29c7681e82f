"""The gateway's side of its webhook worker (``webhooks.delivery: process``, :mod:`.worker`).

Why a worker: a delivery (its post, claim and settle) costs more CPU than the PUT it is for, so in the
process that serves the writes the deliverers took a third of the writes' throughput (bench/RESULTS.md,
sessions 6 and 7). In a child process they run on another core, at a lower priority, against the same
store — the backend's claims already share the work between instances safely, so the worker is simply an
instance that only delivers.

:class:`Supervisor` (a :class:`~gateway.webhooks.deliverer.Delivery`):

- starts the worker once the backend is open (``serve`` calls :meth:`start` after ``backend.open()``),
  as ``python -m gateway webhooks-worker --fd N`` with one end of a socket pair, and hands it its
  settings through it (:mod:`.channel`);
- restarts it when it exits, after :data:`FIRST_BACKOFF_SECONDS`, doubling up to
  :data:`MAX_BACKOFF_SECONDS` while it keeps dying young; each exit is logged. Nothing is lost meanwhile:
  messages wait in the outbox, and those the dead worker had claimed are due again when their leases end;
- wakes it when this instance writes messages (``Outbox.on_written``: one byte, at most one a loop turn,
  none while one is still unsent), and on the management API's ``:retry``, ``:replay``, ``:test``,
  ``:enable``;
- adds its delivery metrics to this process's ``/metrics`` (:class:`~.channel.MetricRelay`);
- stops it on shutdown: ``SIGTERM``, then ``SIGKILL`` after :data:`STOP_GRACE_SECONDS`.

If this process dies (even by ``kill -9``), the worker's end of the socket reads EOF and it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time

import orjson

from gateway.config import GatewayConfig
from gateway.core.backend import Backend
from gateway.observability.metrics import Metrics
from gateway.webhooks.channel import LINE_LIMIT, REFRESH, WAKE, MetricRelay, settings_line

log = logging.getLogger("room_gateway.webhooks")

#: Seconds before the first restart of a worker that died, doubled at each further death up to
#: :data:`MAX_BACKOFF_SECONDS`; a worker that ran :data:`STABLE_SECONDS` starts the count again.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 30.0
#: Seconds a worker gets to stop after ``SIGTERM`` (to record the attempts that ended) before ``SIGKILL``.
STOP_GRACE_SECONDS = 5.0
#: Seconds :meth:`Supervisor.ready` waits for a worker to deliver.
READY_SECONDS = 30.0


class Supervisor:
    """One webhook worker process, kept running while the gateway serves."""

    def __init__(self, config: GatewayConfig, backend: Backend, metrics: Metrics) -> None:
        self._settings = settings_line(config)
        self._backend = backend
        self._relay = MetricRelay(metrics, [endpoint.name for endpoint in config.webhooks.endpoints])
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Workers started so far (the first included): restarts are ``started - 1``.
        self.started = 0

    @property
    def pid(self) -> int | None:
        """The running worker's process id (``None`` between two workers)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._backend.outbox is not None:
            self._backend.outbox.on_written(self.wake)
        self._task = asyncio.create_task(self._supervise(), name="webhooks worker")

    async def ready(self) -> None:
        """Wait until the current worker has its deliverers running (tests, benchmarks; serving does not
        wait), at most :data:`READY_SECONDS`."""
        async with asyncio.timeout(READY_SECONDS):
            await self._ready.wait()

    def wake(self) -> None:
        # Many writes a loop turn make one byte; a byte still unsent (the worker is behind on reading)
        # already wakes it.
        if self._wake_pending or self._writer is None or self._loop is None:
            return
        self._wake_pending = True
        self._loop.call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        writer = self._writer
        if writer is not None and writer.transport.get_write_buffer_size() == 0:
            writer.write(WAKE)

    def refresh(self, name: str) -> None:
        if self._writer is not None:  # a worker starting reads every state anyway
            self._writer.write(REFRESH)

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        process = self._process
        if process is None or process.returncode is not None:  # waiting to restart one
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_SECONDS):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("webhooks worker (pid %d): still running after SIGTERM; killed", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.gather(task, return_exceptions=True)

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while not self._stopping:
            started = time.monotonic()
            try:
                code = await self._run_one()
            except OSError as exc:
                code = None
                log.error("webhooks worker: cannot start (%s)", exc)
            if self._stopping:
                return
            if time.monotonic() - started >= STABLE_SECONDS:
                backoff = FIRST_BACKOFF_SECONDS
            how = "did not start" if code is None else _exit_text(code)
            log.warning("webhooks worker %s; restarting in %gs", how, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _run_one(self) -> int:
        """Start a worker, serve its channel until it ends; its exit status."""
        self._ready.clear()  # ready() is about this worker
        ours, theirs = socket.socketpair()
        try:
            self._process = process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "webhooks-worker",
                "--fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its own copy: its EOF is ours closing, and the reverse
        self.started += 1
        log.info("webhooks worker started (pid %d)", process.pid)
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=LINE_LIMIT)
        try:
            writer.write(self._settings)
            self._relay.restart()
            self._writer = writer
            with contextlib.suppress(ConnectionError, asyncio.LimitOverrunError, ValueError):
                while line := await reader.readline():
                    self._received(line)
            return await process.wait()
        finally:
            self._writer = None
            writer.close()
            if process.returncode is None:  # cancelled: never leave it behind
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    def _received(self, line: bytes) -> None:
        message = orjson.loads(line)
        if "metrics" in message:
            self._relay.apply(message["metrics"])
        elif message.get("ready"):
            self._ready.set()


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
