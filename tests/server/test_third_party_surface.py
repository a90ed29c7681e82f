"""A third party's surface, installed from a folder of its own, in a real gateway process: its settings
model validates its section of ``surfaces:`` (a bad value is refused with its line), and its route answers
over HTTP.

The plugin is the README's example, as written there (``<!-- surface-example: … -->`` blocks): its module,
its entry point, its section of gateway.yaml. It is installed the way an installer lays out a package —
the module and a ``.dist-info`` folder with ``entry_points.txt`` on ``sys.path`` (``PYTHONPATH``) — so
the gateway finds it through ``importlib.metadata``, as it finds any plugin.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import KEY, ROOT, GatewayProcess, gateway_env, run_cli, write_config

README = ROOT / "README.md"


def example(name: str) -> str:
    """The README's ``surface-example: NAME`` block."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- surface-example: {re.escape(name)} -->\n```\w+\n(.*?)```", text, re.DOTALL)
    assert found is not None, f"README.md has no surface-example block {name!r}"
    return found.group(1)


def shown_output(command: str) -> str:
    """The line the README shows after ``$ COMMAND``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"$ {command}"))
    return lines[at + 1]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder where the example plugin is installed: its module and its distribution's metadata."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "room_status.py").write_text(example("room_status.py"), encoding="utf-8")
    entry_points = tomllib.loads(example("pyproject.toml"))["project"]["entry-points"]
    dist_info = folder / "room_status-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: room-status\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
            for group, points in entry_points.items()
        )
    )
    return folder


def env_with(site: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return gateway_env(ROOM_API_SECRET_KEY=KEY, PYTHONPATH=path)


def test_its_route_answers_over_http(tmp_path: Path, site: Path) -> None:
    config = write_config(tmp_path, extra=example("gateway.yaml"))
    gateway = GatewayProcess(config, env_with(site))
    try:
        headers = {"X-API-Key": KEY}
        with httpx.Client(base_url=gateway.http_url, headers=headers, timeout=10) as http:
            assert http.post("/v1/rooms", json={"roomId": "lobby"}).status_code == 200
            response = http.get("/status/lobby")
            assert (response.status_code, response.json()) == (200, {"room": "lobby", "status": "open"})
            assert response.text == shown_output("curl")
            missing = http.get("/status/nowhere")
            assert missing.status_code == 404 and "does not exist" in missing.json()["error"]
            # Not under the surface's own prefixes: the edge authenticates the call, in the native shape.
            refused = http.get("/status/lobby", headers={"X-API-Key": "wrong-key-0123456789abcdef"})
            assert refused.status_code == 401 and refused.json()["error"]["status"] == "UNAUTHENTICATED"
    finally:
        gateway.stop()


def test_a_bad_value_is_refused_with_its_line(tmp_path: Path, site: Path) -> None:
    section = example("gateway.yaml").replace("path: /status", "path: status")
    config = write_config(tmp_path, extra=section)
    line = 1 + config.read_text().splitlines().index("  status: {enabled: true, path: status}")
    result = run_cli("check-config", "--config", str(config), env=env_with(site))
    assert result.returncode == 2, result.stdout + result.stderr
    shown = shown_output("room-gateway check-config").partition(": ")[2]  # the README's, minus its line
    assert f"{config}, line {line}: {shown}" in result.stderr


def test_without_its_plugin_the_section_names_what_is_installed(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra=example("gateway.yaml"))
    result = run_cli("check-config", "--config", str(config), env=gateway_env(ROOM_API_SECRET_KEY=KEY))
    assert result.returncode == 2
    assert (
        "surfaces.status: no installed plugin offers the status surface "
        "(installed: reflect, signalwire, workadventure)"
    ) in result.stderr


def test_check_config_counts_it_among_the_surfaces(tmp_path: Path, site: Path) -> None:
    config = write_config(tmp_path, extra=example("gateway.yaml"))
    result = run_cli("check-config", "--config", str(config), env=env_with(site))
    assert result.returncode == 0, result.stderr
    assert "surfaces: native, status" in result.stdout
