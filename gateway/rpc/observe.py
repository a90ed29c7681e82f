"""Every gRPC call observed, from grpclib's server events: metrics, request id, access line (and a span).

:func:`install_observer` must be installed *before* the auth listener (:func:`gateway.rpc.auth.install_auth`),
so that calls it refuses are counted, timed and logged too:

- its ``RecvRequest`` listener makes the call's :class:`~gateway.observability.calls.Call` (the request id:
  ``x-request-id`` from a trusted proxy, else a new one), notes the start, the method and the peer, wraps the
  ``method_func`` of a server stream to count it open and its messages (the auth listener notes the
  principal on the call: its *name* goes in the line); the call is finished (counted, logged) when its
  task ends;
- a ``SendInitialMetadata`` listener echoes the request id (``x-request-id``) — in the trailers of a
  trailers-only answer (an error before any message);
- a ``SendTrailingMetadata`` listener notes the status; a call that ends without trailers (the client
  cancelled or went away) counts as ``CANCELLED``.

The access line (:func:`gateway.edge.accesslog.write_access_line`)::

    grpc /roomgateway.v1.RoomService/GetRoom OK key=admin 0.8ms client=127.0.0.1 request_id=4f1c0a9e2b7d3c58

never holds metadata (keys, tokens), messages or status messages. Calls grpclib refuses before any event
(an unknown method, a wrong content type) are neither counted nor logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from grpclib.const import Status
from grpclib.events import RecvRequest, SendInitialMetadata, SendTrailingMetadata, listen
from grpclib.exceptions import StreamTerminatedError
from grpclib.server import Server

from gateway.edge.accesslog import LOGGER_NAME, AccessLine, key_name, write_access_line
from gateway.observability.calls import CURRENT, Call, MethodRecorder
from gateway.observability.observer import Observer

log = logging.getLogger(LOGGER_NAME)
TRANSPORT = "grpc"
_REQUEST_ID = "x-request-id"

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


@dataclass(slots=True)
class _GrpcCall(Call):
    method: str = ""
    client: str = "-"
    streaming: bool = False
    start: float = field(default_factory=time.perf_counter)
    headers_sent: bool = False
    span: Any = None


def install_observer(server: Server, observer: Observer, logger: logging.Logger = log) -> None:
    """Observe every call ``server`` receives; install it before the auth listener (module docstring).

    It also quiets the loggers that would write credentials (:func:`quiet_secret_bearing_loggers`).
    """
    quiet_secret_bearing_loggers()
    mapping: dict[str, Any] = server._mapping  # grpclib keeps its method table there (path → Handler)
    #: method path → (recorder, server streaming), bound once per method
    methods: dict[str, tuple[MethodRecorder, bool]] = {}
    for path, handler in mapping.items():
        name = path.rpartition("/")[2]
        surface = observer.grpc_surfaces.get(path, "native")
        methods[path] = (observer.recorder(TRANSPORT, surface, name), handler.cardinality.server_streaming)
    take_ids = observer.takes_request_ids
    tracing = observer.tracing

    async def on_request(event: RecvRequest) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - grpclib runs each call in its own task
            return
        recorder, streaming = methods[event.method_name]
        client = _peer_host(event.peer)
        given = event.metadata.get(_REQUEST_ID) if take_ids else None
        call = _GrpcCall(
            observer.request_id(client, given if isinstance(given, str) else None),
            method=event.method_name,
            client=client,
            streaming=streaming,
        )
        CURRENT.set(call)  # the call's own task: the handler and its logs see it
        if tracing is not None:
            call.span = tracing.grpc_server_span(event.method_name, event.metadata, call)
        if streaming:  # a unary call runs unwrapped: its principal is noted by the auth listener
            event.method_func = _CountedStream(event.method_func, recorder)
        task.add_done_callback(functools.partial(_finish, observer, logger, call, recorder))

    async def on_headers(event: SendInitialMetadata) -> None:
        call = CURRENT.get()
        if isinstance(call, _GrpcCall):
            call.headers_sent = True
            event.metadata[_REQUEST_ID] = call.request_id
            if call.span is not None:
                event.metadata.update(tracing.grpc_metadata(call.span))  # type: ignore[union-attr]

    async def on_trailers(event: SendTrailingMetadata) -> None:
        call = CURRENT.get()
        if isinstance(call, _GrpcCall):
            call.code = event.status.name
            if event.status is Status.UNKNOWN and isinstance(sys.exc_info()[1], StreamTerminatedError):
                # The client reset the stream while the handler waited on it: grpclib's Stream.__aexit__
                # still "sends" UNKNOWN trailers (which h2 then drops), so the call would be logged and
                # counted as a server error. It is a cancellation; the exception being handled says so.
                call.code = "CANCELLED"
            if not call.headers_sent:  # a trailers-only answer: its only headers
                event.metadata[_REQUEST_ID] = call.request_id

    listen(server, RecvRequest, on_request)
    listen(server, SendInitialMetadata, on_headers)
    listen(server, SendTrailingMetadata, on_trailers)


class _CountedStream:
    """A server stream's handler, counted open while it runs and per message sent.

    Objects with slots, not closures: a stream lives long, and each closure was a function and its cells,
    objects more for the cyclic collector to walk per open stream (bench/RESULTS.md, session 16).
    """

    __slots__ = ("handler", "recorder")

    def __init__(self, handler: Any, recorder: MethodRecorder) -> None:
        self.handler = handler
        self.recorder = recorder

    async def __call__(self, stream: Any) -> None:
        recorder = self.recorder
        recorder.streams.inc()
        stream.send_message = _CountedSend(stream.send_message, recorder.messages)
        try:
            await self.handler(stream)
        finally:
            recorder.streams.dec()


class _CountedSend:
    """A stream's ``send_message``, counting each message sent."""

    __slots__ = ("messages", "send")

    def __init__(self, send: Any, messages: Any) -> None:
        self.send = send
        self.messages = messages

    async def __call__(self, message: Any) -> None:
        await self.send(message)
        self.messages.inc()


def _finish(
    observer: Observer, logger: logging.Logger, call: _GrpcCall, recorder: MethodRecorder, _task: Any = None
) -> None:
    """Count, time and log the call, as its task ends (the task: ``add_done_callback``'s argument)."""
    seconds = time.perf_counter() - call.start
    code = call.code or "CANCELLED"
    recorder.finish(code, seconds, call.streaming)
    if call.span is not None:
        observer.tracing.end_grpc_server_span(call.span, recorder, code)  # type: ignore[union-attr]
    if observer.access_log and logger.isEnabledFor(logging.INFO):
        line = AccessLine(
            "grpc",
            call.method,
            "",
            recorder.method,
            recorder.surface,
            code,
            code,
            key_name(call.principal),
            seconds,
            call.client,
            call.request_id,
            call.trace_id,
        )
        write_access_line(logger, line)


def _peer_host(peer: Any) -> str:
    try:
        address = peer.addr()
    except Exception:  # a closed transport has no address left
        return "-"
    return str(address[0]) if address else "-"
