"""Streams that lose nothing on the SQL backends: a client listens on one gateway while writers hit it and
another; the gateway it listens on is SIGKILLed; the client resumes on another with its last position and
ends up with every change exactly once, in order — counted. PostgreSQL: two instances sharing the database.
SQLite: one gateway, killed and started again on the same file.

The client resumes the way an ``EventSource`` does: the ``id:`` of the last SSE frame it read, sent back
as ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.multi.conftest import WAIT, StartGateway, eventually, rest
from tests.server.conftest import GatewayProcess

ROOM = "resume"
#: Acknowledged writes (variables and events) before the kill, and in all: well under the default
#: retention of 1000 changes, so that the position resumed from is always retained.
BEFORE_KILL, TOTAL = 80, 240
WRITERS = 4


@dataclass
class Stream:
    """What one SSE client has read: each frame's data (JSON) and the last ``id:``."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    last_id: str | None = None

    @property
    def seqs(self) -> list[int]:
        """The seqs of a ListenRoom stream's Changes."""
        return [int(frame["seq"]) for frame in self.frames]


def event_seqs(room: Stream) -> dict[Any, int]:
    """The seq of each event by its data (unique in these tests), from the room's stream (ListenEvents
    frames are Events: their position is only in the SSE id)."""
    return {frame["event"]["data"]: int(frame["seq"]) for frame in room.frames if frame["kind"] == "EVENT"}


async def read_sse(http: httpx.AsyncClient, path: str, stream: Stream, last_id: str | None = None) -> None:
    """Read an SSE stream into ``stream`` until it ends (the gateway went away, or the task is cancelled)."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    with contextlib.suppress(httpx.TransportError):
        async with http.stream("GET", path, headers=headers, timeout=httpx.Timeout(5, read=None)) as response:
            assert response.status_code == 200, (response.status_code, await response.aread())
            frame_id: str | None = None
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    frame_id = line.removeprefix("id:").strip()
                elif line.startswith("data:"):
                    data = json.loads(line.removeprefix("data:"))
                    assert "error" not in data, data
                    assert data.get("kind") != "RESET", f"the resume position was refused: {data}"
                    stream.frames.append(data)
                    stream.last_id = frame_id


@contextlib.asynccontextmanager
async def reading(
    http: httpx.AsyncClient, path: str, stream: Stream, last_id: str | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(read_sse(http, path, stream, last_id))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass
class Load:
    """Writers of variables and events, each on its gateway, recording what was acknowledged."""

    variables: set[str] = field(default_factory=set)
    events: set[int] = field(default_factory=set)
    counter: int = 0

    @property
    def acknowledged(self) -> int:
        return len(self.variables) + len(self.events)

    async def write(self, http: httpx.AsyncClient, until: Callable[[], bool]) -> None:
        """Write until ``until()`` or the gateway is gone; every other write is an event."""
        while not until() and self.counter < TOTAL * 2:
            self.counter += 1
            n = self.counter
            try:
                if n % 2:
                    response = await http.put(f"/v1/rooms/{ROOM}/variables/v{n}", json={"value": n})
                else:
                    response = await http.post(f"/v1/rooms/{ROOM}/events/e", json={"data": n})
            except httpx.TransportError:
                return  # the gateway is gone: this write may or may not have been committed
            assert response.status_code == 200, response.text
            (self.variables.add(f"v{n}") if n % 2 else self.events.add(n))


def writers(load: Load, clients: list[httpx.AsyncClient]) -> asyncio.Future[list[None]]:
    """:data:`WRITERS` writers over ``clients`` (round robin), until :data:`TOTAL` writes are acknowledged."""
    until = lambda: load.acknowledged >= TOTAL  # noqa: E731
    return asyncio.gather(*(load.write(clients[i % len(clients)], until) for i in range(WRITERS)))


async def head_seq(http: httpx.AsyncClient) -> int:
    response = await http.get(f"/v1/rooms/{ROOM}/changes", params={"maxResults": 1})
    assert response.status_code == 200, response.text
    return int(response.json()["headSeq"])


def resume_path(path: str, stream: Stream, seq: int, epoch: str, resume_by: str) -> tuple[str, str | None]:
    """Where and how to resume ``stream``, last at ``seq``: its last SSE id as ``Last-Event-ID``, or the
    same position as ``afterSeq`` and ``epoch`` query parameters (a client that is not an EventSource)."""
    if resume_by == "Last-Event-ID":
        assert stream.last_id == f"{epoch}:{seq}", "every SSE frame of the stream carries id: <epoch>:<seq>"
        return path, stream.last_id
    return path + "?" + str(httpx.QueryParams({"afterSeq": str(seq), "epoch": epoch})), None


async def listen_kill_resume(
    first: GatewayProcess,
    others: list[GatewayProcess],
    then: Callable[[], Awaitable[GatewayProcess]],
    resume_by: str,
) -> None:
    """Listen on ``first`` (the room, and one event name) while writers hit ``first`` and ``others``;
    SIGKILL ``first``; resume both streams on ``await then()``, with writers on it too; then count."""
    room, events, load = Stream(), Stream(), Load()
    room_path, events_path = f"/v1/rooms/{ROOM}:listen", f"/v1/rooms/{ROOM}/events/e:listen"
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(rest(first))
        assert (await http.post("/v1/rooms", json={"roomId": ROOM})).status_code == 200
        snapshot = (await http.get(f"/v1/rooms/{ROOM}/contents")).json()
        start, epoch = int(snapshot["seq"]), snapshot["epoch"]
        position = "?" + str(httpx.QueryParams({"afterSeq": str(start), "epoch": epoch}))
        tasks = [
            await stack.enter_async_context(reading(http, room_path + position, room)),
            await stack.enter_async_context(reading(http, events_path + position, events)),
        ]
        clients = [await stack.enter_async_context(rest(g, timeout=5)) for g in [first, *others]]
        writing = [writers(load, clients)]
        await eventually(
            lambda: load.acknowledged >= BEFORE_KILL and events.frames, what="writes before the kill"
        )
        first.proc.kill()  # SIGKILL: the streams end mid-flight, no goodbye
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)  # ... and the client notices
        assert first.wait(WAIT) == -9
        assert room.frames and events.frames
        read_before = len(room.frames), len(events.frames)

        second = await then()  # while the writers on the other instances go on
        http = await stack.enter_async_context(rest(second))
        last_event = event_seqs(room)[events.frames[-1]["data"]]
        for stream, path, seq in ((room, room_path, room.seqs[-1]), (events, events_path, last_event)):
            where, last_id = resume_path(path, stream, seq, epoch, resume_by)
            await stack.enter_async_context(reading(http, where, stream, last_id))
        if second not in others:  # a restarted gateway: its own writers
            writing.append(writers(load, [await stack.enter_async_context(rest(second, timeout=5))]))
        await asyncio.wait_for(asyncio.gather(*writing), WAIT * 2)
        assert load.acknowledged >= TOTAL
        head = await head_seq(http)
        await eventually(lambda: room.seqs and room.seqs[-1] >= head, what=f"the room stream to reach {head}")
        logged_events = sorted(event_seqs(room).values())
        await eventually(
            lambda: event_seqs(room).get(events.frames[-1]["data"]) == logged_events[-1],
            what="the events stream to catch up",
        )

    if resume_by == "Last-Event-ID":
        assert room.last_id == f"{epoch}:{room.seqs[-1]}"
    assert len(room.frames) > read_before[0] and len(events.frames) > read_before[1]  # both read on
    assert head - start >= TOTAL
    # Every change of the room after the snapshot, exactly once, in order: none missing, none twice.
    assert room.seqs == list(range(start + 1, head + 1)), "the room stream has a gap or a duplicate"
    assert {frame["epoch"] for frame in room.frames} == {epoch}
    names = {frame["variable"]["name"] for frame in room.frames if frame["kind"] == "VARIABLE_SET"}
    assert load.variables <= names, f"acknowledged writes missing: {sorted(load.variables - names)[:10]}"
    # The events stream: the room's events, the same ones in the same order, each acknowledged one in it.
    sent = [frame["data"] for frame in events.frames]
    assert [event_seqs(room)[data] for data in sent] == logged_events
    assert load.events <= set(sent)


@pytest.fixture(params=["afterSeq", "Last-Event-ID"])
def resume_by(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_resume_on_another_postgresql_instance(
    postgres_url: str, start_gateway: StartGateway, resume_by: str
) -> None:
    a, b = await asyncio.gather(*(asyncio.to_thread(start_gateway, postgres_url) for _ in range(2)))

    async def survivor() -> GatewayProcess:
        return b

    await listen_kill_resume(a, [b], survivor, resume_by)


async def test_resume_across_a_sqlite_gateway_restart(
    tmp_path: Path, start_gateway: StartGateway, resume_by: str
) -> None:
    url = f"sqlite:///{tmp_path / 'rooms.db'}"
    first = await asyncio.to_thread(start_gateway, url)

    async def restarted() -> GatewayProcess:
        return await asyncio.to_thread(start_gateway, url)

    await listen_kill_resume(first, [], restarted, resume_by)
