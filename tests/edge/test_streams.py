"""ListenVariable / ListenEvents over SSE and NDJSON: order, endings, keep-alives, and clean disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
from room_gateway_plugins.memory import MemoryBackend
from starlette.applications import Starlette

from tests.conftest import ADMIN_KEY, READER_KEY
from tests.edge.conftest import AsgiCall
from tests.edge.test_coalesce import counted_server
from tests.edge.test_response_path import serving

NDJSON = {"accept": "application/x-ndjson"}


async def sse_events(call: AsgiCall, count: int) -> list[dict[str, Any]]:
    """The next ``count`` SSE messages (keep-alive comments skipped), as {field: value} dicts; a block
    without ``data`` (the ``retry:`` hint) dispatches no message, as in an ``EventSource``."""
    events: list[dict[str, Any]] = []
    buffer = b""
    while len(events) < count:
        buffer += await call.chunk()
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if not line.startswith(b":"))
            if b"data" in fields:
                events.append(
                    {k.decode(): orjson.loads(v) if k == b"data" else v.decode() for k, v in fields.items()}
                )
    return events


async def ndjson_lines(call: AsgiCall, count: int) -> list[Any]:
    lines: list[Any] = []
    while len(lines) < count:
        chunk = await call.chunk()
        lines.extend(orjson.loads(line) for line in chunk.split(b"\n") if line.strip())
    return lines


async def until_no_subscriber(backend: MemoryBackend) -> None:
    for _ in range(100):
        if len(backend.hub) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(backend.hub)} subscriptions left behind")


async def test_sse_variable_current_value_first_then_changes(
    client: httpx.AsyncClient, asgi_call: Any, backend: MemoryBackend
) -> None:
    await client.put("/v1/rooms/r/variables/v", json={"value": "first"})
    call = asgi_call("/v1/rooms/r/variables/v:listen")
    assert await call.start() == 200
    assert call.headers["content-type"] == "text/event-stream"
    assert call.headers["cache-control"] == "no-cache"
    [current] = await sse_events(call, 1)
    assert current == {
        "id": "1",
        "data": {"name": "v", "value": "first", "version": "1", "updateTime": "2026-01-02T03:04:05Z"},
    }
    await client.put("/v1/rooms/r/variables/v", json={"value": {"n": 2}})
    await client.put("/v1/rooms/r/variables/v", json={"value": None})
    await client.delete("/v1/rooms/r/variables/v")
    changes = await sse_events(call, 3)
    assert [e["id"] for e in changes] == ["2", "3", "4"]
    assert [e["data"].get("value", "<deleted>") for e in changes] == [{"n": 2}, None, "<deleted>"]
    assert len(backend.hub) == 1
    await call.disconnect()
    await until_no_subscriber(backend)


async def test_sse_keepalive_comments(asgi_call: Any, backend: MemoryBackend) -> None:
    call = asgi_call("/v1/rooms/r/variables/v:listen")  # unset: nothing to send but keep-alives
    await call.start()
    assert await call.chunk() == b": keep-alive\n\n"
    await call.disconnect()
    await until_no_subscriber(backend)


async def test_ndjson_events_in_order_and_end_on_delete(
    client: httpx.AsyncClient, asgi_call: Any, backend: MemoryBackend
) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    call = asgi_call("/v1/rooms/r/events/ping:listen", headers=NDJSON)
    assert await call.start() == 200
    assert call.headers["content-type"] == "application/x-ndjson"
    for n in range(3):
        await client.post("/v1/rooms/r/events/ping", json={"data": n})
    await client.post("/v1/rooms/r/events/other", json={"data": "not for us"})
    lines = await ndjson_lines(call, 3)
    assert lines == [
        {"result": {"name": "ping", "data": n, "time": "2026-01-02T03:04:05Z"}} for n in range(3)
    ]
    await client.post("/v1/rooms/r:close")
    await client.delete("/v1/rooms/r")
    [last] = await ndjson_lines(call, 1)
    assert last == {"error": {"code": 404, "status": "NOT_FOUND", "message": "room 'r' was deleted"}}
    assert await call.chunk() == b"" and call.ended
    await asyncio.wait_for(call.task, 1)
    assert len(backend.hub) == 0


async def test_sse_ends_with_error_event_on_invalidate(
    client: httpx.AsyncClient, asgi_call: Any, backend: MemoryBackend
) -> None:
    await client.put("/v1/rooms/r/variables/v", json={"value": 1})
    calls = [asgi_call("/v1/rooms/r/variables/v:listen"), asgi_call("/v1/rooms/r/events/e:listen")]
    for call in calls:
        await call.start()
    await sse_events(calls[0], 1)
    await client.post("/v1/connections:invalidate")
    for call in calls:
        [end] = await sse_events(call, 1)
        assert end["event"] == "error"
        assert end["data"]["error"]["status"] == "UNAVAILABLE" and end["data"]["error"]["code"] == 503
        assert await call.chunk() == b"" and call.ended
    assert len(backend.hub) == 0


async def test_ndjson_disconnect_leaves_no_subscription(asgi_call: Any, backend: MemoryBackend) -> None:
    call = asgi_call("/v1/rooms/r/events/e:listen", headers=NDJSON)
    await call.start()
    assert len(backend.hub) == 1
    await call.disconnect()
    assert call.task.done() and len(backend.hub) == 0


@pytest.mark.parametrize(
    ("setup", "path", "status", "code"),
    [
        ("close", "/v1/rooms/r/variables/v:listen", 400, "FAILED_PRECONDITION"),
        ("delete", "/v1/rooms/r/events/e:listen", 404, "NOT_FOUND"),
        (None, "/v1/rooms/r/variables/" + "n" * 300 + ":listen", 400, "INVALID_ARGUMENT"),
        (None, "/v1/rooms/r/variables/v:listen?since=1", 400, "INVALID_ARGUMENT"),
    ],
)
async def test_bad_stream_requests_are_answered_before_streaming(
    client: httpx.AsyncClient, backend: MemoryBackend, setup: str | None, path: str, status: int, code: str
) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    if setup:
        await client.post("/v1/rooms/r:close")
    if setup == "delete":
        await client.delete("/v1/rooms/r")
    response = await client.get(path)
    assert response.status_code == status and response.json()["error"]["status"] == code
    assert len(backend.hub) == 0


async def test_listen_needs_the_permission(app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as anonymous:
        assert (await anonymous.get("/v1/rooms/r/events/e:listen")).status_code == 401


# -- a real server: the byte stream as a client sees it -----------------------------------------------------


@pytest.fixture
async def server_url(app: Starlette) -> AsyncIterator[str]:
    async with serving(app, "auto") as port:  # plain uvicorn: its own protocol and response path
        yield f"http://127.0.0.1:{port}"


async def test_sse_over_uvicorn_and_client_disconnect(server_url: str, backend: MemoryBackend) -> None:
    async with httpx.AsyncClient(base_url=server_url, timeout=5) as http:
        await http.put("/v1/rooms/r/variables/v", json={"value": 1}, headers={"X-API-Key": ADMIN_KEY})
        async with http.stream(
            "GET", "/v1/rooms/r/variables/v:listen", headers={"Authorization": f"Bearer {READER_KEY}"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            lines = response.aiter_lines()
            assert await anext(lines) == "id: 1"
            data = await anext(lines)
            assert orjson.loads(data.removeprefix("data: "))["value"] == 1
            await http.put("/v1/rooms/r/variables/v", json={"value": 2}, headers={"X-API-Key": ADMIN_KEY})
            received = []
            async for line in lines:
                received.append(line)
                if line.startswith("data: "):
                    break
            assert "id: 2" in received
            assert len(backend.hub) == 1
        await until_no_subscriber(backend)


def _watching_tasks() -> list[asyncio.Task[Any]]:
    """The tasks that wait for a stream's client to leave (other ASGI servers' way)."""
    return [
        task for task in asyncio.all_tasks() if getattr(task.get_coro(), "__qualname__", "") == "_Watch.watch"
    ]


@pytest.mark.parametrize("guarded", [True, False], ids=["gateway-server", "plain-uvicorn"])
async def test_a_stream_on_the_gateways_server_needs_no_task_of_its_own_to_learn_the_client_left(
    app: Starlette, backend: MemoryBackend, guarded: bool
) -> None:
    """On the gateway's own server the connection tells the stream its client left (Cycle.on_disconnect),
    and keep-alives come from a timer: no helper task per stream (each was ~9 objects more for the cyclic
    collector to walk, bench/RESULTS.md, session 16). Elsewhere a task watches ``receive()``."""
    async with contextlib.AsyncExitStack() as stack:
        if guarded:
            url, _ = await stack.enter_async_context(counted_server(app))
        else:  # plain uvicorn
            url = f"http://127.0.0.1:{await stack.enter_async_context(serving(app, 'auto'))}"
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            await http.put("/v1/rooms/r/variables/v", json={"value": 1}, headers={"X-API-Key": ADMIN_KEY})
            async with http.stream(
                "GET", "/v1/rooms/r/variables/v:listen", headers={"X-API-Key": READER_KEY}
            ) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                assert await anext(lines) == "id: 1"
                assert orjson.loads((await anext(lines)).removeprefix("data: "))["value"] == 1
                assert await anext(lines) == ""
                assert await anext(lines) == ": keep-alive"  # the app's keep-alive: 0.05 s of silence
                assert len(backend.hub) == 1
                assert len(_watching_tasks()) == (0 if guarded else 1)
            await until_no_subscriber(backend)  # the client left: the stream ended, unsubscribed
            assert _watching_tasks() == []


async def test_keep_alives_to_a_client_that_does_not_read_do_not_pile_up() -> None:
    """A keep-alive blocked in its send (the client reads nothing, the socket's buffer is full) is the only
    one in flight: the timer goes on firing, and sends again only once that one is through."""
    from gateway.edge.streams import _KeepAlive

    started: list[bytes] = []
    through = asyncio.Event()

    async def blocked_send(message: MutableMapping[str, Any]) -> None:
        started.append(message["body"])
        await through.wait()

    keep = _KeepAlive(blocked_send, b": keep-alive\n\n", 0.01)
    try:
        await asyncio.sleep(0.1)  # ten intervals
        assert started == [b": keep-alive\n\n"]
        through.set()
        async with asyncio.timeout(5):  # on again once it is through (an interval later, however loaded)
            while len(started) < 2:
                await asyncio.sleep(0.01)
    finally:
        await keep.stop()
    count = len(started)
    await asyncio.sleep(0.05)
    assert len(started) == count  # stopped: no timer left
