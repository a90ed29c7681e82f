"""Liveness, readiness and the static documents of the edge (not transcoded, not on the hot path)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.edge.responses import error_response
from gateway.errors import GatewayError, Unavailable

log = logging.getLogger(__name__)

_OK = orjson.dumps({"status": "ok"})
Endpoint = Callable[[Request], Awaitable[Response]]


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return _json(_OK)


def readiness(ready: Callable[[], Awaitable[None]] | None) -> Endpoint:
    """``/readyz``: 200 when ``ready()`` returns, 503 in the error shape when it raises."""

    async def readyz(request: Request) -> Response:
        if ready is not None:
            try:
                await ready()
            except GatewayError as exc:
                return error_response(exc if exc.http_status == 503 else Unavailable(exc.message))
            except Exception:
                log.exception("readiness check failed")
                return error_response(Unavailable("not ready"))
        return _json(_OK)

    return readyz


def static_json(body: bytes) -> Endpoint:
    """An endpoint answering with a JSON document computed at start-up."""

    async def endpoint(request: Request) -> Response:
        return _json(body)

    return endpoint
