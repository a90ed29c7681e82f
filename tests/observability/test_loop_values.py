"""The per-call families hold lock-free values (gateway.observability.metrics.LoopValue), count exactly, and
leave every other prometheus-client metric of the process as the library makes it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import LoopValue, Metrics


def test_per_call_families_count_exactly_without_a_lock() -> None:
    metrics = Metrics()
    requests = metrics.requests.labels("rest", "native", "GetVariable", "OK")
    duration = metrics.request_duration.labels("rest", "native", "GetVariable")
    for _ in range(1000):
        requests.inc()
        duration.observe(0.0007)
    assert isinstance(requests._value, LoopValue)  # the child's value: no threading.Lock per inc()
    body, _ = metrics.exposition()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    labels = (("method", "GetVariable"), ("surface", "native"), ("transport", "rest"))
    assert samples["room_gateway_requests_total", (("code", "OK"), *labels)] == 1000
    assert samples["room_gateway_request_duration_seconds_count", labels] == 1000
    assert samples["room_gateway_request_duration_seconds_bucket", (("le", "0.0005"), *labels)] == 0
    assert samples["room_gateway_request_duration_seconds_bucket", (("le", "0.001"), *labels)] == 1000
    assert abs(samples["room_gateway_request_duration_seconds_sum", labels] - 0.7) < 1e-9


def test_other_metrics_of_the_process_keep_their_locks() -> None:
    Metrics().requests.labels("rest", "native", "GetRoom", "OK").inc()
    other = Counter("someone_elses", "A counter of the embedding application.", registry=CollectorRegistry())
    assert type(other._value) is values.MutexValue
    assert values.ValueClass is values.MutexValue


def test_loop_histogram_and_counter_count_as_prometheus_client_does() -> None:
    from prometheus_client import Histogram

    from gateway.observability.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = LoopHistogram("h", "h", ["l"], buckets=LATENCY_BUCKETS, registry=ours_registry)
    theirs = Histogram("h", "h", ["l"], buckets=LATENCY_BUCKETS, registry=theirs_registry)
    amounts = [0.0, 0.0005, 0.00050001, 0.001, 0.3, 2.5, 10.0, 10.5, 1e9, float("nan"), -1.0]
    for amount in amounts:
        ours.labels("x").observe(amount)
        theirs.labels("x").observe(amount)

    def buckets(registry: CollectorRegistry) -> list[tuple[str, float]]:
        return [
            (s.name + s.labels.get("le", ""), s.value)
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith(("_sum", "_created"))
        ]

    assert buckets(ours_registry) == buckets(theirs_registry)
    counter = LoopCounter("c", "c", ["l"], registry=CollectorRegistry())
    counter.labels("x").inc()
    counter.labels("x").inc(2.5)
    assert counter.labels("x")._value.get() == 3.5
    with pytest.raises(ValueError):
        counter.inc()  # a parent with labels, as prometheus-client says
    with pytest.raises(ValueError):
        counter.labels("x").inc(-1)
