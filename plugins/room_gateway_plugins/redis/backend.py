"""The Redis backend: rooms and variables in Redis, notifications through Redis pub/sub.

Several gateway processes on one Redis server (and one key prefix) behave as one gateway: each write is one
atomic command or Lua script, and each process holds one pub/sub connection that feeds its
:class:`~gateway.core.hub.LocalHub`.

Channels are per topic (one per listened variable or event name), plus one per room for its signals and one
for signals to every room, each subscribed only while this process has a listener for it. So the server
filters: a process receives only what its listeners want, whereas one channel per room would carry every
write of a busy room to every process with one listener there. Patterns (PSUBSCRIBE) are not used: the
server matches every PUBLISH against every pattern of every client (Redis docs, PUBLISH: "O(N+M) … M the
total number of subscribed patterns"), a cost paid by all writes of all deployments on the server.

Redis need not be up when the gateway starts: calls answer UNAVAILABLE (and ``/readyz`` says so) until it is.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import Any

# Absolute imports: ``redis`` is redis-py here, never this package (room_gateway_plugins.redis).
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.core import wire
from gateway.core.backend import Backend, VariableWrite
from gateway.core.hub import LocalHub, Subscription, Topic
from gateway.core.models import JSON, Event, Room, RoomSignal, Variable
from gateway.errors import AlreadyExists, NotFound, Unavailable
from gateway.plugins import ConfigError
from room_gateway_plugins.redis import codec, scripts
from room_gateway_plugins.redis.keys import Keyspace, split_url
from room_gateway_plugins.redis.listener import ChannelListener

log = logging.getLogger(__name__)

#: Connection settings unless the URL's query sets them (``?socket_connect_timeout=5``): fail fast when the
#: server is away, PING a pooled connection idle for 30 s before using it, and never retry a command — a
#: write retried after a lost reply could apply twice (a created room would then answer ALREADY_EXISTS);
#: the client retries on UNAVAILABLE instead.
CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 30,
    "retry": Retry(NoBackoff(), 0),
}


class RedisBackend(Backend):
    """Rooms, variables and notifications on a Redis server (tested with Redis 7).

    URL: ``redis://[[user]:password@]host[:port][/db][?prefix=rg:&…]``, or ``rediss://…`` for TLS. ``prefix``
    (default ``rg:``) starts every key and channel name, so several deployments share one server; the other
    query parameters are redis-py's (``socket_timeout``, ``ssl_ca_certs``, ``ssl_cert_reqs``, …).
    """

    schemes = ("redis", "rediss")
    base_exceptions = (
        RedisConnectionError,  # includes BusyLoadingError (server restarting), AuthenticationError
        RedisTimeoutError,
        ReadOnlyError,  # a replica answering during a failover
        ConnectionError,
        TimeoutError,
        OSError,
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._redis_url, prefix = split_url(url)
        _check_url(self._redis_url)
        self.keys = Keyspace(prefix)
        self.hub = LocalHub(on_topic_open=self._topic_opened, on_topic_close=self._topic_closed)
        self._client: redis.asyncio.Redis | None = None
        self._listener: ChannelListener | None = None
        self._open_topics = 0  # topics with a listener on this instance
        self._room_listeners: collections.Counter[str] = collections.Counter()
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        client = self._client = redis.asyncio.Redis.from_url(self._redis_url, **CLIENT_DEFAULTS)
        self._create_room = client.register_script(scripts.CREATE_ROOM)
        self._set_variable = client.register_script(scripts.SET_VARIABLE)
        kwargs = client.connection_pool.connection_kwargs
        self._listener = ChannelListener(
            client.connection_pool,
            self._on_message,
            self._on_lost,
            timeout=(kwargs.get("socket_connect_timeout") or 2.0) + (kwargs.get("socket_timeout") or 5.0),
            name=self.listener_name,
        )

    @property
    def listener_name(self) -> str:
        """The pub/sub connection's name in ``CLIENT LIST``: ``room-gateway:pubsub:{prefix}``."""
        # CLIENT SETNAME refuses spaces and control characters.
        safe = "".join(c if c.isprintable() and not c.isspace() else "_" for c in self.keys.prefix)
        return "room-gateway:pubsub:" + safe

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            await self._listener.close()
        self.hub.close_all(Unavailable("server shutting down; reconnect"))
        if self._client is not None:
            await self._client.aclose()

    async def check(self) -> None:
        await self._redis.ping()

    @property
    def _redis(self) -> redis.asyncio.Redis:
        if self._closed:
            raise Unavailable("backend is closed")
        if self._client is None:
            raise Unavailable("backend is not open")
        return self._client

    # -- rooms --------------------------------------------------------------------------------------------

    async def create_room(self, room: Room) -> None:
        created = await self._create_room(
            keys=[self.keys.room(room.room_id), self.keys.rooms], args=[codec.dumps_room(room), room.room_id]
        )
        if not created:
            raise AlreadyExists(f"room {room.room_id!r} already exists (ids are never reused)")

    async def get_room(self, room_id: str) -> Room | None:
        data = await self._redis.get(self.keys.room(room_id))
        return codec.loads_room(data) if data is not None else None

    async def save_room(self, room: Room) -> None:
        if not await self._redis.set(self.keys.room(room.room_id), codec.dumps_room(room), xx=True):
            raise NotFound(f"room {room.room_id!r} does not exist")

    async def list_rooms(self, *, start: str, inclusive: bool, limit: int) -> list[Room]:
        if limit <= 0:
            return []
        # Every score is 0, so ZRANGEBYLEX orders by bytes: UTF-8 byte order is code-point order.
        low = "-" if inclusive and not start else ("[" if inclusive else "(") + start
        ids = await self._redis.zrangebylex(self.keys.rooms, low, "+", start=0, num=limit)
        return await self._rooms([_text(one) for one in ids])

    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        return await self._rooms(sorted(set(room_ids)))

    async def _rooms(self, room_ids: list[str]) -> list[Room]:
        if not room_ids:
            return []
        found = await self._redis.mget([self.keys.room(one) for one in room_ids])
        return [codec.loads_room(data) for data in found if data is not None]

    # -- variables ----------------------------------------------------------------------------------------

    async def get_variable(self, room_id: str, name: str) -> Variable | None:
        record = await self._redis.hget(self.keys.variables(room_id), name)
        return codec.loads_variable(record) if record is not None else None

    async def write_variable(self, write: VariableWrite) -> Variable | None:
        expected = write.expected_version
        written, version = await self._set_variable(
            keys=[self.keys.variables(write.room_id), self.keys.versions(write.room_id)],
            args=[
                write.name,
                "" if expected is None else str(expected),
                "1" if write.deletes else "0",
                wire.variable_head(write.room_id, write.name, write.value, write.now),
                self.keys.topic_channel(write.topic),
            ],
        )
        if not written:
            raise write.conflict(int(version))
        if not version:  # deleting an unset variable
            return None
        return write.written(int(version))

    async def get_contents(self, room_id: str) -> dict[str, JSON]:
        records = await self._redis.hgetall(self.keys.variables(room_id))
        return {_text(name): codec.loads_value(record) for name, record in records.items()}

    async def delete_room_data(self, room_id: str) -> None:
        await self._redis.delete(self.keys.variables(room_id), self.keys.versions(room_id))

    # -- realtime -----------------------------------------------------------------------------------------

    async def publish_event(self, room_id: str, event: Event) -> None:
        topic = Topic("event", room_id, event.name)
        await self._redis.publish(self.keys.topic_channel(topic), wire.encode(wire.Message(topic, event)))

    async def publish_signal(self, signal: RoomSignal) -> None:
        channel = self.keys.signal_channel(signal.room_id)
        await self._redis.publish(channel, wire.encode(wire.Message(None, signal)))

    async def subscribe(self, topic: Topic) -> Subscription:
        listener = self._listener
        if self._closed or listener is None:
            raise Unavailable("backend is closed" if self._closed else "backend is not open")
        sub = self.hub.subscribe(topic)
        try:
            await listener.ready(self._channels(topic))
        except BaseException:
            sub.close()
            raise
        return sub

    def _channels(self, topic: Topic) -> tuple[bytes, ...]:
        return (
            self.keys.topic_channel(topic),
            self.keys.signal_channel(topic.room_id),
            self.keys.all_signals,
        )

    # The hub calls these when a topic gains its first or loses its last listener on this instance.

    def _topic_opened(self, topic: Topic) -> None:
        listener = self._listener
        if listener is None:  # subscribe() refuses before the hub gets here
            return
        listener.subscribe(self.keys.topic_channel(topic))
        if topic.room_id and not self._room_listeners[topic.room_id]:
            listener.subscribe(self.keys.signal_channel(topic.room_id))
        self._room_listeners[topic.room_id] += 1
        self._open_topics += 1
        if self._open_topics == 1:
            listener.subscribe(self.keys.all_signals)

    def _topic_closed(self, topic: Topic) -> None:
        if self._listener is None:
            return
        self._listener.unsubscribe(self.keys.topic_channel(topic))
        self._room_listeners[topic.room_id] -= 1
        if self._room_listeners[topic.room_id] <= 0:
            del self._room_listeners[topic.room_id]
            if topic.room_id:
                self._listener.unsubscribe(self.keys.signal_channel(topic.room_id))
        self._open_topics -= 1
        if not self._open_topics:
            self._listener.unsubscribe(self.keys.all_signals)

    # The listener calls these from its task.

    def _on_message(self, channel: bytes, data: bytes) -> None:
        # A message names its topic (gateway.core.wire). One published before our UNSUBSCRIBE took effect
        # finds nobody listening to it in the hub, which drops it.
        wire.decode(data).deliver(self.hub)

    def _on_lost(self, error: Unavailable) -> None:
        self.hub.close_all(error)


def _check_url(url: str) -> None:
    """Refuse a URL redis-py cannot use, at start-up rather than at the first call."""
    try:
        redis.asyncio.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"backend: invalid Redis URL ({exc})") from exc


def _text(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else reply
