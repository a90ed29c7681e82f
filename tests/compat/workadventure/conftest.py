"""Fixtures of the WorkAdventure surface tests: real gateways with ``roomApi.RoomApi`` on, plaintext (h2c) or
TLS, and clients built from ``protos/roomApi/room-api.proto`` with standard tooling (grpcio here; nice-grpc
+ @grpc/grpc-js + ts-proto in ``test_workadventure_node_client.py``).

Each gateway is ``python -m gateway serve`` (:class:`tests.server.conftest.GatewayProcess`) on free loopback
ports, with two keys: ``admin`` (every permission, every room) and ``limited`` (every permission, rooms
``public-*`` only, as a WorkAdventure key is bound to its own front URL).
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.grpcio_stubs import Stubs, generated
from tests.server.conftest import KEY, GatewayProcess, gateway_env

PROTOS = Path(__file__).resolve().parents[3] / "protos"
ADMIN_KEY = KEY
LIMITED_KEY = "limited-key-for-workadventure-tests"
#: A WorkAdventure room id: the room's URL.
ROOM = "https://play.example.com/_/global/maps.example.com/office/map.json"


#: grpcio modules generated from ``protos/roomApi/room-api.proto``.
RoomApiStubs = Stubs


@pytest.fixture(scope="session")
def room_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoomApiStubs]:
    with generated(tmp_path_factory.mktemp("room_api_stubs"), "roomApi/room-api.proto") as modules:
        yield modules


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 (and localhost), PEM files."""

    cert_file: Path
    key_file: Path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed: it makes the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


def config_text(tls: Certificate | None = None) -> str:
    listen = '{http: "127.0.0.1:0", grpc: "127.0.0.1:0"}'
    if tls is not None:
        listen = (
            f'{{http: "127.0.0.1:0", grpc: "127.0.0.1:0", '
            f'grpc_tls: {{cert_file: "{tls.cert_file}", key_file: "{tls.key_file}"}}}}'
        )
    return textwrap.dedent(
        f"""
        listen: {listen}
        backend: "memory://"
        auth:
          keys:
            - name: admin
              key: "${{ROOM_API_SECRET_KEY}}"
              permissions: ["*"]
            - name: limited
              key: "{LIMITED_KEY}"
              permissions: ["*"]
              rooms: ["public-*"]
        rate_limits: {{limits: []}}
        surfaces:
          workadventure: {{enabled: true}}
        shutdown_grace_seconds: 2
        """
    )


StartWorkAdventure = Callable[..., GatewayProcess]


@pytest.fixture
def start_wa(tmp_path: Path) -> Iterator[StartWorkAdventure]:
    """``start_wa(tls=None)`` → a gateway serving ``roomApi.RoomApi``; every one is stopped afterwards."""
    started: list[GatewayProcess] = []

    def start(tls: Certificate | None = None) -> GatewayProcess:
        config = tmp_path / f"gateway-{len(started)}.yaml"
        config.write_text(config_text(tls), encoding="utf-8")
        process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=ADMIN_KEY))
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def wa_gateway(start_wa: StartWorkAdventure) -> GatewayProcess:
    return start_wa()
