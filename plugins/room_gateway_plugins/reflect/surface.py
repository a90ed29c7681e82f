"""The Reflect surface: Reflect's REST room API, onto the gateway's rooms."""

from __future__ import annotations

from typing import ClassVar

from starlette.routing import BaseRoute

from gateway.surfaces import Surface
from room_gateway_plugins.reflect.commands import COMMANDS
from room_gateway_plugins.reflect.route import PREFIX, ReflectRoute
from room_gateway_plugins.reflect.settings import ReflectSettings


class ReflectSurface(Surface):
    """``surfaces.reflect: {enabled: true, apps: [my-app]}`` serves ``/v1/apps/my-app/…`` as Reflect does."""

    name: ClassVar[str] = "reflect"
    settings_model = ReflectSettings
    http_prefixes: ClassVar[tuple[str, ...]] = (PREFIX,)
    settings: ReflectSettings

    def http_routes(self) -> list[BaseRoute]:
        return [
            ReflectRoute(
                self.context,
                self.settings.apps,
                COMMANDS,
                max_body_bytes=self.context.config.http.max_body_bytes,
            )
        ]
