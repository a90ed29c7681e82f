"""The plugin host: a plugin-manager factory and a typed facade over ``pm.hook``.

Plugins are found through the ``room_gateway`` entry-point group — built-in ones included, so they take the
same path as a third party's (datasette's ``DEFAULT_PLUGINS``). Set ``ROOM_GATEWAY_DISABLE_PLUGIN_AUTOLOAD=1``
to load none from entry points (as pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``) and register them by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import ModuleType
from urllib.parse import urlsplit

import pluggy

from gateway import hookspecs
from gateway.config import SurfaceSettings
from gateway.core.backend import DEFAULT_HISTORY, Backend, History
from gateway.surfaces import Surface

AUTOLOAD_ENV = "ROOM_GATEWAY_DISABLE_PLUGIN_AUTOLOAD"


class ConfigError(ValueError):
    """A configuration that cannot work; its message names the key and says what to do."""


def create_plugin_manager(
    extra: Iterable[object | ModuleType] = (), *, autoload: bool | None = None
) -> pluggy.PluginManager:
    """A fresh plugin manager: hook specs, entry-point plugins (unless disabled), then ``extra``.

    :param extra: plugins to register by hand (tests, embedding).
    :param autoload: load the ``room_gateway`` entry points; default: unless
        ``ROOM_GATEWAY_DISABLE_PLUGIN_AUTOLOAD`` is set.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    for plugin in extra:
        if not pm.is_registered(plugin):
            pm.register(plugin)
    pm.check_pending()
    return pm


class Plugins:
    """Typed access to the hooks, so the rest of the gateway stays type-checked."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def backend_classes(self) -> dict[str, type[Backend]]:
        """URL scheme → backend class, over every registered plugin."""
        by_scheme: dict[str, type[Backend]] = {}
        for classes in self.pm.hook.gateway_backend_classes():
            for cls in classes or ():
                for scheme in cls.schemes:
                    by_scheme.setdefault(scheme, cls)
        return by_scheme

    def surface_classes(self) -> dict[str, type[Surface]]:
        """Surface name (its key under ``surfaces:``) → class, over every registered plugin."""
        by_name: dict[str, type[Surface]] = {}
        for classes in self.pm.hook.gateway_surfaces():
            for cls in classes or ():
                by_name.setdefault(cls.name, cls)
        return by_name

    def surface_models(self) -> dict[str, type[SurfaceSettings]]:
        """Surface name → the settings model of its section of ``surfaces:``."""
        return {name: cls.settings_model for name, cls in self.surface_classes().items()}

    def create_backend(self, url: str, history: History = DEFAULT_HISTORY) -> Backend:
        """The backend for ``url``, chosen by its scheme (``limits``' ``storage_from_string`` style), keeping
        ``history`` of each room's log.

        :raises ConfigError: no installed plugin serves the scheme; the message lists those that are.
        """
        scheme = urlsplit(url).scheme
        classes = self.backend_classes()
        cls = classes.get(scheme)
        if cls is None:
            known = ", ".join(f"{name}://" for name in sorted(classes)) or "none"
            raise ConfigError(
                f"backend: no installed plugin serves {scheme + '://' if scheme else repr(url)} "
                f"(installed: {known})"
            )
        return cls(url, history=history)


def installed_surface_models() -> dict[str, type[SurfaceSettings]]:
    """The settings models of the surfaces the ``room_gateway`` entry points offer (none when autoload is
    off): what validates ``surfaces:`` when no plugin set is given (:class:`gateway.config.Surfaces`)."""
    return Plugins(create_plugin_manager()).surface_models()
