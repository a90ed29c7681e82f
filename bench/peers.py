"""The bare peers the gateway is measured against, each doing the least a hand-written server would.

- ``starlette``: a bare Starlette app with GET/PUT on the variable path returning the same JSON from a
  dict (no auth, no validation, no versions kept honest) — served by uvicorn like the gateway.
- ``grpclib``: a bare grpclib server implementing ``roomgateway.v1.RoomService/GetVariable`` and
  ``SetVariable`` with the same betterproto2 messages, from a dict.

Usage: python bench/peers.py starlette|grpclib PORT
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

VARIABLE: dict[str, Any] = {
    "name": "score",
    "value": {"points": 42, "players": ["ada", "linus"]},
    "version": "1",
    "updateTime": "2026-01-02T03:04:05Z",
}


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    store: dict[tuple[str, str], dict[str, Any]] = {}

    async def get_variable(request: Request) -> JSONResponse:
        key = (request.path_params["room_id"], request.path_params["name"])
        return JSONResponse(store.get(key, VARIABLE))

    async def set_variable(request: Request) -> JSONResponse:
        body = await request.json()
        key = (request.path_params["room_id"], request.path_params["name"])
        variable = dict(VARIABLE, value=body["value"])
        store[key] = variable
        return JSONResponse(variable)

    return Starlette(
        routes=[
            Route("/v1/rooms/{room_id}/variables/{name}", get_variable, methods=["GET"]),
            Route("/v1/rooms/{room_id}/variables/{name}", set_variable, methods=["PUT"]),
        ]
    )


async def serve_grpclib(port: int) -> None:
    from grpclib.server import Server

    from gateway._gen.google.protobuf import Value
    from gateway._gen.roomgateway.v1 import (
        GetVariableRequest,
        RoomServiceBase,
        SetVariableRequest,
        Variable,
    )

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    stored = {"points": 42, "players": ["ada", "linus"]}
    store: dict[tuple[str, str], Variable] = {}

    class Bare(RoomServiceBase):
        async def get_variable(self, message: GetVariableRequest) -> Variable:
            return store.get(
                (message.room_id, message.name),
                Variable(name="score", value=Value.from_dict(stored), version=1, update_time=when),
            )

        async def set_variable(self, message: SetVariableRequest) -> Variable:
            variable = Variable(name=message.name, value=message.value, version=1, update_time=when)
            store[(message.room_id, message.name)] = variable
            return variable

    server = Server([Bare()])
    await server.start("127.0.0.1", port)
    print(f"grpclib peer listening on 127.0.0.1:{port}", flush=True)
    await server.wait_closed()


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "starlette":
        import uvicorn

        uvicorn.run(starlette_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    elif kind == "grpclib":
        asyncio.run(serve_grpclib(port))
    else:
        raise SystemExit(f"unknown peer {kind!r}")


if __name__ == "__main__":
    main()
