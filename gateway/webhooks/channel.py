"""What crosses between the gateway process and its webhook worker (:mod:`.supervisor`, :mod:`.worker`),
over one Unix socket pair:

- to the worker: first its settings, one JSON line (:func:`settings_line`: the backend URL, ``history``,
  ``webhooks`` with its secrets, ``logging``), so that it runs exactly the gateway's configuration as
  loaded (environment substituted, or built in code) with no file to read again and no secret in its
  arguments or environment; then single bytes, :data:`WAKE` (this instance wrote messages) and
  :data:`REFRESH` (an endpoint was enabled through the management API);
- to the gateway: JSON lines, ``{"ready": true}`` once the worker's deliverers run, then every
  :data:`SNAPSHOT_SECONDS` its delivery metrics (:func:`snapshot`), which :class:`MetricRelay` adds to the
  gateway's own ``/metrics`` (the worker has no listener).

The socket is also how the worker learns that the gateway is gone: its end reads EOF when the gateway's
closes, however the gateway ended (``kill -9`` included), and the worker then stops.

Why not prometheus-client's multiprocess mode: it moves *every* metric of the process to memory-mapped
files (the lock-free values of :mod:`gateway.observability.metrics` with them), wants a directory cleaned
at each start, and a registry per :class:`~gateway.observability.metrics.Metrics` would no longer hold
only its own gateway's values; five families relayed as numbers twice a second cost nothing next to that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram

from gateway.config import GatewayConfig, Webhooks
from gateway.core.backend import History
from gateway.observability.metrics import Metrics

#: Parent → worker: this instance wrote messages (one byte, however many since the last one was read).
WAKE = b"w"
#: Parent → worker: read every endpoint's state again (``:enable``).
REFRESH = b"r"
#: Seconds between two metric snapshots of the worker: what ``/metrics`` lags behind the deliveries.
SNAPSHOT_SECONDS = 0.5
#: The longest line either side reads (the settings of many endpoints).
LINE_LIMIT = 16 * 1024 * 1024

OUTCOMES = ("delivered", "retrying", "failed")


@dataclass(frozen=True)
class WorkerSettings:
    """What the worker runs: the gateway's configuration, as far as delivering needs it."""

    backend: str
    history: History
    webhooks: Webhooks
    log_level: str
    log_format: str


def settings_line(config: GatewayConfig) -> bytes:
    """The worker's settings as one line, secrets included (it goes through the socket pair only)."""
    webhooks = config.webhooks.model_dump(mode="json")
    for endpoint, dumped in zip(config.webhooks.endpoints, webhooks["endpoints"], strict=True):
        dumped["secret"] = endpoint.secret.get_secret_value()
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    settings = {
        "backend": config.backend,
        "history": config.history.model_dump(mode="json"),
        "webhooks": webhooks,
        "logging": {"level": level, "format": config.logging.format},
    }
    return orjson.dumps(settings) + b"\n"


def read_settings(line: bytes) -> WorkerSettings:
    """The settings of :func:`settings_line`, validated as ``gateway.yaml`` is."""
    raw = orjson.loads(line)
    config = GatewayConfig.model_validate(
        {"backend": raw["backend"], "history": raw["history"], "webhooks": raw["webhooks"]}
    )
    return WorkerSettings(
        config.backend,
        config.history.to_history(),
        config.webhooks,
        raw["logging"]["level"],
        raw["logging"]["format"],
    )


def _children(metrics: Metrics, name: str) -> tuple[list[Counter], Histogram, Histogram, Gauge, Gauge]:
    return (
        [metrics.webhook_deliveries.labels(endpoint=name, outcome=outcome) for outcome in OUTCOMES],
        metrics.webhook_duration.labels(endpoint=name),
        metrics.webhook_latency.labels(endpoint=name),
        metrics.webhook_backlog.labels(endpoint=name),
        metrics.webhook_disabled.labels(endpoint=name),
    )


# prometheus-client keeps a histogram child's per-bucket counts in ``_buckets`` and its sum in ``_sum``
# (its ``observe`` adds to them; gateway.observability.metrics.LoopHistogram does the same): the only way
# to add counts observed elsewhere without observing each value again.


def _histogram(child: Histogram) -> list[float]:
    return [bucket.get() for bucket in child._buckets] + [child._sum.get()]


def snapshot(metrics: Metrics, names: list[str]) -> bytes:
    """The worker's delivery metrics as one line: per endpoint, its totals since the worker started
    (attempts by outcome, both histograms' bucket counts and sums) and its gauges (backlog, disabled)."""
    values: dict[str, Any] = {}
    for name in names:
        outcomes, duration, latency, backlog, disabled = _children(metrics, name)
        values[name] = {
            "outcomes": [child._value.get() for child in outcomes],
            "duration": _histogram(duration),
            "latency": _histogram(latency),
            "gauges": [backlog._value.get(), disabled._value.get()],
        }
    return orjson.dumps({"metrics": values}) + b"\n"


class MetricRelay:
    """Adds a worker's snapshots to the gateway's metrics: what each counter and histogram grew by since
    the previous snapshot, and the gauges as they are. Every endpoint's children are bound when the relay
    is built, so ``/metrics`` shows them (at zero) before the first delivery, as in ``inline`` mode.

    A worker counts from zero: :meth:`restart` forgets the previous one's totals. What a worker killed
    with ``kill -9`` counted after its last snapshot (at most :data:`SNAPSHOT_SECONDS`) is not counted.
    """

    def __init__(self, metrics: Metrics, names: list[str]) -> None:
        self._children = {name: _children(metrics, name) for name in names}
        self._last: dict[str, dict[str, list[float]]] = {}

    def restart(self) -> None:
        self._last = {}

    def apply(self, values: dict[str, dict[str, list[float]]]) -> None:
        for name, now in values.items():
            bound = self._children.get(name)
            if bound is None:
                continue
            outcomes, duration, latency, backlog, disabled = bound
            last = self._last.get(name, {})
            for child, grown in zip(outcomes, _grown(now["outcomes"], last.get("outcomes")), strict=True):
                if grown > 0:
                    child.inc(grown)
            _add(duration, _grown(now["duration"], last.get("duration")))
            _add(latency, _grown(now["latency"], last.get("latency")))
            backlog.set(now["gauges"][0])
            disabled.set(now["gauges"][1])
            self._last[name] = now


def _grown(now: list[float], last: list[float] | None) -> list[float]:
    return now if last is None else [a - b for a, b in zip(now, last, strict=True)]


def _add(child: Histogram, grown: list[float]) -> None:
    *buckets, total = grown
    for bucket, count in zip(child._buckets, buckets, strict=True):
        if count > 0:
            bucket.inc(count)
    if total > 0:
        child._sum.inc(total)
