"""Tracing with OpenTelemetry (the optional extra ``room-gateway[otel]``; ``tracing: {enabled: true}``).

Imported only when tracing is switched on: off, the gateway neither imports OpenTelemetry nor pays for it.

- **Export**: a :class:`~opentelemetry.sdk.trace.TracerProvider` of the gateway's own (not the process-wide
  one) with a batch processor and the OTLP/HTTP exporter, configured by the standard variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``…_HEADERS``, ``…_TIMEOUT``,
  ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``). The resource carries
  ``service.name`` (default ``room-gateway``), ``service.version`` and ``service.instance.id``.
- **Sampling**: with ``tracing.sample_ratio``, parent-based: a call with a valid ``traceparent`` follows its
  sampled flag, other calls are sampled at that ratio — decided here, before the SDK is called, so that an
  unsampled call costs no SDK span (the SDK's own non-recording span was ~39k instructions; the decision,
  two ids from the SDK's id generator and the ``traceparent`` are ~10k); the SDK's sampler is then
  ``always_on``. Unset, every call goes through the SDK's sampler, as ``OTEL_TRACES_SAMPLER`` /
  ``OTEL_TRACES_SAMPLER_ARG`` say (default every call).
- **Propagation**: W3C Trace Context. A call's ``traceparent`` (REST header, gRPC metadata) is the parent
  of its server span; the response carries the server span's own ``traceparent`` (REST header, gRPC
  initial metadata) — an unsampled call's too, with the sampled flag clear, so that the services it calls
  do not sample it either.
- **Spans**: one SERVER span per sampled call, with the HTTP (``http.request.method``, ``http.route``,
  ``url.path``, ``http.response.status_code``) or RPC (``rpc.system``, ``rpc.service``, ``rpc.method``,
  ``rpc.grpc.status_code``) semantic-convention attributes; one CLIENT span per backend operation, its
  child, with ``db.system.name`` and ``db.operation.name``. Backend operations outside a sampled call (an
  unsampled one, the webhook deliverer's, presence's heartbeats) make no span.

What it costs (bench/RESULTS.md): a sampled span is the SDK's span and, in the exporter's thread (which holds
the GIL, so its cost is the event loop's), the OTLP encoder's protobuf messages — the encoder's share is the
larger one. An unsampled call costs the SDK's sampling decision and one ``traceparent`` string.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from grpclib.const import Status as GrpcStatus
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import Scope

from gateway.instance import INSTANCE_ID
from gateway.observability.calls import Call, MethodRecorder

_PROPAGATOR = TraceContextTextMapPropagator()
#: The parent of a call with no ``traceparent``: none (a root span), whatever the ambient context holds.
_NO_PARENT = context.Context()
#: ``db.system.name`` of each backend label (semantic conventions' well-known values; others as they are).
_DB_SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite", "redis": "redis"}
#: The gRPC codes that are the server's errors (the RPC conventions' ERROR status).
_GRPC_SERVER_ERRORS = frozenset(
    ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS")
)
_ERROR = Status(StatusCode.ERROR)


@dataclass(slots=True)
class ServerSpan:
    """A call's server span (``None``: not sampled, decided before the SDK), its ``traceparent`` (formatted
    once, for the response and the access line) and the context token that made it current (``None``: not
    sampled, not made current)."""

    span: trace.Span | None
    traceparent: str
    token: object


class _Resource(Resource):
    """The SDK's resource, hashed once: the OTLP encoder groups every exported span by its resource, and
    ``Resource.__hash__`` serialises the attributes to JSON each time (~42k instructions a span, a tenth of
    a sampled GET). The attributes are immutable, so the hash is too."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def _package_version() -> str:
    try:
        return version("room-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
        return "0+unknown"


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """A W3C ``traceparent`` (the propagator's format, without its context round trip)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


class Tracing:
    """Spans of one gateway (see the module docstring).

    :param provider: where spans go; default: a provider exporting over OTLP/HTTP as the environment says.
    :param sample_ratio: the share of calls without a ``traceparent`` that are sampled (``None``: every
        call goes to the provider's sampler, as ``OTEL_TRACES_SAMPLER`` says, default every call); with
        ``provider``, its sampler should sample what it is given (the default's does).
    """

    def __init__(self, provider: TracerProvider | None = None, sample_ratio: float | None = None) -> None:
        if provider is None:
            attributes = {"service.version": _package_version(), "service.instance.id": INSTANCE_ID}
            if not os.environ.get("OTEL_SERVICE_NAME"):
                attributes["service.name"] = "room-gateway"
            provider = TracerProvider(
                resource=_Resource(Resource.create(attributes)),
                # With a ratio, only the calls sampled here (and their backend operations) reach the SDK:
                # its sampler keeps them all, without ParentBased's second look at the parent.
                sampler=None if sample_ratio is None else ALWAYS_ON,
            )
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.provider = provider
        self.tracer = provider.get_tracer("room_gateway", _package_version())
        self.sample_ratio = sample_ratio
        self._ids = provider.id_generator
        #: The flags of a new trace that is not sampled: W3C Trace Context level 2's "random trace id" (0x02)
        #: when the id generator says so, as the SDK sets it on the roots it samples.
        self._unsampled_root_flags = 0x02 if getattr(self._ids, "is_trace_id_random", bool)() else 0x00
        #: gRPC method path → its span's name and attributes
        self._grpc_spans: dict[str, tuple[str, Mapping[str, Any]]] = {}

    def shutdown(self) -> None:
        """Export what is pending and stop (at the gateway's stop)."""
        self.provider.shutdown()

    def _not_sampled(self, parent: context.Context | None, call: Call) -> ServerSpan | None:
        """The call's span when ``sample_ratio`` says it is not sampled (``None``: it may be, ask the SDK)."""
        ratio = self.sample_ratio
        if ratio is None:
            return None
        remote = trace.get_current_span(parent).get_span_context() if parent is not None else None
        if remote is not None and remote.is_valid:
            if remote.trace_flags.sampled:
                return None
            trace_id, flags = remote.trace_id, int(remote.trace_flags)
        elif ratio >= 1.0 or random.random() < ratio:
            return None
        else:
            trace_id, flags = self._ids.generate_trace_id(), self._unsampled_root_flags
        # The same trace (or a new one), a span id of its own, the sampled flag clear.
        traceparent = _traceparent(trace_id, self._ids.generate_span_id(), flags)
        call.trace_id = traceparent[3:35]
        return ServerSpan(None, traceparent, None)

    def _start(
        self, name: str, parent: context.Context | None, attributes: Mapping[str, Any], call: Call
    ) -> ServerSpan:
        span = self.tracer.start_span(
            name, context=parent or _NO_PARENT, kind=SpanKind.SERVER, attributes=attributes
        )
        ctx = span.get_span_context()
        traceparent = _traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags)
        call.trace_id = traceparent[3:35]
        # Only a sampled span is made current: the backend operations' spans are its children, and an
        # unsampled call's operations make none (its span is not current, so theirs would have no parent).
        token = context.attach(trace.set_span_in_context(span)) if span.is_recording() else None
        return ServerSpan(span, traceparent, token)

    # -- REST ---------------------------------------------------------------------------------------------

    def server_span(self, http_method: str, traceparent: bytes | None, call: Call) -> ServerSpan:
        """Start a REST call's span (the child of ``traceparent``); sampled, it is current in this task."""
        parent = _PROPAGATOR.extract({"traceparent": traceparent.decode("latin-1")}) if traceparent else None
        unsampled = self._not_sampled(parent, call)
        if unsampled is not None:
            return unsampled
        return self._start(http_method, parent, {"http.request.method": http_method}, call)

    def response_headers(self, server: ServerSpan) -> list[tuple[bytes, bytes]]:
        """The ``traceparent`` of the server span, as response headers."""
        return [(b"traceparent", server.traceparent.encode("ascii"))]

    def end_server_span(
        self, server: ServerSpan, recorder: MethodRecorder, scope: Scope, status: int, code: str
    ) -> None:
        """End a REST call's span with what it answered."""
        span = server.span
        if span is None or server.token is None:  # not sampled: nothing is recorded
            return
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
            span.set_status(_ERROR)
        span.end()
        context.detach(server.token)  # type: ignore[arg-type]  # the token attach returned

    # -- gRPC ---------------------------------------------------------------------------------------------

    def grpc_server_span(self, method_path: str, metadata: Mapping[str, Any], call: Call) -> ServerSpan:
        """Start a gRPC call's span (the child of its ``traceparent`` metadata); sampled, it is current in
        the call's task (the listener runs in it; the task's end drops the context)."""
        traceparent = metadata.get("traceparent")
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if isinstance(traceparent, str) else None
        unsampled = self._not_sampled(parent, call)
        if unsampled is not None:
            return unsampled
        named = self._grpc_spans.get(method_path)
        if named is None:  # once per method (grpclib only reports calls of the methods it serves)
            service, _, method = method_path.strip("/").partition("/")
            rpc = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            named = self._grpc_spans[method_path] = (f"{service}/{method}", rpc)
        return self._start(named[0], parent, named[1], call)

    def grpc_metadata(self, server: ServerSpan) -> dict[str, str]:
        """The ``traceparent`` of the server span, as initial metadata."""
        return {"traceparent": server.traceparent}

    def end_grpc_server_span(self, server: ServerSpan, recorder: MethodRecorder, code: str) -> None:
        """End a gRPC call's span with its status."""
        span = server.span
        if span is None or server.token is None:  # not sampled
            return
        span.set_attributes(
            {"rpc.grpc.status_code": GrpcStatus[code].value, "room_gateway.surface": recorder.surface}
        )
        if code in _GRPC_SERVER_ERRORS:
            span.set_status(_ERROR)
        span.end()

    # -- backend ------------------------------------------------------------------------------------------

    def client_spans(
        self, method: Callable[..., Awaitable[Any]], backend: str, operation: str
    ) -> Callable[..., Awaitable[Any]]:
        """``method`` (a backend operation) run in a CLIENT span, the child of the current (sampled) span.

        The span is not made current (nothing runs below it), and it is ended and marked as
        ``opentelemetry.trace.use_span`` would (an exception recorded, ERROR), without its two context
        managers (~35k instructions a span)."""
        tracer = self.tracer
        attributes = {"db.system.name": _DB_SYSTEMS.get(backend, backend), "db.operation.name": operation}
        current_span = trace.get_current_span

        @functools.wraps(method)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            if not current_span().is_recording():  # outside a sampled call
                return await method(*args, **kwargs)
            span = tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attributes)
            try:
                return await method(*args, **kwargs)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                span.end()

        return traced
