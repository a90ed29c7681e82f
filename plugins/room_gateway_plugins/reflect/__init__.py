"""The Reflect surface plugin: Reflect's REST API (``/v1/apps/{appId}/rooms…``, ``…/connections…``) served
onto the same rooms as the native API. Switched on by ``surfaces.reflect`` in gateway.yaml; registered
through the same hook and entry point (``room_gateway`` group, name ``reflect``) a third party would use.
See docs/migrating-from-reflect.md.
"""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.surfaces import Surface
from room_gateway_plugins.reflect.surface import ReflectSurface

__all__ = ["ReflectSurface"]


@hookimpl
def gateway_surfaces() -> list[type[Surface]]:
    return [ReflectSurface]
