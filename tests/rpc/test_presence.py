"""Presence over gRPC: room-token streams make their users present until the call ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from grpclib.client import Channel
from grpclib.testing import ChannelFor
from room_gateway_plugins.memory import MemoryBackend

from gateway._gen.google.protobuf import Struct
from gateway._gen.roomgateway.v1 import (
    CreateRoomRequest,
    CreateRoomTokenRequest,
    GetPresenceRequest,
    ListenEventsRequest,
    Presence,
    Room,
    RoomServiceStub,
)
from gateway.auth.policy import AuthPolicy
from gateway.auth.tokens import RoomTokenIssuer
from gateway.core.models import ChangeKind
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.rpc.auth import install_auth
from gateway.rpc.server import build_handlers
from tests.conftest import ADMIN_KEY, FrozenClock

SECRET = "grpc-presence-token-secret-0123456789abcdef"


@pytest.fixture
def dispatcher(backend: MemoryBackend, clock: FrozenClock, policy: AuthPolicy) -> Dispatcher:
    issuer = RoomTokenIssuer(SECRET, roles={"guest": ["variables:read", "events:listen"]}, clock=clock)
    service = RoomService(backend, clock=clock, tokens=issuer)
    presence = PresenceRegistry(backend, clock=clock)
    return Dispatcher(service, AuthPolicy(policy.keys, tokens=issuer), presence=presence)


@pytest.fixture
async def channel(dispatcher: Dispatcher) -> AsyncIterator[Channel]:
    channel_for = ChannelFor(build_handlers(dispatcher))
    async with channel_for as channel:
        install_auth(channel_for._server, dispatcher.policy)
        yield channel


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def test_two_listeners_of_one_user_and_one_of_another(channel: Channel, backend: MemoryBackend) -> None:
    admin = RoomServiceStub(channel, metadata={"x-api-key": ADMIN_KEY})
    await admin.create_room(CreateRoomRequest(room=Room(room_id="r")))

    async def token(user: str) -> str:
        made = await admin.create_room_token(
            CreateRoomTokenRequest(
                room_id="r", user_name=user, role="guest", info=Struct.from_dict({"name": user.title()})
            )
        )
        return made.token

    async def listen(user_token: str) -> None:
        stub = RoomServiceStub(channel, metadata={"authorization": f"Bearer {user_token}"})
        async for _ in stub.listen_events(ListenEventsRequest(room_id="r", name="chat")):
            pass

    alice, bob = await token("alice"), await token("bob")
    tasks = [asyncio.create_task(listen(t)) for t in (alice, alice, bob)]

    async def presence() -> Presence:
        return await admin.get_presence(GetPresenceRequest(room_id="r"))

    async def members_left() -> list[str]:
        page = await backend.read_changes(
            "r", after_seq=0, limit=100, kinds=frozenset({ChangeKind.MEMBER_LEFT})
        )
        return [c.member.user_id for c in page.changes if c.member is not None]

    async def counted(users: int, connections: int) -> bool:
        got = await presence()
        return (got.num_users, got.num_connections) == (users, connections)

    try:
        await eventually(lambda: counted(2, 3))
        got = await presence()
        assert [(m.user_id, m.connections) for m in got.members] == [("alice", 2), ("bob", 1)]
        assert got.members[0].info is not None and got.members[0].info.to_dict() == {"name": "Alice"}
        expected: list[str] = []
        for task, leaver, (users, connections) in zip(
            tasks, [None, "alice", "bob"], [(2, 2), (1, 1), (0, 0)], strict=True
        ):
            task.cancel()  # the client goes away
            await eventually(lambda: counted(users, connections))  # noqa: B023 - awaited in the loop
            expected += [leaver] if leaver else []
            assert await members_left() == expected  # one MEMBER_LEFT per user's last connection
    finally:
        for task in tasks:
            task.cancel()
