"""Every command of the README's REST and gRPC sections runs as written, with the real ``curl`` and
``grpcurl``, against a real gateway.

A section is the ``sh`` block after a ``<!-- readme-test: NAME`` marker. A ``curl …`` or ``grpcurl …`` line
(with its ``\\`` continuations) is a step; the ``# → …`` lines after it are its output: a JSON object, where
``…`` stands for the fields left out (the output must hold every field shown), or else a line the output
must contain. A ``curl -sN`` or a ``grpcurl … /Listen…`` step is a stream: it runs in the background, as in
its own terminal, while the later steps run. Other lines (``KEY=…``) run before each step, from a folder
laid out like a clone after ``make run``. The only change made to a command is the port: the gateway listens
on free ones instead of 8080 and 50051.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import KEY, ROOT, StartGateway

README = ROOT / "README.md"
SECTIONS = ("rest", "grpc")
#: The documented address of each listener, replaced by the test gateway's.
DOCUMENTED = {"http": "localhost:8080", "grpc": "localhost:50051"}
STEP_TIMEOUT = 15.0
_JSON = json.JSONDecoder()


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)

    @property
    def streams(self) -> bool:
        if self.command.startswith("grpcurl "):
            return "/Listen" in self.command
        return bool(re.search(r"\s-\w*N\b", self.command))


def parse_steps(body: str, is_step: Callable[[str], bool]) -> tuple[list[str], list[Step]]:
    """The setup lines and the steps of one ``sh`` block: a line ``is_step`` picks (with its ``\\``
    continuations) is a step, the ``# → …`` lines after it its output, any other line but comments setup."""
    setup: list[str] = []
    steps: list[Step] = []
    pending = ""
    for raw in body.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line + "\n"
            continue
        pending = ""
        if line.startswith("# → "):
            steps[-1].expected.append(line.removeprefix("# → "))
        elif is_step(line):
            steps.append(Step(line))
        elif line.strip() and not line.startswith("#"):
            setup.append(line)
    return setup, steps


def readme_section(name: str) -> tuple[list[str], list[Step]]:
    """The setup lines and the steps of the block marked ``readme-test: NAME``."""
    text = README.read_text(encoding="utf-8")
    marker = f"<!-- readme-test: {name} "
    start = text.index(marker)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no ```sh block after {marker}"
    return parse_steps(block.group(1), lambda line: line.startswith(("curl ", "grpcurl ")))


def parse_expected(text: str) -> Any:
    """``{"a":1,…}`` → ``{"a": 1}``: the fields the output must hold."""
    return json.loads(text.replace(",…", "").replace("…", ""))


def json_outputs(text: str) -> list[Any]:
    """The JSON values of an output: SSE ``data:`` lines, or (grpcurl) objects one after another."""
    if "data: " in text:
        return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    values, at = [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return values
        try:
            value, at = _JSON.raw_decode(text, at)
        except json.JSONDecodeError:
            return values  # a stream cut mid-object: what came whole
        values.append(value)


def check_output(step: Step, stdout: str) -> None:
    """Every ``# →`` line of the step is in ``stdout``: JSON objects in order, text lines anywhere."""
    expected = [line.removeprefix("data: ") for line in step.expected]  # SSE shows its data lines
    wanted = [line for line in expected if line.startswith("{")]
    if wanted:
        seen = json_outputs(stdout)
        assert len(seen) >= len(wanted), f"{step.command}\n{stdout}"
        for actual, shown in zip(seen, wanted, strict=False):
            assert holds(actual, parse_expected(shown)), f"{step.command}\n{stdout}"
    for line in expected:
        if not line.startswith("{"):
            assert line in stdout.splitlines(), f"{step.command}\n{stdout}"


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
        return json_outputs("\n".join(list(self.lines)))

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


@pytest.mark.parametrize("name", SECTIONS)
def test_the_readme_section_is_well_formed(name: str) -> None:
    setup, steps = readme_section(name)
    assert setup, "the section sets KEY first"
    assert len(steps) >= 4
    for step in steps:
        assert any(address in step.command for address in DOCUMENTED.values()), step.command
        assert step.expected, f"no `# → ` output after {step.command!r}"


@pytest.mark.parametrize("name", SECTIONS)
def test_every_readme_command_runs_as_written(name: str, start_gateway: StartGateway, tmp_path: Path) -> None:
    tool = "grpcurl" if name == "grpc" else "curl"
    venv_bin = Path(sys.executable).parent
    if shutil.which(tool, path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing (CI must run this test)")
        pytest.skip(f"needs the {tool} binary")
    gateway = start_gateway()
    # A folder laid out like a clone after `make run`: the key file, and .venv/bin (grpcurl).
    (tmp_path / ".room-gateway.key").write_text(KEY + "\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(venv_bin)
    env = {k: v for k, v in os.environ.items() if k != "ROOM_API_SECRET_KEY"}
    setup, steps = readme_section(name)
    streams: list[tuple[Step, Background]] = []

    def localize(command: str) -> str:
        for listener, address in DOCUMENTED.items():
            command = command.replace(address, f"localhost:{gateway.addresses[listener][1]}")
        return command

    try:
        for step in steps:
            script = "\n".join([*setup, localize(step.command)])
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
            check_output(step, result.stdout)
        for step, stream in streams:
            stream.wait_for(len(step.expected))
            check_output(step, "\n".join(stream.lines))
    finally:
        for _, stream in streams:
            stream.stop()
