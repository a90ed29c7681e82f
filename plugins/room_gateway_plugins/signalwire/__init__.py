"""The SignalWire Video REST surface (``surfaces.signalwire`` in gateway.yaml): SignalWire's rooms,
conferences and room tokens under ``/api/video``, onto the native rooms.

Registered through the same hook and entry point (``room_gateway`` group, name ``signalwire``) that a
third-party surface uses. See ``docs/migrating-from-signalwire.md``.
"""

from __future__ import annotations

from gateway.hookspecs import hookimpl
from gateway.surfaces import Surface
from room_gateway_plugins.signalwire.surface import SignalWireSurface

__all__ = ["SignalWireSurface"]


@hookimpl
def gateway_surfaces() -> list[type[Surface]]:
    return [SignalWireSurface]
