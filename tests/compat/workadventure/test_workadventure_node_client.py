"""WorkAdventure's own client stack against a real gateway: nice-grpc over @grpc/grpc-js, with ts-proto code
generated from ``protos/roomApi/room-api.proto`` — how ``@workadventure/room-api-client`` is built (that
package itself is not on the npm registry) — running ``node/client.ts`` over h2c and over TLS.

The npm packages are installed into ``node/node_modules`` (git-ignored) from ``node/package-lock.json``, once;
without node/npm or a reachable registry the tests skip, naming what is missing — except under ``CI``, where
they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.compat.workadventure.conftest import (
    ADMIN_KEY,
    LIMITED_KEY,
    PROTOS,
    ROOM,
    Certificate,
    StartWorkAdventure,
)

NODE_DIR = Path(__file__).resolve().parent / "node"
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 60
#: The options @workadventure/room-api-client generates its code with.
TS_PROTO_OPTIONS = ",".join(
    [
        "outputServices=nice-grpc",
        "outputServices=generic-definitions",
        "useExactTypes=false",
        "esModuleInterop=true",
    ]
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the WorkAdventure client test must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_client() -> Path:
    """``node/`` with its packages installed and the ts-proto code generated into ``node/gen``."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        _unavailable("node and npm are not installed")
    assert npm is not None
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            _unavailable(f"npm ci did not finish within {INSTALL_TIMEOUT}s (is the npm registry reachable?)")
        if result.returncode != 0:
            _unavailable(f"npm ci failed (is the npm registry reachable?):\n{result.stderr[-2000:]}")
    gen = NODE_DIR / "gen"
    shutil.rmtree(gen, ignore_errors=True)
    gen.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--plugin=protoc-gen-ts_proto={NODE_DIR / 'node_modules' / '.bin' / 'protoc-gen-ts_proto'}",
            f"--ts_proto_out={gen}",
            f"--ts_proto_opt={TS_PROTO_OPTIONS}",
            "roomApi/room-api.proto",
        ],
        check=True,
        capture_output=True,
    )
    return NODE_DIR


def run_client(node_dir: Path, host: str, port: int, **env: str) -> dict[str, Any]:
    tsx = node_dir / "node_modules" / ".bin" / "tsx"
    result = subprocess.run(
        [str(tsx), "client.ts"],
        cwd=node_dir,
        env={
            **os.environ,
            "ROOM_API_KEY": ADMIN_KEY,
            "LIMITED_KEY": LIMITED_KEY,
            "GATEWAY_HOST": host,
            "GATEWAY_PORT": str(port),
            "ROOM": ROOM,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    results: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return results


EXPECTED = {
    "readUnset": "<undefined>",  # an empty Value
    "readSaved": {"open": True, "count": 3, "tags": ["a", "b"], "nothing": None, "ratio": 0.5},
    "listenVariable": {"round": 1},  # the first change, not the current value "initial"
    "listenToEvent": {"data": {"round": 1, "who": "api"}, "senderIdPresent": False},
    "wrongKey": {"code": 16, "details": "Wrong API key"},
    "missingKey": {"code": 16, "details": "X-API-Key metadata not defined!"},
}


def check(results: dict[str, Any]) -> None:
    other_room = results.pop("otherRoom")
    assert results == EXPECTED
    assert other_room["code"] == 7  # PERMISSION_DENIED: the key is bound to public-* rooms


def test_the_vendor_client_stack_over_h2c(start_wa: StartWorkAdventure, node_client: Path) -> None:
    gateway = start_wa()
    host, port = gateway.grpc_address
    check(run_client(node_client, host, port))


def test_the_vendor_client_stack_over_tls(
    start_wa: StartWorkAdventure, node_client: Path, certificate: Certificate
) -> None:
    gateway = start_wa(tls=certificate)
    _, port = gateway.grpc_address
    # The vendor's client uses TLS on port 443 or for a host given as https://…; grpc-js trusts the test
    # certificate through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (it ignores NODE_EXTRA_CA_CERTS).
    results = run_client(
        node_client, "https://127.0.0.1", port, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(certificate.cert_file)
    )
    check(results)
