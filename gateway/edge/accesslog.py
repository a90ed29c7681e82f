"""One access-log line per REST call: a pure ASGI middleware, outermost, so it sees 401s and 429s too.

The line (logger ``room_gateway.access``, level INFO) holds the method, the path, the status, the *name* of
the key that made the call (``-`` when none was accepted), the latency and the client address::

    GET /v1/rooms/lobby 200 key=admin 1.3ms client=127.0.0.1

It never holds a credential, a room token, a query string (values could carry anything) or a body. The
path is the one sent on the wire (percent-encoded), with any byte that is not printable ASCII escaped, so a
hostile path cannot forge log lines. The same fields are attached to the record as ``record.access`` (a
dict) for structured formatters. A stream's line is written when the stream ends: its latency is its length.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.policy import Principal
from gateway.edge.routing import PRINCIPAL

LOGGER_NAME = "room_gateway.access"
log = logging.getLogger(LOGGER_NAME)

#: Longest path written (a room id alone may be 512 characters, percent-encoded up to three times that).
MAX_LOGGED_PATH = 2048
_PRINTABLE = frozenset(range(0x21, 0x7F))
_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]")


def logged_path(scope: Scope) -> str:
    """The request path as sent, without the query string, safe to write on one log line."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        raw = str(scope.get("path", "")).encode("utf-8", "replace")
    raw = raw.partition(b"?")[0][:MAX_LOGGED_PATH]
    if _UNPRINTABLE.search(raw) is None:  # the usual case, checked in C
        return raw.decode("ascii")
    return "".join(chr(byte) if byte in _PRINTABLE else f"%{byte:02X}" for byte in raw)


def key_name(principal: object) -> str:
    """The name of the key (or room token holder) that made the call, escaped as a path is; ``-`` for none.

    A room token's name may come from a caller (its ``userName``): it must not forge log lines either.
    """
    if not isinstance(principal, Principal):
        return "-"
    name = principal.name[:256]
    if name.isprintable() and " " not in name:
        return name
    return "".join(c if c.isprintable() and c != " " else f"%{ord(c):02X}" for c in name)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


class AccessLogMiddleware:
    """Log one line per HTTP request once its response is over (see the module docstring).

    :param app: the wrapped ASGI app.
    :param logger: where lines go (``room_gateway.access``).
    """

    def __init__(self, app: ASGIApp, logger: logging.Logger = log) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # An exception escaping the app becomes a 500 from the server (if nothing was sent yet).
            self._write(scope, status or 500, time.perf_counter() - start)

    def _write(self, scope: Scope, status: int, seconds: float) -> None:
        fields: dict[str, Any] = {
            "transport": "http",
            "method": scope.get("method", "-"),
            "path": logged_path(scope),
            "status": status,
            "key": key_name(scope.get(PRINCIPAL)),
            "latency_ms": round(seconds * 1000, 3),
            "client": client_address(scope),
        }
        self.logger.info(
            "%s %s %d key=%s %.1fms client=%s",
            fields["method"],
            fields["path"],
            status,
            fields["key"],
            fields["latency_ms"],
            fields["client"],
            extra={"access": fields},
        )
