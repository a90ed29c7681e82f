"""Fixtures of the real-browser tests: Debian's ``chromium`` driven by Playwright, a gateway in its own
process (so that a test can stop it and start it again on the same port, as a restart drops a browser's
streams), and static pages served from other loopback origins.

``make test`` installs both (playwright from the dev extra; chromium with apt-get when /usr/bin/chromium is
absent). Without them the tests skip, saying what is missing — except under ``CI``, where they must run.
One browser for all of them (package scope, see ``browser``); each test gets its own context (no storage
shared between tests).
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.app import create_gateway
from gateway.config_loader import load_config

CHROMIUM = Path("/usr/bin/chromium")
#: Where screenshots go (git-ignored); CI may keep it as an artifact.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ADMIN_KEY = "browser-admin-key-0123456789abcdef"
READER_KEY = "browser-reader-key-0123456789abcdef"  # reads rooms and variables, changes nothing
TOKEN_SECRET = "browser-token-secret-0123456789abcdef0123"
ROOT = Path(__file__).resolve().parents[2]
#: The default guest role, and presence:read for docs/browsers.md's page, which lists the members.
GUEST_PERMISSIONS = ["variables:read", "events:listen", "presence:read"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: under CI the browser tests must run (make test installs chromium)")
    pytest.skip(f"{reason}; `make test` installs it (apt-get install -y chromium)")


def playwright_expect() -> Any:
    """Playwright's ``expect``, for a test module to import: without playwright the module skips (outside
    CI; under CI the import error stands)."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)
    return expect


# Package-scoped, not session-scoped: while Playwright's sync API is open, its event loop counts as running
# in the main thread, and every asyncio test after it would fail ("Cannot run the event loop while another
# loop is running"). All browser tests are in this package, so it is still one browser for all of them.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """``room-gateway serve`` in a child process, on fixed ports over one SQLite file: stopped (SIGTERM,
    which ends its streams) and started again, it keeps its rooms and its change log's epoch."""

    def __init__(self, folder: Path, *, allow_origins: list[str]) -> None:
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = folder / f"gateway-{self.http_port}.yaml"
        config = {
            "listen": {"http": f"127.0.0.1:{self.http_port}", "grpc": f"127.0.0.1:{free_port()}"},
            "backend": f"sqlite:///{folder / 'rooms.db'}",
            "auth": {
                "keys": [
                    {"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]},
                    {"name": "reader", "key": READER_KEY, "permissions": ["rooms:read", "variables:read"]},
                ],
                "room_tokens": {
                    "secret": TOKEN_SECRET,
                    "roles": {"moderator": ["*"], "guest": GUEST_PERMISSIONS},
                },
            },
            "http": {"cors": {"allow_origins": allow_origins}, "keepalive_seconds": 1},
            "rate_limits": {"limits": []},
            "shutdown_grace_seconds": 0.5,
        }
        self.config.write_text(yaml.safe_dump(config))
        self.log = folder / f"gateway-{self.http_port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the gateway exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the gateway did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def put_while_stopped(self, path: str, body: dict[str, Any]) -> None:
        """``PUT path`` with the admin key, while this gateway is stopped: through a gateway built in this
        process on the same database (no listener, no second process to start), so that a browser cannot
        receive the change live, only by resuming."""
        if self._process is not None:
            raise RuntimeError("the gateway is running: the change could be received live")

        async def put() -> None:
            gateway = create_gateway(load_config(self.config))
            await gateway.backend.open()
            try:
                transport = httpx.ASGITransport(app=gateway.http_app)
                async with httpx.AsyncClient(transport=transport, base_url="http://offline") as client:
                    response = await client.put(path, json=body, headers={"X-API-Key": ADMIN_KEY})
                    response.raise_for_status()
            finally:
                await gateway.backend.close()

        # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
        errors: list[BaseException] = []
        thread = threading.Thread(target=lambda: _collect(errors, lambda: asyncio.run(put())))
        thread.start()
        thread.join(30)
        if errors:
            raise errors[0]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": ADMIN_KEY}, timeout=10)

    def guest_token(self, room: str, user: str, **fields: Any) -> str:
        with self.client() as client:
            body = {"userName": user, "role": "guest", **fields}
            response = client.post(f"/v1/rooms/{room}/tokens", json=body)
            response.raise_for_status()
            return str(response.json()["token"])


def _collect(errors: list[BaseException], run: Callable[[], object]) -> None:
    try:
        run()
    except BaseException as exc:  # re-raised in the test's thread
        errors.append(exc)


class StaticSite:
    """A folder served over HTTP from a loopback port of its own: a page on another origin."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the test's output is not the place
        pass
