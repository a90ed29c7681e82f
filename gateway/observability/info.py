"""What a running gateway says about itself (``GET /v1/info``, ``room-gateway status``) — never a secret.

``{version, instanceId, startTime, backend: {scheme, up}, surfaces, listeners}``: the package version, this
process's instance id and start (:mod:`gateway.observability.instance`), the backend URL's *scheme* only
(a URL may hold a password) and whether it answers its readiness check now, the enabled surfaces, and the
addresses the listeners are bound to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.instance import INSTANCE_ID, START_TIME

#: Seconds the backend's readiness check gets before ``up`` is false.
CHECK_TIMEOUT = 2.0


def package_version() -> str:
    """The installed room-gateway's version."""
    try:
        return version("room-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
        return "0+unknown"


def info_source(
    config: GatewayConfig, listeners: Mapping[str, str], ready: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The coroutine function answering ``/v1/info`` for a gateway.

    :param listeners: the bound addresses, filled in by the runner once it listens.
    :param ready: the backend's readiness check.
    """
    scheme = config.backend.partition("://")[0]
    start = START_TIME.isoformat().replace("+00:00", "Z")

    async def info() -> dict[str, Any]:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await ready()
            up = True
        except (GatewayError, TimeoutError):
            up = False
        return {
            "version": package_version(),
            "instanceId": INSTANCE_ID,
            "startTime": start,
            "backend": {"scheme": scheme, "up": up},
            "surfaces": config.served_surfaces(),
            "listeners": dict(listeners),
        }

    return info
