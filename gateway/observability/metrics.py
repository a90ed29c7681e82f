"""The gateway's metrics, on ``prometheus-client``: declared once here, recorded where things happen.

A :class:`Metrics` holds its own :class:`~prometheus_client.CollectorRegistry`, never the process-wide
default one: several gateways in one process (tests, an embedding application) each count their own calls,
and nothing else in the process adds to, or clashes with, what ``/metrics`` answers.

Recording stays off the hot path's bill: a recorder binds the label children it will increment once, when it
is built (``metrics.rate_limited.labels(by="ip")``), so an update is one ``inc()`` on an object it already
holds — no label lookup, no allocation.

Metrics (``API.md``, Operability; more join as the gateway records more):

- ``room_gateway_rate_limited_total{by="ip|key|room"}`` — calls refused by a rate limit
  (:class:`gateway.ratelimit.RateLimiter`);
- ``room_gateway_rate_limit_storage_failures_total`` — rate-limit checks that could not reach the storage.

Counters also expose prometheus-client's ``*_created`` series (when each started counting).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder


class Metrics:
    """Every metric of one gateway, on a registry of its own.

    :ivar registry: what ``/metrics`` exposes (:meth:`exposition`).
    :ivar rate_limited: calls refused with 429 / RESOURCE_EXHAUSTED, label ``by`` (``ip``, ``key``, ``room``).
    :ivar rate_limit_storage_failures: checks that could not reach the rate-limit storage (served anyway
        unless ``fail_closed``).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rate_limited = Counter(
            "room_gateway_rate_limited",
            "Calls refused by a rate limit.",
            ["by"],
            registry=self.registry,
        )
        self.rate_limit_storage_failures = Counter(
            "room_gateway_rate_limit_storage_failures",
            "Rate-limit checks that could not reach the storage.",
            registry=self.registry,
        )

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
