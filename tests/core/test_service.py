"""RoomService rules beyond the backend contract: validation, pagination, partial updates, streams."""

from __future__ import annotations

import asyncio

import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.core.hub import LocalHub, Topic
from gateway.core.models import Change, ChangeKind, Event, Room, RoomStatus, Variable
from gateway.core.service import RoomService
from gateway.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, Unavailable


async def test_create_room_validates_input(service: RoomService) -> None:
    for bad in ({}, {"room_id": ""}, {"room_id": "x" * 513}, {"room_id": "a\nb"}):
        with pytest.raises(InvalidArgument):
            await service.create_room(bad)
    with pytest.raises(InvalidArgument, match="jurisdiction"):
        await service.create_room({"room_id": "r", "jurisdiction": "us"})
    with pytest.raises(InvalidArgument, match="settings"):
        await service.create_room({"room_id": "r", "settings": {"big": "x" * 17000}})
    room = await service.create_room({"room_id": "x" * 512, "status": "CLOSED", "settings": {"size": 3}})
    assert room.status is RoomStatus.OPEN  # output-only fields are ignored on input
    assert room.settings == {"size": 3}


async def test_room_ids_may_be_urls(service: RoomService) -> None:
    url = "https://play.example.com/_/global/maps.example.com/office.tmj"
    await service.set_variable(url, "door", "open")
    assert (await service.get_variable(url, "door")).value == "open"


async def test_variable_names_are_checked(service: RoomService) -> None:
    for bad in ("", "a/b", "x" * 257, "tab\there"):
        with pytest.raises(InvalidArgument):
            await service.set_variable("r", bad, 1)
    with pytest.raises(InvalidArgument, match="value is required"):
        await service.set_variable("r", "x")


async def test_list_rooms_pagination(service: RoomService) -> None:
    for i in range(7):
        await service.create_room({"room_id": f"room-{i}"})
    page = await service.list_rooms(max_results=3)
    assert [r.room_id for r in page.results] == ["room-0", "room-1", "room-2"]
    assert page.num_results == 3 and page.more
    page = await service.list_rooms(start_after_key="room-2", max_results=3)
    assert [r.room_id for r in page.results] == ["room-3", "room-4", "room-5"] and page.more
    page = await service.list_rooms(start_key="room-5", max_results=3)
    assert [r.room_id for r in page.results] == ["room-5", "room-6"] and not page.more
    page = await service.list_rooms(room_id=["room-6", "nope", "room-1"])
    assert [r.room_id for r in page.results] == ["room-1", "room-6"] and not page.more
    page = await service.list_rooms(room_id=["room-6", "room-1"], max_results=1)
    assert [r.room_id for r in page.results] == ["room-1"] and page.more
    with pytest.raises(InvalidArgument, match="mutually exclusive"):
        await service.list_rooms(start_key="a", start_after_key="b")
    with pytest.raises(InvalidArgument):
        await service.list_rooms(start_key="a", room_id=["b"])
    with pytest.raises(InvalidArgument):
        await service.list_rooms(max_results=-1)


async def test_list_rooms_caps_max_results(service: RoomService) -> None:
    for i in range(1002):
        await service.create_room({"room_id": f"r{i:05}"})
    assert (await service.list_rooms()).num_results == 100
    page = await service.list_rooms(max_results=5000)
    assert page.num_results == 1000 and page.more


async def test_update_room_is_partial(service: RoomService, clock) -> None:  # type: ignore[no-untyped-def]
    await service.create_room({"room_id": "r", "display_name": "A", "description": "d", "settings": {"s": 1}})
    clock.advance()
    room = await service.update_room({"room_id": "r", "display_name": "B"}, ["display_name"])
    assert (room.display_name, room.description, room.settings) == ("B", "d", {"s": 1})
    assert room.update_time > room.create_time
    room = await service.update_room({"room_id": "r", "description": "e"})  # no mask: the fields set
    assert (room.display_name, room.description) == ("B", "e")
    room = await service.update_room({"room_id": "r"}, ["settings"])  # masked and absent: cleared
    assert room.settings == {}
    with pytest.raises(InvalidArgument, match="unknown field"):
        await service.update_room({"room_id": "r"}, ["nope"])
    with pytest.raises(NotFound):
        await service.update_room({"room_id": "missing", "display_name": "x"})
    await service.close_room("r")
    with pytest.raises(FailedPrecondition):
        await service.update_room({"room_id": "r", "display_name": "C"})


async def test_close_and_delete_preconditions(service: RoomService) -> None:
    with pytest.raises(NotFound):
        await service.close_room("missing")
    await service.create_room({"room_id": "r"})
    await service.close_room("r")
    with pytest.raises(FailedPrecondition):
        await service.close_room("r")
    deleted = await service.delete_room("r")
    assert deleted.status is RoomStatus.DELETED
    for call in (service.close_room, service.delete_room, service.get_room_contents):
        with pytest.raises(NotFound, match="was deleted"):
            await call("r")


async def test_auto_create_off(backend: MemoryBackend) -> None:
    service = RoomService(backend, auto_create_rooms=False)
    with pytest.raises(NotFound, match="does not exist"):
        await service.set_variable("r", "x", 1)
    with pytest.raises(NotFound):
        await service.publish_event("r", "e")
    with pytest.raises(NotFound):
        await service.listen_events("r", "e")
    await service.create_room({"room_id": "r"})
    assert (await service.set_variable("r", "x", 1)).version == 1


async def test_get_variable_says_what_is_missing(service: RoomService) -> None:
    with pytest.raises(NotFound, match="room 'r' does not exist"):
        await service.get_variable("r", "x")
    await service.create_room({"room_id": "r"})
    with pytest.raises(NotFound, match="variable 'x' is not set"):
        await service.get_variable("r", "x")


async def test_expected_version(service: RoomService) -> None:
    assert (await service.set_variable("r", "x", 1, expected_version=0)).version == 1
    with pytest.raises(Aborted, match="version 1"):
        await service.set_variable("r", "x", 2, expected_version=0)
    with pytest.raises(InvalidArgument):
        await service.set_variable("r", "x", 2, expected_version=-1)


async def test_closed_room_keeps_streams_and_refuses_new_ones(service: RoomService) -> None:
    await service.set_variable("r", "x", 1)
    stream = await service.listen_variable("r", "x")
    events = await service.listen_events("r", "e")
    try:
        assert (await stream.__anext__()).value == 1
        await service.close_room("r")
        with pytest.raises(FailedPrecondition, match="no new streams"):
            await service.listen_variable("r", "x")
        with pytest.raises(FailedPrecondition):
            await service.listen_events("r", "e")
        await service.invalidate_connections("r")
        with pytest.raises(Unavailable, match="invalidated"):
            await asyncio.wait_for(stream.__anext__(), 1)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(events.__anext__(), 1)
    finally:
        await stream.aclose()
        await events.aclose()


async def test_invalidate_all_rooms(service: RoomService) -> None:
    a = await service.listen_events("a", "e")
    b = await service.listen_variable("b", "x")
    try:
        await service.invalidate_connections()
        for stream in (a, b):
            with pytest.raises(Unavailable):
                await asyncio.wait_for(stream.__anext__(), 1)
    finally:
        await a.aclose()
        await b.aclose()


async def test_events_are_delivered(service: RoomService) -> None:
    stream = await service.listen_events("r", "chat")
    try:
        sent = await service.publish_event("r", "chat", {"text": "hi"})
        assert await asyncio.wait_for(stream.__anext__(), 1) == sent
    finally:
        await stream.aclose()


async def test_streams_leave_nothing_behind(service: RoomService, backend: MemoryBackend) -> None:
    never_read = await service.listen_variable("r", "x")
    read = await service.listen_events("r", "e")
    assert len(backend.hub) == 2
    task = asyncio.create_task(read.__anext__())
    await asyncio.sleep(0)
    task.cancel()
    await never_read.aclose()
    await read.aclose()
    assert len(backend.hub) == 0


async def test_shutdown_ends_streams_with_unavailable(backend: MemoryBackend) -> None:
    service = RoomService(backend)
    stream = await service.listen_variable("r", "x")
    await backend.close()
    with pytest.raises(Unavailable, match="shutting down"):
        await asyncio.wait_for(stream.__anext__(), 1)
    await stream.aclose()


async def test_slow_listener_is_ended_not_buffered_forever() -> None:
    hub = LocalHub(queue_size=3)
    sub = hub.subscribe(Topic("event", "r", "e"))
    for i in range(10):
        hub.deliver("r", Change(i + 1, "epoch", ChangeKind.EVENT, event=Event("e", i)))
    with pytest.raises(Unavailable, match="fell behind"):
        async for _ in sub:
            pass
    assert len(hub) == 0


async def test_the_hub_delivers_to_whoever_listens_in_the_room_now() -> None:
    # deliver() returns at once for a room nobody listens to: a listener of another room, one gone, and
    # one come since must each be counted right.
    hub = LocalHub()
    other = hub.subscribe(Topic.room("other"))
    set_x = Change(1, "epoch", ChangeKind.VARIABLE_SET, variable=Variable("x", 1, 1))
    hub.deliver("r", set_x)  # nobody in "r"
    gone = hub.subscribe(Topic("variable", "r", "x"))
    gone.close()
    hub.deliver("r", set_x)
    room, variable = hub.subscribe(Topic.room("r")), hub.subscribe(Topic("variable", "r", "x"))
    hub.deliver("r", set_x)
    ending = Change(2, "epoch", ChangeKind.ROOM_DELETED, room=Room("r"))
    hub.deliver("r", ending)
    for sub in (room, variable):
        assert await asyncio.wait_for(sub.__anext__(), 1) is set_x
        assert await asyncio.wait_for(sub.__anext__(), 1) is ending
    assert other._queue.empty()


class _SwallowingBackend(MemoryBackend):
    """A backend whose reads lose a cancellation delivered during them, as redis-py's calls do at times."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()

    async def _lose_a_cancellation(self) -> None:
        self.reading.set()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass  # lost: the call answers as if nothing happened

    async def read_changes(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await self._lose_a_cancellation()
        return await super().read_changes(*args, **kwargs)

    async def get_variable(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not self.reading.is_set():  # the first read only: set_variable's own reads go through
            await self._lose_a_cancellation()
        return await super().get_variable(*args, **kwargs)


_OPENERS = {
    "room": lambda service: service.listen_room("lobby", after_seq=0),  # reads the log
    "variable": lambda service: service.listen_variable("lobby", "score"),  # reads the variable
}


@pytest.mark.parametrize("kind", sorted(_OPENERS))
async def test_a_stream_cancelled_during_a_read_that_swallows_it_still_ends(kind: str) -> None:
    backend = _SwallowingBackend()
    await backend.open()
    try:
        service = RoomService(backend)
        await service.create_room({"room_id": "lobby"})
        await service.set_variable("lobby", "score", 1)
        backend.reading.clear()

        async def listen() -> None:
            stream = await _OPENERS[kind](service)
            async for _ in stream:
                pass

        task = asyncio.create_task(listen())
        await asyncio.wait_for(backend.reading.wait(), 5)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert task in done, "the stream went on to wait for live changes, its cancellation lost"
        assert task.cancelled()
    finally:
        await backend.close()
