"""The WorkAdventure surface: WorkAdventure's Room API (gRPC ``roomApi.RoomApi``) onto the gateway's rooms.

Switched on with ``surfaces: {workadventure: {enabled: true}}`` in ``gateway.yaml``; served on the gRPC
port next to the native service, over h2c or TLS (``listen.grpc_tls``). A client made for WorkAdventure's
Room API (``@workadventure/room-api-client``, or any stub generated from its ``room-api.proto``) works
unchanged. See ``docs/migrating-from-workadventure.md`` for what maps to what, and what differs.

Registered through the same hook and entry point (``room_gateway`` group, name ``workadventure``) that a
third party's surface would use.
"""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.surfaces import Surface
from room_gateway_plugins.workadventure.service import ROOM_API_PREFIX, RoomApiHandler


class WorkAdventureSurface(Surface):
    """``roomApi.RoomApi`` on the gRPC listener; no HTTP routes (WorkAdventure's Room API is gRPC only).

    Its calls skip the native auth listener (:attr:`grpc_prefixes`): the handler authenticates them itself,
    from ``x-api-key`` only, with WorkAdventure's own messages.
    """

    name = "workadventure"
    grpc_prefixes = (ROOM_API_PREFIX,)

    def grpc_handlers(self) -> list[object]:
        return [RoomApiHandler(self.context.dispatcher)]


@hookimpl
def gateway_surfaces() -> list[type[Surface]]:
    return [WorkAdventureSurface]
