"""Access lines: their fields made safe to write, and the line itself (REST: :mod:`gateway.edge.observe`;
gRPC: :mod:`gateway.rpc.observe`).

The line (logger ``room_gateway.access``, level INFO) holds the method, the path, the status, the *name* of
the key that made the call (``-`` when none was accepted), the latency, the client address, the request id
and, when tracing is on, the trace id::

    GET /v1/rooms/lobby 200 key=admin 1.3ms client=127.0.0.1 request_id=4f1c0a9e2b7d3c58

It never holds a credential, a room token, a query string (values could carry anything) or a body. The
path is the one sent on the wire (percent-encoded), with any byte that is not printable ASCII escaped, so a
hostile path cannot forge log lines. The same fields are attached to the record as ``record.access`` (a
dict) for structured formatters (``logging.format: json``). A stream's line is written when the stream
ends: its latency is its length.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.types import Scope

from gateway.auth.policy import Principal
from gateway.logs import line_sink

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


_LINE = "%s %s %s key=%s %.1fms client=%s request_id=%s%s"


def write_access_line(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """Write one access line of either transport from its fields (also attached as ``record.access``)::

    GET /v1/rooms/lobby 200 key=admin 1.3ms client=127.0.0.1 request_id=4f1c0a9e2b7d3c58
    grpc /roomgateway.v1.RoomService/GetRoom OK key=admin 0.8ms client=127.0.0.1 request_id=…
    """
    trace = fields.get("trace_id")
    http = fields["transport"] == "http"
    args = (
        fields["method"] if http else "grpc",
        fields["path"] if http else fields["method"],  # gRPC: the method's path
        fields["status"],
        fields["key"],
        fields["latency_ms"],
        fields["client"],
        fields["request_id"],
        f" trace_id={trace}" if trace else "",
    )
    sink = line_sink(logger)
    if sink is not None:  # only the gateway's writer listens: the line itself, no record (gateway.logs)
        sink.write(logger, _LINE % args, fields)
    else:
        logger.info(_LINE, *args, extra={"access": fields})
