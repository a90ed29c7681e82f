"""Every ``curl`` line of docs/security.md's marked blocks runs as written against a real gateway.

The gateway is started with the settings of the ``yaml`` block after ``<!-- security-test: config`` (room
tokens and a low per-room limit, so that a 429 is deterministic); every ``sh`` block after another
``<!-- security-test: NAME`` marker then runs, in the order of the doc, against that one gateway.

The block format and the runner are the README test's (``tests/server/test_readme.py``): a ``curl …`` line
(with its ``\\`` continuations) is a step, the ``# → …`` lines after it its output, other lines of the block
run before each of its steps (from one folder, so a file a step writes is there for the next ones); only
the port is changed. Output lines are checked as the README test checks them (a JSON object must hold the
fields shown, ``…`` standing for the fields left out; another line must be a line of the output), with
two additions for ``curl -i`` / ``-D -``: the response head (status line and headers) is set apart from the
body, and in a line that is not a JSON object ``…`` stands for any text (a time, a ``Retry-After``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import KEY, ROOT, GatewayProcess, gateway_env
from tests.server.test_readme import STEP_TIMEOUT, Step, holds, json_outputs, parse_expected, parse_steps

DOC = ROOT / "docs" / "security.md"
MARKER = "<!-- security-test: "
CONFIG = "config"
DOCUMENTED_ADDRESS = "localhost:8080"
#: The room-token secret the doc's settings read from the environment (any 32 bytes or more).
ROOM_TOKEN_SECRET = "docs-room-token-secret-0123456789abcdef"
#: What the doc's settings do not say: where to listen (free ports) and what to store rooms in.
BASE_CONFIG = 'listen: {http: "127.0.0.1:0", grpc: "127.0.0.1:0"}\nbackend: "memory://"\n'


def marked_blocks(language: str) -> Iterator[tuple[str, str]]:
    """``(name, body)`` of every ```LANGUAGE block that follows a ``security-test`` marker, in doc order."""
    text = DOC.read_text(encoding="utf-8")
    for found in re.finditer(re.escape(MARKER) + r"([\w-]+)", text):
        block = re.match(r"[^\n]*\n+```(\w+)\n(.*?)```", text[found.start() :], re.DOTALL)
        assert block is not None, f"no code block right after {found.group(0)}"
        if block.group(1) == language:
            yield found.group(1), block.group(2)


def doc_config() -> str:
    [config] = [body for name, body in marked_blocks("yaml") if name == CONFIG]
    return config


def parse_block(body: str) -> tuple[list[str], list[Step]]:
    """The setup lines and the steps of one ``sh`` block: a step is a ``curl`` line."""
    return parse_steps(body, lambda line: line.startswith("curl "))


def doc_sections() -> list[tuple[str, list[str], list[Step]]]:
    return [(name, *parse_block(body)) for name, body in marked_blocks("sh")]


def split_head(stdout: str) -> tuple[list[str], str]:
    """The head lines of an output that starts with a response head (``curl -i``, ``-D -``), and the rest."""
    if not stdout.startswith("HTTP/"):
        return [], stdout
    head, _, body = stdout.replace("\r\n", "\n").partition("\n\n")
    return head.splitlines(), body


def line_matches(shown: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in shown.split("…"))
    return re.fullmatch(pattern, actual) is not None


def check_output(step: Step, stdout: str) -> None:
    """Every ``# →`` line of ``step`` is in ``stdout`` (see the module docstring)."""
    head, body = split_head(stdout)
    lines = [*head, *body.splitlines()]
    wanted, texts = [], []
    for line in step.expected:
        try:
            wanted.append(parse_expected(line) if line.startswith("{") else None)
        except json.JSONDecodeError:  # `{"invalidateTime":…}`: a line with a wildcard
            wanted.append(None)
        if wanted[-1] is None:
            texts.append(line)
    objects = [shown for shown in wanted if shown is not None]
    if objects:
        seen = json_outputs(body)
        assert len(seen) >= len(objects), f"{step.command}\n{stdout}"
        for actual, shown in zip(seen, objects, strict=False):
            assert holds(actual, shown), f"{step.command}\n{stdout}"
    for text in texts:
        assert any(line_matches(text, line) for line in lines), f"{text!r} not in:\n{step.command}\n{stdout}"


def test_the_doc_sections_are_well_formed() -> None:
    assert "ROOM_TOKEN_SECRET" in doc_config()
    sections = doc_sections()
    assert {"tokens", "rate-limits", "input"} <= {name for name, _, _ in sections}
    for name, setup, steps in sections:
        assert setup, f"the {name} block sets KEY first"
        assert steps, name
        for step in steps:
            assert DOCUMENTED_ADDRESS in step.command and step.expected, step.command


@pytest.fixture
def doc_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayProcess]:
    """A gateway on the doc's settings (``make run``'s listeners and backend aside)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(BASE_CONFIG + doc_config(), encoding="utf-8")
    monkeypatch.setenv("ROOM_TOKEN_SECRET", ROOM_TOKEN_SECRET)
    gateway = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=KEY))
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_every_doc_command_runs_as_written(doc_gateway: GatewayProcess, tmp_path: Path) -> None:
    port = doc_gateway.addresses["http"][1]
    workdir = tmp_path / "clone"
    workdir.mkdir()
    (workdir / ".room-gateway.key").write_text(KEY + "\n")  # as `make run` leaves it
    env = {k: v for k, v in os.environ.items() if k != "ROOM_API_SECRET_KEY"}
    for _, setup, steps in doc_sections():
        for step in steps:
            script = "\n".join([*setup, step.command.replace(DOCUMENTED_ADDRESS, f"localhost:{port}")])
            result = subprocess.run(
                ["bash", "-c", script],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT,
            )
            assert result.returncode == 0, f"{step.command}\n{result.stderr}"
            check_output(step, result.stdout)
