"""In-process fan-out of notifications to subscriptions.

Every backend delivers through a :class:`LocalHub`: the memory backend feeds it directly; a shared backend
(Redis pub/sub, PostgreSQL LISTEN/NOTIFY) feeds it from its one subscription connection per process, so that
one connection serves every listener of the process. The hub tells the backend when a topic gains its first
and loses its last subscriber (``on_topic_open`` / ``on_topic_close``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

from gateway.core.models import ENDING_KINDS, Change, Notification, RoomSignal
from gateway.errors import Unavailable

#: How many undelivered notifications one listener may hold before it is ended as too slow (it reconnects
#: and gets the current value again, rather than holding unbounded memory).
DEFAULT_QUEUE_SIZE = 1024


class Topic(NamedTuple):
    """What a subscription listens to: ``kind`` is ``"room"`` (every change of the room; ``name`` is
    ``""``), ``"variable"`` (the changes of one variable) or ``"event"`` (the events of one name)."""

    kind: str
    room_id: str
    name: str = ""

    @classmethod
    def room(cls, room_id: str) -> Topic:
        """The topic of every change of a room (ListenRoom)."""
        return cls("room", room_id, "")

    @classmethod
    def of(cls, room_id: str, change: Change) -> Topic | None:
        """The variable or event topic a change belongs to besides its room's, ``None`` for room-level
        kinds."""
        if change.variable is not None:
            return cls("variable", room_id, change.variable.name)
        if change.event is not None:
            return cls("event", room_id, change.event.name)
        return None


class _Closed:
    """Queued to end a subscription: carries the error its reader raises (None: end cleanly)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception | None) -> None:
        self.error = error


class Subscription:
    """The notifications of one topic for one listener, plus its room's signals.

    An async iterator; :meth:`close` (or leaving ``async with``) unsubscribes and is idempotent.
    """

    def __init__(self, hub: LocalHub, topic: Topic, maxsize: int) -> None:
        self.topic = topic
        self._hub = hub
        self._queue: asyncio.Queue[Notification | _Closed] = asyncio.Queue(maxsize)
        self._closed = False

    def _put(self, note: Notification | _Closed) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(note)
        except asyncio.QueueFull:
            self._end(Unavailable("listener fell behind; reconnect to resume"))

    def _end(self, error: Exception | None) -> None:
        if self._closed:
            return
        # Make room for the end marker: what it displaces would never be read anyway.
        while self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(_Closed(error))
        self._hub._remove(self)
        self._closed = True

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Notification:
        note = await self._queue.get()
        if isinstance(note, _Closed):
            self._closed = True
            if note.error is not None:
                raise note.error
            raise StopAsyncIteration
        return note

    def close(self) -> None:
        """Unsubscribe; a reader waiting in another task wakes and stops. Idempotent."""
        self._end(None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class LocalHub:
    """Topic → subscriptions, and room → subscriptions for room signals.

    :param on_topic_open: called with a topic when it gains its first subscriber.
    :param on_topic_close: called with a topic when it loses its last subscriber.
    :param queue_size: per-subscription buffer; a listener that falls this far behind is ended with
        UNAVAILABLE.
    """

    def __init__(
        self,
        *,
        on_topic_open: Callable[[Topic], None] | None = None,
        on_topic_close: Callable[[Topic], None] | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self._by_topic: dict[Topic, set[Subscription]] = {}
        self._by_room: dict[str, set[Subscription]] = {}
        self._on_topic_open = on_topic_open
        self._on_topic_close = on_topic_close
        self._queue_size = queue_size

    def subscribe(self, topic: Topic) -> Subscription:
        sub = Subscription(self, topic, self._queue_size)
        subs = self._by_topic.get(topic)
        if subs is None:
            subs = self._by_topic[topic] = set()
            if self._on_topic_open is not None:
                self._on_topic_open(topic)
        subs.add(sub)
        self._by_room.setdefault(topic.room_id, set()).add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_topic.get(sub.topic)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self._by_topic[sub.topic]
                if self._on_topic_close is not None:
                    self._on_topic_close(sub.topic)
        room_subs = self._by_room.get(sub.topic.room_id)
        if room_subs is not None:
            room_subs.discard(sub)
            if not room_subs:
                del self._by_room[sub.topic.room_id]

    def deliver(self, room_id: str, change: Change) -> None:
        """Queue a change of a room for its subscribers (never blocks): the room's own topic, and the
        variable's or event's; an ending kind (``ROOM_DELETED``, ``CONNECTIONS_INVALIDATED``) for every
        subscription of the room, whose streams it ends."""
        in_room = self._by_room.get(room_id)
        if not in_room:  # no subscription of any topic of the room: the write path's common case
            return
        if change.kind in ENDING_KINDS:
            targets = tuple(in_room)
        else:
            by_topic = self._by_topic
            room_subs = by_topic.get(Topic("room", room_id, ""))
            topic = Topic.of(room_id, change)
            named = by_topic.get(topic) if topic is not None else None
            if room_subs and named:
                targets = (*room_subs, *named)
            else:
                targets = tuple(room_subs or named or ())
        for sub in targets:
            sub._put(change)

    def deliver_signal(self, signal: RoomSignal) -> None:
        """Queue a room signal for every subscription of its room (of every room when ``room_id == ""``)."""
        if signal.room_id:
            targets = tuple(self._by_room.get(signal.room_id, ()))
        else:
            targets = tuple(sub for subs in self._by_room.values() for sub in subs)
        for sub in targets:
            sub._put(signal)

    def close_all(self, error: Exception | None = None) -> None:
        """End every subscription (on shutdown), with ``error`` or cleanly."""
        for subs in tuple(self._by_topic.values()):
            for sub in tuple(subs):
                sub._end(error)

    @property
    def topics(self) -> frozenset[Topic]:
        return frozenset(self._by_topic)

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_topic.values())
