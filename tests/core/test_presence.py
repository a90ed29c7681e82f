"""Presence on one instance: the registry, the dispatcher's room-token streams, heartbeats and expiry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.auth.policy import AuthPolicy, Principal
from gateway.auth.tokens import MAX_INFO_BYTES, RoomTokenIssuer
from gateway.config import GatewayConfig
from gateway.core.models import ChangeKind, Member, Room
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from gateway.instance import INSTANCE_ID
from tests.conftest import FrozenClock

SECRET = "presence-room-token-secret-0123456789abcdef"
ADMIN = Principal("admin", frozenset({"*"}))
MEMBER_KINDS = frozenset({ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT})


@pytest.fixture
def issuer(clock: FrozenClock) -> RoomTokenIssuer:
    return RoomTokenIssuer(SECRET, roles={"guest": ["variables:read", "events:listen"]}, clock=clock)


@pytest.fixture
def presence(backend: MemoryBackend, clock: FrozenClock) -> PresenceRegistry:
    return PresenceRegistry(backend, clock=clock)


@pytest.fixture
def token_service(backend: MemoryBackend, clock: FrozenClock, issuer: RoomTokenIssuer) -> RoomService:
    return RoomService(backend, clock=clock, tokens=issuer)


@pytest.fixture
def token_dispatcher(
    token_service: RoomService, policy: AuthPolicy, issuer: RoomTokenIssuer, presence: PresenceRegistry
) -> Dispatcher:
    return Dispatcher(token_service, AuthPolicy(policy.keys, tokens=issuer), presence=presence)


async def token_of(dispatcher: Dispatcher, user: str, room_id: str = "r", **request: Any) -> Principal:
    made = await dispatcher.service.create_room_token(room_id, user, "guest", caller=ADMIN, **request)
    return dispatcher.policy.authenticate(authorization=f"Bearer {made.token}")


async def member_log(backend: MemoryBackend, room_id: str = "r") -> list[tuple[ChangeKind, str]]:
    page = await backend.read_changes(room_id, after_seq=0, limit=1000, kinds=MEMBER_KINDS)
    return [(c.kind, c.member.user_id if c.member else "") for c in page.changes]


@pytest.fixture
async def room(token_service: RoomService) -> AsyncIterator[str]:
    await token_service.create_room({"room_id": "r"})
    yield "r"


JOINED, LEFT = ChangeKind.MEMBER_JOINED, ChangeKind.MEMBER_LEFT


# -- the acceptance scenario, on the dispatcher (both transports go through it) ------------------------------


async def test_two_tabs_of_one_user_and_one_of_another(
    token_dispatcher: Dispatcher, backend: MemoryBackend, presence: PresenceRegistry, room: str
) -> None:
    alice, bob = await token_of(token_dispatcher, "alice"), await token_of(token_dispatcher, "bob")
    request = {"room_id": room, "name": "chat"}
    tabs = [await token_dispatcher.call("ListenEvents", alice, dict(request)) for _ in range(2)]
    other = await token_dispatcher.call("ListenVariable", bob, {"room_id": room, "name": "v"})
    got = await token_dispatcher.service.get_presence(room)
    assert (got.num_users, got.num_connections) == (2, 3)
    assert [(m.user_id, m.connections) for m in got.members] == [("alice", 2), ("bob", 1)]
    assert (await token_dispatcher.service.get_room(room)).num_users == 2
    assert await member_log(backend) == [(JOINED, "alice"), (JOINED, "bob")]

    await tabs[0].aclose()
    await presence.drain()
    assert await member_log(backend) == [(JOINED, "alice"), (JOINED, "bob")]  # alice has a tab left
    await tabs[1].aclose()
    await presence.drain()
    assert await member_log(backend) == [(JOINED, "alice"), (JOINED, "bob"), (LEFT, "alice")]
    await other.aclose()
    await other.aclose()  # a second close (the transports may close twice) leaves nothing more
    await presence.drain()
    assert await member_log(backend) == [(JOINED, "alice"), (JOINED, "bob"), (LEFT, "alice"), (LEFT, "bob")]
    got = await token_dispatcher.service.get_presence(room)
    assert (got.members, got.num_users, got.num_connections) == ([], 0, 0)
    assert presence.connections == 0


async def test_info_from_the_token_is_shown_in_presence(
    token_dispatcher: Dispatcher, room: str, clock: FrozenClock
) -> None:
    alice = await token_of(token_dispatcher, "alice", info={"name": "Alice", "avatar": "a.png"})
    stream = await token_dispatcher.call("ListenEvents", alice, {"room_id": room, "name": "e"})
    try:
        (member,) = (await token_dispatcher.service.get_presence(room)).members
        assert member == Member("alice", 1, {"name": "Alice", "avatar": "a.png"}, clock.now)
    finally:
        await stream.aclose()


async def test_api_key_streams_make_no_one_present(token_dispatcher: Dispatcher, room: str) -> None:
    stream = await token_dispatcher.call("ListenEvents", ADMIN, {"room_id": room, "name": "e"})
    try:
        assert (await token_dispatcher.service.get_presence(room)).num_users == 0
    finally:
        await stream.aclose()


async def test_unary_calls_with_a_token_make_no_one_present(token_dispatcher: Dispatcher, room: str) -> None:
    alice = await token_of(token_dispatcher, "alice")
    await token_dispatcher.call("GetRoomContents", alice, {"room_id": room})
    assert (await token_dispatcher.service.get_presence(room)).num_users == 0


async def test_streams_ended_by_the_room_or_shutdown_leave(
    token_dispatcher: Dispatcher, backend: MemoryBackend, presence: PresenceRegistry, room: str
) -> None:
    """However the stream ends, the transport closes it, and closing leaves."""
    alice = await token_of(token_dispatcher, "alice")
    stream = await token_dispatcher.call("ListenEvents", alice, {"room_id": room, "name": "e"})
    backend.hub.close_all(Unavailable("server shutting down; reconnect"))  # what the runner does
    with pytest.raises(Unavailable):
        await asyncio.wait_for(stream.__anext__(), 2)
    await stream.aclose()
    await presence.drain()
    assert await member_log(backend) == [(JOINED, "alice"), (LEFT, "alice")]

    stream = await token_dispatcher.call("ListenEvents", alice, {"room_id": room, "name": "e"})
    await token_dispatcher.service.close_room(room)
    await token_dispatcher.service.delete_room(room)
    with pytest.raises(NotFound):
        await asyncio.wait_for(stream.__anext__(), 2)
    await stream.aclose()
    await presence.drain()
    assert (await backend.get_presence(room)).num_users == 0
    assert presence.connections == 0


async def test_a_failed_join_closes_the_stream_and_counts_nothing(
    token_dispatcher: Dispatcher, backend: MemoryBackend, presence: PresenceRegistry, room: str
) -> None:
    alice = await token_of(token_dispatcher, "alice")

    async def refuse(*args: object, **kwargs: object) -> None:
        raise Unavailable("backend unavailable (ConnectionError)")

    backend.presence_join = refuse  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await token_dispatcher.call("ListenEvents", alice, {"room_id": room, "name": "e"})
    await presence.drain()
    assert presence.connections == 0
    assert len(backend.hub) == 0  # the stream's subscription went with it


async def test_a_leave_right_after_the_join_is_written_after_it(
    backend: MemoryBackend, presence: PresenceRegistry, room: str, token_dispatcher: Dispatcher
) -> None:
    alice = await token_of(token_dispatcher, "alice")
    streams = [
        await token_dispatcher.call("ListenEvents", alice, {"room_id": room, "name": "e"}) for _ in range(5)
    ]
    for stream in streams:
        await stream.aclose()
    await presence.drain()
    assert (await backend.get_presence(room)).num_users == 0
    assert await member_log(backend) == [(JOINED, "alice"), (LEFT, "alice")]


# -- the heartbeat -------------------------------------------------------------------------------------------


async def test_a_dead_instance_leaves_at_its_deadline_not_a_heartbeat_later(backend: MemoryBackend) -> None:
    """Real time: the survivor's reaper expires the silent instance just after its deadline (the dead
    instance's last heartbeat plus the timeout), not at the survivor's next heartbeat after it.

    Timeout 3 s, heartbeats every 1 s; the dead instance beat 0.5 s before the survivor started, so the
    survivor's heartbeats fall at 0.5, 1.5, 2.5, 3.5 s: expiry by heartbeat would come 0.5 s late."""
    await backend.create_room(_room("r"))
    timeout = 3.0
    alive = PresenceRegistry(backend, timeout_seconds=timeout, instance="alive")
    loop = asyncio.get_running_loop()
    beat_at = loop.time()
    await backend.presence_heartbeat("dead", now=datetime.now(UTC), ttl_seconds=timeout)
    await backend.presence_join("r", Member("ghost"), instance="dead", now=datetime.now(UTC))
    await asyncio.sleep(0.5)
    await alive.start()
    try:
        while (await backend.get_presence("r")).num_users:
            assert loop.time() - beat_at < timeout + 0.3, "not expired at its deadline"
            await asyncio.sleep(0.01)
        assert loop.time() - beat_at >= timeout  # and not before
        assert await member_log(backend) == [(JOINED, "ghost"), (LEFT, "ghost")]
    finally:
        await alive.stop()


async def test_the_reaper_sleeps_until_the_earliest_deadline(backend: MemoryBackend) -> None:
    """Idle, expiry costs one store call per heartbeat interval, whatever the connections."""
    registry = PresenceRegistry(backend, timeout_seconds=0.3, instance="x")
    calls = 0
    real = backend.presence_expire

    async def counting(*, now: datetime, ttl_seconds: float) -> datetime | None:
        nonlocal calls
        calls += 1
        return await real(now=now, ttl_seconds=ttl_seconds)

    backend.presence_expire = counting  # type: ignore[method-assign]
    await registry.start()
    await asyncio.sleep(1.0)  # 10 intervals
    await registry.stop()
    assert 3 <= calls <= 12, calls  # one per interval (fewer on a loaded machine), never a busy loop


async def test_heartbeats_keep_a_living_instance_counted(backend: MemoryBackend) -> None:
    await backend.create_room(_room("r"))
    one = PresenceRegistry(backend, timeout_seconds=0.3, instance="one")
    two = PresenceRegistry(backend, timeout_seconds=0.3, instance="two")
    await one.start()
    await two.start()
    try:
        await backend.presence_join("r", Member("alice"), instance="one", now=datetime.now(UTC))
        await asyncio.sleep(0.8)  # several timeouts: each instance's beats keep it alive
        assert (await backend.get_presence("r")).num_users == 1
    finally:
        await one.stop()
        await two.stop()
    assert one.interval_seconds == pytest.approx(0.1)


async def test_stop_ends_the_heartbeat(backend: MemoryBackend, clock: FrozenClock) -> None:
    registry = PresenceRegistry(backend, timeout_seconds=0.03, instance="x", clock=clock)
    beats = 0
    real = backend.presence_heartbeat

    async def counting(instance: str, *, now: datetime, ttl_seconds: float) -> None:
        nonlocal beats
        beats += 1
        await real(instance, now=now, ttl_seconds=ttl_seconds)

    backend.presence_heartbeat = counting  # type: ignore[method-assign]
    await registry.start()
    await asyncio.sleep(0.1)
    await registry.stop()
    after_stop = beats
    await asyncio.sleep(0.05)
    assert after_stop >= 3 and beats == after_stop


# -- rejoin after a wrong expiry --------------------------------------------------------------------------


async def test_an_instance_the_store_expired_rejoins_its_live_connections(
    token_dispatcher: Dispatcher,
    backend: MemoryBackend,
    presence: PresenceRegistry,
    room: str,
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """This instance was paused past the timeout and a survivor expired it: its next heartbeat learns it,
    and what is open then is counted again — not what closed meanwhile, and what opened meanwhile too."""
    alice, bob, carol = [await token_of(token_dispatcher, user) for user in ("alice", "bob", "carol")]
    listen = {"room_id": room, "name": "e"}
    tabs = [await token_dispatcher.call("ListenEvents", alice, dict(listen)) for _ in range(2)]
    other = await token_dispatcher.call("ListenEvents", bob, dict(listen))
    clock.advance(presence.timeout_seconds + 1)
    await backend.presence_expire(now=clock.now, ttl_seconds=presence.timeout_seconds)  # a survivor's
    assert (await backend.get_presence(room)).num_users == 0
    await tabs[0].aclose()  # while expired: the leave finds nothing to drop, the join counts nothing
    late = await token_dispatcher.call("ListenEvents", carol, dict(listen))
    await presence.drain()
    assert (await backend.get_presence(room)).num_users == 0

    await presence.beat()
    await presence.drain()
    got = await backend.get_presence(room)
    assert [(m.user_id, m.connections) for m in got.members] == [("alice", 1), ("bob", 1), ("carol", 1)]
    log = await member_log(backend)
    assert log[:4] == [(JOINED, "alice"), (JOINED, "bob"), (LEFT, "alice"), (LEFT, "bob")]
    assert sorted(log[4:]) == sorted([(JOINED, "alice"), (JOINED, "bob"), (JOINED, "carol")])
    assert "rejoining 3 connections" in caplog.text
    await presence.beat()  # alive now: nothing more
    await presence.drain()
    assert len(await member_log(backend)) == 7
    for stream in (tabs[1], other, late):
        await stream.aclose()
    await presence.drain()
    assert (await backend.get_presence(room)).num_users == 0
    assert len(await member_log(backend)) == 10


async def test_a_failed_rejoin_is_tried_again_on_the_next_heartbeat(
    token_dispatcher: Dispatcher,
    backend: MemoryBackend,
    presence: PresenceRegistry,
    room: str,
    clock: FrozenClock,
) -> None:
    alice = await token_of(token_dispatcher, "alice")
    stream = await token_dispatcher.call("ListenEvents", alice, {"room_id": room, "name": "e"})
    clock.advance(presence.timeout_seconds + 1)
    await backend.presence_expire(now=clock.now, ttl_seconds=presence.timeout_seconds)
    real = backend.presence_rejoin

    async def refuse(*args: object, **kwargs: object) -> None:
        raise Unavailable("backend unavailable (ConnectionError)")

    backend.presence_rejoin = refuse  # type: ignore[method-assign]
    await presence.beat()  # expired: rejoins, and the rejoin fails
    await presence.drain()
    assert (await backend.get_presence(room)).num_users == 0
    backend.presence_rejoin = real  # type: ignore[method-assign]
    await presence.beat()  # the store says alive (that beat made it so); the rejoin is still owed
    await presence.drain()
    assert (await backend.get_presence(room)).num_users == 1
    await stream.aclose()


async def test_after_a_long_store_outage_expiry_waits_for_the_others_to_beat(
    backend: MemoryBackend, clock: FrozenClock
) -> None:
    """The store was unreachable for longer than the timeout: every instance is past its deadline, though
    alive. The first one back does not expire the others before they could beat again."""
    await backend.create_room(_room("r"))
    first = PresenceRegistry(backend, timeout_seconds=30, instance="first", clock=clock)
    await first.beat()
    for other in ("other", "dead"):
        await backend.presence_heartbeat(other, now=clock.now, ttl_seconds=30)
        await backend.presence_join("r", Member(other), instance=other, now=clock.now)
    clock.advance(40)  # no heartbeat got through meanwhile
    await first.beat()
    held = clock.now + timedelta(seconds=30)
    assert await first.expire() == held  # expires nobody yet
    clock.advance(5)
    assert await backend.presence_heartbeat("other", now=clock.now, ttl_seconds=30)  # never expired
    assert await first.expire() == held
    for _ in range(3):  # regular heartbeats: no new hold
        await first.beat()
        await backend.presence_heartbeat("other", now=clock.now, ttl_seconds=30)
        clock.advance(first.interval_seconds)
    assert clock.now > held  # past the hold, and past the deadline of the one that stayed silent
    await first.expire()
    assert [m.user_id for m in (await backend.get_presence("r")).members] == ["other"]


async def test_a_failed_leave_is_settled_on_the_next_heartbeat(
    token_dispatcher: Dispatcher, backend: MemoryBackend, presence: PresenceRegistry, room: str
) -> None:
    """A leave that failed (the store was away) leaves the user present in the store though gone: the next
    heartbeat sets this instance's count of them to what is open, 0 here."""
    alice = await token_of(token_dispatcher, "alice")
    tabs = [
        await token_dispatcher.call("ListenEvents", alice, {"room_id": room, "name": "e"}) for _ in range(2)
    ]
    real = backend.presence_leave

    async def refuse(*args: object, **kwargs: object) -> None:
        raise Unavailable("backend unavailable (ConnectionError)")

    backend.presence_leave = refuse  # type: ignore[method-assign]
    for tab in tabs:
        await tab.aclose()
    await presence.drain()
    assert (await backend.get_presence(room)).num_connections == 2  # the store did not hear of it
    backend.presence_leave = real  # type: ignore[method-assign]
    await presence.beat()
    await presence.drain()
    assert (await backend.get_presence(room)).num_users == 0
    assert await member_log(backend) == [(JOINED, "alice"), (LEFT, "alice")]


def test_the_instance_id_is_one_uuid_per_process() -> None:
    assert uuid.UUID(INSTANCE_ID).version == 4  # the one id /v1/info shows too (gateway.instance)
    assert PresenceRegistry(MemoryBackend()).instance == INSTANCE_ID
    with pytest.raises(ValueError):
        PresenceRegistry(MemoryBackend(), timeout_seconds=0)


def test_presence_config_defaults_to_30_seconds() -> None:
    assert GatewayConfig().presence.timeout_seconds == 30
    assert GatewayConfig.model_validate({"presence": {"timeout_seconds": 3}}).presence.timeout_seconds == 3
    with pytest.raises(ValueError):
        GatewayConfig.model_validate({"presence": {"timeout_seconds": 0}})


# -- CreateRoomToken info ------------------------------------------------------------------------------------


async def test_token_info_must_be_a_small_object(token_service: RoomService) -> None:
    with pytest.raises(InvalidArgument, match="object"):
        await token_service.create_room_token("r", "ann", "guest", info=["no"], caller=ADMIN)  # type: ignore[arg-type]
    big = {"x": "y" * MAX_INFO_BYTES}
    with pytest.raises(InvalidArgument, match="1024"):
        await token_service.create_room_token("r", "ann", "guest", info=big, caller=ADMIN)
    fits = {"x": "y" * (MAX_INFO_BYTES - len('{"x":""}'))}
    await token_service.create_room_token("r", "ann", "guest", info=fits, caller=ADMIN)


async def test_token_info_is_carried_and_absent_when_empty(
    token_service: RoomService, issuer: RoomTokenIssuer
) -> None:
    made = await token_service.create_room_token("r", "ann", "guest", info={"n": 1}, caller=ADMIN)
    assert issuer.verify(made.token).info == {"n": 1}
    plain = await token_service.create_room_token("r", "ann", "guest", caller=ADMIN)
    assert issuer.verify(plain.token).info == {}
    assert "info" not in plain.token.split(".")[1]  # no claim at all (base64 of the payload)


async def test_room_tokens_still_need_a_secret(service: RoomService) -> None:
    with pytest.raises(FailedPrecondition):
        await service.create_room_token("r", "ann", "guest", info={"n": 1}, caller=ADMIN)


# -- num_users, min_users, GetPresence -----------------------------------------------------------------------


async def test_list_rooms_counts_users_and_filters_by_min_users(
    service: RoomService, backend: MemoryBackend
) -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    await backend.presence_heartbeat("i", now=now, ttl_seconds=30)
    for index in range(12):
        await service.create_room({"room_id": f"room-{index:02}"})
        for user in range(index % 4):
            await backend.presence_join(f"room-{index:02}", Member(f"u{user}"), instance="i", now=now)
    listed = await service.list_rooms(max_results=100)
    assert [r.num_users for r in listed.results] == [index % 4 for index in range(12)]

    busy = await service.list_rooms(min_users=2, max_results=2)
    assert [(r.room_id, r.num_users) for r in busy.results] == [("room-02", 2), ("room-03", 3)]
    assert busy.more
    rest = await service.list_rooms(min_users=2, start_after_key="room-03", max_results=100)
    assert [r.room_id for r in rest.results] == ["room-06", "room-07", "room-10", "room-11"]
    assert not rest.more
    named = await service.list_rooms(room_id=["room-01", "room-03"], min_users=3)
    assert [r.room_id for r in named.results] == ["room-03"]
    limited = Principal("k", frozenset({"*"}), rooms=("room-1*",))
    mine = await service.list_rooms(min_users=1, caller=limited)
    assert [r.room_id for r in mine.results] == ["room-10", "room-11"]
    with pytest.raises(InvalidArgument):
        await service.list_rooms(min_users=-1)


async def test_get_presence_of_missing_and_deleted_rooms(
    service: RoomService, backend: MemoryBackend
) -> None:
    assert (await service.get_presence("not-yet")).num_users == 0  # rooms are implicit by default
    with pytest.raises(NotFound):
        await RoomService(backend, auto_create_rooms=False).get_presence("not-yet")
    await service.create_room({"room_id": "gone"})
    await service.close_room("gone")
    await service.delete_room("gone")
    with pytest.raises(NotFound):
        await service.get_presence("gone")
    assert (await service.get_room("gone")).num_users == 0


def _room(room_id: str) -> Room:
    now = datetime.now(UTC)
    return Room(room_id=room_id, create_time=now, update_time=now)
