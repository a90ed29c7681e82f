"""Observability: what the gateway tells its operators about itself, recorded by both transports.

- :mod:`gateway.observability.metrics` — :class:`~gateway.observability.metrics.Metrics`, every metric of a
  gateway on a registry of its own, and their exposition (``GET /metrics``: :mod:`gateway.edge.metrics`).
"""

from gateway.observability.metrics import Metrics

__all__ = ["Metrics"]
