"""The runner in-process: assembly through the public plugin path, backend life cycle, fail-closed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import room_gateway_plugins.memory
from room_gateway_plugins.memory import MemoryBackend

from gateway.app import create_gateway
from gateway.config_loader import load_config
from gateway.core.backend import Backend, History
from gateway.hookspecs import hookimpl
from gateway.plugins import ConfigError, create_plugin_manager
from gateway.server import serve
from tests.server.conftest import KEY, write_config

EVENTS: list[str] = []


class RecordingBackend(MemoryBackend):
    """The memory backend, noting when it is opened and closed. URL: ``recording://``."""

    schemes = ("recording",)

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.opened = asyncio.Event()

    async def open(self) -> None:
        EVENTS.append("open")
        self.opened.set()

    async def close(self) -> None:
        EVENTS.append("close")
        await super().close()


class RecordingPlugin:
    @hookimpl
    def gateway_backend_classes(self) -> list[type[Backend]]:
        return [RecordingBackend]


async def test_the_backend_is_opened_first_and_closed_last(tmp_path: Path) -> None:
    EVENTS.clear()
    config_file = write_config(tmp_path)
    config_file.write_text(config_file.read_text().replace("memory://", "recording://"))
    config = load_config(config_file, {"ROOM_API_SECRET_KEY": KEY})
    gateway = create_gateway(
        config, plugin_manager=create_plugin_manager([RecordingPlugin()], autoload=False)
    )
    assert isinstance(gateway.backend, RecordingBackend)
    assert gateway.service.auto_create_rooms is True

    stop = asyncio.Event()
    task = asyncio.create_task(serve(gateway, stop=stop, handle_signals=False))
    await asyncio.wait_for(gateway.backend.opened.wait(), 10)
    assert EVENTS == ["open"]
    stop.set()
    await asyncio.wait_for(task, 10)
    assert EVENTS == ["open", "close"]


async def test_no_key_fails_closed_before_anything_is_built(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text("backend: memory://\n")
    with pytest.raises(ConfigError, match=r"export ROOM_API_SECRET_KEY=\$\(room-gateway keys new --raw\)"):
        create_gateway(load_config(config_file, {}))


#: What each surface needs besides ``enabled: true`` to be a valid configuration.
SURFACE_SETTINGS = {"reflect": ", apps: [my-app]", "signalwire": ", project_id: my-project"}


@pytest.mark.parametrize("surface", ["workadventure", "reflect", "signalwire"])
async def test_a_surface_this_build_cannot_serve_is_refused(tmp_path: Path, surface: str) -> None:
    settings = SURFACE_SETTINGS.get(surface, "")
    config_file = write_config(tmp_path, extra=f"surfaces:\n  {surface}: {{enabled: true{settings}}}\n")
    # Only the memory backend's plugin: no plugin offers the surface.
    plugins = create_plugin_manager(autoload=False, extra=[room_gateway_plugins.memory])
    with pytest.raises(ConfigError, match=f"surfaces.{surface}.enabled"):
        create_gateway(load_config(config_file, {"ROOM_API_SECRET_KEY": KEY}), plugin_manager=plugins)


async def test_the_history_section_reaches_the_backend(tmp_path: Path) -> None:
    extra = "history:\n  max_changes: 7\n  max_age_seconds: 60\n  events: false\n"
    gateway = create_gateway(load_config(write_config(tmp_path, extra=extra), {"ROOM_API_SECRET_KEY": KEY}))
    assert gateway.backend.history == History(max_changes=7, max_age_seconds=60.0, events=False)
    default = create_gateway(load_config(write_config(tmp_path), {"ROOM_API_SECRET_KEY": KEY}))
    assert default.backend.history == History()


async def test_the_http_app_is_served_with_the_configured_limits(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, extra="http:\n  max_body_bytes: 64\n")
    gateway = create_gateway(load_config(config_file, {"ROOM_API_SECRET_KEY": KEY}))
    await gateway.backend.open()
    try:
        transport = httpx.ASGITransport(app=gateway.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            response = await http.post(
                "/v1/rooms", json={"roomId": "r", "description": "x" * 100}, headers={"X-API-Key": KEY}
            )
        assert response.status_code == 413
    finally:
        await gateway.backend.close()
