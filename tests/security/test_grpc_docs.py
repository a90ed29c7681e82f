"""The commands of docs/security.md's gRPC section run as written against a real gateway.

The ``sh`` block after ``<!-- grpc-test: limits`` holds commands for the gRPC port (``localhost:50051``),
which ``tests/security/test_docs.py`` (curl, on the REST port) does not run: here a step is a line (with its
``\\`` continuations) naming that address, the ``# → …`` lines after it its output, checked as
``test_docs`` checks them, against ``test_docs``'s gateway (the doc's settings, on free ports).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import GrpcLimits
from gateway.config_loader import ConfigError, load_config
from tests.security.test_docs import DOC, check_output
from tests.security.test_docs import doc_gateway as doc_gateway  # the fixture: the same gateway
from tests.server.conftest import KEY, ROOT, GatewayProcess
from tests.server.test_readme import STEP_TIMEOUT, Step, parse_steps

MARKER = "<!-- grpc-test: limits "
DOCUMENTED_ADDRESS = "localhost:50051"


def grpc_section() -> tuple[list[str], list[Step]]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER) :], re.DOTALL)
    assert block is not None, f"no ```sh block after {MARKER}"
    return parse_steps(block.group(1), lambda line: DOCUMENTED_ADDRESS in line)


def test_every_grpc_key_is_listed_with_its_default_and_documented() -> None:
    listed = yaml.safe_load((ROOT / "config" / "full.yaml").read_text(encoding="utf-8"))["grpc"]
    assert listed == GrpcLimits().model_dump()
    doc = DOC.read_text(encoding="utf-8")
    assert [key for key in listed if f"`grpc.{key}`" not in doc] == []


def test_a_bad_grpc_limit_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        'auth: {keys: [{name: a, key: "0123456789abcdef0123", permissions: ["*"]}]}\n'
        "grpc:\n  max_concurrent_streams: 100\n  reset_streams_per_connection: lots\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"line 4: grpc\.reset_streams_per_connection: .*expected a rate"):
        load_config(path, {})


def test_the_grpc_section_is_well_formed() -> None:
    setup, steps = grpc_section()
    assert setup and len(steps) >= 2
    assert all(step.expected for step in steps)


def test_every_grpc_doc_command_runs_as_written(doc_gateway: GatewayProcess, tmp_path: Path) -> None:
    if shutil.which("nghttp") is None:
        if os.environ.get("CI"):
            pytest.fail("needs nghttp (nghttp2-client): under CI it must run (make test installs it)")
        pytest.skip("needs nghttp (nghttp2-client; make test installs it)")
    venv_bin = Path(sys.executable).parent
    if shutil.which("grpcurl", path=str(venv_bin)) is None:
        pytest.skip("needs grpcurl in the venv (the dev extra)")
    port = doc_gateway.addresses["grpc"][1]
    (tmp_path / ".room-gateway.key").write_text(KEY + "\n")  # as `make run` leaves it
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(venv_bin)
    env = {k: v for k, v in os.environ.items() if k != "ROOM_API_SECRET_KEY"}
    setup, steps = grpc_section()
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
        check_output(step, result.stdout)
