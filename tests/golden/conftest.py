"""Fixtures of the golden-case corpus: the REST app over a memory backend and the frozen clock.

Room tokens are configured with a fixed secret, the frozen clock and counted token ids, so a minted token
is the same bytes on every run and a case can show it whole.
"""

from __future__ import annotations

import itertools

import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.auth.policy import AuthPolicy
from gateway.auth.tokens import RoomTokenIssuer
from gateway.core.service import RoomService
from tests.conftest import FrozenClock

GOLDEN_TOKEN_SECRET = "golden-room-token-secret-0123456789abcdef"


@pytest.fixture
def token_issuer(clock: FrozenClock) -> RoomTokenIssuer:
    ids = itertools.count(1)
    return RoomTokenIssuer(
        GOLDEN_TOKEN_SECRET,
        roles={"moderator": ["*"], "guest": ["variables:read", "events:listen"]},
        clock=clock,
        new_id=lambda: f"golden-{next(ids)}",
    )


@pytest.fixture
def backend(backend: MemoryBackend) -> MemoryBackend:
    """The memory backend with a fixed epoch (a new one per process otherwise), so a case can show it."""
    backend.epoch = "golden-epoch"
    return backend


@pytest.fixture
def service(backend: MemoryBackend, clock: FrozenClock, token_issuer: RoomTokenIssuer) -> RoomService:
    return RoomService(backend, clock=clock, tokens=token_issuer)


@pytest.fixture
def policy(policy: AuthPolicy, token_issuer: RoomTokenIssuer) -> AuthPolicy:
    return AuthPolicy(policy.keys, tokens=token_issuer)
