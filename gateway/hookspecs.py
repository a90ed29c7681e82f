"""Every hook a room-gateway plugin can implement.

A plugin is a module (or object) with functions marked ``@hookimpl``, registered under the ``room_gateway``
entry-point group::

    [project.entry-points.room_gateway]
    my_backend = "my_package.my_backend"

Built-in plugins (``room_gateway_plugins.*``) register through this same group. Hooks run at start-up only:
no hook is called on the request path (pluggy is synchronous — pluggy issue #320).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from gateway.core.backend import Backend
    from gateway.surfaces import Surface

PROJECT = "room_gateway"
ENTRY_POINT_GROUP = "room_gateway"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gateway_backend_classes() -> list[type[Backend]]:
    """Offer backend classes.

    Each class subclasses :class:`gateway.core.backend.Backend` and declares the URL ``schemes`` it serves;
    the gateway picks the one whose scheme matches ``backend`` in ``gateway.yaml``. Called once at start-up
    on every plugin; the results are concatenated.

    :return: a list of backend classes (empty or ``None`` when the plugin offers none).
    """
    raise NotImplementedError


@hookspec
def gateway_surfaces() -> list[type[Surface]]:
    """Offer compatibility surfaces (other vendors' room APIs onto the same rooms).

    Each class subclasses :class:`gateway.surfaces.Surface` and names its section under ``surfaces:`` in
    ``gateway.yaml`` (``name``) and the pydantic model that validates the section (``settings_model``, a
    :class:`gateway.surfaces.SurfaceSettings` subclass: ``enabled`` plus the surface's own keys; errors name
    the file, line and key like every other). When the section says ``enabled: true`` the class is built with
    the validated settings and a :class:`gateway.surfaces.SurfaceContext`, and adds its HTTP routes and gRPC
    handlers; it reaches the rooms through the context's :class:`gateway.dispatch.Dispatcher` only.

    Called when a configuration is validated and once at start-up, on every plugin; the results are
    concatenated (the first class offered under a name wins). A section no installed plugin offers is a
    configuration error naming those that are.

    :return: a list of surface classes (empty or ``None`` when the plugin offers none).
    """
    raise NotImplementedError
