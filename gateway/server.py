"""The runner: uvicorn (HTTP) and grpclib (gRPC) in one process and one event loop, drained on SIGTERM.

Order of life: open the backend → start the presence heartbeat and webhook deliverers (or their worker
process, :mod:`gateway.webhooks.supervisor`) → bind both listeners → serve → on ``SIGTERM``/``SIGINT``
drain → stop the deliverers (or the worker) and the heartbeat (after the streams' leaves are written) →
close the backend last. Draining (bounded by ``shutdown_grace_seconds``):

1. stop taking work: uvicorn closes its listener and idle keep-alive connections; new gRPC calls are
   refused with UNAVAILABLE (clients retry elsewhere);
2. end every stream now, with UNAVAILABLE "server shutting down; reconnect" (a stream never finishes on its
   own, so waiting for it would only burn the grace period);
3. let in-flight calls finish, up to the grace period; then cancel what is left (a second signal skips
   the wait);
4. close the backend.

A listener bound to port 0 gets a free port; the line ``room-gateway: http listening on HOST:PORT`` (and
``grpc listening on …``) tells which, so tests and scripts can find it. Keys are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator

import uvicorn
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server as GrpcServer

from gateway.app import Gateway
from gateway.config import GrpcTls, split_host_port
from gateway.core.backend import Backend
from gateway.core.hub import LocalHub
from gateway.edge.metrics import MetricsListenerApp
from gateway.edge.timeouts import guarded_protocol
from gateway.errors import Unavailable
from gateway.rpc.tls import TlsError, server_context

log = logging.getLogger("room-gateway")

SHUTDOWN_MESSAGE = "server shutting down; reconnect"


class StartupError(RuntimeError):
    """The gateway could not start serving (a port in use, an address that does not exist, …)."""


async def serve(gateway: Gateway, *, stop: asyncio.Event | None = None, handle_signals: bool = True) -> None:
    """Serve ``gateway`` until ``stop`` is set or ``SIGTERM``/``SIGINT`` arrives, then drain and return.

    :param gateway: built by :func:`gateway.app.create_gateway` in this event loop.
    :param stop: set it to shut down (tests, embedding); a fresh event by default.
    :param handle_signals: install ``SIGTERM``/``SIGINT`` handlers (main thread only).
    :raises StartupError: a listener cannot be bound or the HTTP server fails to start.
    """
    stop = stop if stop is not None else asyncio.Event()
    force = asyncio.Event()
    # Signals first: a SIGTERM that arrives while starting up still drains (once started) and exits 0.
    with _signals(stop, force, enabled=handle_signals):
        await gateway.backend.open()
        # Everything built so far (modules, descriptors, codecs, routes) lives as long as the process: keep
        # it out of the cyclic GC's full collections, which otherwise rescan it all every few thousand
        # requests (py-spy put ~10% of a cheap call in collections, and they made its p99 spikes).
        gc.freeze()
        try:
            if gateway.presence is not None:
                await gateway.presence.start()
            if gateway.webhooks is not None:
                await gateway.webhooks.start()
            await _serve_listeners(gateway, stop, force)
        finally:
            if gateway.webhooks is not None:  # an attempt cut short is claimed again once its lease ends
                await gateway.webhooks.stop()
            if gateway.presence is not None:
                await gateway.presence.stop()
            if gateway.limiter is not None:
                await gateway.limiter.close()
            for upstream in gateway.upstreams:
                upstream.close()
            await gateway.backend.close()
            tracing = gateway.observer.tracing if gateway.observer is not None else None
            if tracing is not None:  # export the last spans (blocking, once, at exit)
                await asyncio.to_thread(tracing.shutdown)
    log.info("stopped")


async def _serve_listeners(gateway: Gateway, stop: asyncio.Event, force: asyncio.Event) -> None:
    config = gateway.config
    with contextlib.ExitStack() as bound:
        http_sock = bound.enter_context(_bound(config.listen.http, "http"))
        grpc_sock = bound.enter_context(_bound(config.listen.grpc, "grpc"))
        metrics_address = config.listen.metrics
        metrics_sock = bound.enter_context(_bound(metrics_address, "metrics")) if metrics_address else None
        gateway.listeners.update(http=_address(http_sock), grpc=_address(grpc_sock))
        if metrics_sock is not None:
            gateway.listeners["metrics"] = _address(metrics_sock)
        async with _metrics_listener(gateway, metrics_sock):
            await _serve_main_listeners(gateway, http_sock, grpc_sock, stop, force)


@contextlib.asynccontextmanager
async def _metrics_listener(gateway: Gateway, sock: socket.socket | None) -> AsyncIterator[None]:
    """Serve ``listen.metrics`` on ``sock`` (nothing when ``None``) while the block runs."""
    if sock is None or gateway.metrics is None:
        yield
        return
    server = _HttpServer(
        uvicorn.Config(
            MetricsListenerApp(gateway.metrics),
            log_config=None,
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            ws="none",
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]), name="room-gateway metrics")
    try:
        await _started(server, task)
        log.info("metrics listening on %s", _address(sock))
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await task


async def _serve_main_listeners(
    gateway: Gateway,
    http_sock: socket.socket,
    grpc_sock: socket.socket,
    stop: asyncio.Event,
    force: asyncio.Event,
) -> None:
    config = gateway.config
    grace = config.shutdown_grace_seconds
    grpc_calls = _GrpcCalls(gateway.grpc_server)
    await gateway.grpc_server.start(sock=grpc_sock, ssl=_grpc_tls(config.listen.grpc_tls))
    http = _HttpServer(
        uvicorn.Config(
            gateway.http_app,
            log_config=None,  # the process's logging is set up once, by the CLI
            access_log=False,
            # The edge decides whom to believe about the client address (rate_limits.trusted_proxies);
            # uvicorn's default would rewrite it from X-Forwarded-For of any loopback peer.
            proxy_headers=False,
            server_header=False,
            ws="none",
            timeout_graceful_shutdown=math.ceil(grace),
            # Slow and half-open clients (gateway.edge.timeouts): header and body deadlines and a header
            # size limit on httptools, idle keep-alive connections closed, h11's own limit if ever chosen.
            http=guarded_protocol(
                header_timeout=config.http.header_timeout_seconds,
                max_header_bytes=config.http.max_header_bytes,
                body_timeout=config.http.body_timeout_seconds,
            ),
            timeout_keep_alive=config.http.idle_timeout_seconds,  # type: ignore[arg-type]  # uvicorn says int, a float works
            h11_max_incomplete_event_size=config.http.max_header_bytes,
        )
    )
    http_task = asyncio.create_task(http.serve(sockets=[http_sock]), name="room-gateway http")
    try:
        await _started(http, http_task)
        log.info("http listening on %s", _address(http_sock))
        log.info("grpc listening on %s", _address(grpc_sock))
        if config.listen.grpc_tls is not None:
            log.info("grpc: TLS with %s", config.listen.grpc_tls.cert_file)
        await _until_stopped(stop, http_task)

        log.info("shutting down: draining for up to %gs", grace)
        grpc_calls.draining = True
        http.should_exit = True
        _end_streams(gateway.backend)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await grpc_calls.finish(force)
        await _http_drained(http, http_task, force)
    finally:
        gateway.grpc_server.close()  # cancels the gRPC calls still running
        await gateway.grpc_server.wait_closed()
        if not http_task.done():  # startup failed, or we are being cancelled
            http.force_exit = http.should_exit = True
            http_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await http_task


#: After a forced stop, how long requests cut off from their clients get to end (they only unwind).
_FORCED_CALLS_SECONDS = 1.0


async def _http_drained(http: uvicorn.Server, http_task: asyncio.Task[None], force: asyncio.Event) -> None:
    """Wait for uvicorn's own drain (the requests in flight, up to the grace), cut short by ``force`` —
    which may come while it waits: uvicorn reads ``force_exit`` between its checks, not only before."""
    if not force.is_set():
        forced = asyncio.create_task(force.wait())
        try:
            await asyncio.wait({http_task, forced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()
    if force.is_set():
        http.force_exit = True
    await http_task
    if http.force_exit:
        # What uvicorn no longer waits for is ended here, while the loop still runs: each request still in
        # flight sees its client disconnect (and ends as a disconnected call does) instead of being
        # cancelled when the loop closes, which uvicorn logs as an error with a traceback.
        state = http.server_state
        for connection in list(state.connections):
            connection.transport.close()
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=_FORCED_CALLS_SECONDS)
        # A forced uvicorn skips the application's lifespan shutdown and leaves its lifespan task waiting
        # for that message; cancelled when the loop closes, uvicorn logs it as an error with a traceback.
        # The gateway's lifespan has nothing to wait for, so end it as uvicorn would have.
        lifespan = getattr(http, "lifespan", None)
        done = getattr(lifespan, "shutdown_event", None)
        if lifespan is not None and isinstance(done, asyncio.Event) and not done.is_set():
            await lifespan.shutdown()


class _HttpServer(uvicorn.Server):
    """uvicorn, minus its signal handling: the runner handles signals for both listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _GrpcCalls:
    """Tracks in-flight gRPC calls (each runs in its own task) and refuses new ones while draining.

    grpclib's own ``Server.close()`` cancels running calls at once; this gives them the grace period first.
    """

    def __init__(self, server: GrpcServer) -> None:
        self.draining = False
        self._tasks: set[asyncio.Task[object]] = set()
        listen(server, RecvRequest, self._on_request)

    async def _on_request(self, event: RecvRequest) -> None:
        if self.draining:
            raise GRPCError(Status.UNAVAILABLE, SHUTDOWN_MESSAGE)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def finish(self, force: asyncio.Event) -> None:
        """Return when no call is in flight or ``force`` is set (the caller bounds the wait)."""
        forced = asyncio.create_task(force.wait())
        try:
            while self._tasks and not force.is_set():
                await asyncio.wait({*self._tasks, forced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()


def _end_streams(backend: Backend) -> None:
    """End every stream of this process now, without touching the backend's connections (in-flight calls
    still need them). Backends deliver through a :class:`LocalHub` (``gateway.core.hub``); one that does
    not expose it as ``hub`` has its streams ended by its own ``close()``, after the grace period."""
    hub = getattr(backend, "hub", None)
    if isinstance(hub, LocalHub):
        hub.close_all(Unavailable(SHUTDOWN_MESSAGE))


@contextlib.contextmanager
def _bound(address: str, name: str) -> Iterator[socket.socket]:
    """A listening socket on ``address`` (``host:port``; port 0 picks a free one), closed on exit."""
    host, port = split_host_port(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.create_server(sockaddr, family=family)
    except OSError as exc:
        raise StartupError(f"listen.{name}: cannot listen on {address}: {exc.strerror or exc}") from None
    with sock:
        yield sock


def _grpc_tls(tls: GrpcTls | None) -> ssl.SSLContext | None:
    """The gRPC listener's TLS context (``listen.grpc_tls``); ``None``: plaintext h2c."""
    if tls is None:
        return None
    try:
        return server_context(tls)
    except TlsError as exc:
        raise StartupError(str(exc)) from None


async def _started(http: uvicorn.Server, task: asyncio.Task[None]) -> None:
    while not http.started:
        if task.done():
            raise StartupError("the HTTP server did not start (see the log above)")
        await asyncio.sleep(0.01)


async def _until_stopped(stop: asyncio.Event, http_task: asyncio.Task[None]) -> None:
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopping, http_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if http_task.done() and not stop.is_set():
        http_task.result()  # re-raise what ended it
        raise StartupError("the HTTP server stopped on its own")


@contextlib.contextmanager
def _signals(stop: asyncio.Event, force: asyncio.Event, *, enabled: bool) -> Iterator[None]:
    """``SIGTERM``/``SIGINT`` set ``stop``; a second one sets ``force`` (skip the rest of the grace)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: not waiting for in-flight calls", signal.Signals(signum).name)
            force.set()
        else:
            log.info("%s received", signal.Signals(signum).name)
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
