"""Regenerate gateway/_gen/ from protos/: betterproto2 code (async grpclib client and server) and the
descriptor set gateway.schema loads (HttpRules, field behaviour; what gRPC reflection answers). Run by
`make proto`; a test runs it into a temporary folder and fails when the checked-in output differs.

Usage: python scripts/genproto.py [OUT_DIR]   (default: gateway/_gen)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
#: The protos the gateway serves: the native API and the compatibility surfaces' (roomApi: WorkAdventure).
#: google/api/*.proto (annotations, http, field_behavior) are vendored imports, generated as dependencies.
SOURCES = sorted(
    str(p.relative_to(PROTOS))
    for package in ("roomgateway", "roomApi")
    for p in (PROTOS / package).rglob("*.proto")
)
DESCRIPTOR_SET = "descriptors.binpb"


def generate(out: Path) -> None:
    """Write the generated package into ``out`` (replacing what is there)."""
    env = dict(os.environ)
    # The betterproto2 protoc plugin is a console script of this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The compiler formats its output with ruff, which reads [tool.ruff] from the working directory's
    # pyproject.toml: run from the root so the output is the same wherever this is started.
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "gen"
        staging.mkdir()
        protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}"]
        subprocess.run(
            [
                *protoc,
                f"--python_betterproto2_out={staging}",
                "--python_betterproto2_opt=client_generation=async,server_generation=async",
                *SOURCES,
            ],
            check=True,
            env=env,
            capture_output=True,
            cwd=ROOT,
        )
        subprocess.run(
            [*protoc, "--include_imports", f"--descriptor_set_out={staging / DESCRIPTOR_SET}", *SOURCES],
            check=True,
            env=env,
            capture_output=True,
        )
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staging, out)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gateway" / "_gen")
