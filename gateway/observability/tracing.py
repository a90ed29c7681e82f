"""Tracing with OpenTelemetry (the optional extra ``room-gateway[otel]``; ``tracing: {enabled: true}``).

Imported only when tracing is switched on: off, the gateway neither imports OpenTelemetry nor pays for it.

- **Export**: a :class:`~opentelemetry.sdk.trace.TracerProvider` of the gateway's own (not the process-wide
  one) with a batch processor and the OTLP/HTTP exporter, configured by the standard variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``…_HEADERS``, ``…_TIMEOUT``,
  ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``). The resource carries
  ``service.name`` (default ``room-gateway``), ``service.version`` and ``service.instance.id``.
- **Sampling**: parent-based, decided here before the SDK is called: a call with a valid ``traceparent``
  follows its sampled flag, other calls are sampled at ``tracing.sample_ratio`` — or, unset, at what the
  standard ``OTEL_TRACES_SAMPLER`` (``parentbased_always_on``, ``parentbased_always_off``,
  ``parentbased_traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG``) says, and with neither at
  :data:`DEFAULT_SAMPLE_RATIO` (one in a hundred, Kong's default). An unsampled call makes no SDK span,
  attaches no context and runs no propagator: its ``traceparent`` is parsed and answered here, and its
  backend operations test a context variable of the gateway's (the SDK's non-recording span and the
  propagator's context were ~25k instructions of a REST GET). The SDK's sampler is then ``always_on``: it
  sees only what was sampled. Another ``OTEL_TRACES_SAMPLER`` (``always_on``, ``traceidratio``, a
  plugin's) or a provider of the caller's keeps the SDK's sampler deciding every call.
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
larger one. An unsampled call costs the gateway's decision, two ids and one ``traceparent`` string.
"""

from __future__ import annotations

import contextvars
import math
import os
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from random import getrandbits
from typing import Any

from grpclib.const import Status as GrpcStatus
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import Scope

from gateway.instance import INSTANCE_ID
from gateway.observability.calls import Call, MethodRecorder

#: The parent of a call with no ``traceparent``: none (a root span), whatever the ambient context holds.
_NO_PARENT = context.Context()
#: ``db.system.name`` of each backend label (semantic conventions' well-known values; others as they are).
_DB_SYSTEMS = {"postgresql": "postgresql", "sqlite": "sqlite", "redis": "redis"}
#: The gRPC codes that are the server's errors (the RPC conventions' ERROR status).
_GRPC_SERVER_ERRORS = frozenset(
    ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS")
)
_ERROR = Status(StatusCode.ERROR)

#: W3C Trace Context's ``traceparent`` (§3.2): version, trace id, parent id, flags, in lowercase hex; a
#: later version may append fields after a dash; spaces and tabs around it are allowed (optional
#: whitespace). The SDK's propagator reads it with the same expression and the same checks
#: (:func:`parse_traceparent`); it is read here so that an unsampled call needs neither the propagator
#: nor the context it builds.
_TRACEPARENT = re.compile(r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)")
_MAX_TRACEPARENT = 512  # the propagator's limit too
_INVALID_TRACE, _INVALID_SPAN = "0" * 32, "0" * 16
#: The flags (as sent: two hex digits) whose sampled bit is set.
_SAMPLED = frozenset(f"{flags:02x}" for flags in range(256) if flags & 0x01)
#: ``True`` while a sampled call runs in this context: its backend operations make CLIENT spans. The
#: gateway's own variable, set with the sampled span made current: an unsampled call's operations read
#: it alone (the SDK's ``get_current_span().is_recording()`` was four calls, ~3.6k instructions).
_TRACED: contextvars.ContextVar[bool] = contextvars.ContextVar("room_gateway_traced", default=False)


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """The trace id, parent span id and flags (hex, as sent) of a valid ``traceparent``; ``None`` when it
    is not one — too long, malformed, version ``ff``, extra fields on version ``00``, an all-zero id —
    and the call starts a new trace (W3C Trace Context §3.2.2, §4.3)."""
    if len(value) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, more = match.groups()
    if version == "ff" or (version == "00" and more):
        return None
    if trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
        return None
    return trace_id, span_id, flags


def _remote_parent(parent: tuple[str, str, str]) -> context.Context:
    """The context of a remote parent (what the propagator's ``extract`` returns for it)."""
    trace_id, span_id, flags = parent
    span_context = trace.SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace.TraceFlags(int(flags, 16))
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), _NO_PARENT)


#: The share of new traces sampled when neither ``tracing.sample_ratio`` nor ``OTEL_TRACES_SAMPLER`` says:
#: one in a hundred, Kong's default (``tracing_sampling_rate = 0.01``). The SDK's own default (every
#: trace) makes a traced REST call cost ~3.8 untraced ones (bench/RESULTS.md): switching tracing on
#: should not quadruple a gateway's CPU, and a caller that samples its trace is still always followed.
DEFAULT_SAMPLE_RATIO = 0.01


def ratio_from_environment() -> float | None:
    """The share of new traces sampled when ``OTEL_TRACES_SAMPLER`` names one of the standard parent-based
    samplers (unset or blank: :data:`DEFAULT_SAMPLE_RATIO`, not the SDK's every trace); ``None`` for any
    other sampler (``always_on``, ``traceidratio``, a plugin's, a name the SDK does not know) or a ratio
    the SDK would refuse: the SDK's sampler then decides every call, as it always did."""
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not sampler:
        return DEFAULT_SAMPLE_RATIO
    if sampler == "parentbased_always_on":
        return 1.0
    if sampler == "parentbased_always_off":
        return 0.0
    if sampler != "parentbased_traceidratio":
        return None
    try:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", ""))
    except ValueError:  # the SDK's rule: a ratio that is no number means 1.0
        return 1.0
    return ratio if math.isfinite(ratio) and 0.0 <= ratio <= 1.0 else None


#: A backend operation's spans (:meth:`Tracing.client_span`): whether a sampled call runs, and the runner of
#: the operation in its span.
ClientSpan = tuple[
    Callable[[], bool],
    Callable[[Callable[..., Awaitable[Any]], tuple[Any, ...], dict[str, Any]], Awaitable[Any]],
]


@dataclass(slots=True)
class ServerSpan:
    """A call's server span (``None``: not sampled, decided before the SDK), its ``traceparent`` (formatted
    once, for the response and the access line) and the context tokens that made it current (``None``:
    not sampled, not made current): OpenTelemetry's context and :data:`_TRACED`."""

    span: trace.Span | None
    traceparent: str
    token: object = None
    traced: contextvars.Token[bool] | None = None


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
    :param sample_ratio: the share of calls without a valid ``traceparent`` that are sampled, decided here
        (``None``: as ``OTEL_TRACES_SAMPLER`` says — :func:`ratio_from_environment`; with ``provider``,
        its sampler decides every call); with ``provider`` and a ratio, its sampler should sample what it
        is given (the default's does).
    """

    def __init__(self, provider: TracerProvider | None = None, sample_ratio: float | None = None) -> None:
        if provider is None:
            if sample_ratio is None:
                sample_ratio = ratio_from_environment()
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
        #: The share of new traces sampled here (``None``: the SDK's sampler decides every call).
        self.sample_ratio = sample_ratio
        self._ids = provider.id_generator
        #: The SDK's own random ids: an unsampled call's are drawn here, both from one draw and formatted by
        #: one ``%`` (the generator's two calls and two format specs were ~4k instructions).
        self._sdk_random_ids = type(self._ids) is RandomIdGenerator
        #: The flags of a new trace that is not sampled: W3C Trace Context level 2's "random trace id" (0x02)
        #: when the id generator says so, as the SDK sets it on the roots it samples.
        self._unsampled_root_flags = "02" if getattr(self._ids, "is_trace_id_random", bool)() else "00"
        #: gRPC method path → its span's name and attributes
        self._grpc_spans: dict[str, tuple[str, Mapping[str, Any]]] = {}

    def shutdown(self) -> None:
        """Export what is pending and stop (at the gateway's stop)."""
        self.provider.shutdown()

    def _not_sampled(self, parent: tuple[str, str, str] | None, call: Call) -> ServerSpan | None:
        """The call's span when the gateway decides it is not sampled (``None``: it is, or the SDK decides).

        Parent-based: a valid parent's sampled flag decides; a call without one is sampled at the ratio.
        An unsampled call keeps its parent's trace id and flags (or starts a trace), with a span id of its
        own — no SDK span, context or propagator."""
        ratio = self.sample_ratio
        if ratio is None:
            return None
        if parent is not None:
            trace_id, _, flags = parent
            if flags in _SAMPLED:
                return None
            # ``%`` formats an int as hex for ~0.9k instructions less than an f-string's format spec.
            span_id = "%016x" % getrandbits(64) if self._sdk_random_ids else _INVALID_SPAN  # noqa: UP031
        elif ratio >= 1.0 or random.random() < ratio:
            return None
        else:
            flags = self._unsampled_root_flags
            if self._sdk_random_ids:
                ids = "%048x" % getrandbits(192)  # noqa: UP031  # as above
                trace_id, span_id = ids[:32], ids[32:]
            else:
                trace_id, span_id = f"{self._ids.generate_trace_id():032x}", _INVALID_SPAN
            if trace_id == _INVALID_TRACE:  # p = 2^-128: drawn again, as the SDK's generator does
                trace_id = f"{self._ids.generate_trace_id():032x}"
        if span_id == _INVALID_SPAN:  # another generator's, or p = 2^-64
            span_id = f"{self._ids.generate_span_id():016x}"
        call.trace_id = trace_id
        return ServerSpan(None, f"00-{trace_id}-{span_id}-{flags}")

    def _start(
        self, name: str, parent: tuple[str, str, str] | None, attributes: Mapping[str, Any], call: Call
    ) -> ServerSpan:
        span = self.tracer.start_span(
            name,
            context=_NO_PARENT if parent is None else _remote_parent(parent),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        ctx = span.get_span_context()
        traceparent = _traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags)
        call.trace_id = traceparent[3:35]
        if not span.is_recording():  # the SDK's sampler said no: nothing below it is traced
            return ServerSpan(span, traceparent)
        # Only a sampled span is made current: the backend operations' spans are its children, and an
        # unsampled call's operations make none (its span is not current, so theirs would have no parent).
        token = context.attach(trace.set_span_in_context(span))
        return ServerSpan(span, traceparent, token, _TRACED.set(True))

    # -- REST ---------------------------------------------------------------------------------------------

    def server_span(self, http_method: str, traceparent: bytes | None, call: Call) -> ServerSpan:
        """Start a REST call's span (the child of ``traceparent``); sampled, it is current in this task."""
        parent = parse_traceparent(traceparent.decode("latin-1")) if traceparent else None
        unsampled = self._not_sampled(parent, call)
        if unsampled is not None:
            return unsampled
        return self._start(http_method, parent, {"http.request.method": http_method}, call)

    def response_headers(self, server: ServerSpan) -> list[tuple[bytes, bytes]]:
        """The ``traceparent`` of the server span, as response headers."""
        return [(b"traceparent", server.traceparent.encode("ascii"))]

    def response_line(self, server: ServerSpan) -> bytes:
        """The ``traceparent`` of the server span as a header line (``traceparent: …\\r\\n``), for the
        gateway's own server to write unchecked: it is made of hex digits and dashes only (the ids are
        formatted here, a caller's trace id and flags matched as hex by :func:`parse_traceparent`)."""
        return b"traceparent: %s\r\n" % server.traceparent.encode("ascii")

    def end_server_span(
        self, server: ServerSpan, recorder: MethodRecorder, scope: Scope, status: int, code: str
    ) -> None:
        """End a REST call's span with what it answered."""
        span = server.span
        if span is None or server.traced is None:  # not sampled: nothing is recorded
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
        _TRACED.reset(server.traced)
        context.detach(server.token)  # type: ignore[arg-type]  # the token attach returned

    # -- gRPC ---------------------------------------------------------------------------------------------

    def grpc_server_span(self, method_path: str, metadata: Mapping[str, Any], call: Call) -> ServerSpan:
        """Start a gRPC call's span (the child of its ``traceparent`` metadata); sampled, it is current in
        the call's task (the listener runs in it; the task's end drops the context)."""
        traceparent = metadata.get("traceparent")
        parent = parse_traceparent(traceparent) if isinstance(traceparent, str) else None
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
        if span is None or server.traced is None:  # not sampled
            return
        span.set_attributes(
            {"rpc.grpc.status_code": GrpcStatus[code].value, "room_gateway.surface": recorder.surface}
        )
        if code in _GRPC_SERVER_ERRORS:
            span.set_status(_ERROR)
        span.end()

    # -- backend ------------------------------------------------------------------------------------------

    def client_span(self, backend: str, operation: str) -> ClientSpan:
        """How one backend operation runs in a CLIENT span, the child of the current (sampled) span — for
        the operation's one wrapper frame (:func:`gateway.observability.backends.instrument`): its first
        item says whether a sampled call is running (a context variable's read, all an unsampled
        operation pays: a wrapper of its own was ~1.5k to 2k instructions an operation); the second runs the
        operation (``method``, ``args``, ``kwargs``) in its span.

        The span is not made current (nothing runs below it), and it is ended and marked as
        ``opentelemetry.trace.use_span`` would (an exception recorded, ERROR), without its two context
        managers (~35k instructions a span)."""
        tracer = self.tracer
        attributes = {"db.system.name": _DB_SYSTEMS.get(backend, backend), "db.operation.name": operation}

        async def in_span(method: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
            span = tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attributes)
            try:
                return await method(*args, **kwargs)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                span.end()

        return _TRACED.get, in_span
