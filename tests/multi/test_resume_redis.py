"""A resumed stream loses nothing across instances on Redis: a client listens on instance A (SSE) while
writers hit A and B; A is killed with SIGKILL; the client resumes on B with its last ``Last-Event-ID`` and
ends up with every change exactly once, in order — every acknowledged write among them (API.md, "The room
change log"). The same for an event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.multi.conftest import WAIT, StartGateway, eventually, rest, start_gateways

ROOM = "resume"
#: Writers per instance, acknowledged writes before the kill, and after it (on B alone).
WRITERS, BEFORE_KILL, AFTER_KILL = 3, 120, 120
MAX_SECONDS = 30.0

#: One write: (http client, worker, n) → the payload the listener must see, or None when not acknowledged.
Write = Callable[[httpx.AsyncClient, str, int], Awaitable[Any]]


@dataclass
class Frames:
    """What an SSE stream has received: each frame's ``id`` and its ``data`` as JSON."""

    ids: list[str] = field(default_factory=list)
    data: list[Any] = field(default_factory=list)
    error: Any = None

    @property
    def seqs(self) -> list[int]:
        return [int(one.rsplit(":", 1)[1]) for one in self.ids]


@contextlib.asynccontextmanager
async def sse(
    http: httpx.AsyncClient, path: str, frames: Frames, last_id: str | None = None
) -> AsyncIterator[None]:
    """Read an SSE stream into ``frames`` in the background until the context ends or the stream does."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    async with http.stream("GET", path, headers=headers, timeout=httpx.Timeout(WAIT, read=None)) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())

        async def read() -> None:
            event_id, data = None, []
            with contextlib.suppress(httpx.TransportError):
                async for line in response.aiter_lines():
                    if line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        body = json.loads("\n".join(data))
                        if "error" in body:
                            frames.error = body
                        else:
                            assert event_id is not None, f"a frame without an id: {body}"
                            frames.ids.append(event_id)
                            frames.data.append(body)
                        event_id, data = None, []

        task = asyncio.create_task(read())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def resume_across_a_kill(
    start_gateway: StartGateway,
    redis_url: str,
    listen_path: str,
    write: Write,
    payload: Callable[[Any], Any],
) -> None:
    """The scenario: listen on A from the room's current position, write on A and B, SIGKILL A, resume on
    B by the last SSE id, and check that the frames are the room's changes after that position, each once,
    in seq order, with every acknowledged write among them."""
    a, b = await start_gateways(start_gateway, redis_url, 2)
    acknowledged: list[Any] = []
    frames = Frames()
    async with rest(a, timeout=5) as on_a, rest(b, timeout=5) as on_b:
        assert (await on_a.post("/v1/rooms", json={"roomId": ROOM})).status_code == 200
        snapshot = (await on_a.get(f"/v1/rooms/{ROOM}/contents")).json()
        start, epoch = int(snapshot["seq"]), snapshot["epoch"]
        a_dead = asyncio.Event()
        at_kill = 0  # acknowledged writes when A was killed (set then; b_done reads it)
        deadline = time.monotonic() + MAX_SECONDS

        def b_done() -> bool:
            # AFTER_KILL writes acknowledged after the kill, not so many in all: under load, B's writers
            # could finish before the kill, and A's listener would then have had every change already.
            return a_dead.is_set() and len(acknowledged) >= at_kill + AFTER_KILL

        async def writer(http: httpx.AsyncClient, worker: str, until: Callable[[], bool]) -> None:
            for n in range(100_000):
                if until() or time.monotonic() > deadline:
                    return
                try:
                    written = await write(http, worker, n)
                except httpx.TransportError:
                    return  # its gateway is gone: this write is not acknowledged (it may still be logged)
                if written is not None:
                    acknowledged.append(written)

        first_id = f"{epoch}:{start}"
        async with sse(on_a, listen_path, frames, last_id=first_id):
            writers = [
                *(asyncio.create_task(writer(on_a, f"a{i}", a_dead.is_set)) for i in range(WRITERS)),
                *(asyncio.create_task(writer(on_b, f"b{i}", b_done)) for i in range(WRITERS)),
            ]
            await eventually(
                lambda: len(acknowledged) >= BEFORE_KILL and frames.ids, what="writes and frames"
            )
            a.proc.kill()  # SIGKILL: no drain, no goodbye to the listener
            at_kill = len(acknowledged)
            a_dead.set()
            assert await asyncio.to_thread(a.wait, WAIT) == -9
            await asyncio.sleep(0.2)  # the stream on A is cut
        assert frames.ids, "the listener on A received nothing before the kill"
        received_on_a = len(frames.ids)
        await asyncio.wait_for(asyncio.gather(*writers), WAIT + MAX_SECONDS)

        # Resume on B from the last frame A delivered; B's writers have finished: everything is logged.
        head = int((await on_b.get(f"/v1/rooms/{ROOM}/contents")).json()["seq"])
        async with sse(on_b, listen_path, frames, last_id=frames.ids[-1]):
            await eventually(lambda: frames.seqs and frames.seqs[-1] >= head, what=f"seq {head} on B")
            await asyncio.sleep(0.3)  # nothing more, and no duplicate, comes after the head
    assert frames.error is None, frames.error
    assert frames.seqs == list(range(start + 1, head + 1)), "not every change once and in order"
    assert {one.rsplit(":", 1)[0] for one in frames.ids} == {epoch}
    assert 0 < received_on_a < len(frames.ids)
    seen = [payload(body) for body in frames.data]
    missing = [one for one in acknowledged if one not in seen]
    assert not missing, (
        f"{len(missing)} of {len(acknowledged)} acknowledged writes never arrived: {missing[:5]}"
    )
    assert len(seen) == len(set(map(json.dumps, seen))), "a write arrived twice"


async def test_room_listener_resumes_on_another_instance_after_sigkill(
    start_gateway: StartGateway, redis_url: str
) -> None:
    async def put(http: httpx.AsyncClient, worker: str, n: int) -> Any:
        response = await http.put(f"/v1/rooms/{ROOM}/variables/{worker}", json={"value": n})
        return [worker, n] if response.status_code == 200 else None

    def variable(change: Any) -> Any:
        assert change["kind"] == "VARIABLE_SET", change
        return [change["variable"]["name"], change["variable"]["value"]]

    await resume_across_a_kill(start_gateway, redis_url, f"/v1/rooms/{ROOM}:listen", put, variable)


async def test_event_listener_resumes_on_another_instance_after_sigkill(
    start_gateway: StartGateway, redis_url: str
) -> None:
    async def publish(http: httpx.AsyncClient, worker: str, n: int) -> Any:
        response = await http.post(f"/v1/rooms/{ROOM}/events/tick", json={"data": {"w": worker, "n": n}})
        return {"w": worker, "n": n} if response.status_code == 200 else None

    def event(frame: Any) -> Any:
        # A ListenEvents frame is the Event; tolerate a Change wrapping it.
        return (frame.get("event") or frame)["data"]

    await resume_across_a_kill(
        start_gateway, redis_url, f"/v1/rooms/{ROOM}/events/tick:listen", publish, event
    )
