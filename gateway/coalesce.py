"""One system call per answer: the writes of one turn of the event loop, held and sent together.

uvicorn writes a response's head as soon as the app sends ``http.response.start`` and its body as a second
``transport.write`` — two ``send`` system calls, two TCP segments and two wake-ups of the client for every
small answer. On loopback under load those two calls were the largest single cost of a call (py-spy: a
third of the event loop's samples, in uvicorn's two ``transport.write`` lines). :class:`CoalescingTransport`
stands between uvicorn's HTTP protocol and the socket's transport: writes are held, and go out as one
when the response is complete (:meth:`CoalescingTransport.flush`, called by the protocol), or at the latest
at the next turn of the event loop; a stream's chunks (SSE) are not held at all
(:meth:`CoalescingTransport.write_now`).
nginx's ``tcp_nopush`` and Linux's ``TCP_CORK`` do the same with a socket option, at the price of two more
system calls a response.

grpclib does the same as uvicorn, a frame at a time: a unary answer is three writes (headers, data,
trailers), all made in one step of the handler's task; the gRPC listener's transport coalesces them too
(:class:`gateway.rpc.protocol.GuardedProtocol`).
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport whose writes of one turn of the event loop are sent with one ``write``.

    :param transport: the connection's transport (what uvicorn would write to).
    :param loop: the event loop the connection runs on.
    """

    __slots__ = (
        "_held",
        "_loop",
        "_scheduled",
        "_transport",
        "get_extra_info",
        "pause_reading",
        "resume_reading",
    )

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._scheduled = False
        # Called once a connection or per request by uvicorn: bound once, not looked up through __getattr__.
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def write(self, data: bytes) -> None:
        if not data:  # grpclib writes what h2 has to send, often nothing
            return
        self._held.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_later)

    def flush(self) -> None:
        """Send what is held now (the response is complete, or the connection closes)."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def write_now(self, data: bytes) -> None:
        """Send what is held and ``data`` with one ``write`` now, scheduling nothing: a stream's chunk.

        A write that fans out to thousands of streams wakes their tasks in one turn of the loop. Held until
        the next turn, every chunk would reach its client only after the last task had run; and the
        callback each ``write`` schedules is one more object per stream alive meanwhile, allocations that
        brought the collector's owed full collection (~0.7 s with 10,000 listeners) into that very
        turn (bench/RESULTS.md, session 16).
        """
        held = self._held
        if held:
            held.append(data)
            data = b"".join(held)
            held.clear()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def _flush_later(self) -> None:
        self._scheduled = False
        self.flush()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:  # the rest of asyncio.Transport, as it is
        return getattr(self._transport, name)
