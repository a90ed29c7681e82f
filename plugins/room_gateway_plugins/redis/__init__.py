"""The Redis backend plugin: ``redis://host:port/db`` and ``rediss://…`` (TLS), with a ``prefix`` parameter.

Registered through the same hook and entry point (``room_gateway`` group, name ``redis``) a third-party
backend uses. Inside this package ``import redis`` still means redis-py: every import is absolute, and this
package is only ever imported as ``room_gateway_plugins.redis``.
"""

from __future__ import annotations

from gateway.core.backend import Backend
from gateway.hookspecs import hookimpl
from room_gateway_plugins.redis.backend import RedisBackend

__all__ = ["RedisBackend"]


@hookimpl
def gateway_backend_classes() -> list[type[Backend]]:
    return [RedisBackend]
