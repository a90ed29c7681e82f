"""SignalWire's answers: JSON bodies, and its two error shapes.

Errors as the vendor sends them: ``{"error": "Not Found"}`` (a status's reason phrase) for 401, 403, 404,
405, 413, 415, 429, 500, 503; validation errors ``422 {"errors": [{type, code, message, attribute}]}`` with
the vendor's codes (``missing_required_parameter``, ``invalid_parameter``, ``value_not_unique``). A native
:class:`~gateway.errors.GatewayError` becomes the vendor shape of its HTTP status (:func:`from_gateway`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import Response

from gateway.errors import Code, GatewayError
from gateway.surfaces import ErrorFrame

#: Sent with a 401: the vendor's scheme (RFC 9110 §11.6.1).
WWW_AUTHENTICATE = 'Basic realm="room-gateway (SignalWire)"'


def phrase(status: int) -> str:
    """The reason phrase the vendor's (Rack's) answers carry."""
    return "Payload Too Large" if status == 413 else HTTPStatus(status).phrase


class SignalWireError(Exception):
    """An answer in one of the vendor's error shapes, raised from anywhere in a call."""

    def response(self) -> Response:
        raise NotImplementedError


class VendorError(SignalWireError):
    """An answer in the ``{"error": "<reason>"}`` shape.

    :param status: the HTTP status; the body is its reason phrase.
    :param headers: extra response headers (``WWW-Authenticate`` on a 401).
    """

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(phrase(status))
        self.status = status
        self.headers = headers or {}

    def response(self) -> Response:
        return json_response({"error": phrase(self.status)}, self.status, self.headers)


class VendorInvalid(SignalWireError):
    """A 422 in the ``{"errors": [...]}`` shape, naming the attribute at fault (``None``: the request)."""

    def __init__(self, attribute: str | None, message: str, *, code: str = "invalid_parameter") -> None:
        super().__init__(message)
        self.attribute = attribute
        self.message = message
        self.code = code

    def response(self) -> Response:
        error = {
            "type": "validation_error",
            "code": self.code,
            "message": self.message,
            "attribute": self.attribute,
        }
        return json_response({"errors": [error]}, 422)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def from_gateway(exc: GatewayError, attribute: str | None = None) -> VendorError | VendorInvalid:
    """The vendor's answer to a native outcome.

    Bad input and rule violations (INVALID_ARGUMENT, FAILED_PRECONDITION such as a closed room) are the
    vendor's 422; ALREADY_EXISTS a 422 ``value_not_unique`` on ``attribute``; the rest keep their HTTP
    status in the ``{"error": …}`` shape.
    """
    if exc.code is Code.ALREADY_EXISTS:
        return VendorInvalid(attribute or "name", "Name has already been taken", code="value_not_unique")
    if exc.code is Code.INVALID_ARGUMENT and exc.http_status == 400:
        return VendorInvalid(attribute, exc.message)
    if exc.code is Code.FAILED_PRECONDITION:
        return VendorInvalid(attribute, exc.message, code="cannot_process")
    if exc.code is Code.UNAUTHENTICATED:
        return VendorError(401, {"WWW-Authenticate": WWW_AUTHENTICATE})
    status = exc.http_status if exc.http_status in _PHRASED else 500
    return VendorError(status)


_PHRASED = frozenset({400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 501, 503, 504})


#: Every SignalWire call's frame: a native outcome in the vendor's shape, a bug a bare 500.
FRAME: ErrorFrame[SignalWireError, Response] = ErrorFrame(
    "signalwire",
    SignalWireError,
    expected=from_gateway,
    unexpected=lambda: VendorError(500),
    render=lambda error: error.response(),  # each shape renders itself
)
