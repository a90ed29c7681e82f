"""A whole gateway served in the test's event loop (``gateway.server.serve``: uvicorn with the gateway's
protocol and timeouts, grpclib with its keep-alive), on free loopback ports, for the security tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway.app import Gateway, create_gateway
from gateway.config import GatewayConfig
from gateway.server import serve

ADMIN_KEY = "security-admin-key-0123456789abcdef"
READER_KEY = "security-reader-key-0123456789abcdef"
_LISTENING = re.compile(r"(http|grpc) listening on (\S+):(\d+)$")


@dataclass
class LiveGateway:
    http: tuple[str, int]
    grpc: tuple[str, int]
    #: The gateway served (its parts: the observer, the backend, …).
    gateway: Gateway | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.http[0]}:{self.http[1]}"


def live_config(**overrides: Any) -> GatewayConfig:
    """Both listeners on free ports, an admin and a reader key, no rate limits; ``overrides`` merged in."""
    data: dict[str, Any] = {
        "listen": {"http": "127.0.0.1:0", "grpc": "127.0.0.1:0"},
        "auth": {
            "keys": [
                {"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]},
                {"name": "reader", "key": READER_KEY, "permissions": ["rooms:read", "variables:read"]},
            ]
        },
        "rate_limits": {"limits": []},
        "shutdown_grace_seconds": 1,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return GatewayConfig.model_validate(data)


class _Addresses(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.found: dict[str, tuple[str, int]] = {}
        self.ready = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        match = _LISTENING.search(record.getMessage())
        if match:
            self.found[match.group(1)] = (match.group(2), int(match.group(3)))
            if len(self.found) == 2:
                self.ready.set()


@contextlib.asynccontextmanager
async def live_gateway(config: GatewayConfig) -> AsyncIterator[LiveGateway]:
    """Serve ``config`` until the block ends, then drain and stop."""
    logger = logging.getLogger("room-gateway")
    handler = _Addresses()
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    stop = asyncio.Event()
    gateway = create_gateway(config)
    task = asyncio.create_task(serve(gateway, stop=stop, handle_signals=False))
    try:
        waiting = asyncio.create_task(handler.ready.wait())
        await asyncio.wait({waiting, task}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()
        assert handler.ready.is_set(), "the gateway did not start"
        yield LiveGateway(handler.found["http"], handler.found["grpc"], gateway)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        logger.removeHandler(handler)
        logger.setLevel(previous)
