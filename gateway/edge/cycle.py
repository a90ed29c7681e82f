"""The HTTP/1.1 response path of the guarded protocol: uvicorn's, minus re-checking what the gateway wrote.

uvicorn's ``RequestResponseCycle.send`` checks every response header as the app hands it over — two regular
expression searches, a ``lower()`` and three comparisons per header — and so does :class:`Cycle` for any
header in the message's ``headers``: a value taken from a request (a surface's, an error's) must still be
refused when it could split the response. But most of a gateway answer's header lines are the gateway's
own, made from numbers and from request ids it checked already: the ``RateLimit-*`` triple and
``x-request-id`` (:class:`gateway.edge.observe.ObservedSend`), and uvicorn's own ``date`` line. Checked one
by one, those cost a REST GET some 17k instructions of ~315k (bench/RESULTS.md), more than the rate limit's
counting. Here

- the server's default headers (``date``, changed once a second) are encoded once per list uvicorn makes;
- a header name is checked once (a table of names found valid), its value per response, as uvicorn does;
- lines the gateway made itself ride in the start message as bytes (:data:`HEAD`) and are written as they
  are. Only what can be trusted so goes there: names without a meaning for the framing (never
  ``content-length``, ``transfer-encoding`` or ``connection``), values that are numbers or checked ids.

A server that offers this says so in the request's scope (``scope["extensions"][HEAD]``); without it (any
other ASGI server, the tests' in-process transports) the same headers go in ``headers`` as before.
Framing is uvicorn's: ``content-length`` counted, chunked when there is none (streams), nothing written for
``HEAD``, ``connection: close`` when the connection will not be kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

from gateway.coalesce import CoalescingTransport

#: The ASGI extension (and start-message key): header lines as bytes, ``name: value\r\n`` each, written as
#: they are. Only for names and values made by the gateway (see the module docstring).
HEAD = "room_gateway.head"

_PLAIN, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _CONTENT_TYPE = range(5)
_KINDS = {
    b"content-type": _CONTENT_TYPE,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
}
#: Header names found valid, as sent → (lower-cased, what it means for the framing). Names come from code
#: (Starlette's, the surfaces'), so few; the table stops growing at this size.
_NAMES: dict[bytes, tuple[bytes, int]] = {}
_NAMES_SIZE = 512
#: Content types found valid (not secrets: media types), up to this many.
_TYPES: set[bytes] = set()
_TYPES_SIZE = 64

#: uvicorn's default headers (the ``date`` line, and configured ones) as the last list it made, encoded.
_defaults: tuple[object, bytes] = (None, b"")


def _name(name: bytes) -> tuple[bytes, int]:
    """A header name not seen yet: checked as uvicorn checks it, then remembered."""
    if HEADER_RE.search(name):
        raise RuntimeError("Invalid HTTP header name.")
    lowered = name.lower()
    known = (lowered, _KINDS.get(lowered, _PLAIN))
    if len(_NAMES) < _NAMES_SIZE:
        _NAMES[name] = known
    return known


def _default_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    global _defaults
    if _defaults[0] is not headers:  # uvicorn makes a new list each second (its date line)
        _defaults = (headers, b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in headers))
    return _defaults[1]


class Cycle(RequestResponseCycle):
    """One request and its response on a guarded connection (:func:`gateway.edge.timeouts.guarded_protocol`):
    uvicorn's cycle with its own ``send`` (see the module docstring), and a callback for the client's
    leaving (:attr:`on_disconnect`)."""

    #: Called once, by the connection, when the client goes away during the response: a stream
    #: (:func:`gateway.edge.streams.pump`) learns so without a task of its own waiting on ``receive()``.
    #: Found from the app through ``receive.__self__`` (uvicorn hands the app this cycle's ``receive``).
    on_disconnect: Callable[[], None] | None = None

    async def send(self, message: ASGISendEvent) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False
            status: int = message["status"]
            content = [STATUS_LINE[status], _default_lines(self.default_headers)]
            closing = False
            for name, value in message.get("headers", ()):
                known = _NAMES.get(name)
                lowered, kind = known if known is not None else _name(name)
                if kind == _CONTENT_TYPE:
                    if value not in _TYPES:  # types repeat (a handful per app): each one checked once
                        if HEADER_VALUE_RE.search(value):
                            raise RuntimeError("Invalid HTTP header value.")
                        if len(_TYPES) < _TYPES_SIZE:
                            _TYPES.add(value)
                elif not (kind == _CONTENT_LENGTH and value.isdigit()) and HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")  # (ASCII digits hold no control byte)
                elif kind:
                    if kind == _CONTENT_LENGTH:
                        if self.chunked_encoding is None:
                            self.expected_content_length = int(value.decode())
                            self.chunked_encoding = False
                    elif kind == _TRANSFER_ENCODING:
                        if value.lower() == b"chunked":
                            self.expected_content_length = 0
                            self.chunked_encoding = True
                    elif b"close" in [token.lower().strip() for token in value.split(b",")]:
                        self.keep_alive = False
                        closing = True
                content += (lowered, b": ", value, b"\r\n")
            own = cast(dict[str, object], message).get(HEAD)
            if own:
                content.append(cast(bytes, own))
            if not self.keep_alive and not closing:
                content.append(b"connection: close\r\n")
            if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
                self.chunked_encoding = True  # neither a length nor chunks announced: a stream
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            self.transport.write(b"".join(content))
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            # A stream's chunk (more to come) goes at once, with nothing scheduled (write_now); the end of a
            # response is held until the response completes, its head with it (gateway.coalesce). A guarded
            # connection's transport (edge.timeouts), annotated rather than cast(): no call per message.
            transport: CoalescingTransport = self.transport  # type: ignore[assignment]
            write = transport.write_now if more_body else transport.write
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
            elif self.chunked_encoding:
                if body:
                    chunk = b"%x\r\n%s\r\n" % (len(body), body)
                    write(chunk if more_body else chunk + b"0\r\n\r\n")
                elif not more_body:
                    write(b"0\r\n\r\n")
            else:
                size = len(body)
                if size > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= size
                write(body)
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )
