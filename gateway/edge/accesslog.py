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
from typing import Any, NamedTuple

from starlette.types import Scope

from gateway.auth.policy import Principal
from gateway.logs import line_sink, write_info

LOGGER_NAME = "room_gateway.access"
log = logging.getLogger(LOGGER_NAME)

#: Longest path written (a room id alone may be 512 characters, percent-encoded up to three times that).
MAX_LOGGED_PATH = 2048
_PRINTABLE = frozenset(range(0x21, 0x7F))
_UNPRINTABLE = re.compile(rb"[^\x21-\x7e]")


#: Paths made safe already, by raw path (calls repeat their paths; cleared when full).
LOGGED_PATHS: dict[bytes, str] = {}
_LOGGED_SIZE = 4096


def logged_path(scope: Scope) -> str:
    """The request path as sent, without the query string, safe to write on one log line."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        raw = str(scope.get("path", "")).encode("utf-8", "replace")
    logged = LOGGED_PATHS.get(raw)
    if logged is None:
        if len(LOGGED_PATHS) >= _LOGGED_SIZE:
            LOGGED_PATHS.clear()
        logged = LOGGED_PATHS[raw] = _safe_path(raw)
    return logged


def _safe_path(raw: bytes) -> str:
    raw = raw.partition(b"?")[0][:MAX_LOGGED_PATH]
    if _UNPRINTABLE.search(raw) is None:  # the usual case, checked in C
        return raw.decode("ascii")
    return "".join(chr(byte) if byte in _PRINTABLE else f"%{byte:02X}" for byte in raw)


def key_name(principal: object) -> str:
    """The name of the key (or room token holder) that made the call, escaped as a path is
    (:attr:`Principal.logged_name <gateway.auth.policy.Principal.logged_name>`); ``-`` for none."""
    return principal.logged_name if isinstance(principal, Principal) else "-"


_LINE = "%s %s %s key=%s %.1fms client=%s request_id=%s%s"  # gRPC's line, and any record's message
#: ``0.0ms`` … ``99.9ms``: the usual latencies' text, made once (a float's ``%.1f`` was ~5k instructions).
_LATENCIES = tuple(f"{tenths // 10}.{tenths % 10}ms" for tenths in range(1000))
#: ``"100"`` … ``"599"``: the statuses' text, made once (an int formatted in the line was ~0.7k instructions).
_STATUSES: dict[int | str, int | str] = {status: str(status) for status in range(100, 600)}


def http_text(
    method: str,
    path: str,
    status: int | str,
    key: str,
    seconds: float,
    client: str,
    request_id: str,
    trace_id: str | None,
) -> str:
    """A REST call's line, ``GET /v1/rooms/lobby 200 key=admin 1.3ms client=127.0.0.1 request_id=…``, from
    fields made safe already (:func:`logged_path`, :func:`key_name`)."""
    # Tenths of a millisecond, rounded as %.1f rounds; __round__ is a method call, where int() or round()
    # of a float cost a type's or a builtin's call, ~1k instructions.
    tenths = (seconds * 10000).__round__()
    latency = _LATENCIES[tenths] if tenths < 1000 else f"{tenths // 10}.{tenths % 10}ms"
    trace = f" trace_id={trace_id}" if trace_id else ""
    status = _STATUSES.get(status, status)
    return f"{method} {path} {status} key={key} {latency} client={client} request_id={request_id}{trace}"


class AccessLine(NamedTuple):
    """One call's access line, of either transport: its text (:meth:`text`) and, for structured formats,
    its fields (:meth:`fields`), made only when a formatter needs them (a tuple, not a dict, per call)."""

    transport: str  # "http" or "grpc"
    method: str  # REST: the HTTP method; gRPC: the method's path
    path: str  # REST: the request path (logged_path); gRPC: ""
    route: str  # the method's name (the proto's), a surface's route, or "-"
    surface: str
    status: int | str  # REST: the HTTP status; gRPC: the code's name
    code: str  # the gRPC code's name (REST: what the status maps from)
    key: str  # key_name()
    seconds: float
    client: str
    request_id: str
    trace_id: str | None = None

    def text(self) -> str:
        """``GET /v1/rooms/lobby 200 key=admin 1.3ms client=127.0.0.1 request_id=4f1c0a9e2b7d3c58``"""
        if self.transport == "http":
            return http_text(
                self.method,
                self.path,
                self.status,
                self.key,
                self.seconds,
                self.client,
                self.request_id,
                self.trace_id,
            )
        return _LINE % self._args(False)

    def _args(self, http: bool) -> tuple[Any, ...]:
        trace = self.trace_id
        return (
            self.method if http else "grpc",
            self.path if http else self.method,  # gRPC: the method's path
            self.status,
            self.key,
            self.seconds * 1000,
            self.client,
            self.request_id,
            f" trace_id={trace}" if trace else "",
        )

    def fields(self) -> dict[str, Any]:
        """The line's fields (``record.access``; the keys of a JSON line)."""
        fields: dict[str, Any] = {"transport": self.transport, "method": self.method}
        if self.transport == "http":
            fields["path"] = self.path
        fields.update(route=self.route, surface=self.surface, status=self.status)
        if self.transport == "http":
            fields["code"] = self.code
        fields.update(
            key=self.key,
            latency_ms=round(self.seconds * 1000, 3),
            client=self.client,
            request_id=self.request_id,
        )
        if self.trace_id:
            fields["trace_id"] = self.trace_id
        return fields


def write_access_line(logger: logging.Logger, line: AccessLine, text: str | None = None) -> None:
    """Write one access line of either transport (its fields attached as ``record.access``)::

    GET /v1/rooms/lobby 200 key=admin 1.3ms client=127.0.0.1 request_id=4f1c0a9e2b7d3c58
    grpc /roomgateway.v1.RoomService/GetRoom OK key=admin 0.8ms client=127.0.0.1 request_id=…

    :param text: ``line.text()``, when the caller made it already.
    """
    if text is None:
        text = line.text()
    if write_info(logger, text):  # text format, only the gateway's writer listening: the line itself
        return
    sink = line_sink(logger)
    if sink is None or sink.format == "text":  # other handlers listen: a record, as any logger call makes
        logger.info(_LINE, *line._args(line.transport == "http"), extra={"access": line.fields()})
    elif logger.isEnabledFor(logging.INFO):  # json, only the gateway's writer listening
        sink.write_json(logger, text, line.fields())
