"""One pub/sub connection per backend instance, multiplexed across all its listeners.

The backend tells the listener which channels it wants (``subscribe``/``unsubscribe``, synchronous: they are
called from :class:`~gateway.core.hub.LocalHub` callbacks) and waits with :meth:`ChannelListener.ready` until
the server has confirmed a SUBSCRIBE — Redis delivers a message to a connection only once it has processed
that connection's SUBSCRIBE, so "confirmed" is what makes "active on return" true.

One task owns the connection, a :class:`~gateway.core.reconnect.Reconnector` started when a channel is
first wanted. Its session connects, sends the SUBSCRIBE/UNSUBSCRIBE commands in the order they were asked
for, reads every reply and message, and PINGs when the line has been quiet for a while so that a dead peer
is noticed. When the connection drops, every subscription is ended with UNAVAILABLE through ``on_lost``
(clients reconnect and read the current value again: whatever was published meanwhile is lost to this
connection), and the reconnector tries again with its backoff — at once when a subscriber is waiting.

redis-py's ``PubSub`` is not used: it resubscribes by itself after a reconnect and retries commands, which
would hide a gap in delivery from the listeners; here a gap always ends them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable
from typing import Any

# Absolute imports: ``redis`` is redis-py here, never this package (room_gateway_plugins.redis).
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.core.backend import driver_unavailable
from gateway.core.cancelled import stop_if_cancelled
from gateway.core.reconnect import Reconnector
from gateway.errors import Unavailable

log = logging.getLogger(__name__)

#: Errors that mean the connection is gone (logged without a traceback; anything else is a bug).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)

#: Seconds of silence on the connection before a PING; no answer within as long again: the peer is dead.
HEALTH_INTERVAL = 10.0


def _new_future() -> asyncio.Future[None]:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # A failed future nobody awaited any more must not log "exception was never retrieved".
    ready.add_done_callback(lambda done: done.cancelled() or done.exception())
    return ready


class _Session:
    """One live connection: the commands to send, in order, and the SUBSCRIBEs awaiting confirmation.

    Confirmations come back in the order of the commands, so each channel keeps a FIFO of the futures of
    its SUBSCRIBEs still in flight (subscribe, unsubscribe, subscribe again: the first confirmation must
    not release a waiter of the second).
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.outbox: asyncio.Queue[tuple[str | bytes, ...]] = asyncio.Queue()
        self.unconfirmed: dict[bytes, collections.deque[asyncio.Future[None]]] = {}

    def subscribe(self, channel: bytes, ready: asyncio.Future[None]) -> None:
        self.outbox.put_nowait(("SUBSCRIBE", channel))
        self.unconfirmed.setdefault(channel, collections.deque()).append(ready)

    def unsubscribe(self, channel: bytes) -> None:
        self.outbox.put_nowait(("UNSUBSCRIBE", channel))

    def confirmed(self, channel: bytes) -> None:
        waiting = self.unconfirmed.get(channel)
        if not waiting:
            return
        ready = waiting.popleft()
        if not waiting:
            del self.unconfirmed[channel]
        if not ready.done():
            ready.set_result(None)

    def fail(self, error: Exception) -> None:
        for waiting in self.unconfirmed.values():
            for ready in waiting:
                if not ready.done():
                    ready.set_exception(error)
        self.unconfirmed.clear()


class ChannelListener:
    """The pub/sub connection of one backend instance.

    :param pool: the backend's connection pool: the listener makes its own connection with the same
        settings (host, TLS, credentials, timeouts), outside the pool's accounting.
    :param on_message: called with ``(channel, data)`` for every message, in the order received.
    :param on_lost: called with an UNAVAILABLE error when the connection drops; it must end every
        subscription that relied on it.
    :param timeout: how long :meth:`ready` waits for a confirmation (connecting included).
    :param name: the connection's name in ``CLIENT LIST`` (CLIENT SETNAME), for operators.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        on_message: Callable[[bytes, bytes], None],
        on_lost: Callable[[Unavailable], None],
        *,
        timeout: float,
        name: str | None = None,
        health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        self._pool = pool
        self._name = name
        self._on_message = on_message
        self._on_lost = on_lost
        self._timeout = timeout
        self._health_interval = health_interval
        #: The channels wanted now → resolved once subscribed on the current connection.
        self._channels: dict[bytes, asyncio.Future[None]] = {}
        self._session: _Session | None = None
        self._reconnector = Reconnector(
            self._connect_and_serve, name="redis pub/sub", logger=log, expected=CONNECTION_ERRORS
        )
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._session is not None

    def subscribe(self, channel: bytes) -> None:
        """Want ``channel``: SUBSCRIBE now if connected, else once connected (connecting if need be)."""
        if self._closed:
            raise Unavailable("backend is closed")
        if channel in self._channels:
            return
        ready = self._channels[channel] = _new_future()
        if self._session is not None:
            self._session.subscribe(channel, ready)
            return
        self._reconnector.start()
        self._reconnector.wake()  # cut a reconnection backoff short: someone is waiting

    def unsubscribe(self, channel: bytes) -> None:
        """Stop wanting ``channel`` (UNSUBSCRIBE when connected). Unknown channels are ignored."""
        if self._channels.pop(channel, None) is not None and self._session is not None:
            self._session.unsubscribe(channel)

    async def ready(self, channels: Iterable[bytes]) -> None:
        """Return once every one of ``channels`` is subscribed on the server.

        :raises Unavailable: the server cannot be reached, or the connection dropped meanwhile.
        :raises TimeoutError: no confirmation within the listener's ``timeout``.
        """
        async with asyncio.timeout(self._timeout):
            for channel in channels:
                ready = self._channels.get(channel)
                if ready is None:  # ended meanwhile (the connection dropped, or the backend closed)
                    raise Unavailable("lost the connection to Redis; reconnect")
                # Shielded: several subscribers share one future, and one giving up must not cancel it.
                await asyncio.shield(ready)

    async def close(self) -> None:
        """Stop the task and drop the connection; waiters get UNAVAILABLE. Idempotent."""
        self._closed = True
        await self._reconnector.close()
        self._fail_waiting(Unavailable("backend is closed"))
        self._channels.clear()

    # -- the task -----------------------------------------------------------------------------------------

    async def _connect_and_serve(self, connected: Callable[[], None]) -> None:
        """The reconnector's session: one connection, from connecting until it fails (raises)."""
        # RESP2 on this connection whatever the pool speaks: messages then arrive as plain replies (RESP3
        # sends them as out-of-band pushes, which redis-py routes to a push handler instead).
        settings = {**self._pool.connection_kwargs, "protocol": 2}
        if "maint_notifications_config" in settings:
            # redis-py 8 turns maintenance notifications on for RESP3 pools; they need a RESP3 (or hiredis)
            # parser, which this RESP2 connection does not have without hiredis installed.
            settings["maint_notifications_config"] = None
        if self._name:
            settings["client_name"] = self._name
        connection = self._pool.connection_class(**settings)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException as exc:
            await connection.disconnect(nowait=True)
            if isinstance(exc, Exception):
                self._fail_waiting(driver_unavailable(exc))
            raise
        connected()
        session = self._session = _Session(connection)
        for channel, ready in list(self._channels.items()):
            if ready.done():  # failed with an earlier connection; still wanted, so ask again
                ready = self._channels[channel] = _new_future()
            session.subscribe(channel, ready)
        try:
            await self._serve(session)
        finally:
            self._session = None
            await connection.disconnect(nowait=True)
            if not self._closed:  # closing: close() fails the waiters, the backend ends the subscriptions
                lost = Unavailable("lost the connection to Redis; reconnect")
                session.fail(lost)
                self._on_lost(lost)  # ends the subscriptions, which unsubscribe their channels

    def _fail_waiting(self, error: Unavailable) -> None:
        for ready in self._channels.values():
            if not ready.done():
                ready.set_exception(error)

    async def _serve(self, session: _Session) -> None:
        """Write and read on one connection until it fails (raises) or the task is cancelled."""
        writer = asyncio.create_task(self._write(session), name="redis pub/sub writer")
        reader = asyncio.create_task(self._read(session), name="redis pub/sub reader")
        try:
            done, _ = await asyncio.wait((writer, reader), return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.cancel()
            reader.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
        for task in done:
            task.result()

    @staticmethod
    async def _write(session: _Session) -> None:
        this = asyncio.current_task()
        assert this is not None
        while True:
            command = await session.outbox.get()
            await session.connection.send_command(*command, check_health=False)
            stop_if_cancelled(this)

    async def _read(self, session: _Session) -> None:
        pinged = False
        this = asyncio.current_task()
        assert this is not None
        while True:
            # A read with a timeout returns None when nothing came (redis-py's PubSub.get_message does so).
            response = await session.connection.read_response(timeout=self._health_interval)
            stop_if_cancelled(this)
            if response is None:
                if pinged:
                    raise RedisTimeoutError(f"no answer to PING within {self._health_interval} s")
                session.outbox.put_nowait(("PING",))
                pinged = True
                continue
            pinged = False
            if not isinstance(response, list) or not response:
                continue  # +PONG before any SUBSCRIBE
            kind = response[0]
            if kind == b"message":
                try:
                    self._on_message(response[1], response[2])
                except Exception:
                    log.exception("redis pub/sub: cannot deliver a message on %r", response[1])
            elif kind == b"subscribe":
                session.confirmed(response[1])
            # "unsubscribe" and "pong" replies need nothing.
