"""Slow and half-open HTTP clients: bounded in time and in header size, so they cannot hold the edge.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``), but it has no limit on how long a
client may take to send a request's headers, nor on their size with httptools (h11's
``max_incomplete_event_size`` covers only the h11 protocol), nor on how long a body may trickle in: a
"slowloris" client holds a connection (and, sending headers forever, memory) for as long as it likes.
Two guards close that:

- :func:`guarded_protocol` — uvicorn's httptools protocol with a header deadline (from the connection's
  first byte, or the start of each next request on a kept-alive connection) and a header size limit. A
  client that misses the deadline gets a 408, one whose headers are too large a 431, both in the native
  error shape and with ``Connection: close``.
- :func:`bounded_receive` — the edge's ``receive`` for a request that announces a body, bounding the time
  from the end of the headers to the last byte of the body: a request body still incomplete after the
  deadline is answered 408 by the route reading it (the error surfaces from ``receive()`` as a
  :class:`~gateway.errors.GatewayError`).

Each connection is its own protocol object on the event loop: a stalled one waits on its own timer and
costs others nothing.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import Message, Receive, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import Code, GatewayError, error_body


class RequestTimeout(GatewayError):
    """The client took too long to send its request (408)."""

    code = Code.DEADLINE_EXCEEDED

    def __init__(self, message: str) -> None:
        super().__init__(message, http_status=408)


def _raw_response(status: int, reason: bytes, code: Code, message: str) -> bytes:
    body = orjson.dumps(error_body(code, message, status))
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, reason, len(body))
    ) + body


def guarded_protocol(*, header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class, with a header deadline and a header size limit.

    Pass it as ``uvicorn.Config(http=…)``.

    :param header_timeout: seconds from a request's first byte to the end of its headers (and from the
        connection's start to its first request).
    :param max_header_bytes: bytes of request target and headers accepted.
    """
    timeout_body = _raw_response(
        408,
        b"Request Timeout",
        Code.DEADLINE_EXCEEDED,
        f"request headers not received in {header_timeout:g}s",
    )
    too_large_body = _raw_response(
        431,
        b"Request Header Fields Too Large",
        Code.INVALID_ARGUMENT,
        f"request headers are larger than {max_header_bytes} bytes",
    )

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _rejected = False
        _started = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return
            if self._header_timer is None and not self._started:
                self._arm()  # a kept-alive connection starting its next request
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            if not self._rejected:  # a rejection raised out of the parser is already answered
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            self._header_bytes = 0
            self._started = True
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._started = False
            super().on_response_complete()

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > max_header_bytes:
                self._reject(too_large_body)
                raise _Rejected  # stops the parser: nothing of this request reaches the app

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._on_header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served: its headers were complete after all
            if self._started:
                self._reject(timeout_body)
            elif not self.transport.is_closing():
                self.transport.close()  # connected and silent: nothing to answer

        def _reject(self, response: bytes) -> None:
            self._rejected = True
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return GuardedHttpToolsProtocol


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing a rejected request."""


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (RFC 9112 §6.3: Transfer-Encoding, or a non-zero
    Content-Length). A request without either has none to wait for: most calls (GET, DELETE) skip the
    bounded receive entirely."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


def bounded_receive(receive: Receive, timeout: float) -> Receive:
    """``receive`` with a deadline for the request body: ``timeout`` seconds from now (the end of the
    headers) to its last byte. Past it, ``receive()`` raises :class:`RequestTimeout` (408) in the route
    reading the body. Later reads (a stream waiting for the disconnect) are not bounded.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    body_done = False

    async def receive_before_deadline() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            body_done = True
            raise RequestTimeout(f"the request body was not received in {timeout:g}s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return receive_before_deadline
