"""/readyz reflects the readiness check it is given."""

from __future__ import annotations

import httpx

from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.errors import Unavailable


async def test_readyz_503_when_not_ready(dispatcher: Dispatcher) -> None:
    state = {"ready": False}

    async def ready() -> None:
        if not state["ready"]:
            raise Unavailable("backend is closed")

    app = create_http_app(dispatcher, ready=ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "error": {"code": 503, "status": "UNAVAILABLE", "message": "backend is closed"}
        }
        state["ready"] = True
        assert (await client.get("/readyz")).json() == {"status": "ok"}
