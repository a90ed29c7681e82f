"""Room tokens: minting, verifying, roles, the subset rule, the ttl cap, extras, invalidation."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import jwt
import pytest
from pydantic import ValidationError
from room_gateway_plugins.memory import MemoryBackend

from gateway.auth.policy import AuthPolicy, Principal
from gateway.auth.tokens import AUDIENCE, ISSUER, LEEWAY_SECONDS, RoomTokenIssuer
from gateway.config import GatewayConfig
from gateway.core.service import INVALIDATIONS_ROOM, RoomService
from gateway.dispatch import Dispatcher
from gateway.errors import (
    Code,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from tests.conftest import FrozenClock

SECRET = "unit-room-token-secret-0123456789abcdef"
ROLES = {"moderator": ["*"], "guest": ["variables:read", "events:listen"], "host": ["room.self.mute", "*"]}
ADMIN = Principal("admin", frozenset({"*"}))
MINTER = Principal("minter", frozenset({"tokens:create", "variables:read", "variables:write"}))


@pytest.fixture
def issuer(clock: FrozenClock) -> RoomTokenIssuer:
    return RoomTokenIssuer(SECRET, roles=ROLES, max_ttl_seconds=3600, default_ttl_seconds=600, clock=clock)


@pytest.fixture
def tokens_service(backend: MemoryBackend, clock: FrozenClock, issuer: RoomTokenIssuer) -> RoomService:
    return RoomService(backend, clock=clock, tokens=issuer)


@pytest.fixture
def token_policy(policy: AuthPolicy, issuer: RoomTokenIssuer) -> AuthPolicy:
    return AuthPolicy(policy.keys, tokens=issuer)


@pytest.fixture
def token_dispatcher(tokens_service: RoomService, token_policy: AuthPolicy) -> Dispatcher:
    return Dispatcher(tokens_service, token_policy)


async def mint(service: RoomService, room_id: str = "r", caller: Principal = ADMIN, **request: object) -> str:
    request.setdefault("user_name", "ann")
    if "permissions" not in request:
        request.setdefault("role", "guest")
    made = await service.create_room_token(room_id, caller=caller, **request)  # type: ignore[arg-type]
    return made.token


def bearer(policy: AuthPolicy, token: str) -> Principal:
    return policy.authenticate(authorization=f"Bearer {token}")


def _payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


# -- minting and verifying -----------------------------------------------------------------------------------


async def test_a_token_names_its_room_user_permissions_and_times(
    tokens_service: RoomService, token_policy: AuthPolicy, clock: FrozenClock
) -> None:
    made = await tokens_service.create_room_token("r", "ann", "guest", caller=ADMIN)
    assert made.permissions == ["variables:read", "events:listen"]
    assert made.expire_time == datetime(2026, 1, 2, 3, 14, 5, tzinfo=UTC)  # the default 600 s
    claims = _payload(made.token)
    assert {k: claims[k] for k in ("iss", "aud", "sub", "room", "perms", "extras", "role")} == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ann",
        "room": "r",
        "perms": ["variables:read", "events:listen"],
        "extras": [],
        "role": "guest",
    }
    assert claims["iat_us"] == int(clock.now.timestamp()) * 1_000_000
    principal = bearer(token_policy, made.token)
    assert principal.name == "token:ann"
    assert principal.permissions == {"variables:read", "events:listen"}
    assert principal.token is not None and principal.token.room_id == "r"
    assert principal.may_access("r") and not principal.may_access("r2") and not principal.may_access("*")


async def test_token_ids_differ(tokens_service: RoomService) -> None:
    assert _payload(await mint(tokens_service))["jti"] != _payload(await mint(tokens_service))["jti"]


async def test_expired_after_its_ttl_and_the_leeway(
    tokens_service: RoomService, token_policy: AuthPolicy, clock: FrozenClock
) -> None:
    token = await mint(tokens_service, ttl_seconds=60)
    clock.advance(60 + LEEWAY_SECONDS - 1)
    bearer(token_policy, token)
    clock.advance(1)
    with pytest.raises(Unauthenticated, match="expired"):
        bearer(token_policy, token)


async def test_tampered_or_foreign_tokens_are_refused(
    tokens_service: RoomService, token_policy: AuthPolicy, clock: FrozenClock
) -> None:
    token = await mint(tokens_service)
    header, _, signature = token.split(".")
    claims = _payload(token)
    claims["perms"] = ["*"]
    widened = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    now = int(clock.now.timestamp())
    good = {**claims, "perms": ["variables:read"]}
    forged = [
        f"{header}.{widened}.{signature}",  # payload edited, signature kept
        jwt.encode(good, "another-secret-of-at-least-32-bytes!!", algorithm="HS256"),
        jwt.encode(good, None, algorithm="none"),  # unsigned
        jwt.encode({**good, "aud": "something-else"}, SECRET, algorithm="HS256"),
        jwt.encode({**good, "iss": "someone-else"}, SECRET, algorithm="HS256"),
        jwt.encode({**good, "perms": "variables:read"}, SECRET, algorithm="HS256"),  # wrong type
        jwt.encode({k: v for k, v in good.items() if k != "room"}, SECRET, algorithm="HS256"),
        jwt.encode({**good, "iat_us": (now + 3600) * 1_000_000}, SECRET, algorithm="HS256"),  # future
    ]
    for token in forged:
        with pytest.raises(Unauthenticated) as caught:
            bearer(token_policy, token)
        assert all(part not in caught.value.message for part in token.split(".") if part)


async def test_a_token_is_bound_to_its_room(
    tokens_service: RoomService, token_policy: AuthPolicy, token_dispatcher: Dispatcher
) -> None:
    await tokens_service.create_room({"room_id": "r"})
    await tokens_service.create_room({"room_id": "r2"})
    principal = bearer(token_policy, await mint(tokens_service, role="moderator"))
    await token_dispatcher.call("GetRoom", principal, {"room_id": "r"})
    for method, request in [
        ("GetRoom", {"room_id": "r2"}),
        ("GetRoom", {"room_id": "r*"}),  # a room id is never a pattern for a token
        ("ListRooms", {}),
        ("InvalidateConnections", {}),
        ("CreateRoom", {"room": {"room_id": "r2"}}),
    ]:
        with pytest.raises(PermissionDenied):
            await token_dispatcher.call(method, principal, request)


async def test_without_a_secret_tokens_are_not_configured(service: RoomService) -> None:
    with pytest.raises(FailedPrecondition, match="room tokens are not configured"):
        await service.create_room_token("r", "ann", "guest", caller=ADMIN)


def test_a_secret_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RoomTokenIssuer("x" * 31, roles=ROLES)
    with pytest.raises(ValidationError, match="32 bytes"):
        GatewayConfig.model_validate({"auth": {"room_tokens": {"secret": "short"}}})
    with pytest.raises(ValidationError, match="unknown permission"):
        GatewayConfig.model_validate({"auth": {"room_tokens": {"roles": {"r": ["rooms:raed"]}}}})
    config = GatewayConfig.model_validate({"auth": {"room_tokens": {"secret": SECRET}}})
    assert config.auth.room_tokens.secret is not None
    assert SECRET not in repr(RoomTokenIssuer(SECRET, roles=ROLES))


def test_a_token_is_not_accepted_where_tokens_are_not_configured(
    policy: AuthPolicy, issuer: RoomTokenIssuer
) -> None:
    token = jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="invalid credentials"):
        policy.authenticate(authorization=f"Bearer {token}")
    with pytest.raises(Unauthenticated):  # tokens only as Bearer
        AuthPolicy(policy.keys, tokens=issuer).authenticate(api_key=token)


# -- what a token may carry ----------------------------------------------------------------------------------


async def test_roles_and_unknown_roles(tokens_service: RoomService) -> None:
    made = await tokens_service.create_room_token("r", "ann", "moderator", caller=ADMIN)
    assert made.permissions == ["*"]
    with pytest.raises(InvalidArgument, match="unknown role"):
        await tokens_service.create_room_token("r", "ann", "owner", caller=ADMIN)
    with pytest.raises(InvalidArgument, match="role or permissions"):
        await tokens_service.create_room_token("r", "ann", caller=ADMIN)
    with pytest.raises(InvalidArgument, match="userName"):
        await tokens_service.create_room_token("r", "", "guest", caller=ADMIN)


async def test_a_caller_never_mints_more_than_it_holds(tokens_service: RoomService) -> None:
    made = await tokens_service.create_room_token(
        "r", "ann", permissions=["variables:read", "variables:write"], caller=MINTER
    )
    assert made.permissions == ["variables:read", "variables:write"]
    for role, permissions in [("", ["events:publish"]), ("", ["*"]), ("moderator", []), ("guest", [])]:
        # guest holds events:listen, which MINTER does not
        with pytest.raises(PermissionDenied, match="cannot grant"):
            await tokens_service.create_room_token("r", "ann", role, permissions, caller=MINTER)


async def test_a_token_minted_by_a_token_is_no_wider_and_no_longer(
    tokens_service: RoomService, token_policy: AuthPolicy, clock: FrozenClock
) -> None:
    parent = bearer(
        token_policy,
        await mint(tokens_service, permissions=["tokens:create", "variables:read"], ttl_seconds=120),
    )
    child = await tokens_service.create_room_token(
        "r", "bob", permissions=["variables:read"], ttl_seconds=3600, caller=parent
    )
    assert parent.expire_time is not None and child.expire_time == parent.expire_time
    with pytest.raises(PermissionDenied):
        await tokens_service.create_room_token("r", "bob", "guest", caller=parent)


async def test_extras_are_returned_and_carried_but_never_enforced(
    tokens_service: RoomService, token_policy: AuthPolicy
) -> None:
    made = await tokens_service.create_room_token(
        "r", "ann", "guest", ["room.self.audio_mute", "variables:read", "x:y"], caller=ADMIN
    )
    assert made.permissions == ["variables:read", "events:listen", "room.self.audio_mute", "x:y"]
    assert _payload(made.token)["extras"] == ["room.self.audio_mute", "x:y"]
    principal = bearer(token_policy, made.token)
    assert principal.permissions == {"variables:read", "events:listen"}
    assert principal.token is not None and principal.token.extras == ("room.self.audio_mute", "x:y")
    # A role may carry extras too; a name in one of our namespaces must be a permission.
    host = await tokens_service.create_room_token("r", "ann", "host", caller=ADMIN)
    assert host.permissions == ["*", "room.self.mute"]
    for bad in (["variables:wirte"], ["rooms"], [""], ["a\nb"], ["x" * 129]):
        with pytest.raises(InvalidArgument):
            await tokens_service.create_room_token("r", "ann", permissions=bad, caller=ADMIN)


async def test_ttl_default_cap_and_sign(tokens_service: RoomService, clock: FrozenClock) -> None:
    def lifetime(made_expire: datetime) -> float:
        return (made_expire - clock.now).total_seconds()

    assert (
        lifetime((await tokens_service.create_room_token("r", "a", "guest", caller=ADMIN)).expire_time) == 600
    )
    capped = await tokens_service.create_room_token("r", "a", "guest", ttl_seconds=10**6, caller=ADMIN)
    assert lifetime(capped.expire_time) == 3600
    short = await tokens_service.create_room_token("r", "a", "guest", ttl_seconds=30, caller=ADMIN)
    assert lifetime(short.expire_time) == 30
    with pytest.raises(InvalidArgument, match="ttlSeconds"):
        await tokens_service.create_room_token("r", "a", "guest", ttl_seconds=-1, caller=ADMIN)


async def test_a_closed_room_refuses_new_tokens_but_keeps_its_old_ones(
    tokens_service: RoomService, token_policy: AuthPolicy, token_dispatcher: Dispatcher
) -> None:
    await tokens_service.create_room({"room_id": "r"})
    old = bearer(token_policy, await mint(tokens_service))
    await tokens_service.close_room("r")
    with pytest.raises(FailedPrecondition, match="no new tokens"):
        await mint(tokens_service)
    assert (await token_dispatcher.call("GetRoomContents", old, {"room_id": "r"})).contents == {}


# -- invalidation --------------------------------------------------------------------------------------------


async def test_invalidate_connections_rejects_older_tokens_of_that_room(
    tokens_service: RoomService, token_policy: AuthPolicy, token_dispatcher: Dispatcher, clock: FrozenClock
) -> None:
    for room_id in ("r", "r2"):
        await tokens_service.create_room({"room_id": room_id})
    before = bearer(token_policy, await mint(tokens_service, "r"))
    elsewhere = bearer(token_policy, await mint(tokens_service, "r2"))
    clock.advance(0.000001)  # sub-second precision matters
    await tokens_service.invalidate_connections("r")
    with pytest.raises(Unauthenticated, match="invalidated") as caught:
        await token_dispatcher.call("GetRoomContents", before, {"room_id": "r"})
    assert caught.value.code is Code.UNAUTHENTICATED
    await token_dispatcher.call("GetRoomContents", elsewhere, {"room_id": "r2"})
    clock.advance(0.000001)
    after = bearer(token_policy, await mint(tokens_service, "r"))
    await token_dispatcher.call("GetRoomContents", after, {"room_id": "r"})


async def test_the_global_invalidation_rejects_every_older_token(
    tokens_service: RoomService, token_policy: AuthPolicy, token_dispatcher: Dispatcher, clock: FrozenClock
) -> None:
    await tokens_service.create_room({"room_id": "r"})
    before = bearer(token_policy, await mint(tokens_service, "r"))
    clock.advance(1)
    await tokens_service.invalidate_connections("")
    with pytest.raises(Unauthenticated):
        await token_dispatcher.call("GetRoomContents", before, {"room_id": "r"})
    clock.advance(1)
    await token_dispatcher.call(
        "GetRoomContents", bearer(token_policy, await mint(tokens_service)), {"room_id": "r"}
    )


async def test_invalidation_is_shared_through_the_backend_and_never_goes_back(
    backend: MemoryBackend, clock: FrozenClock, issuer: RoomTokenIssuer, policy: AuthPolicy
) -> None:
    # Two gateway instances over one backend: what one invalidates, the other refuses.
    one = RoomService(backend, clock=clock, tokens=issuer)
    two = Dispatcher(RoomService(backend, clock=clock, tokens=issuer), AuthPolicy(policy.keys, tokens=issuer))
    await one.create_room({"room_id": "r"})
    token = bearer(two.policy, await mint(one, "r"))
    clock.advance(5)
    await one.invalidate_connections("r")
    later = clock.now
    clock.now = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)  # a late write with an older time (clock skew)
    await one.invalidate_connections("r")
    stored = await backend.get_variable(INVALIDATIONS_ROOM, "r")
    assert stored is not None and stored.value == int(later.timestamp()) * 1_000_000
    with pytest.raises(Unauthenticated):
        await two.call("GetRoomContents", token, {"room_id": "r"})


async def test_the_invalidations_room_is_out_of_clients_reach(tokens_service: RoomService) -> None:
    await tokens_service.create_room({"room_id": "r"})
    await tokens_service.invalidate_connections("r")
    await tokens_service.invalidate_connections("")
    listed = await tokens_service.list_rooms()
    assert [room.room_id for room in listed.results] == ["r"]
    assert (await tokens_service.get_room_contents("r")).contents == {}
    with pytest.raises(GatewayError) as caught:
        await tokens_service.get_room_contents(INVALIDATIONS_ROOM)
    assert caught.value.code is Code.INVALID_ARGUMENT
