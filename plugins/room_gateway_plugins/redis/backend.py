"""The Redis backend: rooms, variables, change logs and presence in Redis, notifications through pub/sub.

Several gateway processes on one Redis server (and one key prefix) behave as one gateway: each write is one
Lua script (:mod:`room_gateway_plugins.redis.scripts`) that makes the change, appends its Change to the
room's log with the next seq, trims the log and publishes the Change — one round trip — and each process
holds one pub/sub connection that feeds its :class:`~gateway.core.hub.LocalHub`.

**The log** of a room is a list (``RPUSH``, trimmed from the left by count and age) next to a head counter
(``INCR``). A list rather than a stream or a sorted set: seqs are contiguous, so the first retained seq is
``head - LLEN + 1`` and a read from any position is one ``LRANGE`` by index; a stream's IDs would have to
encode the seq (then ``MINID`` cannot trim by age) and a sorted set pays a skip list for an order the list
already has. Each entry starts with its time and kind (:func:`~room_gateway_plugins.redis.codec.entry_prefix`)
so that Lua trims by age and filters by kind without decoding JSON.

**Channels**: one per room carries every Change of the room, in seq order, subscribed while this process
has any listener in the room (ListenRoom needs all of them, and one channel keeps them in order with the
ending kinds); one more carries the every-room signal. The hub filters by topic on this side. Patterns
(PSUBSCRIBE) are not used: the server matches every PUBLISH against every pattern of every client (Redis
docs, PUBLISH: "O(N+M) … M the total number of subscribed patterns").

**The epoch** is one key, created by the first script that finds it missing: a flushed or restarted
(non-persistent) Redis loses it with the logs, and the next write starts a new one.

**Presence** counts connections per (instance, room, user) and per (room, user); an instance's heartbeat
pushes its deadline in one sorted set (one write per instance, whatever its connections). Expiry moves the
instances past their deadline to an ``expiring`` set in one script — from then on their joins count nothing
and their heartbeat answers "not alive" — then sweeps them room by room, logging MEMBER_LEFT for the users
whose last connections they held, and forgets them; an expired instance that heartbeats again rejoins.

Redis need not be up when the gateway starts: calls answer UNAVAILABLE (and ``/readyz`` says so) until it is.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

# Absolute imports: ``redis`` is redis-py here, never this package (room_gateway_plugins.redis).
import orjson
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.core import wire
from gateway.core.backend import DEFAULT_HISTORY, Backend, History, LogPage, Snapshot, VariableWrite
from gateway.core.hub import LocalHub, Subscription, Topic
from gateway.core.models import Change, ChangeKind, Event, Member, Presence, Room, RoomSignal, Variable
from gateway.core.outbox import (
    EndpointState,
    MessageStatus,
    OutboxMessage,
    Settled,
    dumps_log,
    new_message_id,
)
from gateway.errors import AlreadyExists, NotFound, Unavailable
from gateway.plugins import ConfigError
from room_gateway_plugins.redis import codec, scripts
from room_gateway_plugins.redis import outbox as outbox_redis
from room_gateway_plugins.redis.keys import Keyspace, split_url
from room_gateway_plugins.redis.listener import ChannelListener

log = logging.getLogger(__name__)

#: What the store assigns in a Change's message (:func:`gateway.core.wire.head`), for a variable's and others.
ASSIGNED_VARIABLE: tuple[str, ...] = ("epoch", "version", "seq")
ASSIGNED: tuple[str, ...] = ("epoch", "seq")
TAILS: dict[tuple[str, ...], str] = {
    assigned: wire.tail_format(assigned) for assigned in (ASSIGNED_VARIABLE, ASSIGNED)
}
#: Messages a listing looks through at most (newest first) for those of the status asked.
_MAX_LISTED = 10_000

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
    """Rooms, variables, change logs, presence and notifications on a Redis server (tested with Redis 7).

    URL: ``redis://[[user]:password@]host[:port][/db][?prefix=rg:&…]``, or ``rediss://…`` for TLS. ``prefix``
    (default ``rg:``) starts every key and channel name, so several deployments share one server; the other
    query parameters are redis-py's (``socket_timeout``, ``ssl_ca_certs``, ``ssl_cert_reqs``, …).
    """

    schemes = ("redis", "rediss")
    supports_outbox = True
    base_exceptions = (
        RedisConnectionError,  # includes BusyLoadingError (server restarting), AuthenticationError
        RedisTimeoutError,
        ReadOnlyError,  # a replica answering during a failover
        ConnectionError,
        TimeoutError,
        OSError,
    )

    def __init__(self, url: str, *, history: History = DEFAULT_HISTORY) -> None:
        super().__init__(url, history=history)
        self._redis_url, prefix = split_url(url)
        _check_url(self._redis_url)
        self.keys = Keyspace(prefix)
        self.hub = LocalHub(on_topic_open=self._topic_opened, on_topic_close=self._topic_closed)
        self._client: redis.asyncio.Redis | None = None
        self._listener: ChannelListener | None = None
        self._open_topics = 0  # topics with a listener on this instance
        self._room_listeners: collections.Counter[str] = collections.Counter()
        self._closed = False
        #: The epoch this instance would create if the store has none (the first script to run wins).
        self._new_epoch = secrets.token_hex(8)
        # Retention as the scripts take it, computed once (a write is on the hot path).
        self._max_age_ms = max(1, math.ceil(history.max_age_seconds * 1000))
        self._log_ttl = str(self._max_age_ms)
        self._max_changes = str(max(0, history.max_changes))

    # -- life cycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        client = self._client = redis.asyncio.Redis.from_url(self._redis_url, **CLIENT_DEFAULTS)
        register = client.register_script
        self._create_room = register(scripts.CREATE_ROOM)
        self._save_room = register(scripts.SAVE_ROOM)
        self._set_variable = register(scripts.SET_VARIABLE)
        self._append = register(scripts.APPEND)
        self._delete_room = register(scripts.DELETE_ROOM)
        self._join = register(scripts.PRESENCE_JOIN)
        self._rejoin = register(scripts.PRESENCE_REJOIN)
        self._expire = register(scripts.EXPIRE)
        self._leave = register(scripts.PRESENCE_LEAVE)
        self._sweep = register(scripts.PRESENCE_SWEEP)
        self._heartbeat = register(scripts.HEARTBEAT)
        self._forget_instance = register(scripts.FORGET_INSTANCE)
        self._read_changes = register(scripts.READ_CHANGES)
        self._get_contents = register(scripts.GET_CONTENTS)
        self._get_epoch = register(scripts.EPOCH)
        self._claim = register(scripts.CLAIM)
        self._settle = register(scripts.SETTLE)
        self._retry = register(scripts.RETRY)
        self._replay = register(scripts.REPLAY)
        self._prune = register(scripts.PRUNE)
        kwargs = client.connection_pool.connection_kwargs
        self._listener = ChannelListener(
            client.connection_pool,
            self._on_message,
            self._on_lost,
            timeout=(kwargs.get("socket_connect_timeout") or 2.0) + (kwargs.get("socket_timeout") or 5.0),
            name=self.listener_name,
        )
        try:
            self._learn(await self._get_epoch(keys=[self.keys.epoch], args=[self._new_epoch]))
        except self.base_exceptions as exc:
            # Not up yet: every script answers the epoch, so the first call that reaches Redis learns it.
            log.warning("redis: cannot read the epoch yet (%s); will on the first call", type(exc).__name__)

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

    def _learn(self, epoch: bytes | str) -> str:
        """Keep the store's epoch as a script answered it, and return it."""
        self.epoch = _text(epoch)
        return self.epoch

    # -- writing the log ----------------------------------------------------------------------------------

    async def _write(
        self,
        script: AsyncScript,
        room_id: str,
        change: Change,
        keys: Sequence[str | bytes] = (),
        args: Sequence[str | bytes] = (),
    ) -> list[Any]:
        """Run a logging script (:data:`~room_gateway_plugins.redis.scripts.PRELUDE`) for ``change``.

        Answers the script's reply, whose second item (the store's epoch) is learnt.
        """
        assigned = ASSIGNED_VARIABLE if change.variable is not None else ASSIGNED
        outbox = self.outbox
        targets = outbox.targets(room_id, change.kind) if outbox is not None else ()
        messages = ""
        if outbox is not None and targets:
            messages = outbox_redis.spec(self.keys.prefix, room_id, change, targets, outbox.first_delay)
        reply: list[Any] = await script(
            keys=[self.keys.epoch, self.keys.head(room_id), self.keys.log(room_id), *keys],
            args=[*self._log_args(room_id, change, assigned), messages, *args],
        )
        self._learn(reply[1])
        if outbox is not None and targets:
            outbox.written()
        return reply

    def _log_args(self, room_id: str, change: Change, assigned: tuple[str, ...]) -> list[str | bytes]:
        now = codec.milliseconds(change.time)
        return [
            self._new_epoch,
            self.keys.room_channel(room_id),
            self._max_changes,
            f"{max(0, now - self._max_age_ms):013d}",
            self._log_ttl,
            codec.entry_prefix(change),
            wire.head(room_id, change, assigned),
            TAILS[assigned],
        ]

    def _logged(self, change: Change, seq: int | bytes) -> Change:
        return dataclasses.replace(change, seq=int(seq), epoch=self.epoch)

    # -- rooms --------------------------------------------------------------------------------------------

    async def create_room(self, room: Room) -> None:
        change = Change(0, "", ChangeKind.ROOM_CREATED, room.update_time, room=room)
        reply = await self._write(
            self._create_room,
            room.room_id,
            change,
            keys=[self.keys.room(room.room_id), self.keys.rooms],
            args=[codec.dumps_room(room), room.room_id],
        )
        if not reply[0]:
            raise AlreadyExists(f"room {room.room_id!r} already exists (ids are never reused)")

    async def get_room(self, room_id: str) -> Room | None:
        data = await self._redis.get(self.keys.room(room_id))
        return codec.loads_room(data) if data is not None else None

    async def save_room(self, room: Room, kind: ChangeKind = ChangeKind.ROOM_UPDATED) -> None:
        change = Change(0, "", kind, room.update_time, room=room)
        reply = await self._write(
            self._save_room,
            room.room_id,
            change,
            keys=[self.keys.room(room.room_id)],
            args=[codec.dumps_room(room)],
        )
        if not reply[0]:
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

    async def delete_room(self, room: Room) -> None:
        room_id = room.room_id
        change = Change(0, "", ChangeKind.ROOM_DELETED, room.update_time, room=room)
        keys = self.keys
        reply = await self._write(
            self._delete_room,
            room_id,
            change,
            keys=[
                keys.room(room_id),
                keys.variables(room_id),
                keys.versions(room_id),
                keys.users(room_id),
                keys.members(room_id),
            ],
            args=[codec.dumps_room(room)],
        )
        if not reply[0]:
            raise NotFound(f"room {room_id!r} does not exist")

    # -- variables ----------------------------------------------------------------------------------------

    async def get_variable(self, room_id: str, name: str) -> Variable | None:
        record = await self._redis.hget(self.keys.variables(room_id), name)
        return codec.loads_variable(record) if record is not None else None

    async def write_variable(self, write: VariableWrite) -> Variable | None:
        expected = write.expected_version
        kind = ChangeKind.VARIABLE_DELETED if write.deletes else ChangeKind.VARIABLE_SET
        change = Change(0, "", kind, write.now, variable=write.written(0))
        written, _, _, version = await self._write(
            self._set_variable,
            write.room_id,
            change,
            keys=[self.keys.variables(write.room_id), self.keys.versions(write.room_id)],
            args=[write.name, "" if expected is None else str(expected), "1" if write.deletes else "0"],
        )
        if not written:
            raise write.conflict(int(version))
        if not version:  # deleting an unset variable
            return None
        return write.written(int(version))

    async def get_contents(self, room_id: str) -> Snapshot:
        keys = self.keys
        epoch, head, *records = await self._get_contents(
            keys=[keys.epoch, keys.head(room_id), keys.variables(room_id)], args=[self._new_epoch]
        )
        pairs = zip(records[::2], records[1::2], strict=True)
        contents = {_text(name): codec.loads_value(record) for name, record in pairs}
        return Snapshot(contents, int(head), self._learn(epoch))

    # -- the log ------------------------------------------------------------------------------------------

    async def read_changes(
        self,
        room_id: str,
        *,
        after_seq: int,
        limit: int,
        kinds: frozenset[ChangeKind] | None = None,
    ) -> LogPage:
        keys = self.keys
        codes = "" if kinds is None else ",".join(["", *sorted(codec.KIND_CODES[k] for k in kinds), ""])
        if kinds is not None and not kinds:
            limit = 0  # no kind wanted: only the bounds
        head, first, epoch, *entries = await self._read_changes(
            keys=[keys.epoch, keys.head(room_id), keys.log(room_id)],
            args=[self._new_epoch, str(after_seq), str(max(0, limit)), codes],
        )
        changes = [codec.loads_entry(entry) for entry in entries]
        return LogPage(changes, int(head), self._learn(epoch), int(first))

    # -- realtime -----------------------------------------------------------------------------------------

    async def publish_event(self, room_id: str, event: Event) -> Change:
        change = Change(0, self.epoch, ChangeKind.EVENT, event.time, event=event)
        if not self.history.events:  # live only: no seq, nothing stored
            message = wire.encode(wire.Message(room_id, change))
            await self._redis.publish(self.keys.room_channel(room_id), message)
            return change
        _, _, seq = await self._write(self._append, room_id, change)
        return self._logged(change, seq)

    async def publish_signal(self, signal: RoomSignal) -> None:
        if signal.room_id:
            change = Change(0, "", ChangeKind.CONNECTIONS_INVALIDATED, signal.time)
            await self._write(self._append, signal.room_id, change)
            return
        await self._redis.publish(self.keys.all_signals, wire.encode(wire.Message("", signal)))

    async def subscribe(self, topic: Topic) -> Subscription:
        listener = self._listener
        if self._closed or listener is None:
            raise Unavailable("backend is closed" if self._closed else "backend is not open")
        sub = self.hub.subscribe(topic)
        try:
            await listener.ready((self.keys.room_channel(topic.room_id), self.keys.all_signals))
        except BaseException:
            sub.close()
            raise
        return sub

    # The hub calls these when a topic gains its first or loses its last listener on this instance.

    def _topic_opened(self, topic: Topic) -> None:
        listener = self._listener
        if listener is None:  # subscribe() refuses before the hub gets here
            return
        if not self._room_listeners[topic.room_id]:
            listener.subscribe(self.keys.room_channel(topic.room_id))
        self._room_listeners[topic.room_id] += 1
        self._open_topics += 1
        if self._open_topics == 1:
            listener.subscribe(self.keys.all_signals)

    def _topic_closed(self, topic: Topic) -> None:
        if self._listener is None:
            return
        self._room_listeners[topic.room_id] -= 1
        if self._room_listeners[topic.room_id] <= 0:
            del self._room_listeners[topic.room_id]
            self._listener.unsubscribe(self.keys.room_channel(topic.room_id))
        self._open_topics -= 1
        if not self._open_topics:
            self._listener.unsubscribe(self.keys.all_signals)

    # The listener calls these from its task.

    def _on_message(self, channel: bytes, data: bytes) -> None:
        # A message names its room (gateway.core.wire). One published before our UNSUBSCRIBE took effect
        # finds nobody listening to it in the hub, which drops it.
        wire.decode(data).deliver(self.hub)

    def _on_lost(self, error: Unavailable) -> None:
        self.hub.close_all(error)

    # -- the webhook outbox -------------------------------------------------------------------------------

    async def outbox_claim(
        self, endpoint: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        base = outbox_redis.base(self.keys.prefix, endpoint)
        now_ms = codec.milliseconds(now)
        lease_end = now_ms + math.ceil(lease_seconds * 1000)
        reply = await self._claim(
            keys=[base + ":due"], args=[str(now_ms), str(lease_end), str(limit), base + ":m:"]
        )
        return outbox_redis.claimed_of(endpoint, codec.from_milliseconds(lease_end), reply)

    async def outbox_settle(self, settled: Sequence[Settled]) -> list[EndpointState | None]:
        if not settled:
            return []
        # One script an endpoint for its whole batch (the deliverers settle one endpoint's at a time): a
        # script per attempt, even pipelined, packed a command and parsed the state's fields for each.
        by_endpoint: dict[str, list[int]] = {}
        for index, one in enumerate(settled):
            by_endpoint.setdefault(one.message.endpoint, []).append(index)
        calls: list[tuple[list[int], list[str], list[str | bytes]]] = []
        for endpoint, indexes in by_endpoint.items():
            base = outbox_redis.base(self.keys.prefix, endpoint)
            items: list[str] = []
            for index in indexes:
                one = settled[index]
                message, attempt = one.message, one.attempt
                items += [
                    message.id,
                    str(message.attempts),
                    one.status.value,
                    "" if one.due_time is None else str(codec.milliseconds(one.due_time)),
                    dumps_log([*message.log, attempt]),
                    "1" if attempt.succeeded else "0",
                    str(codec.milliseconds(attempt.time)),
                ]
            args: list[str | bytes] = [base + ":m:", orjson.dumps(items)]
            calls.append((indexes, [base + ":due", base + ":state"], args))
        if len(calls) == 1:
            replies = [await self._settle(keys=calls[0][1], args=calls[0][2])]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, keys, args in calls:
                    await self._settle(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        states: list[EndpointState | None] = [None] * len(settled)
        for (indexes, _, _), reply in zip(calls, replies, strict=True):
            recorded, fields = reply
            state = outbox_redis.state_of(fields)  # after the endpoint's batch (the contract allows it)
            for index, done in zip(indexes, _text(recorded), strict=True):
                if done == "1":
                    states[index] = state
        return states

    async def outbox_messages(
        self, endpoint: str, *, status: MessageStatus | None, limit: int
    ) -> list[OutboxMessage]:
        base = outbox_redis.base(self.keys.prefix, endpoint)
        found: list[OutboxMessage] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit and start < _MAX_LISTED:
            ids: list[Any] = await self._redis.zrevrange(base + ":all", start, start + page - 1)
            if not ids:
                break
            async with self._redis.pipeline(transaction=False) as pipe:
                for one in ids:
                    pipe.hgetall(f"{base}:m:{_text(one)}")
                hashes = await pipe.execute()
            for one, fields in zip(ids, hashes, strict=True):
                if fields:
                    flat = [item for pair in fields.items() for item in pair]
                    message = outbox_redis.message_of(endpoint, one, flat)
                    if status is None or message.status is status:
                        found.append(message)
            start += page
        return found[: max(0, limit)]

    async def outbox_retry(self, endpoint: str, message_id: str, *, now: datetime) -> bool:
        base = outbox_redis.base(self.keys.prefix, endpoint)
        done = await self._retry(
            keys=[base + ":due", f"{base}:m:{message_id}"], args=[message_id, str(codec.milliseconds(now))]
        )
        if done and self.outbox is not None:
            self.outbox.written()
        return bool(done)

    async def outbox_replay(self, endpoint: str, *, since: datetime, now: datetime) -> int:
        base = outbox_redis.base(self.keys.prefix, endpoint)
        copied = int(
            await self._replay(
                keys=[base + ":due", base + ":all"],
                args=[
                    str(codec.milliseconds(since)),
                    str(codec.milliseconds(now)),
                    base + ":m:",
                    new_message_id(),
                ],
            )
        )
        if copied and self.outbox is not None:
            self.outbox.written()
        return copied

    async def outbox_add(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for message in messages:
                base = outbox_redis.base(self.keys.prefix, message.endpoint)
                pipe.hset(f"{base}:m:{message.id}", mapping=outbox_redis.fields_of(message))
                pipe.zadd(base + ":all", {message.id: codec.milliseconds(message.created_time)})
                if message.status is MessageStatus.PENDING:
                    pipe.zadd(base + ":due", {message.id: codec.milliseconds(message.due_time)})
            await pipe.execute()
        if self.outbox is not None:
            self.outbox.written()

    async def outbox_backlog(self, endpoint: str) -> int:
        return int(await self._redis.zcard(outbox_redis.base(self.keys.prefix, endpoint) + ":due"))

    async def outbox_prune(
        self, endpoint: str, *, delivered_before: datetime, failed_before: datetime, limit: int
    ) -> int:
        if limit <= 0:
            return 0
        base = outbox_redis.base(self.keys.prefix, endpoint)
        args = [codec.milliseconds(delivered_before), codec.milliseconds(failed_before), limit]
        return int(await self._prune(keys=[base + ":all"], args=[*map(str, args), base + ":m:"]))

    async def get_endpoint_state(self, endpoint: str) -> EndpointState:
        fields = await self._redis.hgetall(outbox_redis.base(self.keys.prefix, endpoint) + ":state")
        return outbox_redis.state_of([item for pair in fields.items() for item in pair])

    async def save_endpoint_state(self, endpoint: str, state: EndpointState) -> None:
        key = outbox_redis.base(self.keys.prefix, endpoint) + ":state"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=outbox_redis.state_fields(state))
            await pipe.execute()

    # -- presence -----------------------------------------------------------------------------------------

    def _presence_keys(self, room_id: str, instance: str) -> list[str | bytes]:
        keys = self.keys
        return [
            keys.held(instance, room_id),
            keys.holds(instance),
            keys.users(room_id),
            keys.members(room_id),
        ]

    async def presence_join(self, room_id: str, member: Member, *, instance: str, now: datetime) -> None:
        await self._count(self._join, room_id, member, instance, now, connections=1)

    async def presence_rejoin(
        self, room_id: str, member: Member, *, instance: str, connections: int, now: datetime
    ) -> None:
        await self._count(self._rejoin, room_id, member, instance, now, connections=connections)

    async def _count(
        self,
        script: AsyncScript,
        room_id: str,
        member: Member,
        instance: str,
        now: datetime,
        *,
        connections: int,
    ) -> None:
        """Run PRESENCE_JOIN or PRESENCE_REJOIN (their MEMBER_JOINED carries ``connections``; a count of 0
        can only log MEMBER_LEFT)."""
        joined = dataclasses.replace(member, connections=connections, join_time=now)
        change = Change(0, "", ChangeKind.MEMBER_JOINED, now, member=joined)
        if not connections:
            change = Change(0, "", ChangeKind.MEMBER_LEFT, now, member=Member(member.user_id))
        await self._write(
            script,
            room_id,
            change,
            keys=[*self._presence_keys(room_id, instance), self.keys.instances],
            args=[member.user_id, codec.dumps_member(joined), room_id, instance, str(connections)],
        )

    async def presence_leave(self, room_id: str, user_id: str, *, instance: str, now: datetime) -> None:
        change = Change(0, "", ChangeKind.MEMBER_LEFT, now, member=Member(user_id))
        await self._write(
            self._leave, room_id, change, keys=self._presence_keys(room_id, instance), args=[user_id, room_id]
        )

    async def presence_heartbeat(self, instance: str, *, now: datetime, ttl_seconds: float) -> bool:
        deadline = codec.milliseconds(now) + math.ceil(ttl_seconds * 1000)
        alive = await self._heartbeat(
            keys=[self.keys.instances, self.keys.expiring], args=[instance, str(deadline)]
        )
        return bool(alive)

    async def presence_expire(self, *, now: datetime, ttl_seconds: float) -> datetime | None:
        first, *expiring = await self._expire(
            keys=[self.keys.instances, self.keys.expiring], args=[str(codec.milliseconds(now))]
        )
        for one in expiring:
            await self._sweep_instance(_text(one), now)
        return codec.from_milliseconds(int(float(first))) if first else None

    async def _sweep_instance(self, instance: str, now: datetime) -> None:
        """Drop the connections of an expiring instance, room by room, then forget it (none of its joins
        counts meanwhile, so what is read here is all it holds)."""
        keys = self.keys
        for room in await self._redis.smembers(keys.holds(instance)):
            room_id = _text(room)
            users = [_text(user) for user in await self._redis.hkeys(keys.held(instance, room_id))]
            groups: list[str | bytes] = []
            for user_id in users:
                change = Change(0, "", ChangeKind.MEMBER_LEFT, now, member=Member(user_id))
                groups += [user_id, codec.entry_prefix(change), wire.head(room_id, change, ASSIGNED)]
            if not groups:  # an empty hash is no key: the room is only left in the set
                change = Change(0, "", ChangeKind.MEMBER_LEFT, now)
            await self._write(
                self._sweep,
                room_id,
                change,
                keys=self._presence_keys(room_id, instance),
                args=[room_id, *groups],
            )
        await self._forget_instance(keys=[keys.expiring, keys.holds(instance)], args=[instance])

    async def get_presence(self, room_id: str) -> Presence:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.users(room_id))
            pipe.hgetall(self.keys.members(room_id))
            counts, stored = await pipe.execute()
        members = [
            codec.loads_member(_text(user), int(count), stored.get(user))
            for user, count in sorted(counts.items())
            if int(count) > 0
        ]
        return Presence(members, len(members), sum(member.connections for member in members))

    async def count_users(self, room_ids: Sequence[str]) -> dict[str, int]:
        unique = sorted(set(room_ids))
        if not unique:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for room_id in unique:
                pipe.hlen(self.keys.users(room_id))
            counts = await pipe.execute()
        return {room_id: int(count) for room_id, count in zip(unique, counts, strict=True) if count}


def _check_url(url: str) -> None:
    """Refuse a URL redis-py cannot use, at start-up rather than at the first call."""
    try:
        redis.asyncio.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"backend: invalid Redis URL ({exc})") from exc


def _text(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else reply
