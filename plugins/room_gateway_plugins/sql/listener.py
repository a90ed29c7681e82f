"""One dedicated PostgreSQL connection per backend instance that ``LISTEN``s on the channels in use.

The backend says which channels it wants (:meth:`Listener.want` / :meth:`Listener.unwant`, from the hub's
first-subscriber / last-subscriber callbacks); :meth:`Listener.sync` makes the connection listen to exactly
those, connecting first if needed. A :class:`~gateway.core.reconnect.Reconnector` keeps it up: its session
pings the connection when idle and, when it drops, tells the backend (which ends its subscriptions with
UNAVAILABLE so that clients reconnect); the reconnector then tries again, with its backoff, until the
server is back.

asyncpg allows one operation at a time on a connection: every command on it takes :attr:`_lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from gateway.core.reconnect import Reconnector

log = logging.getLogger(__name__)

#: How often an idle connection is pinged, and how long a ping may take.
KEEPALIVE, PING_TIMEOUT = 10.0, 5.0
#: Errors that mean the server cannot be reached or the connection dropped (no traceback in the log).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Listener:
    """The LISTEN connection of one backend instance.

    :param connect: opens a new asyncpg connection.
    :param on_payload: called (synchronously, in arrival order) with each notification's payload.
    :param on_lost: called once per dropped connection, with the error, after which nothing is listened to
        until the next :meth:`sync` or reconnection.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        on_payload: Callable[[str], None],
        on_lost: Callable[[Exception], None],
    ) -> None:
        self._connect = connect
        self._on_payload = on_payload
        self._on_lost = on_lost
        self._conn: asyncpg.Connection | None = None
        self._wanted: dict[str, int] = {}  # channel -> how many topics want it
        self._listening: set[str] = set()
        self._lock = asyncio.Lock()
        self._lost = asyncio.Event()
        self._lost_error: Exception | None = None
        self._reconnector = Reconnector(
            self._session, name="PostgreSQL LISTEN connection", logger=log, expected=CONNECTION_ERRORS
        )
        self._syncs: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Connect and listen (raises if the server is unreachable), then supervise."""
        await self.sync()
        self._reconnector.start()

    def want(self, channel: str) -> None:
        self._wanted[channel] = self._wanted.get(channel, 0) + 1

    def unwant(self, channel: str) -> None:
        left = self._wanted.get(channel, 0) - 1
        if left > 0:
            self._wanted[channel] = left
            return
        self._wanted.pop(channel, None)
        if self.connected and not self._closing:
            task = asyncio.create_task(self._sync_quietly())
            self._syncs.add(task)
            task.add_done_callback(self._syncs.discard)

    async def sync(self) -> None:
        """Listen to exactly the wanted channels, connecting first if needed; raise if the server is gone."""
        async with self._lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = await self._connect()
                conn.add_termination_listener(self._on_terminated)
                self._conn, self._listening = conn, set()
                self._lost.clear()
            for channel in [c for c in self._wanted if c not in self._listening]:
                await conn.add_listener(channel, self._on_notification)
                self._listening.add(channel)
            for channel in [c for c in self._listening if c not in self._wanted]:
                await conn.remove_listener(channel, self._on_notification)
                self._listening.discard(channel)

    async def _sync_quietly(self) -> None:
        try:
            await self.sync()
        except Exception as exc:  # the supervisor sees the drop and reconnects
            log.debug("UNLISTEN failed: %r", exc)

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._on_payload(payload)

    def _on_terminated(self, conn: Any) -> None:
        self._drop(conn, ConnectionError("the PostgreSQL LISTEN connection closed"))

    def _drop(self, conn: Any, error: Exception) -> None:
        current = self._conn
        if current is None or conn is not current:
            return  # an older connection, already handled
        self._conn, self._listening = None, set()
        if not current.is_closed():
            current.terminate()
        if self._closing:
            return
        self._lost_error = error
        self._lost.set()
        self._on_lost(error)

    async def _session(self, connected: Callable[[], None]) -> None:
        """The reconnector's session: connect (unless a :meth:`sync` did) and ping the connection until it
        drops; raise what ended it."""
        await self.sync()
        connected()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), KEEPALIVE)
            if self._lost.is_set():  # dropped (and the backend told): reconnect
                raise self._lost_error or ConnectionError("the PostgreSQL LISTEN connection closed")
            conn = self._conn
            try:
                async with self._lock:
                    if conn is not None and not conn.is_closed():
                        await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)
            except Exception as exc:
                self._drop(conn, exc)
                raise

    async def close(self) -> None:
        self._closing = True
        await self._reconnector.close()
        for task in self._syncs:
            task.cancel()
        await asyncio.gather(*self._syncs, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), PING_TIMEOUT)
            except Exception:
                conn.terminate()
