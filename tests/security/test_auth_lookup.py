"""The auth policy's fast path (gateway.auth.policy): a presented key's digest looked up in a dict of the
configured ones, one principal per key — with the answers of the scan over every key it replaced."""

from __future__ import annotations

import base64

import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.auth.policy import ApiKey, AuthPolicy, digest
from gateway.auth.tokens import RoomTokenIssuer
from gateway.core.service import RoomService
from gateway.errors import Unauthenticated
from tests.conftest import FrozenClock
from tests.security.test_tokens import ROLES, SECRET, mint

KEYS = [
    ApiKey("admin", digest("admin-key-0123456789"), frozenset({"*"})),
    ApiKey("reader", digest("reader-key-0123456789"), frozenset({"variables:read"}), ("lobby-*",)),
]


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def test_keys_answer_as_the_scan_did() -> None:
    policy = AuthPolicy(KEYS)
    first = policy.authenticate(api_key="reader-key-0123456789")
    assert (first.name, first.permissions, first.rooms) == (
        "reader",
        frozenset({"variables:read"}),
        ("lobby-*",),
    )
    assert policy.authenticate(api_key="reader-key-0123456789") is first
    assert policy.authenticate(authorization="Bearer admin-key-0123456789").name == "admin"
    assert policy.authenticate(authorization="Basic admin-key-0123456789").name == "admin"  # Reflect's form
    # Both headers: X-API-Key is tried first, as the scan did.
    both = policy.authenticate(authorization="Bearer admin-key-0123456789", api_key="reader-key-0123456789")
    assert both.name == "reader"  # X-API-Key first, as the scan tried it
    for wrong in ("reader-key-012345678", "reader-key-0123456789 x", ""):
        with pytest.raises(Unauthenticated):
            policy.authenticate(api_key=wrong)
    with pytest.raises(Unauthenticated):
        policy.authenticate(authorization="Bearer reader-key-0123456789x")


def test_basic_names_any_user_and_only_the_key_counts() -> None:
    policy = AuthPolicy(KEYS)
    for user in range(5):
        assert policy.authenticate(authorization=basic(f"user{user}", "admin-key-0123456789")).name == "admin"
        with pytest.raises(Unauthenticated):
            policy.authenticate(authorization=basic(f"user{user}", "admin-key-012345678"))


async def test_a_room_token_is_verified_at_every_call(backend: MemoryBackend, clock: FrozenClock) -> None:
    issuer = RoomTokenIssuer(SECRET, roles=ROLES, max_ttl_seconds=3600, default_ttl_seconds=600, clock=clock)
    policy = AuthPolicy(KEYS, tokens=issuer)
    token = await mint(RoomService(backend, clock=clock, tokens=issuer))  # 600 s
    assert policy.authenticate(authorization=f"Bearer {token}").name == "token:ann"
    clock.advance(3600)
    with pytest.raises(Unauthenticated):  # expired: verified again, never answered from a key's entry
        policy.authenticate(authorization=f"Bearer {token}")
