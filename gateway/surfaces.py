"""Compatibility surfaces: other vendors' room APIs served as adapters onto the same RoomService.

A surface is a plugin (``gateway_surfaces`` hook) that turns itself on when its section of ``surfaces:`` in
``gateway.yaml`` says ``enabled: true``. It may add HTTP routes to the Starlette edge and handlers to the
gRPC server; it calls the domain through :class:`SurfaceContext` (the same service, auth policy and
dispatcher as the native API), so a variable written through one surface is read and heard through every
other. Each surface answers in its own vendor's shapes (errors included); the native error shape is not
imposed on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.routing import BaseRoute

from gateway.auth.policy import AuthPolicy
from gateway.config import GatewayConfig
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher


@dataclass(frozen=True, slots=True)
class SurfaceContext:
    """What a surface gets to work with: the one core of the gateway, and the whole configuration."""

    config: GatewayConfig
    service: RoomService
    policy: AuthPolicy
    dispatcher: Dispatcher


class Surface:
    """Base class of compatibility surfaces.

    :param settings: the surface's section of ``surfaces:`` (``enabled`` plus its own keys), as a mapping.
    :param context: the gateway's core.
    """

    #: The key under ``surfaces:`` in gateway.yaml, e.g. ``"reflect"``.
    name: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any], context: SurfaceContext) -> None:
        self.settings = settings
        self.context = context

    def http_routes(self) -> list[BaseRoute]:
        """Routes to add to the HTTP edge (they bypass the native auth middleware's error shape only if
        they authenticate themselves — see :attr:`authenticates_http`)."""
        return []

    def grpc_handlers(self) -> list[object]:
        """grpclib handlers (``__mapping__`` objects) to serve on the gRPC port next to the native service."""
        return []

    #: Path prefixes under which this surface authenticates HTTP calls itself, in its vendor's shapes.
    http_prefixes: ClassVar[tuple[str, ...]] = ()
    #: gRPC method path prefixes (``/package.Service/``) this surface authenticates itself.
    grpc_prefixes: ClassVar[tuple[str, ...]] = ()
