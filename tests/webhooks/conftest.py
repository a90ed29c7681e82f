"""A gateway with webhooks, built and run in the test's event loop, and a verifying receiver.

``backend_url`` runs each test on ``memory://`` (deliveries in the test's process: ``inline``) and on a
SQLite file (in the gateway's worker process, the default there: ``process``), so both modes are covered
without a test written twice."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway, create_gateway
from gateway.config import GatewayConfig
from gateway.webhooks.supervisor import Supervisor
from tests.conftest import ADMIN_KEY, READER_KEY
from tests.webhooks.receiver import SECRET, Receiver


def webhook_config(backend: str, urls: dict[str, str], **webhooks: Any) -> GatewayConfig:
    endpoints = [
        {"name": name, "url": url, "secret": SECRET, "timeout_seconds": 2} for name, url in urls.items()
    ]
    return GatewayConfig.model_validate(
        {
            "backend": backend,
            "auth": {
                "keys": [
                    {"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]},
                    {"name": "reader", "key": READER_KEY, "permissions": ["rooms:read", "variables:read"]},
                ]
            },
            "rate_limits": {"limits": []},
            "access_log": False,
            "webhooks": {"endpoints": endpoints, "poll_seconds": 0.1, **webhooks},
        }
    )


@contextlib.asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """The gateway's backend open and its deliverers running; a REST client on its edge."""
    gateway = create_gateway(config)
    await gateway.backend.open()
    assert gateway.webhooks is not None
    await gateway.webhooks.start()
    if isinstance(gateway.webhooks, Supervisor):  # process mode: its worker delivering before the test
        await gateway.webhooks.ready()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(gateway.http_app),
            base_url="http://gateway.test",
            headers={"X-API-Key": ADMIN_KEY},
        ) as client:
            yield gateway, client
    finally:
        await gateway.webhooks.stop()
        await gateway.backend.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    one = Receiver().start()
    yield one
    one.stop()


@pytest.fixture(params=["memory", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'rooms.db'}"
