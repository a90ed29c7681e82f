"""The sql backend's per-room writer queue (PostgreSQL: one writer of a room at a time from a process)."""

from __future__ import annotations

import asyncio

import pytest
from room_gateway_plugins.sql.roomqueue import RoomQueue


async def test_one_writer_of_a_room_at_a_time_and_other_rooms_do_not_wait() -> None:
    queue = RoomQueue()
    release_a = await queue.enter("a")
    second = asyncio.ensure_future(queue.enter("a"))
    release_b = await asyncio.wait_for(queue.enter("b"), 1)  # another room: at once
    await asyncio.sleep(0.01)
    assert not second.done()  # the room's second writer waits for the first
    release_a()
    release_second = await asyncio.wait_for(second, 1)
    release_second()
    release_b()
    assert len(queue) == 0  # nothing kept for rooms without writers


async def test_writers_of_a_room_take_their_turns_in_arrival_order() -> None:
    queue = RoomQueue()
    order: list[int] = []

    async def writer(i: int) -> None:
        release = await queue.enter("room")
        try:
            order.append(i)
            await asyncio.sleep(0)
        finally:
            release()

    await asyncio.gather(*(writer(i) for i in range(20)))
    assert order == list(range(20))
    assert len(queue) == 0


async def test_a_writer_cancelled_while_waiting_holds_nothing() -> None:
    queue = RoomQueue()
    release = await queue.enter("room")
    waiting = asyncio.ensure_future(queue.enter("room"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release()
    assert len(queue) == 0
    (await asyncio.wait_for(queue.enter("room"), 1))()  # the room is free again
