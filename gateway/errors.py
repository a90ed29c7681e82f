"""Errors as outcomes: one exception type carrying a canonical status, and the one gRPC ↔ HTTP table.

A :class:`GatewayError` is an *expected* outcome (a missing room, bad input, a backend that is down) and is
answered with its status and message on every transport. Anything else that escapes a handler is a bug: it
is logged with its traceback and answered with a generic INTERNAL message, never with the traceback
(grpclib's ``GRPCError`` vs ``Stream.__aexit__`` split).

The status codes are the canonical ones of ``google.rpc.Code``; the HTTP statuses follow grpc-gateway's
``HTTPStatusFromCode``.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical status codes (``google/rpc/code.proto``), shared by gRPC and the REST error body."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: grpc-gateway's ``runtime.HTTPStatusFromCode``.
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class GatewayError(Exception):
    """An expected outcome with a canonical status, answered on every transport.

    :param code: the canonical status.
    :param message: safe to show to the client: never a secret, a token or a stack trace.
    :param http_status: overrides the HTTP status of ``code`` (413 and 415 are INVALID_ARGUMENT with a more
        precise HTTP status).
    """

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, *, code: Code | None = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.http_status = http_status if http_status is not None else HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class InvalidArgument(GatewayError):
    code = Code.INVALID_ARGUMENT


class NotFound(GatewayError):
    code = Code.NOT_FOUND


class RoomDeleted(NotFound):
    """NOT_FOUND because the room was deleted (its tombstone stays), not because it never existed: a surface
    whose vendor tells the two apart (Reflect's 410 Gone) needs no second read."""


class AlreadyExists(GatewayError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(GatewayError):
    code = Code.PERMISSION_DENIED


class Unauthenticated(GatewayError):
    code = Code.UNAUTHENTICATED


class FailedPrecondition(GatewayError):
    code = Code.FAILED_PRECONDITION


class Aborted(GatewayError):
    code = Code.ABORTED


class OutOfRange(GatewayError):
    """A position past what exists or is retained (ListChanges' ``afterSeq``): 400 on REST."""

    code = Code.OUT_OF_RANGE


class ResourceExhausted(GatewayError):
    code = Code.RESOURCE_EXHAUSTED


class Unimplemented(GatewayError):
    code = Code.UNIMPLEMENTED


class Unavailable(GatewayError):
    code = Code.UNAVAILABLE


class Internal(GatewayError):
    code = Code.INTERNAL


def error_body(code: Code, message: str, http_status: int | None = None) -> dict[str, object]:
    """The native REST error shape: ``{"error": {"code": <http>, "status": "<CODE>", "message": "…"}}``."""
    return {
        "error": {
            "code": http_status if http_status is not None else HTTP_STATUS[code],
            "status": code.name,
            "message": message,
        }
    }
