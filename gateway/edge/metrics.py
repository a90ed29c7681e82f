"""``GET /metrics`` (:mod:`gateway.observability.metrics`, for a Prometheus scraper) and ``GET /v1/info``.

The counters are deployment-wide, so reading them needs the ``metrics:read`` permission (or ``*``) on a key
that is not limited to some rooms, as the global InvalidateConnections does: the auth policy decides it
(:meth:`AuthPolicy.authorize_deployment <gateway.auth.policy.AuthPolicy.authorize_deployment>`). A room
token or a key without the permission gets 403 PERMISSION_DENIED in the native error shape. The format
follows the scraper's ``Accept`` (OpenMetrics or the Prometheus text format 0.0.4).

``listen.metrics`` (off by default) serves the same without a key, on a listener of its own that serves
nothing else (:class:`MetricsListenerApp`): for a scraper on a network the operator trusts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gateway.auth.permissions import METRICS_READ
from gateway.auth.policy import AuthPolicy, Principal
from gateway.edge.responses import send_error, send_json
from gateway.edge.routing import PRINCIPAL
from gateway.errors import GatewayError, Unauthenticated
from gateway.observability.metrics import Metrics

PATH = "/metrics"
INFO_PATH = "/v1/info"


class MetricsEndpoint:
    """The ASGI endpoint of ``GET /metrics``.

    :param metrics: what it answers.
    :param policy: decides who may read it.
    """

    def __init__(self, metrics: Metrics, policy: AuthPolicy) -> None:
        self.metrics = metrics
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = scope.get(PRINCIPAL)
            if not isinstance(principal, Principal):  # the edge authenticates every path but the probes
                raise Unauthenticated("missing credentials")
            self.policy.authorize_deployment(principal, METRICS_READ, PATH)
        except GatewayError as exc:
            await send_error(send, exc)
            return
        await _send_metrics(self.metrics, scope, send)


async def _send_metrics(metrics: Metrics, scope: Scope, send: Send) -> None:
    accept = next((value for name, value in scope["headers"] if name == b"accept"), b"")
    body, content_type = metrics.exposition(accept.decode("latin-1"))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsListenerApp:
    """The ASGI app of ``listen.metrics``: ``GET /metrics`` without a key, and nothing else (404)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: nothing to start
            return
        if scope["path"] == PATH and scope["method"] in ("GET", "HEAD"):
            await _send_metrics(self.metrics, scope, send)
            return
        body = b"only GET /metrics is served here\n"
        start = {"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]}
        await send(start)
        await send({"type": "http.response.body", "body": body})


class InfoEndpoint:
    """``GET /v1/info`` (:mod:`gateway.observability.info`), readable as ``/metrics`` is (``metrics:read``).

    :param info: makes the answer.
    :param policy: decides who may read it.
    """

    def __init__(self, info: Callable[[], Awaitable[dict[str, Any]]], policy: AuthPolicy) -> None:
        self.info = info
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = scope.get(PRINCIPAL)
            if not isinstance(principal, Principal):
                raise Unauthenticated("missing credentials")
            self.policy.authorize_deployment(principal, METRICS_READ, INFO_PATH)
        except GatewayError as exc:
            await send_error(send, exc)
            return
        await send_json(send, 200, orjson.dumps(await self.info()))


def metrics_routes(metrics: Metrics | None, policy: AuthPolicy) -> list[BaseRoute]:
    """``GET /metrics`` answering ``metrics`` (none when ``metrics`` is ``None``)."""
    if metrics is None:
        return []
    return [Route(PATH, MetricsEndpoint(metrics, policy), methods=["GET"], name="metrics")]
