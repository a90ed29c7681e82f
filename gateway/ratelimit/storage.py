"""Counts on a shared ``limits`` storage (Redis, …): every instance on it shares one count.

Any ``rate_limits.storage`` URL but ``memory://`` is a ``limits`` async storage (:func:`open_storage`):
``redis://…`` becomes ``async+redis://…`` on redis-py, its keys prefixed with ``key_prefix``;
``async+memory://`` selects ``limits``' own in-process storage (the reference the local windows are tested
against).
"""

from __future__ import annotations

import time

import limits
import limits.aio.storage
import limits.aio.strategies
import limits.errors
import limits.storage

from gateway.ratelimit.counter import Usage


class StorageWindows:
    """One limit counted by a ``limits`` async strategy on a shared storage.

    Two storage calls a hit: the strategy's ``hit`` then ``get_window_stats`` (the headers need the
    count and the reset time, which ``hit`` does not return).

    :param item: the limit.
    :param limiter: the ``limits`` strategy, on the shared storage.
    :param by: the limit's ``by`` (a namespace of the storage keys).
    """

    def __init__(
        self, item: limits.RateLimitItem, limiter: limits.aio.strategies.RateLimiter, by: str
    ) -> None:
        self.item = item
        self.limiter = limiter
        self.by = by

    async def hit(self, identifier: str) -> tuple[bool, Usage]:
        allowed = await self.limiter.hit(self.item, self.by, identifier)
        stats = await self.limiter.get_window_stats(self.item, self.by, identifier)
        reset = max(0.0, stats.reset_time - time.time())
        return allowed, Usage(self.item.amount, max(0, stats.remaining), reset)


def open_storage(url: str, *, key_prefix: str, timeout: float) -> limits.aio.storage.Storage:
    """A ``limits`` async storage for ``url``: ``redis://…`` → ``async+redis://…`` on redis-py.

    :raises ValueError: no storage serves the scheme (the message lists those that do).
    """
    scheme = url.partition("://")[0]
    full = url if scheme.startswith("async+") else f"async+{url}"
    options: dict[str, float | str | bool] = {"wrap_exceptions": True}
    if "redis" in scheme or "valkey" in scheme:
        options.update(
            implementation="redispy",
            key_prefix=key_prefix,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
    try:
        storage = limits.storage.storage_from_string(full, **options)
    except limits.errors.ConfigurationError as exc:
        schemes = limits.storage.SCHEMES  # type: ignore[attr-defined]  # limits' registry, not re-exported
        known = sorted(s for s in schemes if s.startswith("async+"))
        raise ValueError(
            f"rate_limits.storage: {exc} (schemes: memory, {', '.join(s[6:] for s in known)})"
        ) from None
    if not isinstance(storage, limits.aio.storage.Storage):  # storage_from_string types both families
        raise ValueError(f"rate_limits.storage: {url!r} is not an async storage")
    return storage


async def close_storage(storage: limits.aio.storage.Storage) -> None:
    """Close the connections of ``storage``'s client, if it has one to close (redis-py's)."""
    bridge = getattr(storage, "bridge", None)
    client = getattr(bridge, "storage", None)
    aclose = getattr(client, "aclose", None)
    if aclose is not None:
        await aclose()
