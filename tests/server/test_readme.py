"""Every command of the README's REST section runs as written, with the real ``curl``, against a real gateway.

The section is the ``sh`` block after the ``<!-- readme-test: rest`` marker. A ``curl …`` line (with its
``\\`` continuations) is a step; the ``# → …`` lines after it are its output, where ``…`` stands for the
fields left out (the output must hold every field shown). A ``curl -sN`` step is a stream: it runs in the
background, as in its own terminal, while the later steps run. Other lines (``KEY=…``) run before each step.
The only change made to a command is the port: the gateway listens on a free one instead of 8080.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import KEY, ROOT, StartGateway

README = ROOT / "README.md"
MARKER = "<!-- readme-test: rest"
DOCUMENTED_ADDRESS = "localhost:8080"
STEP_TIMEOUT = 15.0


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)

    @property
    def streams(self) -> bool:
        return bool(re.search(r"\s-\w*N\b", self.command))


def readme_section() -> tuple[list[str], list[Step]]:
    """The setup lines and the steps of the marked block."""
    text = README.read_text(encoding="utf-8")
    start = text.index(MARKER)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
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


def parse_expected(text: str) -> Any:
    """``{"a":1,…}`` → ``{"a": 1}``: the fields the output must hold."""
    return json.loads(text.replace(",…", "").replace("…", ""))


def holds(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and holds(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)


class Background:
    """A streaming ``curl`` with its output collected line by line."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def data(self) -> list[Any]:
        return [
            json.loads(line.removeprefix("data: ")) for line in list(self.lines) if line.startswith("data: ")
        ]

    def wait_for(self, count: int, timeout: float = STEP_TIMEOUT) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.data()) < count and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        return self.data()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def test_the_readme_section_is_well_formed() -> None:
    setup, steps = readme_section()
    assert setup, "the section sets KEY first"
    assert len(steps) >= 8
    for step in steps:
        assert DOCUMENTED_ADDRESS in step.command, step.command
        assert step.expected, f"no `# → ` output after {step.command!r}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_every_readme_command_runs_as_written(start_gateway: StartGateway, tmp_path: Path) -> None:
    gateway = start_gateway()
    port = gateway.addresses["http"][1]
    (tmp_path / ".room-gateway.key").write_text(KEY + "\n")  # as `make run` leaves it
    env = {k: v for k, v in os.environ.items() if k != "ROOM_API_SECRET_KEY"}
    setup, steps = readme_section()
    streams: list[tuple[Step, Background]] = []
    try:
        for step in steps:
            script = "\n".join([*setup, step.command.replace(DOCUMENTED_ADDRESS, f"localhost:{port}")])
            if step.streams:
                stream = Background(script, tmp_path, env)
                streams.append((step, stream))
                stream.wait_for(1)  # listening before the next step writes
                continue
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT,
            )
            assert result.returncode == 0, f"{step.command}\n{result.stderr}"
            [expected] = step.expected
            assert holds(json.loads(result.stdout), parse_expected(expected)), (
                f"{step.command}\n{result.stdout}"
            )
        for step, stream in streams:
            wanted = [parse_expected(line.removeprefix("data: ")) for line in step.expected]
            seen = stream.wait_for(len(wanted))
            assert len(seen) >= len(wanted), f"{step.command}\n{stream.lines}"
            for actual, expected in zip(seen, wanted, strict=False):
                assert holds(actual, expected), f"{step.command}\n{stream.lines}"
    finally:
        for _, stream in streams:
            stream.stop()
