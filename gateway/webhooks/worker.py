"""The webhook worker: a child of the gateway process that only delivers (``webhooks.delivery: process``).

``python -m gateway webhooks-worker --fd N``, started by :class:`~gateway.webhooks.supervisor.Supervisor`
with one end of a socket pair as fd ``N`` (:mod:`.channel`). It reads its settings from it, lowers its
CPU priority (``webhooks.worker_nice``), opens its own connection to the gateway's store and runs the
same :class:`~gateway.webhooks.deliverer.Deliverers` as an ``inline`` gateway does — it is an instance
that only delivers, sharing the work with every other instance through the backend's claims. It wakes on
the gateway's :data:`~.channel.WAKE` bytes (and every ``poll_seconds``, for other instances' messages),
sends its metrics back, and stops on ``SIGTERM`` or when the socket reads EOF: the gateway is gone,
whichever way it ended, and a worker never outlives it.

``SIGINT`` is ignored: Ctrl-C in a terminal reaches the whole process group, and the gateway stops its
worker itself once it has drained. Its log lines go where the gateway's do (the same stderr, format and
level), each logger's name ending in ``[worker]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket

from gateway.logs import configure_logging
from gateway.observability.metrics import Metrics
from gateway.plugins import Plugins, create_plugin_manager
from gateway.webhooks.channel import (
    LINE_LIMIT,
    REFRESH,
    SNAPSHOT_SECONDS,
    WAKE,
    WorkerSettings,
    read_settings,
    snapshot,
)
from gateway.webhooks.deliverer import Deliverers, outbox_of

log = logging.getLogger("room_gateway.webhooks")

EXIT_OK = 0
EXIT_FAILURE = 1


class _WorkerName(logging.Filter):
    """``room_gateway.webhooks`` → ``room_gateway.webhooks[worker]``: whose line it is, in either format."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith("[worker]"):
            record.name += "[worker]"
        return True


async def run(fd: int) -> int:
    """Deliver with the settings read from ``fd`` until told to stop; the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
    line = await reader.readline()
    if not line:  # the gateway went away before it said anything
        return EXIT_OK
    settings = read_settings(line)
    logs = configure_logging(settings.log_level, "json" if settings.log_format == "json" else "text")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerName())
    try:
        return await _deliver(settings, reader, writer)
    except Exception:
        log.exception("webhooks worker: stopped by an error")
        return EXIT_FAILURE
    finally:
        logs.stop()


async def _deliver(
    settings: WorkerSettings, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> int:
    if settings.webhooks.worker_nice:
        os.nice(settings.webhooks.worker_nice)
    backend = Plugins(create_plugin_manager()).create_backend(settings.backend, settings.history)
    backend.outbox = outbox_of(settings.webhooks)
    metrics = Metrics()
    names = [endpoint.name for endpoint in settings.webhooks.endpoints]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await backend.open()
    deliverers = Deliverers(settings.webhooks, backend, metrics)
    # What start-up built (modules, the backend, the deliverers: ~121k objects) lives as long as the
    # worker: out of the cyclic GC's full collections, as ``serve`` does (gateway.server), instead of
    # rescanned by each one (9% of a delivery's instructions on PostgreSQL, bench/RESULTS.md session 19).
    gc.freeze()
    try:
        await deliverers.start()
        writer.write(b'{"ready": true}\n')
        log.info("webhooks worker (pid %d): delivering to %s", os.getpid(), ", ".join(names))
        tasks = [
            asyncio.create_task(_listen(reader, deliverers, names, stop)),
            asyncio.create_task(_report(writer, metrics, names)),
        ]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await deliverers.stop()  # what ended is recorded; an attempt cut short is claimed again later
        await backend.close()
    with contextlib.suppress(ConnectionError):  # the last counts, unless the gateway is gone
        writer.write(snapshot(metrics, names))
        await writer.drain()
        writer.close()
    log.info("webhooks worker (pid %d): stopped", os.getpid())
    return EXIT_OK


async def _listen(
    reader: asyncio.StreamReader, deliverers: Deliverers, names: list[str], stop: asyncio.Event
) -> None:
    """Wake the loops on the gateway's bytes; EOF (the gateway is gone, or stopping us) stops the worker."""
    try:
        while data := await reader.read(4096):
            for _ in range(data.count(WAKE)):
                deliverers.wake()
            if REFRESH in data:
                for name in names:
                    deliverers.refresh(name)
    except ConnectionError:
        pass
    stop.set()


async def _report(writer: asyncio.StreamWriter, metrics: Metrics, names: list[str]) -> None:
    while True:
        await asyncio.sleep(SNAPSHOT_SECONDS)
        writer.write(snapshot(metrics, names))
        await writer.drain()
