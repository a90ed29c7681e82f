"""A real webhook receiver on loopback for the tests: a threaded HTTP server that verifies every request
with the ``standardwebhooks`` library (as a user's receiver would) and counts messages by ``webhook-id``."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Delivery:
    id: str
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Receiver:
    """Answers each POST with ``answer(webhook_id, attempt_number)``'s status (default 204)."""

    secret: str = SECRET
    answer: Callable[[str, int], int] = lambda _id, _n: 204
    port: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    delivered: dict[str, Delivery] = field(default_factory=dict)
    bad_signatures: int = 0
    #: TCP connections accepted (keep-alive: far fewer than requests).
    connections: int = 0
    #: Each request's target as sent (an absolute URL when it came through a proxy).
    targets: list[str] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self
        verifier = Webhook(self.secret)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the deliverer's pooled client expects

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver.connections += 1

            def do_POST(self) -> None:
                content = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.targets.append(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verifier.verify(content, headers)
                except Exception:
                    with receiver._lock:
                        receiver.bad_signatures += 1
                    self._answer(400)
                    return
                message_id = headers["webhook-id"]
                with receiver._lock:
                    receiver.attempts[message_id] += 1
                    number = receiver.attempts[message_id]
                status = receiver.answer(message_id, number)
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.delivered.setdefault(
                            message_id, Delivery(message_id, json.loads(content), headers, content)
                        )
                self._answer(status)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, condition: Callable[[Receiver], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver: timed out; {len(self.delivered)} delivered, attempts {dict(self.attempts)}"
                )
            time.sleep(0.02)

    async def until(self, condition: Callable[[Receiver], bool], timeout: float = 10.0) -> None:
        """:meth:`wait_for` without blocking the event loop (for a gateway in the test's own loop)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver: timed out; {len(self.delivered)} delivered, attempts {dict(self.attempts)}"
                )
            await asyncio.sleep(0.02)
