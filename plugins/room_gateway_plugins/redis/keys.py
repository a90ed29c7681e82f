"""The names one deployment uses on a Redis server — keys and pub/sub channels — all under its prefix.

The prefix comes from the backend URL's ``prefix`` query parameter (default ``rg:``), so several deployments
or test runs share one server. Pub/sub channels are prefixed too: unlike keys, channels are not scoped by the
``/db`` number of the URL (Redis docs, "Pub/Sub": "Pub/Sub has no relation to the key space").

Keys::

    {prefix}rooms                 sorted set of room ids, every score 0: listed with ZRANGEBYLEX
    {prefix}room:{room_id}        the room, one JSON string (tombstones stay: ids are never reused)
    {prefix}vars:{room_id}        hash: variable name -> JSON record {version, update_time, value}
    {prefix}versions:{room_id}    hash: variable name -> last version, deletions included

Channels::

    {prefix}variable:["{room_id}","{name}"]   changes of one variable (the Lua write script publishes)
    {prefix}event:["{room_id}","{name}"]      events of one name in one room
    {prefix}signal:room:{room_id}             signals of one room
    {prefix}signal:all                        signals of every room

A topic's room id and name are written as a JSON array so that no two topics share a channel whatever
characters they hold.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from gateway.core.hub import Topic

DEFAULT_PREFIX = "rg:"
PREFIX_PARAMETER = "prefix"


def split_url(url: str) -> tuple[str, str]:
    """Split the backend URL into the URL redis-py reads and the key prefix.

    ``redis://host:6379/0?prefix=app1:`` gives ``("redis://host:6379/0", "app1:")``. Other query parameters
    (``socket_timeout``, ``ssl_cert_reqs``, …) stay for redis-py, which rejects ones it does not know.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    kept = []
    for name, value in query:
        if name == PREFIX_PARAMETER:
            prefix = value
        else:
            kept.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), prefix


class Keyspace:
    """Key and channel names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.rooms = prefix + "rooms"
        self.all_signals = (prefix + "signal:all").encode()
        self._room_signals = prefix + "signal:room:"

    def room(self, room_id: str) -> str:
        return f"{self.prefix}room:{room_id}"

    def variables(self, room_id: str) -> str:
        return f"{self.prefix}vars:{room_id}"

    def versions(self, room_id: str) -> str:
        return f"{self.prefix}versions:{room_id}"

    def topic_channel(self, topic: Topic) -> bytes:
        """The channel of a variable's changes or of an event name's events."""
        return self.prefix.encode() + topic.kind.encode() + b":" + orjson.dumps([topic.room_id, topic.name])

    def signal_channel(self, room_id: str) -> bytes:
        """The channel of a room's signals, or of every room's when ``room_id == ""``."""
        return (self._room_signals + room_id).encode() if room_id else self.all_signals
