"""Fixtures of the server tests: ``room-gateway serve`` as a real process on loopback ports.

The process is started with ``python -m gateway`` (the same ``main`` as the console script) on port 0 for
both listeners; the ``… listening on HOST:PORT`` lines of its log say where it is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY = "server-test-key-0123456789abcdef"
STARTUP_TIMEOUT = 30.0
LISTENING = re.compile(r"^room-gateway: (http|grpc) listening on (\S+):(\d+)$")
#: The time every text line starts with (``logging.format: text``), left out of ``lines``.
TIME_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def gateway_env(**extra: str) -> dict[str, str]:
    """The environment of a child gateway: this one, minus anything that would change its configuration."""
    env = {k: v for k, v in os.environ.items() if k not in {"ROOM_API_SECRET_KEY", "GATEWAY_CONFIG"}}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` to completion (bounded), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=dict(env) if env is not None else gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(tmp_path: Path, *, grace: float = 5.0, extra: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            listen: {{http: "127.0.0.1:0", grpc: "127.0.0.1:0"}}
            backend: "memory://"
            auth:
              keys:
                - name: admin
                  key: "${{ROOM_API_SECRET_KEY}}"
                  permissions: ["*"]
            shutdown_grace_seconds: {grace}
            """
        )
        + extra,
        encoding="utf-8",
    )
    return path


class GatewayProcess:
    """A running ``room-gateway serve``; its log is collected line by line as it comes."""

    def __init__(self, config: Path, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(STARTUP_TIMEOUT):
            self.stop()
            raise AssertionError("the gateway did not start:\n" + self.log)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = TIME_PREFIX.sub("", line.rstrip("\n"), count=1)
            self.lines.append(line)
            found = LISTENING.match(line)
            if found:
                self.addresses[found.group(1)] = (found.group(2), int(found.group(3)))
                if len(self.addresses) == 2:
                    self._listening.set()
        self._listening.set()  # the process ended: stop waiting

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def http_url(self) -> str:
        host, port = self.addresses["http"]
        return f"http://{host}:{port}"

    @property
    def grpc_address(self) -> tuple[str, int]:
        return self.addresses["grpc"]

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """The exit status, waiting at most ``timeout`` seconds; then the log is complete."""
        code = self.proc.wait(timeout)
        self._finish_reading()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._finish_reading()

    def _finish_reading(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """``start_gateway(grace=…, extra=…)`` → a :class:`GatewayProcess`; every one is stopped afterwards."""
    started: list[GatewayProcess] = []

    def start(*, grace: float = 5.0, extra: str = "", key: str = KEY) -> GatewayProcess:
        config = write_config(tmp_path, grace=grace, extra=extra)
        process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=key))
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
