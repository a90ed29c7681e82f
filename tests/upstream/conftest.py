"""Fixtures of the front-proxy tests: real upstreams and a real front gateway, each its own process.

- :class:`EchoUpstream`: ``echo_server.py`` (grpclib, ``echo.v1.Echo`` with every RPC kind), which prints
  the metadata of every call it receives: what reached the upstream is read from there.
- a WorkAdventure upstream: a second gateway serving the WorkAdventure surface on its own key
  (:func:`tests.compat.workadventure.conftest.config_text`).
- the front gateway (:class:`tests.server.conftest.GatewayProcess`) with ``upstreams:`` pointing at them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from gateway.upstream.descriptors import include_paths
from tests.server.conftest import KEY, GatewayProcess, gateway_env

HERE = Path(__file__).resolve().parent
ECHO_PROTO = HERE / "protos" / "echo" / "v1" / "echo.proto"
ADMIN_KEY = KEY
#: The key the front gateway sends to the echo upstream (its own; never a client's).
ECHO_UPSTREAM_KEY = "echo-upstream-key-0123456789"
#: A key of the front gateway limited to rooms public-*.
PUBLIC_KEY = "front-public-key-0123456789"
#: A key of the front gateway that may only call echo:Say.
SAY_KEY = "front-say-only-key-0123456789"
STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def echo_pb2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModuleType]:
    """The folder holding the generated ``echo/v1/echo_pb2.py``, and the module."""
    out = tmp_path_factory.mktemp("echo_pb2")
    includes = [f"-I{HERE / 'protos'}", *(f"-I{p}" for p in include_paths())]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", *includes, f"--python_out={out}", "echo/v1/echo.proto"],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(out))
    try:
        from echo.v1 import echo_pb2
    finally:
        sys.path.remove(str(out))
    return out, echo_pb2


class EchoUpstream:
    """``echo_server.py`` on ``port``, its output collected line by line."""

    def __init__(self, pb2_dir: Path, port: int, *, health: bool = True) -> None:
        self.port = port
        args = [sys.executable, str(HERE / "echo_server.py"), str(pb2_dir), str(port)]
        self.proc = subprocess.Popen(
            [*args, *([] if health else ["--no-health"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(STARTUP_TIMEOUT) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("the echo upstream did not start:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("listening"):
                self._ready.set()
        self._ready.set()

    def metadata_lines(self, method: str) -> list[str]:
        return [line for line in self.lines if line.startswith(f"metadata {method} ")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._reader.join(5)  # the whole output read, then the pipe closed
        if self.proc.stdout is not None:
            self.proc.stdout.close()


StartEcho = Callable[..., EchoUpstream]


@pytest.fixture
def start_echo(echo_pb2: tuple[Path, ModuleType]) -> Iterator[StartEcho]:
    """``start_echo(port=None, health=True)`` → a running echo upstream; all are stopped afterwards."""
    started: list[EchoUpstream] = []

    def start(port: int | None = None, *, health: bool = True) -> EchoUpstream:
        upstream = EchoUpstream(echo_pb2[0], port or free_port(), health=health)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


def front_config(
    upstreams: str,
    *,
    names: tuple[str, ...] = ("echo",),
    only: str = "echo:Say",
    rate_limits: str = "{limits: []}",
) -> str:
    """A front gateway's configuration: three keys — admin (``*``), public (``<name>:*`` of every upstream in
    ``names``, rooms public-* only), say (``only``) — and ``upstreams`` (YAML list items)."""
    public = ", ".join(f'"{name}:*"' for name in names)
    return textwrap.dedent(
        f"""
        listen: {{http: "127.0.0.1:0", grpc: "127.0.0.1:0"}}
        backend: "memory://"
        auth:
          keys:
            - name: admin
              key: "${{ROOM_API_SECRET_KEY}}"
              permissions: ["*"]
            - name: public
              key: "{PUBLIC_KEY}"
              permissions: [{public}]
              rooms: ["public-*"]
            - name: say
              key: "{SAY_KEY}"
              permissions: ["{only}"]
        rate_limits: {rate_limits}
        shutdown_grace_seconds: 2
        upstreams:
        """
    ) + textwrap.indent(textwrap.dedent(upstreams), "  ")


def echo_upstream(port: int, extra: str = "", *, timeout: float = 5) -> str:
    return textwrap.dedent(
        f"""
        - name: echo
          url: "grpc://127.0.0.1:{port}"
          protos: ["{ECHO_PROTO}"]
          metadata: {{x-api-key: "${{ECHO_UPSTREAM_KEY}}", x-origin: front}}
          room_field: room
          timeout_seconds: {timeout}
          forward_metadata: [x-client-tag]
        """
    ) + textwrap.indent(textwrap.dedent(extra), "  ")


StartFront = Callable[..., GatewayProcess]


@pytest.fixture
def start_front(tmp_path: Path) -> Iterator[StartFront]:
    """``start_front(config_text)`` → a running front gateway; all are stopped afterwards."""
    started: list[GatewayProcess] = []

    def start(text: str, **env: str) -> GatewayProcess:
        config = tmp_path / f"front-{len(started)}.yaml"
        config.write_text(text, encoding="utf-8")
        process = GatewayProcess(
            config,
            gateway_env(ROOM_API_SECRET_KEY=ADMIN_KEY, ECHO_UPSTREAM_KEY=ECHO_UPSTREAM_KEY, **env),
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)
