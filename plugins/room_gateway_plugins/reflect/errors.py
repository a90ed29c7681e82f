"""Reflect's response envelopes, and the one table from our statuses to Reflect's.

Reflect answers ``{"result": T, "error": null}`` on success and ``{"result": null, "error": {"code": <http>,
"resource": "request" | "rooms" | …, "message": "…"}}`` on failure (its REST overview, "Responses"). Our
:class:`~gateway.errors.GatewayError` codes become Reflect's statuses here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import HTTP_STATUS, Code, GatewayError
from gateway.surfaces import ErrorFrame

Headers = list[tuple[bytes, bytes]]
#: What the route sends: status, JSON body, extra headers.
Answer = tuple[int, bytes, Headers]

#: Reflect's ``resource`` values used here: the request itself, rooms, apps, connections.
REQUEST = "request"
ROOMS = "rooms"
APPS = "apps"
CONNECTIONS = "connections"

#: Our status → Reflect's HTTP status. Reflect answers a room in the wrong state with 409 ("Room is not
#: open", "Room is not closed", "Room already exists"), where the native API says 400 FAILED_PRECONDITION.
_STATUS: dict[Code, int] = {
    Code.ALREADY_EXISTS: 409,
    Code.FAILED_PRECONDITION: 409,
    Code.ABORTED: 409,
}

#: Statuses whose error concerns the request (its syntax, its credentials, its rate) rather than a room.
_ABOUT_THE_REQUEST = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.OUT_OF_RANGE,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.RESOURCE_EXHAUSTED,
        Code.UNIMPLEMENTED,
    }
)


class ReflectError(Exception):
    """An answer in Reflect's error shape.

    :param status: the HTTP status, repeated as ``error.code``.
    :param resource: what the error is about (``request``, ``rooms``, …).
    :param message: safe to show to the client.
    :param headers: extra response headers (``Allow`` on a 405, ``WWW-Authenticate`` on a 401).
    """

    def __init__(self, status: int, resource: str, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.resource = resource
        self.message = message
        self.headers = headers or []

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "result": None,
                "error": {"code": self.status, "resource": self.resource, "message": self.message},
            }
        )

    def answer(self) -> Answer:
        return self.status, self.body(), self.headers


def from_gateway_error(error: GatewayError, resource: str = ROOMS) -> ReflectError:
    """``error`` in Reflect's terms; ``resource`` names what a domain error (not found, conflict) is about."""
    if error.code in _STATUS:
        status = _STATUS[error.code]
    elif error.http_status != HTTP_STATUS[error.code]:
        status = error.http_status  # a more precise status chosen at the source (413, 415)
    else:
        status = HTTP_STATUS[error.code]
    about = REQUEST if error.code in _ABOUT_THE_REQUEST else resource
    return ReflectError(status, about, error.message)


def bad_request(message: str) -> ReflectError:
    return ReflectError(400, REQUEST, message)


def success_body(result: Any) -> bytes:
    return orjson.dumps({"result": result, "error": None})


def success(result: Any) -> Answer:
    return 200, success_body(result), []


#: Every Reflect call's frame: a GatewayError raised outside a command (reading the body: 413) is about the
#: request; a bug is Reflect's 500.
FRAME: ErrorFrame[ReflectError, Answer] = ErrorFrame(
    "reflect",
    ReflectError,
    expected=lambda error: from_gateway_error(error, REQUEST),
    unexpected=lambda: ReflectError(500, REQUEST, "internal error"),
    render=ReflectError.answer,
)
