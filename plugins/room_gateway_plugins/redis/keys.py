"""The names one deployment uses on a Redis server — keys and pub/sub channels — all under its prefix.

The prefix comes from the backend URL's ``prefix`` query parameter (default ``rg:``), so several deployments
or test runs share one server. Pub/sub channels are prefixed too: unlike keys, channels are not scoped by the
``/db`` number of the URL (Redis docs, "Pub/Sub": "Pub/Sub has no relation to the key space").

Keys::

    {prefix}epoch                 the change log's incarnation (SET NX once; gone with the data, then renewed)
    {prefix}rooms                 sorted set of room ids, every score 0: listed with ZRANGEBYLEX
    {prefix}room:{room_id}        the room, one JSON string (tombstones stay: ids are never reused)
    {prefix}vars:{room_id}        hash: variable name -> the wire bytes of the Change that last set it
    {prefix}versions:{room_id}    hash: variable name -> last version, deletions included
    {prefix}head:{room_id}        the room's last seq (INCR; never expires; deleted with the room's log)
    {prefix}log:{room_id}         list: the retained Changes, oldest first, each as
                                  ``{13-digit ms}{2-digit kind}{wire bytes}`` (the prefix serves retention
                                  by age and the kinds filter without Lua decoding anything)
    {prefix}users:{room_id}       hash: user id -> connections on every instance (presence)
    {prefix}members:{room_id}     hash: user id -> the Member as JSON (info, join time)
    {prefix}instances             sorted set: alive instance -> deadline (ms) of its last presence heartbeat
    {prefix}expiring              set: instances past their deadline whose connections are being dropped
    {prefix}holds:{instance}      set: the rooms where the instance counts connections
    {prefix}held:["{instance}","{room_id}"]   hash: user id -> connections on that instance in that room

Channels::

    {prefix}changes:{room_id}     every Change of one room, in seq order (the Lua scripts publish)
    {prefix}signal:all            signals of every room

A name made of two free strings is written as a JSON array so that no two share a key whatever characters
they hold; one free string at the end of a name cannot collide.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

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
        self.epoch = prefix + "epoch"
        self.rooms = prefix + "rooms"
        self.instances = prefix + "instances"
        self.expiring = prefix + "expiring"
        self.all_signals = (prefix + "signal:all").encode()
        self._changes = prefix + "changes:"

    def room(self, room_id: str) -> str:
        return f"{self.prefix}room:{room_id}"

    def variables(self, room_id: str) -> str:
        return f"{self.prefix}vars:{room_id}"

    def versions(self, room_id: str) -> str:
        return f"{self.prefix}versions:{room_id}"

    def head(self, room_id: str) -> str:
        return f"{self.prefix}head:{room_id}"

    def log(self, room_id: str) -> str:
        return f"{self.prefix}log:{room_id}"

    def users(self, room_id: str) -> str:
        return f"{self.prefix}users:{room_id}"

    def members(self, room_id: str) -> str:
        return f"{self.prefix}members:{room_id}"

    def holds(self, instance: str) -> str:
        return f"{self.prefix}holds:{instance}"

    def held(self, instance: str, room_id: str) -> bytes:
        return self.prefix.encode() + b"held:" + orjson.dumps([instance, room_id])

    def room_channel(self, room_id: str) -> bytes:
        """The channel of every change of a room."""
        return (self._changes + room_id).encode()
