"""Tracing (``tracing: {enabled: true}``, the ``otel`` extra): spans exported over OTLP/HTTP to a receiver on
loopback, which decodes the protobuf payload: a server span per call continuing the caller's
``traceparent``, a client span per backend operation as its child, the trace id in the access line and the
response's ``traceparent`` — over REST and gRPC."""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import httpx
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.trace import get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway._gen.google import protobuf as wkt
from gateway._gen.roomgateway.v1 import RoomServiceStub, SetVariableRequest, Variable
from gateway.config import GatewayConfig
from gateway.edge.accesslog import LOGGER_NAME
from gateway.observability.tracing import Tracing, parse_traceparent
from tests.security.live import ADMIN_KEY, LiveGateway, live_config, live_gateway
from tests.upstream.conftest import ADMIN_KEY as UPSTREAM_ADMIN_KEY
from tests.upstream.conftest import StartEcho, StartFront, echo_upstream, front_config

REST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
GRPC_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})")


class _Receiver(BaseHTTPRequestHandler):
    spans: list[Span]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.server.spans.extend(scope.spans)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Span]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.spans = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}/v1/traces")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    try:
        yield server.spans  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return [
        span for span in spans if span.parent_span_id == parent.span_id and span.trace_id == parent.trace_id
    ]


def _attributes(span: Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in span.attributes:
        which = attribute.value.WhichOneof("value")
        values[attribute.key] = getattr(attribute.value, which) if which else None
    return values


async def test_spans_over_rest_and_grpc(receiver: list[Span], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER_NAME)
    async with live_gateway(live_config(tracing={"enabled": True})) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as client:
            answer = await client.put(
                "/v1/rooms/t/variables/v",
                json={"value": 1},
                headers={"X-API-Key": ADMIN_KEY, "traceparent": f"00-{REST_TRACE}-{PARENT_SPAN}-01"},
            )
            assert answer.status_code == 200
            assert answer.headers["traceparent"].split("-")[1] == REST_TRACE
        channel = Channel(*gw.grpc)
        try:
            stub = RoomServiceStub(
                channel, metadata={"x-api-key": ADMIN_KEY, "traceparent": f"00-{GRPC_TRACE}-{PARENT_SPAN}-01"}
            )
            await stub.set_variable(
                SetVariableRequest(room_id="t", name="w", value=wkt.Value(number_value=2))
            )
        finally:
            channel.close()
    # The gateway's stop exported what was pending.
    servers = {span.trace_id.hex(): span for span in receiver if span.kind == Span.SPAN_KIND_SERVER}
    rest, grpc = servers[REST_TRACE], servers[GRPC_TRACE]
    for server in (rest, grpc):
        assert server.parent_span_id.hex() == PARENT_SPAN
        operations = {_attributes(span)["db.operation.name"] for span in _children(receiver, server)}
        assert "write_variable" in operations
        assert all(span.kind == Span.SPAN_KIND_CLIENT for span in _children(receiver, server))
    assert rest.name == "PUT SetVariable"
    assert _attributes(rest)["http.route"] == "SetVariable"
    assert _attributes(rest)["http.response.status_code"] == 200
    assert grpc.name == "roomgateway.v1.RoomService/SetVariable"
    assert _attributes(grpc)["rpc.system"] == "grpc" and _attributes(grpc)["rpc.grpc.status_code"] == 0
    access = {
        record.access["transport"]: record.access for record in caplog.records if hasattr(record, "access")
    }  # type: ignore[attr-defined]
    assert access["http"]["trace_id"] == REST_TRACE
    assert access["grpc"]["trace_id"] == GRPC_TRACE


def test_off_means_no_import() -> None:
    """Off, the gateway's tracing module (the one importing the SDK and exporter) is never imported. (redis-py
    imports OpenTelemetry's SDK on its own when it is installed: that is not the gateway's doing.)"""
    import subprocess
    import sys

    code = (
        "import sys, asyncio\n"
        "from gateway.app import create_gateway\n"
        "from tests.security.live import live_config\n"
        "async def main():\n"
        "    create_gateway(live_config())\n"
        "asyncio.run(main())\n"
        "assert 'gateway.observability.tracing' not in sys.modules, 'imported'\n"
        "assert 'opentelemetry.exporter.otlp.proto.http.trace_exporter' not in sys.modules, 'exporter'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def _rest_traceparent(client: httpx.AsyncClient, traceparent: str | None = None) -> re.Match[str]:
    """The ``traceparent`` a REST PUT answers with (sent with ``traceparent``), checked to be well formed."""
    headers = {"X-API-Key": ADMIN_KEY, **({"traceparent": traceparent} if traceparent else {})}
    answer = await client.put("/v1/rooms/t/variables/v", json={"value": 1}, headers=headers)
    assert answer.status_code == 200
    match = TRACEPARENT.fullmatch(answer.headers["traceparent"])
    assert match is not None, answer.headers["traceparent"]
    return match


async def _grpc_traceparent(gw: LiveGateway, traceparent: str | None = None) -> re.Match[str]:
    """The ``traceparent`` of a gRPC SetVariable's initial metadata, checked to be well formed."""
    metadata = {"x-api-key": ADMIN_KEY, **({"traceparent": traceparent} if traceparent else {})}
    channel = Channel(*gw.grpc)
    try:
        async with channel.request(
            "/roomgateway.v1.RoomService/SetVariable",
            Cardinality.UNARY_UNARY,
            SetVariableRequest,
            Variable,
            metadata=metadata,
        ) as stream:
            await stream.send_message(
                SetVariableRequest(room_id="t", name="w", value=wkt.Value(number_value=2)), end=True
            )
            await stream.recv_message()
            assert stream.initial_metadata is not None
            value = stream.initial_metadata["traceparent"]
    finally:
        channel.close()
    assert isinstance(value, str)
    match = TRACEPARENT.fullmatch(value)
    assert match is not None, value
    return match


async def _unsampled_calls(gw: LiveGateway, caplog: pytest.LogCaptureFixture) -> None:
    """Calls that must not be sampled answer a valid ``traceparent`` with the sampled flag clear: a new trace
    without one, the caller's trace (with a span id of the gateway's) with an unsampled one."""
    unsampled = f"00-{REST_TRACE}-{PARENT_SPAN}-00"
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        fresh = await _rest_traceparent(client)
        assert not int(fresh["flags"], 16) & 1 and fresh["trace"] != "0" * 32  # 02: random, unsampled
        followed = await _rest_traceparent(client, unsampled)
        assert (followed["trace"], followed["flags"]) == (REST_TRACE, "00")
        assert followed["span"] != PARENT_SPAN
        malformed = await _rest_traceparent(client, f"00-{REST_TRACE}-nothex")  # ignored: a new trace
        assert malformed["trace"] not in (REST_TRACE, fresh["trace"])
    grpc = await _grpc_traceparent(gw, unsampled.replace(REST_TRACE, GRPC_TRACE))
    assert (grpc["trace"], grpc["flags"]) == (GRPC_TRACE, "00")
    assert not int((await _grpc_traceparent(gw))["flags"], 16) & 1
    # The access line still names the trace.
    traces = {record.access["trace_id"] for record in caplog.records if hasattr(record, "access")}
    assert {fresh["trace"], REST_TRACE, GRPC_TRACE} <= traces


@pytest.mark.parametrize(
    "tracing", [{"sample_ratio": 0}, {}], ids=["sample_ratio 0", "OTEL_TRACES_SAMPLER parentbased_always_off"]
)
async def test_unsampled_calls_export_nothing_and_still_propagate(
    tracing: dict[str, float],
    receiver: list[Span],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sample_ratio: 0`` (decided before the SDK) and the SDK's own sampler saying no (unset ratio) alike:
    no span exported, a valid ``traceparent`` answered — and a sampled ``traceparent`` is still honoured
    (parent-based)."""
    if not tracing:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    caplog.set_level(logging.INFO, LOGGER_NAME)
    async with live_gateway(live_config(tracing={"enabled": True, **tracing})) as gw:
        await _unsampled_calls(gw, caplog)
        sampled = await _grpc_traceparent(gw, f"00-{GRPC_TRACE}-{PARENT_SPAN}-01")
        assert (sampled["trace"], sampled["flags"]) == (GRPC_TRACE, "01")
    # Only the call whose caller sampled it was exported: its server span and its backend operations'.
    assert receiver and {span.trace_id.hex() for span in receiver} == {GRPC_TRACE}
    (server,) = [span for span in receiver if span.kind == Span.SPAN_KIND_SERVER]
    assert server.span_id.hex() == sampled["span"] and server.parent_span_id.hex() == PARENT_SPAN


async def test_sample_ratio_one_exports_every_call(receiver: list[Span]) -> None:
    async with live_gateway(live_config(tracing={"enabled": True, "sample_ratio": 1})) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as client:
            answered = [await _rest_traceparent(client) for _ in range(5)]
        answered.append(await _grpc_traceparent(gw))
    assert all(match["flags"].endswith(("1", "3")) for match in answered)  # sampled (and random ids)
    servers = {span.span_id.hex(): span for span in receiver if span.kind == Span.SPAN_KIND_SERVER}
    assert {match["span"] for match in answered} <= set(servers)
    for match in answered:
        server = servers[match["span"]]
        assert server.trace_id.hex() == match["trace"] and not server.parent_span_id
        assert any(span.kind == Span.SPAN_KIND_CLIENT for span in _children(receiver, server))


async def test_sample_ratio_samples_about_that_share(receiver: list[Span]) -> None:
    async with live_gateway(live_config(tracing={"enabled": True, "sample_ratio": 0.5})) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as client:
            flags = [(await _rest_traceparent(client))["flags"] for _ in range(200)]
    sampled = sum(int(flag, 16) & 1 for flag in flags)
    assert 60 <= sampled <= 140  # 100 expected; outside this, p < 1e-8
    assert len([span for span in receiver if span.kind == Span.SPAN_KIND_SERVER]) == sampled


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), True, "half"])
def test_sample_ratio_out_of_range_is_a_config_error(ratio: object) -> None:
    with pytest.raises(ValueError, match="sample_ratio"):
        GatewayConfig.model_validate({"tracing": {"enabled": True, "sample_ratio": ratio}})


def test_sample_ratio_defaults_to_the_sdk_sampler() -> None:
    assert GatewayConfig.model_validate({"tracing": {"enabled": True}}).tracing.sample_ratio is None
    assert GatewayConfig.model_validate({"tracing": {"sample_ratio": "0.25"}}).tracing.sample_ratio == 0.25


class _Started(SpanProcessor):
    """A span processor of the gateway's provider noting the name of every span the SDK starts."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: SdkSpan, parent_context: object = None) -> None:
        self.names.append(span.name)

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


class _OpenTelemetryCalls:
    """The OpenTelemetry functions run in this thread (the event loop's: the gateway's and the client's
    side of a call) while the block runs, by ``sys.setprofile``."""

    def __init__(self) -> None:
        self.called: set[str] = set()

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and "/opentelemetry/" in frame.f_code.co_filename:
            module = frame.f_code.co_filename.rpartition("/opentelemetry/")[2]
            self.called.add(f"{module}:{frame.f_code.co_name}")

    def __enter__(self) -> set[str]:
        sys.setprofile(self._profile)
        return self.called

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)


#: What an unsampled call may run of OpenTelemetry: the ids of its own span (and of a trace it starts).
_ID_GENERATOR = {"sdk/trace/id_generator.py:generate_span_id", "sdk/trace/id_generator.py:generate_trace_id"}


@pytest.mark.parametrize(
    ("tracing", "traceparent"),
    [
        ({"sample_ratio": 0}, None),
        ({"sample_ratio": 0.5}, f"00-{REST_TRACE}-{PARENT_SPAN}-00"),
        ({}, f"00-{REST_TRACE}-{PARENT_SPAN}-00"),  # the default sampler (parent-based, every new trace)
        ({"sample_ratio": 0}, f"00-{REST_TRACE}-nothex"),  # malformed: a new trace, at the ratio
    ],
    ids=["ratio 0", "caller's sampled=0", "caller's sampled=0, ratio unset", "ratio 0, malformed"],
)
async def test_an_unsampled_call_runs_no_opentelemetry_code(
    tracing: dict[str, float], traceparent: str | None, receiver: list[Span]
) -> None:
    """An unsampled call — the caller's ``traceparent`` says so, or the ratio does — starts no SDK span
    (none reaches a span processor), attaches no context and runs no propagator: over REST and gRPC it
    runs nothing of OpenTelemetry but the ids of its ``traceparent``, which still carries the caller's
    trace; a sampled call still goes through the SDK."""
    async with live_gateway(live_config(tracing={"enabled": True, **tracing})) as gw:
        assert gw.gateway is not None and gw.gateway.observer is not None
        tracer = gw.gateway.observer.tracing
        assert tracer is not None
        started = _Started()
        tracer.provider.add_span_processor(started)  # type: ignore[attr-defined]  # the SDK's provider
        async with httpx.AsyncClient(base_url=gw.http_url) as client:
            await _rest_traceparent(client, traceparent)  # the connection made, the caches filled
            with _OpenTelemetryCalls() as called:
                rest = await _rest_traceparent(client, traceparent)
                grpc = await _grpc_traceparent(gw, traceparent)
            assert called <= _ID_GENERATOR, called
            assert started.names == []
            assert rest["flags"] in ("00", "02") and grpc["flags"] in ("00", "02")
            if traceparent is not None and "nothex" not in traceparent:
                assert rest["trace"] == grpc["trace"] == REST_TRACE
            sampled = await _rest_traceparent(client, f"00-{REST_TRACE}-{PARENT_SPAN}-01")
        assert sampled["flags"] == "01"
        # The server span and its backend operations' (the open-room check's read, the write).
        assert started.names[0] == "PUT" and "write_variable" in started.names[1:]


async def test_operations_outside_a_sampled_call_make_no_span() -> None:
    """A backend operation makes a CLIENT span only below a call the gateway sampled: not outside calls,
    not below a span of someone else's made current; its error is recorded on it."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import StatusCode
    from room_gateway_plugins.memory import MemoryBackend

    from gateway.observability.backends import instrument
    from gateway.observability.calls import Call, MethodRecorder
    from gateway.observability.metrics import Metrics

    provider = TracerProvider()
    started = _Started()
    provider.add_span_processor(started)
    tracing = Tracing(provider, sample_ratio=1)
    backend = MemoryBackend("memory://")
    instrument(backend, Metrics(), tracing)
    await backend.open()
    assert await backend.get_room("r") is None  # outside calls
    other = provider.get_tracer("other").start_span("elsewhere")
    token = context.attach(trace.set_span_in_context(other))
    try:
        assert get_current_span().is_recording()
        await backend.get_room("r")
    finally:
        context.detach(token)
    assert started.names == ["elsewhere"]
    # Below a call the gateway sampled: a span each, a failure's marked.
    server = tracing.server_span("GET", None, Call("r"))
    await backend.get_room("r")
    with pytest.raises(AttributeError):
        await backend.save_room(None)  # type: ignore[arg-type]  # a bug below a sampled call
    recorder = MethodRecorder(Metrics(), "rest", "native", "GetRoom")
    tracing.end_server_span(server, recorder, {"method": "GET"}, 200, "OK")
    assert started.names == ["elsewhere", "GET", "get_room", "save_room"]
    ended = {span.name: span for span in started.ended}
    assert ended["save_room"].status.status_code is StatusCode.ERROR
    assert ended["save_room"].parent is not None
    assert ended["save_room"].parent.span_id == ended["GET GetRoom"].context.span_id
    await backend.get_room("r")  # the call has ended
    assert len(started.names) == 4


_SDK_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENTS = [
    f"00-{REST_TRACE}-{PARENT_SPAN}-01",
    f"00-{REST_TRACE}-{PARENT_SPAN}-00",
    f"00-{REST_TRACE}-{PARENT_SPAN}-03",
    f" \t00-{REST_TRACE}-{PARENT_SPAN}-01 \t",
    f"01-{REST_TRACE}-{PARENT_SPAN}-01-future-fields",
    f"00-{REST_TRACE}-{PARENT_SPAN}-01-extra",
    f"01-{REST_TRACE}-{PARENT_SPAN}-01",
    f"ff-{REST_TRACE}-{PARENT_SPAN}-01",
    f"00-{'0' * 32}-{PARENT_SPAN}-01",
    f"00-{REST_TRACE}-{'0' * 16}-01",
    f"00-{REST_TRACE.upper()}-{PARENT_SPAN}-01",
    f"00-{REST_TRACE}-{PARENT_SPAN}-1",
    f"00-{REST_TRACE}-{PARENT_SPAN}",
    f"00-{REST_TRACE}-{PARENT_SPAN}-01-{'x' * 500}",
    f"0-{REST_TRACE}-{PARENT_SPAN}-01",
    "",
    "garbage",
]


@pytest.mark.parametrize("value", _TRACEPARENTS)
def test_traceparent_is_read_as_the_sdk_propagator_reads_it(value: str) -> None:
    """The gateway's reading of ``traceparent`` (W3C Trace Context) is the SDK propagator's: the same trace
    id, parent id and flags of a valid one, nothing of an invalid one."""
    remote = get_current_span(_SDK_PROPAGATOR.extract({"traceparent": value})).get_span_context()
    expected = (
        (f"{remote.trace_id:032x}", f"{remote.span_id:016x}", f"{int(remote.trace_flags):02x}")
        if remote.is_valid
        else None
    )
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("sampler", "argument", "ratio"),
    [
        (None, None, 0.01),  # the gateway's default (Kong's), not the SDK's parentbased_always_on
        (" ", None, 0.01),  # blank is unset
        ("parentbased_always_on", None, 1.0),
        ("ParentBased_Always_Off", None, 0.0),  # the SDK lower-cases the name
        ("parentbased_traceidratio", "0.25", 0.25),
        ("parentbased_traceidratio", "half", 1.0),  # the SDK's rule: not a number means 1.0
        ("parentbased_traceidratio", "1.5", None),  # refused by the SDK: left to it
        ("always_on", None, None),  # not parent-based: the SDK decides every call
        ("traceidratio", "0.5", None),
        ("no_such_sampler", None, None),
    ],
)
def test_the_standard_parent_based_samplers_are_decided_by_the_gateway(
    sampler: str | None, argument: str | None, ratio: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from gateway.observability.tracing import ratio_from_environment

    for name, value in (("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", argument)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert ratio_from_environment() == ratio
    tracing = Tracing(sample_ratio=None)
    try:
        assert tracing.sample_ratio == ratio
        if ratio is not None:  # decided here: the SDK's sampler keeps what it is given
            assert tracing.provider.sampler is ALWAYS_ON
        else:  # the environment's sampler, as the SDK reads it
            assert tracing.provider.sampler is not ALWAYS_ON or sampler == "always_on"
    finally:
        tracing.shutdown()


async def test_an_unsampled_call_through_the_front_proxy_passes_its_traceparent_on(
    start_front: StartFront, start_echo: StartEcho, echo_pb2: tuple[object, Any]
) -> None:
    """Through the front proxy (tracing on, nothing sampled), the upstream receives the caller's
    ``traceparent`` exactly as sent, and the caller's answer keeps its trace."""
    echo = start_echo()
    front = start_front(
        front_config(echo_upstream(echo.port)) + "tracing: {enabled: true, sample_ratio: 0}\n"
    )
    pb = echo_pb2[1]
    sent = f"00-{GRPC_TRACE}-{PARENT_SPAN}-00"
    channel = Channel(*front.grpc_address)
    try:
        async with channel.request(
            "/echo.v1.Echo/Whoami",
            Cardinality.UNARY_UNARY,
            pb.EchoRequest,
            pb.Seen,
            metadata={"x-api-key": UPSTREAM_ADMIN_KEY, "traceparent": sent},
        ) as stream:
            await stream.send_message(pb.EchoRequest(), end=True)
            seen = await stream.recv_message()
            await stream.recv_trailing_metadata()
            answered = (stream.initial_metadata or {}).get("traceparent")
    finally:
        channel.close()
    keys = dict(line.split("=", 1) for line in seen.metadata)
    assert keys["traceparent"] == sent
    assert isinstance(answered, str) and answered.startswith(f"00-{GRPC_TRACE}-") and answered.endswith("-00")
