"""Raw ASGI request and response primitives of the edge: JSON and error responses, the request body.

The edge answers with plain ``send`` calls rather than Starlette ``Response`` objects on the hot path: a
JSON response is two messages, and the body is already bytes (orjson).

The native REST error response is made here and nowhere else: :func:`error_bytes` is its body, which
:func:`send_error` sends (ASGI), :func:`error_response` wraps for Starlette endpoints, and the stream
framings and the HTTP protocol's own 408/431 answers (:mod:`gateway.edge.timeouts`) embed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.auth.policy import WWW_AUTHENTICATE
from gateway.errors import Code, GatewayError, InvalidArgument, error_body
from gateway.observability.calls import note_code

JSON_TYPE = b"application/json"
_INTERNAL_MESSAGE = "internal error"

Headers = Iterable[tuple[bytes, bytes]]


class ClientDisconnected(Exception):
    """The client went away while its request body was being read."""


class RequestTooLarge(InvalidArgument):
    """A body over the configured limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes", http_status=413)


async def send_json(send: Send, status: int, body: bytes, headers: Headers = ()) -> None:
    """Send a complete ``application/json`` response whose body is already encoded."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON_TYPE),
                (b"content-length", str(len(body)).encode("ascii")),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def with_headers(send: Send, headers: Headers) -> Send:
    """``send`` adding ``headers`` to the response (for an app called without the edge's own ``send``)."""
    extra = list(headers)

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers


def error_bytes(error: GatewayError) -> bytes:
    """The body of the native REST error response to ``error`` (:func:`gateway.errors.error_body`)."""
    return orjson.dumps(error_body(error.code, error.message, error.http_status))


async def send_error(send: Send, error: GatewayError, headers: Headers = ()) -> None:
    """Send ``error`` in the native REST shape, with its HTTP status. A 401 always carries the
    ``WWW-Authenticate`` challenge (RFC 9110 §15.5.2), also when it comes from a call (an invalidated room
    token) rather than from the edge's authentication stage."""
    note_code(error.code)  # what the call counts as in the metrics and its access line
    headers = list(headers)
    if error.code is Code.UNAUTHENTICATED and not any(name == b"www-authenticate" for name, _ in headers):
        headers.append((b"www-authenticate", WWW_AUTHENTICATE.encode("ascii")))
    await send_json(send, error.http_status, error_bytes(error), headers)


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    """:func:`send_error` as a Starlette ``Response``, for endpoints and exception handlers off the hot path
    (probes, Starlette's own 404 and 405)."""
    note_code(error.code)
    response = Response(error_bytes(error), error.http_status, headers, media_type="application/json")
    if error.code is Code.UNAUTHENTICATED and "www-authenticate" not in response.headers:
        response.headers["www-authenticate"] = WWW_AUTHENTICATE
    return response


def internal_error() -> GatewayError:
    """The answer to a bug: a generic message, never the exception's text (it is logged instead)."""
    return GatewayError(_INTERNAL_MESSAGE, code=Code.INTERNAL)


class RequestHeaders:
    """The request headers the edge reads, found in one pass over ``scope["headers"]``."""

    __slots__ = ("accept", "chunked", "content_length", "content_type", "last_event_id")

    def __init__(self, scope: Scope) -> None:
        self.accept = self.content_type = ""
        self.content_length: int | None = None
        self.chunked = False
        #: A reconnecting ``EventSource``'s position (``None``: not sent).
        self.last_event_id: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    raise InvalidArgument("Content-Length is not a number") from None
            elif name == b"accept":
                self.accept = value.decode("latin-1")
            elif name == b"transfer-encoding":
                self.chunked = True
            elif name == b"last-event-id":
                self.last_event_id = value.decode("latin-1")

    @property
    def may_have_body(self) -> bool:
        return self.chunked or bool(self.content_length)


async def read_body(receive: Receive, headers: RequestHeaders, limit: int) -> bytes:
    """The whole request body, refused beyond ``limit`` bytes (announced or streamed).

    :raises RequestTooLarge: the body is, or announces itself as, larger than ``limit``.
    :raises ClientDisconnected: the client left before sending it all.
    """
    if not headers.may_have_body:
        return b""
    if headers.content_length is not None and headers.content_length > limit:
        raise RequestTooLarge(limit)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def dumps(value: Any) -> bytes:
    """orjson with the options the edge uses everywhere (non-str dict keys are stringified)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
