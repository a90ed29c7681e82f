"""The REST access line the usual way (text, only the gateway's writer listening: formatted from the call's
fields, no LogRecord — gateway.edge.observe) says what the record made for any other listener says."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette

import gateway.logs as logs
from gateway.edge.accesslog import log
from tests.conftest import ADMIN_KEY
from tests.edge.conftest import BASE_URL

STAMP = "2027-01-15T08:00:00.500Z"


@contextlib.contextmanager
def gateway_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The process's logging as ``serve`` sets it up (text), its stderr a string, its clock stopped (in the
    test's body: pytest's own log capture, attached to the root for the call, takes the fast way off)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._sink
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    monkeypatch.setattr(logs.time, "time", lambda: 1_800_000_000.5)
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_800_000_000_500_000_000)  # lines without records
    monkeypatch.setattr(logs.time, "perf_counter", lambda: 5000.0)  # (text: a head's millisecond)
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):  # configure_logging's
        monkeypatch.setattr(logging, name, getattr(logging, name))
    writer = logs.configure_logging("info", "text")
    try:
        yield stream
    finally:
        writer.stop()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logs._sink = saved[2]


async def test_the_fast_line_is_the_records_line(app: Starlette, monkeypatch: pytest.MonkeyPatch) -> None:
    path = "/v1/rooms/lobby%2Fhall/variables/score"
    transport = httpx.ASGITransport(app)
    records: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = records.append  # type: ignore[method-assign]
    with gateway_log(monkeypatch) as written:
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            assert logs.line_sink(log) is not None
            fast = await client.get(path, headers={"X-API-Key": ADMIN_KEY})
            refused = await client.get(path, headers={"X-API-Key": "wrong"})
            log.addHandler(listener)
            try:
                assert logs.line_sink(log) is None
                usual = await client.get(path, headers={"X-API-Key": ADMIN_KEY})
            finally:
                log.removeHandler(listener)
    [record] = records
    lines = [line for line in written.getvalue().splitlines() if "room_gateway.access" in line]
    assert len(lines) == 3  # the record's line too: the writer's handler is the root's
    latency = re.compile(r" \d+\.\dms ")
    expected = (
        f"{STAMP} room_gateway.access: GET {path} {fast.status_code} key=admin 0.0ms client=127.0.0.1 "
        f"request_id={fast.headers['x-request-id']}"
    )
    assert latency.sub(" 0.0ms ", lines[0]) == expected
    assert latency.sub(" 0.0ms ", lines[1]) == (
        f"{STAMP} room_gateway.access: GET {path} 401 key=- 0.0ms client=127.0.0.1 "
        f"request_id={refused.headers['x-request-id']}"
    )
    message = latency.sub(" 0.0ms ", record.getMessage())
    assert message == expected.split(": ", 1)[1].replace(
        fast.headers["x-request-id"], usual.headers["x-request-id"]
    )
    assert record.access["path"] == path and record.access["key"] == "admin"  # type: ignore[attr-defined]
