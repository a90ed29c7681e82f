"""Fixtures of the SignalWire surface tests: a whole gateway in-process with ``surfaces.signalwire`` on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import Gateway, create_gateway
from gateway.config import GatewayConfig

PROJECT = "7f6c1b0e-sw-project"
ADMIN_KEY = "signalwire-admin-key-0123456789"
READER_KEY = "signalwire-reader-key-0123456789"  # rooms:read only
PUBLIC_KEY = "signalwire-public-key-0123456789"  # everything, on rooms public-* only
TOKEN_SECRET = "signalwire-test-token-secret-0123456789abcdef"


def signalwire_config(**surface: object) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "auth": {
                "keys": [
                    {"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]},
                    {"name": "reader", "key": READER_KEY, "permissions": ["rooms:read"]},
                    {"name": "public", "key": PUBLIC_KEY, "permissions": ["*"], "rooms": ["public-*"]},
                ],
                "room_tokens": {"secret": TOKEN_SECRET},
            },
            "rate_limits": {"limits": []},
            "surfaces": {"signalwire": {"enabled": True, "project_id": PROJECT, **surface}},
        }
    )


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    built = create_gateway(signalwire_config())
    await built.backend.open()
    try:
        yield built
    finally:
        await built.backend.close()


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the whole HTTP edge, sending the admin key as SignalWire's ``project_id:api_token``."""
    transport = httpx.ASGITransport(app=gateway.http_app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://space.test", auth=(PROJECT, ADMIN_KEY)
    ) as client:
        yield client
