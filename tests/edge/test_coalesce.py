"""CoalescingTransport: what uvicorn writes for one response leaves in one write, a stream's chunk leaves
at once, and nothing is held past the next turn of the event loop, nor past close()."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette

from gateway.coalesce import CoalescingTransport
from gateway.edge.timeouts import guarded_protocol
from tests.edge.test_response_path import serving


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_writes_of_one_turn_leave_together_and_at_the_latest_next_turn() -> None:
    recorder = Recorder()
    transport = CoalescingTransport(recorder, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert recorder.writes == []
    transport.flush()  # the response is complete
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"data: 1\n\n")  # a stream's chunk: no completion, the next turn sends it
    await asyncio.sleep(0)
    assert recorder.writes[-1] == b"data: 1\n\n"
    transport.write(b"last")
    transport.close()
    assert recorder.writes[-1] == b"last" and recorder.closed


async def test_a_chunk_written_now_leaves_with_what_is_held_and_schedules_nothing() -> None:
    recorder = Recorder()
    transport = CoalescingTransport(recorder, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")  # a stream's head, held
    transport.write_now(b"data: 1\n\n")
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n"]
    transport.write_now(b"data: 2\n\n")
    assert recorder.writes[-1] == b"data: 2\n\n"
    await asyncio.sleep(0)  # the head's scheduled flush finds nothing left to send
    assert len(recorder.writes) == 2


class CountingTransport:
    """The socket's transport, counting what reaches it (what the kernel is asked to send)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@contextlib.asynccontextmanager
async def counted_server(app: Any) -> AsyncIterator[tuple[str, list[CountingTransport]]]:
    """``app`` on the guarded protocol as the gateway runs it (:func:`tests.edge.test_response_path.serving`):
    its URL, and every connection's socket transport, counted."""
    sockets: list[CountingTransport] = []

    class Counted(guarded_protocol(header_timeout=5, max_header_bytes=8192)):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            sockets.append(CountingTransport(transport))
            super().connection_made(sockets[-1])

    async with serving(app, Counted) as port:
        yield f"http://127.0.0.1:{port}", sockets


async def test_uvicorn_with_the_guarded_protocol_sends_a_response_in_one_write(app: Starlette) -> None:
    async with counted_server(app) as (url, sockets):
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(3):  # three answers on one kept-alive connection
                response = await client.get("/healthz")
                assert response.status_code == 200 and response.json() == {"status": "ok"}
        assert len(sockets) == 1
        assert len(sockets[0].writes) == 3, sockets[0].writes  # uvicorn alone: 6 (head, then body)
        assert all(write.startswith(b"HTTP/1.1 200") and write.endswith(b"}") for write in sockets[0].writes)


async def test_a_streams_chunk_reaches_the_socket_before_the_app_yields() -> None:
    """A fan-out wakes thousands of streams' tasks in one turn: a chunk held until the next turn would reach
    every client only after the last of them had run (bench/RESULTS.md, session 16)."""
    seen: list[int] = []
    sockets: list[CountingTransport]  # the server's, once it runs (the app reads it while serving)

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for chunk in (b"one", b"two"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            seen.append(len(sockets[0].writes))  # written by now, before this task gives up the loop
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with counted_server(stream) as (url, sockets):
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/")
        assert response.status_code == 200 and response.text == "onetwo"
        assert seen == [1, 2], sockets[0].writes  # the head with the first chunk, then the second alone
        assert sockets[0].writes[0].startswith(b"HTTP/1.1 200") and sockets[0].writes[0].endswith(b"one\r\n")
