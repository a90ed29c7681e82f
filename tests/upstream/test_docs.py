"""docs/front-proxy.md runs as written: its configuration in front of a WorkAdventure Room API (a gateway
serving the WorkAdventure surface on its own key, standing in for the play container), then every ``curl``
line of its marked blocks, with the runner and output checks of docs/security.md's test. Only the
addresses change: the upstream's ``play:50051`` and the gateway's ``localhost:8080`` are free ports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.compat.workadventure.conftest import PROTOS, config_text
from tests.security.test_docs import check_output
from tests.server.conftest import KEY, ROOT, GatewayProcess, gateway_env
from tests.server.test_readme import STEP_TIMEOUT, Background, Step, parse_steps

DOC = ROOT / "docs" / "front-proxy.md"
MARKER = "<!-- front-proxy-test: "
WA_KEY = "docs-wa-room-api-secret-0123456789"
MAP_SCRIPT_KEY = "docs-map-script-key-0123456789"
SECTIONS = ("rest", "sse", "grpc")
BASE_CONFIG = (
    'listen: {http: "127.0.0.1:0", grpc: "127.0.0.1:0"}\nbackend: "memory://"\nrate_limits: {limits: []}\n'
)


def is_step(line: str) -> bool:
    return line.startswith(("curl ", "grpcurl "))


def blocks() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    found = {}
    for marker in re.finditer(re.escape(MARKER) + r"([\w-]+)", text):
        block = re.match(r"[^\n]*\n+```\w+\n(.*?)```", text[marker.start() :], re.DOTALL)
        assert block is not None, f"no code block after {marker.group(0)}"
        found[marker.group(1)] = block.group(1)
    return found


def test_the_doc_is_well_formed() -> None:
    found = blocks()
    assert set(found) == {"config", "rest", "sse", "grpc"}
    for name in SECTIONS:
        setup, steps = parse_steps(found[name], is_step)
        assert setup and steps and all(step.expected for step in steps), name


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_every_doc_command_runs_as_written(tmp_path: Path) -> None:
    wa_config = tmp_path / "wa.yaml"
    wa_config.write_text(config_text(), encoding="utf-8")
    wa = GatewayProcess(wa_config, gateway_env(ROOM_API_SECRET_KEY=WA_KEY))
    front: GatewayProcess | None = None
    try:
        found = blocks()
        folder = tmp_path / "etc"
        folder.mkdir()
        (folder / "room-api.proto").write_text((PROTOS / "roomApi" / "room-api.proto").read_text())
        config = found["config"].replace("grpc://play:50051", f"grpc://127.0.0.1:{wa.grpc_address[1]}")
        (folder / "gateway.yaml").write_text(BASE_CONFIG + config, encoding="utf-8")
        env = gateway_env(ROOM_API_SECRET_KEY=KEY, WA_ROOM_API_KEY=WA_KEY, MAP_SCRIPT_KEY=MAP_SCRIPT_KEY)
        front = GatewayProcess(folder / "gateway.yaml", env)
        port = front.addresses["http"][1]
        workdir = tmp_path / "clone"
        workdir.mkdir()
        (workdir / ".room-gateway.key").write_text(KEY + "\n")
        shell_env = {k: v for k, v in os.environ.items() if k != "ROOM_API_SECRET_KEY"}
        shell_env["MAP_SCRIPT_KEY"] = MAP_SCRIPT_KEY
        shell_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{shell_env.get('PATH', '')}"  # grpcurl
        grpc_port = front.grpc_address[1]

        def script(setup: list[str], step: Step) -> str:
            command = step.command.replace("localhost:8080", f"localhost:{port}")
            return "\n".join([*setup, command.replace("localhost:50051", f"localhost:{grpc_port}")])

        def run(setup: list[str], step: Step) -> None:
            result = subprocess.run(
                ["bash", "-c", script(setup, step)],
                cwd=workdir,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT,
            )
            assert result.returncode == 0, f"{step.command}\n{result.stderr}"
            check_output(step, result.stdout)

        for name in SECTIONS:
            setup, steps = parse_steps(found[name], is_step)
            streams = [
                (step, Background(script(setup, step), workdir, shell_env)) for step in steps if step.streams
            ]
            try:
                writes = [step for step in steps if not step.streams]
                for step in writes:
                    run(setup, step)
                for step, stream in streams:
                    # A listener subscribes some time after its call starts; WorkAdventure sends only later
                    # changes: write again until it has heard one (as a second terminal would).
                    deadline = time.monotonic() + STEP_TIMEOUT
                    while not stream.data() and time.monotonic() < deadline:
                        run(setup, writes[-1])
                        stream.wait_for(1, timeout=0.5)
                    check_output(step, "\n".join(stream.lines))
            finally:
                for _, stream in streams:
                    stream.stop()
    finally:
        if front is not None:
            front.stop()
        wa.stop()
