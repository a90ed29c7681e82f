"""The sections of ``surfaces:``: each validated by the settings model of the plugin that offers it, with the
file, line and key in every error — the built-in surfaces through the same path a third party's takes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import room_gateway_plugins.memory
import room_gateway_plugins.reflect
from pydantic import ValidationError
from room_gateway_plugins.reflect.settings import ReflectSettings
from room_gateway_plugins.signalwire.settings import SignalWireSettings

from gateway.config import GatewayConfig
from gateway.config_loader import ConfigError, load_config
from gateway.plugins import Plugins, create_plugin_manager


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path, plugins: Plugins | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, plugins=plugins)
    return str(info.value)


def test_each_section_is_the_model_of_its_plugin(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            surfaces:
              native: true
              workadventure: {enabled: true}
              reflect: {enabled: false, apps: [my-app]}
              signalwire: {enabled: true, project_id: my-project}
            """,
        ),
        {},
    )
    sections = config.surfaces.sections()
    assert sections["reflect"] == ReflectSettings(enabled=False, apps=["my-app"])
    assert sections["signalwire"] == SignalWireSettings(enabled=True, project_id="my-project")
    assert config.surfaces.enabled() == ["native", "workadventure", "signalwire"]


def test_no_section_is_native_only() -> None:
    assert GatewayConfig().surfaces.sections() == {}
    assert GatewayConfig().surfaces.enabled() == ["native"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            surfaces:
              reflect:
                enabled: true
                apps: [my-app, "a/b"]
            """,
            "line 4: surfaces.reflect.apps: an app id is 1-128 letters, digits or . _ ~ - only, got 'a/b'",
        ),
        (
            """
            surfaces:
              reflect: {enabled: true}
            """,
            "line 2: surfaces.reflect: list the app ids to serve in apps:",
        ),
        (
            """
            surfaces:
              signalwire:
                enabled: true
                projectid: x
            """,
            "line 4: surfaces.signalwire.projectid: unknown key (known here: enabled, project_id)",
        ),
        (
            """
            surfaces:
              workadventure: {enabled: yes please}
            """,
            "line 2: surfaces.workadventure.enabled: Input should be a valid boolean",
        ),
        (
            """
            surfaces:
              native: true
              reflekt: {enabled: false}
            """,
            "line 3: surfaces.reflekt: no installed plugin offers the reflekt surface "
            "(installed: reflect, signalwire, workadventure)",
        ),
    ],
)
def test_a_bad_section_names_the_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(write(tmp_path, text))
    assert f"gateway.yaml, {expected}" in message


def test_every_error_of_the_file_is_reported_at_once(tmp_path: Path) -> None:
    message = error_of(
        write(
            tmp_path,
            """
            surfaces:
              native: maybe
              reflect: {enabled: true, apps: []}
              status: {enabled: true}
            """,
        )
    )
    assert "line 2: surfaces.native: Input should be a valid boolean" in message
    assert "line 3: surfaces.reflect: list the app ids" in message
    assert "line 4: surfaces.status: no installed plugin offers the status surface" in message


def test_the_sections_are_validated_by_the_plugins_given(tmp_path: Path) -> None:
    path = write(tmp_path, "surfaces:\n  reflect: {enabled: true, apps: [a]}\n  signalwire: {}\n")
    builtins = [room_gateway_plugins.memory, room_gateway_plugins.reflect]
    only_reflect = Plugins(create_plugin_manager(builtins, autoload=False))
    expected = "line 3: surfaces.signalwire: no installed plugin offers the signalwire surface"
    expected += " (installed: reflect)"
    assert expected in error_of(path, only_reflect)
    none = Plugins(create_plugin_manager([room_gateway_plugins.memory], autoload=False))
    assert "(installed: none)" in error_of(path, none)


def test_a_config_built_in_code_is_validated_too() -> None:
    with pytest.raises(ValidationError, match=r"surfaces\.reflect\.apps"):
        GatewayConfig.model_validate({"surfaces": {"reflect": {"enabled": True, "apps": ["a b"]}}})
    with pytest.raises(ValidationError, match=r"surfaces\.nowhere"):
        GatewayConfig.model_validate({"surfaces": {"nowhere": {"enabled": False}}})
