"""Fixtures of the Reflect surface tests: a whole gateway in-process with ``surfaces.reflect`` switched on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_gateway
from gateway.config import GatewayConfig

APP = "my-app"
ADMIN_KEY = "reflect-admin-key-0123456789"
READER_KEY = "reflect-reader-key-0123456789"  # rooms:read only
CREATOR_KEY = "reflect-creator-key-0123456789"  # rooms:create, rooms:read
PUBLIC_KEY = "reflect-public-key-0123456789"  # everything, on rooms public-* only


def reflect_config(**surface: object) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "auth": {
                "keys": [
                    {"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]},
                    {"name": "reader", "key": READER_KEY, "permissions": ["rooms:read"]},
                    {"name": "creator", "key": CREATOR_KEY, "permissions": ["rooms:create", "rooms:read"]},
                    {"name": "public", "key": PUBLIC_KEY, "permissions": ["*"], "rooms": ["public-*"]},
                ]
            },
            "rate_limits": {"limits": []},
            "surfaces": {"reflect": {"enabled": True, "apps": [APP], **surface}},
        }
    )


def basic(key: str) -> dict[str, str]:
    """Reflect's credentials: the raw key after ``Basic``."""
    return {"Authorization": f"Basic {key}"}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client of the whole HTTP edge (native API and Reflect surface), with the admin's Reflect key."""
    gateway = create_gateway(reflect_config())
    await gateway.backend.open()
    try:
        transport = httpx.ASGITransport(app=gateway.http_app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=basic(ADMIN_KEY)
        ) as client:
            yield client
    finally:
        await gateway.backend.close()
