"""One writer of a room at a time from this process, queued here rather than in PostgreSQL's lock manager.

Every write of a room takes the room's head row lock (the log's append) and holds it until its commit. With
a pool of connections and many concurrent writes to one room, all but one of those connections sat in
PostgreSQL waiting for that row: each commit woke the waiters, each re-read the updated row's growing HOT
chain, and the server spent about as much CPU a PUT as the gateway (bench/RESULTS.md, session 12: 1.2 ms of
PostgreSQL CPU a PUT at ~570 PUTs/s on one room, its kernel time mostly wake-ups; 0.56 ms queued here).
Queued here on an
:class:`asyncio.Lock` per room, a process sends the server one writer of the room at a time; other
processes' writers still meet at the row, one each.

A variable write or a logged event, one statement (:meth:`.postgresql.PostgresBackend._write_alone`),
takes the queue before it checks a connection out and leaves it once the statement has committed: a
writer waiting here holds no connection and no lock. One that runs as a transaction (the general path)
takes the queue just before the head lock (:meth:`.base.SqlBackend._before_head`) and leaves it when the
transaction ends, so it sits in the order every writer takes its locks (the room's rows and variables,
then its head, then its log and presence): a writer waiting here holds only locks that come before the
head, and the writer holding it needs only the head and what comes after — no wait here can close a
cycle that PostgreSQL's deadlock detector would not see. Only variable writes and events queue (the hot
paths); the other writes take the row as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holding or waiting: the entry is dropped when none is left


class RoomQueue:
    """An :class:`asyncio.Lock` per room with writers holding or waiting for it (none kept for the rest)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def enter(self, room_id: str) -> Callable[[], None]:
        """Wait for the room's turn; return what ends it (call it once, whatever happens next)."""
        entries = self._entries
        entry = entries.get(room_id)
        if entry is None:
            entry = entries[room_id] = _Entry()
        entry.users += 1
        try:
            await entry.lock.acquire()  # at once, without a wait, when the room has no writer here
        except BaseException:  # cancelled while waiting: not holding it
            self._leave(room_id, entry)
            raise

        def release() -> None:
            entry.lock.release()
            self._leave(room_id, entry)

        return release

    def _leave(self, room_id: str, entry: _Entry) -> None:
        entry.users -= 1
        if not entry.users:
            del self._entries[room_id]

    def __len__(self) -> int:
        """Rooms with a writer holding or waiting (for tests: nothing is kept once they are gone)."""
        return len(self._entries)
