"""The gateway's metrics, on ``prometheus-client``: declared once here, recorded where things happen.

A :class:`Metrics` holds its own :class:`~prometheus_client.CollectorRegistry`, never the process-wide
default one: several gateways in one process (tests, an embedding application) each count their own calls,
and nothing else in the process adds to, or clashes with, what ``/metrics`` answers.

Recording stays off the hot path's bill: a recorder binds the label children it will increment once, when it
is built (``metrics.rate_limited.labels(by="ip")``, :class:`gateway.observability.calls.MethodRecorder`), so
an update is one ``inc()`` on an object it already holds — no label lookup, no allocation.

Label values are bounded: ``transport`` is ``rest`` or ``grpc``; ``surface`` is ``native`` or a surface's
name; ``method`` is the proto method's name (a surface's route template on REST surfaces; ``-`` for a path
no route serves); ``code`` is a gRPC status name; ``backend`` a URL scheme; ``operation`` a method of the
backend contract. Never a room id, a variable name or a key.

Counters also expose prometheus-client's ``*_created`` series (when each started counting).

The values of the families updated per call hold no lock (:class:`LoopValue`): they are written from the
event loop's thread only, and prometheus-client's ``threading.Lock`` per ``inc()`` and ``observe()`` was
half of what metrics cost a call (10k of 21k instructions of a GET, counted by ``bench/instructions.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, values
from prometheus_client.exposition import choose_encoder

#: Request latency buckets (seconds): a cheap call takes well under a millisecond on the memory backend.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CALL_LABELS = ("transport", "surface", "method")
_BACKEND_LABELS = ("backend", "operation")


class LoopValue(values.MutexValue):
    """prometheus-client's value without its lock: for metrics written from one thread, the event loop's
    (a read while it is written sees the value before or after, as with the lock)."""

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def get(self) -> float:
        return float(self._value)


class _LoopValues:
    """Makes a metric's values (each label child's) :class:`LoopValue` s.

    prometheus-client reads ``values.ValueClass`` when it makes a child's values: it is ours while it does,
    unless the process runs prometheus-client's multiprocess mode (whose values live in files).
    """

    #: Whether this metric's values are :class:`LoopValue` s, which a child then adds to in place (a call of
    #: ``LoopValue.inc`` was a Python frame per update).
    _lockless = False

    def _metric_init(self) -> None:
        made = values.ValueClass
        if made is not values.MutexValue:
            super()._metric_init()  # type: ignore[misc]
            return
        self._lockless = True
        values.ValueClass = LoopValue
        try:
            super()._metric_init()  # type: ignore[misc]
        finally:
            values.ValueClass = made


class LoopCounter(_LoopValues, Counter):
    """A :class:`~prometheus_client.Counter` of :class:`LoopValue` s; a child's ``inc()`` is one call."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        try:
            value = self._value
        except AttributeError:  # a parent with labels: prometheus-client says so
            value = None
        if value is None or amount < 0 or exemplar:
            super().inc(amount, exemplar)
        elif self._lockless:
            value._value += amount  # LoopValue.inc, without its frame
        else:
            value.inc(amount)


class LoopHistogram(_LoopValues, Histogram):
    """A :class:`~prometheus_client.Histogram` of :class:`LoopValue` s; a child's ``observe()`` finds its
    bucket by bisection, as prometheus-client's does by a scan (the same bucket: the first bound that is not
    below the amount)."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        try:
            buckets = self._buckets
        except AttributeError:  # a parent with labels: prometheus-client says so
            buckets = None
        if buckets is None or exemplar or amount != amount:  # NaN: as prometheus-client counts it
            super().observe(amount, exemplar)
            return
        if self._lockless:  # LoopValue.inc, without its frames
            self._sum._value += amount
            buckets[bisect_left(self._upper_bounds, amount)]._value += 1
        else:
            self._sum.inc(amount)
            buckets[bisect_left(self._upper_bounds, amount)].inc(1)


class LoopGauge(_LoopValues, Gauge):
    """A :class:`~prometheus_client.Gauge` of :class:`LoopValue` s."""


class Metrics:
    """Every metric of one gateway, on a registry of its own.

    :ivar registry: what ``/metrics`` exposes (:meth:`exposition`).
    :ivar requests: ``room_gateway_requests_total{transport,surface,method,code}`` — finished calls, by the
        gRPC status they ended with (a REST answer by the code its HTTP status maps from).
    :ivar request_duration: ``room_gateway_request_duration_seconds{transport,surface,method}`` — the
        latency of unary calls (a stream's length is not a latency: streams are left out).
    :ivar streams_open: ``room_gateway_streams_open{transport,surface,method}`` — server streams open now.
    :ivar stream_messages: ``room_gateway_stream_messages_total{transport,surface,method}`` — messages sent
        on server streams (a write heard by 1,000 listeners counts 1,000: the fan-out).
    :ivar backend_duration: ``room_gateway_backend_operation_duration_seconds{backend,operation}``.
    :ivar backend_errors: ``room_gateway_backend_errors_total{backend,operation}`` — operations that failed
        for the backend's reasons (UNAVAILABLE or an unexpected exception; a missing room is no error).
    :ivar backend_up: ``room_gateway_backend_up`` — 1 while the backend answers, 0 from its last failure
        (an UNAVAILABLE operation or readiness check) until it answers again.
    :ivar presence_connections: ``room_gateway_presence_connections`` — open room-token streams on this
        instance, as the presence registry counts them (read when scraped: :meth:`count_presence`).
    :ivar rate_limited: calls refused with 429 / RESOURCE_EXHAUSTED, label ``by`` (``ip``, ``key``, ``room``).
    :ivar rate_limit_storage_failures: checks that could not reach the rate-limit storage (served anyway
        unless ``fail_closed``).
    :ivar webhook_deliveries: ``room_gateway_webhook_deliveries_total{endpoint,outcome}`` — attempts by
        this instance, ``outcome`` ``delivered``, ``retrying`` or ``failed`` (the schedule ran out).
    :ivar webhook_duration: ``room_gateway_webhook_attempt_duration_seconds{endpoint}`` — an attempt's
        HTTP round trip.
    :ivar webhook_latency: ``room_gateway_webhook_delivery_latency_seconds{endpoint}`` — from a change to
        its delivery (retries included).
    :ivar webhook_backlog: ``room_gateway_webhook_backlog{endpoint}`` — pending messages, as last read.
    :ivar webhook_disabled: ``room_gateway_webhook_endpoint_disabled{endpoint}`` — 1 while disabled.

    The process collector (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
    ``process_open_fds``, …) is registered too.
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = LoopCounter(
            "room_gateway_requests",
            "Finished calls, by transport, surface, method and gRPC status code.",
            [*_CALL_LABELS, "code"],
            registry=registry,
        )
        self.request_duration = LoopHistogram(
            "room_gateway_request_duration_seconds",
            "Latency of unary calls, from the first byte of the request to the end of the answer.",
            _CALL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.streams_open = LoopGauge(
            "room_gateway_streams_open", "Server streams open now.", _CALL_LABELS, registry=registry
        )
        self.stream_messages = LoopCounter(
            "room_gateway_stream_messages",
            "Messages sent on server streams (the fan-out of writes to listeners).",
            _CALL_LABELS,
            registry=registry,
        )
        self.backend_duration = LoopHistogram(
            "room_gateway_backend_operation_duration_seconds",
            "Duration of backend operations.",
            _BACKEND_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_errors = LoopCounter(
            "room_gateway_backend_errors",
            "Backend operations that failed (unavailable store or unexpected error).",
            _BACKEND_LABELS,
            registry=registry,
        )
        self.backend_up = LoopGauge(
            "room_gateway_backend_up", "1 while the backend answers, 0 after it failed.", registry=registry
        )
        self.presence_connections = Gauge(
            "room_gateway_presence_connections",
            "Open room-token streams on this instance (presence).",
            registry=registry,
        )
        self.rate_limited = Counter(
            "room_gateway_rate_limited",
            "Calls refused by a rate limit.",
            ["by"],
            registry=registry,
        )
        self.rate_limit_storage_failures = Counter(
            "room_gateway_rate_limit_storage_failures",
            "Rate-limit checks that could not reach the storage.",
            registry=registry,
        )
        # Webhooks: ``endpoint`` is a configured endpoint's name (a bounded set).
        self.webhook_deliveries = Counter(
            "room_gateway_webhook_deliveries",
            "Webhook attempts, by endpoint and outcome (delivered, retrying, failed).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.webhook_duration = Histogram(
            "room_gateway_webhook_attempt_duration_seconds",
            "Duration of one webhook attempt's HTTP round trip.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.webhook_latency = Histogram(
            "room_gateway_webhook_delivery_latency_seconds",
            "From a change to its webhook's delivery, retries included.",
            ["endpoint"],
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0, 300.0, 1800.0, 7200.0, 36000.0, 100000.0),
            registry=registry,
        )
        self.webhook_backlog = Gauge(
            "room_gateway_webhook_backlog", "Pending webhook messages.", ["endpoint"], registry=registry
        )
        self.webhook_disabled = Gauge(
            "room_gateway_webhook_endpoint_disabled",
            "1 while a webhook endpoint is disabled.",
            ["endpoint"],
            registry=registry,
        )
        ProcessCollector(registry=registry)

    def count_presence(self, connections: Callable[[], float]) -> None:
        """Answer ``room_gateway_presence_connections`` with ``connections()`` at each scrape: the registry
        counts its streams anyway, so the gauge costs the hot path nothing."""
        self.presence_connections.set_function(connections)

    def sample(self, name: str, **labels: str) -> float:
        """The current value of one sample (``0.0`` when it does not exist yet), e.g.
        ``sample("room_gateway_rate_limited_total", by="ip")``.

        It collects the whole registry: for tests and occasional reads, not for the hot path.
        """
        return self.registry.get_sample_value(name, labels) or 0.0

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric, encoded as the scraper asks: ``(body, content type)``.

        OpenMetrics when ``accept`` asks for ``application/openmetrics-text`` (as Prometheus does), else the
        Prometheus text format 0.0.4 — prometheus-client's own negotiation (``choose_encoder``).

        :param accept: the request's ``Accept`` header.
        """
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
