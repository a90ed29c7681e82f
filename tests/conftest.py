"""Fixtures shared by every test folder: keys, a frozen clock, a memory backend, the service, the policy.

Each folder adds its own fixtures in its own conftest.py (tests/edge, tests/rpc, tests/server, …).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.auth.policy import ApiKey, AuthPolicy, digest
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher

ADMIN_KEY = "admin-key-for-tests-0123456789"
READER_KEY = "reader-key-for-tests-0123456789"
READER_PERMISSIONS = frozenset({"rooms:read", "variables:read", "events:listen"})


class FrozenClock:
    """A clock that stands still until told to move: deterministic times for golden cases."""

    def __init__(self, start: datetime = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    memory = MemoryBackend()
    await memory.open()
    yield memory
    await memory.close()


@pytest.fixture
def service(backend: MemoryBackend, clock: FrozenClock) -> RoomService:
    return RoomService(backend, clock=clock)


@pytest.fixture
def policy() -> AuthPolicy:
    return AuthPolicy(
        [
            ApiKey("admin", digest(ADMIN_KEY), frozenset({"*"})),
            ApiKey("reader", digest(READER_KEY), READER_PERMISSIONS),
        ]
    )


@pytest.fixture
def dispatcher(service: RoomService, policy: AuthPolicy) -> Dispatcher:
    return Dispatcher(service, policy)
