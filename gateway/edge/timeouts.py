"""Slow and half-open HTTP clients: bounded in time and in header size, so they cannot hold the edge.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``), but it has no limit on how long a
client may take to send a request's headers, nor on their size with httptools (h11's
``max_incomplete_event_size`` covers only the h11 protocol), nor on how long a body may trickle in: a
"slowloris" client holds a connection (and, sending headers forever, memory) for as long as it likes.
:func:`guarded_protocol` closes that: uvicorn's httptools protocol with

- a header deadline, from the connection's first byte (or the start of each next request on a kept-alive
  connection) to the end of the headers;
- a body deadline, from the end of the headers to the last byte of a body the request announces
  (Content-Length or Transfer-Encoding);
- a header size limit.

A client that misses a deadline gets a 408, one whose headers are too large a 431, both in the native
error shape and with ``Connection: close`` (a route waiting for the body sees the client disconnect).

Each connection is its own protocol object on the event loop: a stalled one waits on its own timer and
costs others nothing.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.coalesce import CoalescingTransport
from gateway.edge.cycle import HEAD, Cycle
from gateway.edge.responses import error_bytes
from gateway.errors import Code, GatewayError


def _making(function: Callable[..., Any], cycle: type) -> Callable[..., Any]:
    """uvicorn's ``function`` as it is, but making ``cycle`` objects where it makes a
    ``RequestResponseCycle``: its code with that name bound to ours. uvicorn has no hook for the class; a
    cycle's class changed after the fact (``__class__ =``) turned its attributes into a dict of its own,
    which cost more than the cycle saves."""
    names = {**function.__globals__, "RequestResponseCycle": cycle}
    return types.FunctionType(
        function.__code__, names, function.__name__, function.__defaults__, function.__closure__
    )


#: uvicorn's ``on_headers_complete`` making the gateway's :class:`~gateway.edge.cycle.Cycle` (its task, and
#: pipelined requests' cycles, as uvicorn does).
_on_headers_complete = _making(HttpToolsProtocol.on_headers_complete, Cycle)
_data_received = HttpToolsProtocol.data_received
_on_message_begin = HttpToolsProtocol.on_message_begin
_on_message_complete = HttpToolsProtocol.on_message_complete

#: What a connection's deadline is for (_BODY_NEXT: the body is due once this read is parsed).
_NOTHING, _HEADERS, _BODY_NEXT, _BODY, _IDLE = range(5)


def _raw_response(status: int, reason: bytes, code: Code, message: str) -> bytes:
    body = error_bytes(GatewayError(message, code=code, http_status=status))
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, reason, len(body))
    ) + body


def guarded_protocol(
    *, header_timeout: float, max_header_bytes: int, body_timeout: float = 30.0
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class, with header and body deadlines and a header size limit.

    Pass it as ``uvicorn.Config(http=…)``.

    :param header_timeout: seconds from a request's first byte to the end of its headers (and from the
        connection's start to its first request).
    :param max_header_bytes: bytes of request target and headers accepted.
    :param body_timeout: seconds from the end of a request's headers to the last byte of its body.
    """
    timeout_body = _raw_response(
        408,
        b"Request Timeout",
        Code.DEADLINE_EXCEEDED,
        f"request headers not received in {header_timeout:g}s",
    )
    body_timeout_body = _raw_response(
        408,
        b"Request Timeout",
        Code.DEADLINE_EXCEEDED,
        f"the request body was not received in {body_timeout:g}s",
    )
    too_large_body = _raw_response(
        431,
        b"Request Header Fields Too Large",
        Code.INVALID_ARGUMENT,
        f"request headers are larger than {max_header_bytes} bytes",
    )

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        # One timer per connection, re-armed lazily: a request only moves _deadline (a float), and the
        # timer, when it fires early, sleeps again until the deadline of the phase now due. A timer
        # created and cancelled per request (and asyncio.timeout around each body read) cost a cheap call
        # a few percent (bench/RESULTS.md); uvicorn's own keep-alive timer, made per response and
        # cancelled by the next request's first read, was ~8k instructions of a REST GET: the idle
        # deadline is this timer's too. uvicorn's methods are called as functions, not through super()
        # (an object and a lookup per call, several calls a request).
        _timer: asyncio.TimerHandle | None = None
        _timer_at = 0.0
        _deadline: float | None = None  # when the phase now due must be over; None: nothing is due
        _phase = _NOTHING  # what is due by _deadline
        _headers_seen = False  # the request's headers are complete
        _chunk = 0  # bytes of the last read
        _read = 0  # bytes read since the read the request began in: at least its headers' size
        _header_bytes = 0  # bytes of the headers counted while they arrive (data_received)
        _counted = 0  # how many of the request's headers those are
        _rejected = False
        _started = False
        _writes: CoalescingTransport

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
            super().connection_made(transport)
            # A response's head and body in one system call (gateway.coalesce); flow control keeps
            # the socket's own transport.
            self._writes = CoalescingTransport(transport, self.loop)
            self.transport = cast(asyncio.Transport, self._writes)
            self._expect(header_timeout, _HEADERS)

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)
            cycle = self.cycle
            if isinstance(cycle, Cycle) and cycle.on_disconnect is not None and cycle.disconnected:
                callback, cycle.on_disconnect = cycle.on_disconnect, None
                callback()

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return
            self._chunk = len(data)
            self._read += self._chunk
            _data_received(self, data)
            # The deadlines of what this read left unfinished (most requests arrive whole, in one read:
            # none to set then).
            if self._phase == _BODY_NEXT:  # headers complete, the body still to come
                self._expect(body_timeout, _BODY)
            elif self._started and not self._headers_seen and not self._rejected:
                if self._phase != _HEADERS:  # a next request's (the first keeps the connection's deadline)
                    self._expect(header_timeout, _HEADERS)
                if len(self.url) + self._read > max_header_bytes:  # else they cannot be too large yet
                    # Headers still coming: what came so far, the headers completed since the last read
                    # added to a running count (a client trickling many headers must not make each read
                    # re-count them all).
                    headers = self.headers
                    for name, value in headers[self._counted :]:
                        self._header_bytes += len(name) + len(value) + 4
                    self._counted = len(headers)
                    if len(self.url) + self._header_bytes > max_header_bytes:
                        self._reject(too_large_body)

        def send_400_response(self, msg: str) -> None:
            if not self._rejected:  # a rejection raised out of the parser is already answered
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            self._started = True
            self._headers_seen = False
            self._header_bytes = self._counted = 0
            self._read = self._chunk  # the whole read it begins in: an upper bound
            _on_message_begin(self)

        def on_headers_complete(self) -> None:
            self._headers_seen = True
            if len(self.url) + self._read > max_header_bytes:  # what was read could hold too much
                # The size in one pass over the headers, once a request (a callback per header, as the
                # parser offers, was a Python frame per header per request).
                size = len(self.url)
                for name, value in self.headers:
                    size += len(name) + len(value) + 4
                if size > max_header_bytes:
                    self._reject(too_large_body)
                    raise _Rejected  # stops the parser: nothing of this request reaches the app
            if self.access_log:  # uvicorn's own access log on: its cycle, which writes it
                super().on_headers_complete()
            else:
                _on_headers_complete(self)
                # Said only now the cycle is made: an app that ran already (an eager task) used plain headers.
                self.scope["extensions"] = {HEAD: {}}
            # The body is due (RFC 9112 §6.3: announced by Transfer-Encoding or a Content-Length), unless
            # on_message_complete says it came, or that there is none, in this same read (data_received).
            self._phase = _BODY_NEXT

        def on_message_complete(self) -> None:
            self._deadline = None
            self._phase = _NOTHING
            _on_message_complete(self)

        def on_response_complete(self) -> None:
            self._writes.flush()
            self._started = False
            # uvicorn's, with the idle deadline on this connection's timer instead of a timer per response.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:  # pipelined requests, parsed already: the next one's turn
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            elif self._phase == _NOTHING:  # (a body still coming after an early answer keeps its deadline)
                self._expect(self.timeout_keep_alive, _IDLE)

        def _expect(self, seconds: float, phase: int) -> None:
            """``phase`` is due within ``seconds``."""
            deadline = self.loop.time() + seconds
            self._deadline = deadline
            self._phase = phase
            if self._timer is None or deadline < self._timer_at:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.loop.call_at(deadline, self._on_timer)
                self._timer_at = deadline

        def _on_timer(self) -> None:
            self._timer = None
            deadline = self._deadline
            if deadline is None:
                return  # nothing due: the next phase arms the timer again
            if self.loop.time() < deadline:  # a later phase is due: sleep until its deadline
                self._timer = self.loop.call_at(deadline, self._on_timer)
                self._timer_at = deadline
                return
            self._deadline = None
            phase, self._phase = self._phase, _NOTHING
            cycle = self.cycle
            if phase == _IDLE:
                if not self.transport.is_closing():
                    self.transport.close()  # an idle kept-alive connection (uvicorn's timeout_keep_alive)
            elif phase == _BODY:
                if cycle is not None and not cycle.response_started:
                    self._reject(body_timeout_body)  # the route waiting for the body sees a disconnect
                elif not self.transport.is_closing():
                    self.transport.close()  # answered already (a 401, say), the rest never came
            elif cycle is not None and not cycle.response_complete:
                return  # a request is being served: its headers were complete after all
            elif self._started:
                self._reject(timeout_body)
            elif not self.transport.is_closing():
                self.transport.close()  # connected and silent: nothing to answer

        def _reject(self, response: bytes) -> None:
            self._rejected = True
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return GuardedHttpToolsProtocol


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing a rejected request."""
