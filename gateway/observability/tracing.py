"""Tracing with OpenTelemetry (the optional extra ``room-gateway[otel]``; ``tracing: {enabled: true}``).

Imported only when tracing is switched on: off, the gateway neither imports OpenTelemetry nor pays for it.

- **Export**: a :class:`~opentelemetry.sdk.trace.TracerProvider` of the gateway's own (not the process-wide
  one) with a batch processor and the OTLP/HTTP exporter, configured by the standard variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``…_HEADERS``, ``…_TIMEOUT``,
  ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``). The resource carries
  ``service.name`` (default ``room-gateway``), ``service.version`` and ``service.instance.id``.
- **Propagation**: W3C Trace Context. A call's ``traceparent`` (REST header, gRPC metadata) is the parent
  of its server span; the response carries the server span's own ``traceparent`` (REST header, gRPC
  initial metadata).
- **Spans**: one SERVER span per call, with the HTTP (``http.request.method``, ``http.route``,
  ``url.path``, ``http.response.status_code``) or RPC (``rpc.system``, ``rpc.service``, ``rpc.method``,
  ``rpc.grpc.status_code``) semantic-convention attributes; one CLIENT span per backend operation, its
  child, with ``db.system.name`` and ``db.operation.name``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from gateway.instance import INSTANCE_ID
from gateway.observability.calls import Call, MethodRecorder

_PROPAGATOR = TraceContextTextMapPropagator()
#: ``db.system.name`` of each backend label (semantic conventions' well-known values; others as they are).
_DB_SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite", "redis": "redis"}


@dataclass(slots=True)
class ServerSpan:
    """A call's server span and the context token that made it current."""

    span: trace.Span
    token: object


def _package_version() -> str:
    try:
        return version("room-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
        return "0+unknown"


class Tracing:
    """Spans of one gateway (see the module docstring).

    :param provider: where spans go; default: a provider exporting over OTLP/HTTP as the environment says.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        if provider is None:
            attributes = {"service.version": _package_version(), "service.instance.id": INSTANCE_ID}
            if not os.environ.get("OTEL_SERVICE_NAME"):
                attributes["service.name"] = "room-gateway"
            provider = TracerProvider(resource=Resource.create(attributes))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.provider = provider
        self.tracer = provider.get_tracer("room_gateway", _package_version())

    def shutdown(self) -> None:
        """Export what is pending and stop (at the gateway's stop)."""
        self.provider.shutdown()

    # -- REST ---------------------------------------------------------------------------------------------

    def server_span(self, http_method: str, traceparent: bytes | None, call: Call) -> ServerSpan:
        """Start a REST call's span (the child of ``traceparent``) and make it current in this task."""
        parent = _PROPAGATOR.extract({"traceparent": traceparent.decode("latin-1")}) if traceparent else None
        span = self.tracer.start_span(
            http_method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": http_method},
        )
        call.trace_id = format(span.get_span_context().trace_id, "032x")
        return ServerSpan(span, context.attach(trace.set_span_in_context(span)))

    def response_headers(self, server: ServerSpan) -> list[tuple[bytes, bytes]]:
        """The ``traceparent`` of the server span, as response headers."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(server.span))
        return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()]

    def end_server_span(
        self, server: ServerSpan, recorder: MethodRecorder, scope: Scope, status: int, code: str
    ) -> None:
        """End a REST call's span with what it answered."""
        span = server.span
        route = recorder.method
        span.update_name(f"{scope.get('method', '')} {route}")
        span.set_attributes(
            {
                "http.route": route,
                "url.path": str(scope.get("path", "")),
                "url.scheme": str(scope.get("scheme", "http")),
                "http.response.status_code": status,
                "rpc.grpc.status_code_name": code,
                "room_gateway.surface": recorder.surface,
            }
        )
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(server.token)  # type: ignore[arg-type]  # the token attach returned

    # -- gRPC ---------------------------------------------------------------------------------------------

    def grpc_server_span(self, method_path: str, metadata: Mapping[str, Any], call: Call) -> ServerSpan:
        """Start a gRPC call's span (the child of its ``traceparent`` metadata), current in the call's task
        (the listener runs in it; the task's end drops the context)."""
        traceparent = metadata.get("traceparent")
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if isinstance(traceparent, str) else None
        service, _, method = method_path.strip("/").partition("/")
        span = self.tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        call.trace_id = format(span.get_span_context().trace_id, "032x")
        return ServerSpan(span, context.attach(trace.set_span_in_context(span)))

    def grpc_metadata(self, server: ServerSpan) -> dict[str, str]:
        """The ``traceparent`` of the server span, as initial metadata."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(server.span))
        return carrier

    def end_grpc_server_span(self, server: ServerSpan, recorder: MethodRecorder, code: str) -> None:
        """End a gRPC call's span with its status."""
        from grpclib.const import Status as GrpcStatus

        span = server.span
        span.set_attribute("rpc.grpc.status_code", GrpcStatus[code].value)
        span.set_attribute("room_gateway.surface", recorder.surface)
        if code in ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"):
            span.set_status(Status(StatusCode.ERROR))  # the server-side error codes of the conventions
        span.end()

    # -- backend ------------------------------------------------------------------------------------------

    def client_spans(
        self, method: Callable[..., Awaitable[Any]], backend: str, operation: str
    ) -> Callable[..., Awaitable[Any]]:
        """``method`` (a backend operation) run in a CLIENT span, the child of the current span."""
        tracer = self.tracer
        attributes = {"db.system.name": _DB_SYSTEMS.get(backend, backend), "db.operation.name": operation}

        @functools.wraps(method)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            with tracer.start_as_current_span(operation, kind=SpanKind.CLIENT, attributes=attributes):
                return await method(*args, **kwargs)

        return traced
