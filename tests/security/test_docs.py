"""Every ``curl`` line of docs/security.md's marked block runs as written against a real gateway.

The block format and the runner are the README test's (``tests/server/test_readme.py``): a ``curl …`` line
(with its ``\\`` continuations) is a step, the ``# → …`` line after it its output (``…`` stands for the
fields left out), other lines run before each step; only the port is changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server.conftest import KEY, ROOT, StartGateway, start_gateway  # noqa: F401  (a fixture)
from tests.server.test_readme import STEP_TIMEOUT, Step, check_output

DOC = ROOT / "docs" / "security.md"
MARKER = "<!-- security-test: rest"
DOCUMENTED_ADDRESS = "localhost:8080"


def doc_section() -> tuple[list[str], list[Step]]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER) :], re.DOTALL)
    assert block is not None, f"no ```sh block after {MARKER}"
    setup: list[str] = []
    steps: list[Step] = []
    pending = ""
    for raw in block.group(1).splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line + "\n"
            continue
        pending = ""
        if line.startswith("# → "):
            steps[-1].expected.append(line.removeprefix("# → "))
        elif line.startswith("curl "):
            steps.append(Step(line))
        elif line.strip() and not line.startswith("#"):
            setup.append(line)
    return setup, steps


def test_the_doc_section_is_well_formed() -> None:
    setup, steps = doc_section()
    assert setup and len(steps) >= 5
    for step in steps:
        assert DOCUMENTED_ADDRESS in step.command and len(step.expected) == 1, step.command


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_every_doc_command_runs_as_written(start_gateway: StartGateway, tmp_path: Path) -> None:  # noqa: F811
    gateway = start_gateway(extra="rate_limits: {limits: []}\n")
    port = gateway.addresses["http"][1]
    (tmp_path / ".room-gateway.key").write_text(KEY + "\n")  # as `make run` leaves it
    env = {k: v for k, v in os.environ.items() if k != "ROOM_API_SECRET_KEY"}
    setup, steps = doc_section()
    for step in steps:
        script = "\n".join([*setup, step.command.replace(DOCUMENTED_ADDRESS, f"localhost:{port}")])
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        assert result.returncode == 0, f"{step.command}\n{result.stderr}"
        check_output(step, result.stdout)
