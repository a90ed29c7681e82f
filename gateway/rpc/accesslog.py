"""One access-log line per gRPC call, from grpclib's server events (logger ``room_gateway.access``)::

    grpc /roomgateway.v1.RoomService/GetRoom OK key=admin 0.8ms client=127.0.0.1

:func:`install_access_log` must be installed *before* the auth listener
(:func:`gateway.rpc.auth.install_auth`), so that calls it refuses are timed and logged too:

- its ``RecvRequest`` listener notes the start, the method and the peer, wraps the call's ``method_func``
  (which runs after every ``RecvRequest`` listener, auth included) to note the principal's *name*, and
  arranges for the line to be written when the call's task ends;
- a ``SendTrailingMetadata`` listener notes the status;
- a call that ends without trailers (the client cancelled or went away) is logged as ``CANCELLED``.

The line never holds metadata (keys, tokens), messages or status messages. Calls grpclib refuses before
any event (an unknown method, a wrong content type) are not logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from grpclib.events import RecvRequest, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from gateway.edge.accesslog import LOGGER_NAME, key_name
from gateway.rpc.auth import current_principal

log = logging.getLogger(LOGGER_NAME)


@dataclass(slots=True)
class _Call:
    method: str
    client: str
    start: float = field(default_factory=time.perf_counter)
    key: str = "-"
    status: str = "CANCELLED"


_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("room_gateway_grpc_access", default=None)


#: Loggers of libraries under the gateway that write header values, credentials included, at DEBUG:
#: hpack logs every header it decodes (``x-api-key``, ``authorization``). Held at WARNING, whatever the
#: process's level, so that turning on DEBUG logging never writes a key.
SECRET_BEARING_LOGGERS = ("hpack",)


def quiet_secret_bearing_loggers() -> None:
    """Raise :data:`SECRET_BEARING_LOGGERS` to WARNING (unless set higher)."""
    for name in SECRET_BEARING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def install_access_log(server: Server, logger: logging.Logger = log) -> None:
    """Log every call ``server`` receives; install it before the auth listener (see the module docstring).

    It also quiets the loggers that would write credentials (:func:`quiet_secret_bearing_loggers`).
    """
    quiet_secret_bearing_loggers()

    async def on_request(event: RecvRequest) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - grpclib runs each call in its own task
            return
        call = _Call(event.method_name, _peer_host(event.peer))
        _call.set(call)
        handler = event.method_func

        async def with_principal(stream: Any) -> None:
            try:
                call.key = key_name(current_principal())
            except GRPCError:
                pass  # health checks: no credentials
            await handler(stream)

        event.method_func = with_principal
        task.add_done_callback(lambda _: _write(logger, call))

    async def on_trailers(event: SendTrailingMetadata) -> None:
        call = _call.get()
        if call is not None:
            call.status = event.status.name

    listen(server, RecvRequest, on_request)
    listen(server, SendTrailingMetadata, on_trailers)


def _write(logger: logging.Logger, call: _Call) -> None:
    latency_ms = round((time.perf_counter() - call.start) * 1000, 3)
    fields = {
        "transport": "grpc",
        "method": call.method,
        "status": call.status,
        "key": call.key,
        "latency_ms": latency_ms,
        "client": call.client,
    }
    logger.info(
        "grpc %s %s key=%s %.1fms client=%s",
        call.method,
        call.status,
        call.key,
        latency_ms,
        call.client,
        extra={"access": fields},
    )


def _peer_host(peer: Any) -> str:
    try:
        address = peer.addr()
    except Exception:  # a closed transport has no address left
        return "-"
    return str(address[0]) if address else "-"
