"""What webhooks cost and how fast they go (issue 14), in one run:

    .venv/bin/python bench/webhooks.py [--backends sqlite,postgresql] [--duration 10] [--writers 32]
                                       [--messages 5000] [--rate 1000] [--delivery process|inline]
                                       [--postgres-url postgresql://postgres@127.0.0.1:5432/test]

Deliveries run as the shipped default does (``--delivery`` to choose): on SQLite and PostgreSQL in the
gateway's worker process (``webhooks.delivery: process``), which :func:`gateway` starts through the
gateway's own ``Supervisor``, as ``room-gateway serve`` does; the PUTs stay in this process.

- **PUT**: REST PUTs through the gateway's ASGI app in this process (``--writers`` concurrent callers for
  ``--duration`` seconds), without webhooks and with one endpoint subscribed to every change (its
  deliverers running, posting to the receiver), measured alternately twice; the ratio is with / without
  (issue 14: ≥ 0.85 on SQLite and PostgreSQL). In-process calls skip HTTP parsing, so the outbox's share —
  and the ratio's drop — is larger here than behind a socket.
- **Deliveries/s**: ``--messages`` changes written with the deliverers stopped, then started: the
  messages over the time from the first arrival at the receiver to the last (issue 14: ≥ 1,000/s).
- **Latency**: writes at ``--rate`` per second for ``--duration`` seconds with the deliverers running
  (paced, by up to ``--writers`` concurrent callers, so that the rate is not bounded by one PUT's latency);
  p50/p99 from each change's time (the body's ``timestamp``) to its arrival at the receiver (< 250 ms).
  A rate the gateway does not sustain (``steady writes/s`` below it) measures a saturated gateway: the
  writers then take the CPU and the backlog, so the latency, grows for as long as they write.

The receiver is a separate process (``--receiver PORT``): a small asyncio HTTP/1.1 server answering 204
with keep-alive, which records each arrival. Prints a markdown table, writes ``bench/out/webhooks.md``.
PostgreSQL gets a fresh ``?schema=``, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Collection
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
KEY = "bench-key-0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: ``--worker-nice``: the worker's nice increment (unset: the shipped default, 10).
WORKER_NICE: int | None = None


# -- the receiver (its own process) ------------------------------------------------------------------------


async def _receiver(port: int) -> None:
    arrivals: list[tuple[float, str, str]] = []  # (arrival time, body timestamp, room id)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *headers = head.decode("latin-1").split("\r\n")
                length = 0
                for header in headers:
                    name, _, value = header.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                if line.startswith("GET /stats"):
                    stats = json.dumps(arrivals).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(stats), stats))
                elif line.startswith("POST /reset"):
                    arrivals.clear()
                    writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                else:
                    sent = json.loads(body)
                    arrivals.append((time.time(), sent["timestamp"], sent["data"].get("roomId", "")))
                    writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def receiver_process() -> Any:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/stats", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(5)


def arrivals(url: str, room: str | Collection[str] | None = None) -> list[tuple[float, str]]:
    """(arrival time, body timestamp) of what the receiver got (of ``room`` only, or of the rooms of a
    collection, when given): messages that a previous phase's gateway had claimed when it stopped arrive
    once their leases end, during a later phase, and are not that phase's."""
    found = httpx.get(url + "/stats", timeout=30).json()
    rooms = {room} if isinstance(room, str) else None if room is None else set(room)
    return [(a, t) for a, t, r in found if rooms is None or r in rooms]


# -- the gateway, in this process ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway(
    backend: str, receiver: str | None, start_deliverers: bool = True, delivery: str | None = None
) -> AsyncIterator[Any]:
    """A gateway on ``backend`` posting to ``receiver`` (none: no webhooks), built and started as ``serve``
    does it: with ``delivery`` unset, the shipped default (on SQLite and PostgreSQL: the worker process,
    started by the gateway's :class:`~gateway.webhooks.supervisor.Supervisor`, waited for until it
    delivers)."""
    from gateway.app import create_gateway
    from gateway.config import GatewayConfig

    webhooks: dict[str, Any] = {}
    if receiver is not None:
        webhooks = {
            "endpoints": [
                {"name": "bench", "url": receiver + "/hooks", "secret": SECRET, "max_in_flight": 64}
            ],
            "poll_seconds": 0.5,
        }
        if delivery is not None:
            webhooks["delivery"] = delivery
        if WORKER_NICE is not None:
            webhooks["worker_nice"] = WORKER_NICE
    config = GatewayConfig.model_validate(
        {
            "backend": backend,
            "auth": {"keys": [{"name": "admin", "key": KEY, "permissions": ["*"]}]},
            "rate_limits": {"limits": []},
            "access_log": False,
            "webhooks": webhooks,
        }
    )
    gw = create_gateway(config)
    await gw.backend.open()
    if gw.webhooks is not None and start_deliverers:
        await started(gw)
    try:
        yield gw
    finally:
        if gw.webhooks is not None:
            await gw.webhooks.stop()
        await gw.backend.close()


async def started(gw: Any) -> None:
    """Start the deliverers, or the worker process, and wait until the worker delivers."""
    from gateway.webhooks.supervisor import Supervisor

    await gw.webhooks.start()
    if isinstance(gw.webhooks, Supervisor):
        await gw.webhooks.ready()


def client(gw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(gw.http_app), base_url="http://bench", headers={"X-API-Key": KEY}
    )


async def put_rate(gw: Any, duration: float, writers: int) -> float:
    done = 0
    deadline = time.monotonic() + duration
    room = "bench-" + uuid.uuid4().hex[:8]
    async with client(gw) as http:

        async def writer(n: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < deadline:
                response = await http.put(f"/v1/rooms/{room}/variables/v{n}", json={"value": {"i": i}})
                assert response.status_code == 200, response.text
                done += 1
                i += 1

        started = time.monotonic()
        await asyncio.gather(*(writer(n) for n in range(writers)))
        return done / (time.monotonic() - started)


async def paced(http: httpx.AsyncClient, room: str, rate: float, total: int, writers: int) -> float:
    """``total`` PUTs, the i-th started at ``i / rate`` seconds (or as soon as one of ``writers`` callers is
    free, when the gateway lags); the rate written. One caller awaiting each PUT in turn was bounded by one
    PUT's latency — on SQLite its commit's fsync — and wrote 119 of the 1,000/s asked (§000, session 5)."""
    started = time.monotonic()
    order = itertools.count()

    async def writer() -> None:
        while (i := next(order)) < total:
            lag = started + i / rate - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
            response = await http.put(f"/v1/rooms/{room}/variables/v{i % 64}", json={"value": i})
            assert response.status_code == 200, response.text

    await asyncio.gather(*(writer() for _ in range(writers)))
    return total / (time.monotonic() - started)


def fresh(url: str, phase: str) -> str:
    """A store of its own for one phase (another SQLite file, another PostgreSQL schema): a gateway stopped
    with messages pending or claimed leaves them to the next one on its store, which sends them once
    their leases end — in the middle of that phase's figures, and using its deliverers."""
    if url.startswith("sqlite:"):
        return url.removesuffix(".db") + f"-{phase}.db"
    if "?schema=" in url:
        return f"{url}_{phase}"
    return url


def _latencies(found: list[tuple[float, str]]) -> list[float]:
    return sorted(a - datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for a, t in found)


async def bench_backend(name: str, url: str, args: argparse.Namespace, receiver: str) -> dict[str, Any]:
    without, with_ = [], []
    for _ in range(2):
        async with gateway(url, None) as gw:
            without.append(await put_rate(gw, args.duration, args.writers))
        async with gateway(url, receiver, delivery=args.delivery) as gw:
            with_.append(await put_rate(gw, args.duration, args.writers))
    await asyncio.to_thread(httpx.post, receiver + "/reset")
    print(f"{name}: PUT/s {without} without, {with_} with one endpoint", file=sys.stderr)

    # Deliveries/s: a backlog written first, then drained.
    drain = fresh(url, "drain")
    async with (
        gateway(drain, receiver, start_deliverers=False, delivery=args.delivery) as gw,
        client(gw) as http,
    ):
        room = "drain-" + uuid.uuid4().hex[:8]
        for i in range(args.messages):
            await http.put(f"/v1/rooms/{room}/variables/v", json={"value": i})
        await asyncio.to_thread(httpx.post, receiver + "/reset")
        await gw.webhooks.start()  # a worker delivers before it says it is ready: timed by arrivals
        while len(found := await asyncio.to_thread(arrivals, receiver, room)) < args.messages:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.1)
        # From the first arrival to the last: the worker's start (a Python process importing the
        # gateway, ~1 s) is not deliveries' time.
        times = sorted(arrived for arrived, _ in found)
        drained = (len(times) - 1) / (times[-1] - times[0])
        print(f"{name}: {drained:.0f} deliveries/s", file=sys.stderr)
    await asyncio.to_thread(httpx.post, receiver + "/reset")

    # Latency at a steady write rate.
    async with gateway(fresh(url, "steady"), receiver, delivery=args.delivery) as gw, client(gw) as http:
        room = "steady-" + uuid.uuid4().hex[:8]
        total = int(args.rate * args.duration)
        written = await paced(http, room, args.rate, total, args.writers)
        for _ in range(300):
            found = await asyncio.to_thread(arrivals, receiver, room)
            if len(found) >= total + 1:  # and room.created
                break
            await asyncio.sleep(0.1)
    await asyncio.to_thread(httpx.post, receiver + "/reset")
    late = _latencies(found)
    return {
        "backend": name,
        "put_without": statistics.median(without),
        "put_with": statistics.median(with_),
        "ratio": statistics.median(with_) / statistics.median(without),
        "deliveries_per_s": drained,
        "written_per_s": written,
        "p50_ms": 1000 * late[len(late) // 2],
        "p99_ms": 1000 * late[int(len(late) * 0.99) - 1],
    }


async def main(args: argparse.Namespace) -> None:
    rows = []
    schema = f"bench_webhooks_{uuid.uuid4().hex[:8]}"
    with receiver_process() as receiver, tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            if name == "sqlite":
                url = f"sqlite:///{Path(tmp) / f'{uuid.uuid4().hex[:6]}.db'}"
            elif name == "postgresql":
                url = f"{args.postgres_url}?schema={schema}"
            else:
                url = "memory://"
            rows.append(await bench_backend(name, url, args, receiver))
    if "postgresql" in args.backends:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(args.postgres_url)
        for phase in ("", "_drain", "_steady"):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}{phase}" CASCADE')
        await conn.close()
    lines = [
        "| backend | PUT/s without | PUT/s with one endpoint | ratio | deliveries/s | steady writes/s "
        "| write→delivery p50 | p99 |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['backend']} | {r['put_without']:.0f} | {r['put_with']:.0f} | {r['ratio']:.2f} "
            f"| {r['deliveries_per_s']:.0f} | {r['written_per_s']:.0f} | {r['p50_ms']:.1f} ms "
            f"| {r['p99_ms']:.1f} ms |"
            for r in rows
        ),
    ]
    table = "\n".join(lines)
    print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / "webhooks.md").write_text(table + "\n")


if __name__ == "__main__" and sys.argv[1:2] == ["served"]:
    import webhooks_served  # a served gateway, the load from other processes

    webhooks_served.main(sys.argv[2:])
elif __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument(
        "--delivery",
        choices=["process", "inline"],
        default=None,
        help="webhooks.delivery (default: the shipped default, process on SQLite and PostgreSQL)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "ROOM_GATEWAY_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="webhooks.worker_nice (default: the shipped 10; on a shared machine other processes at nice 0 "
        "then take the CPU from the worker)",
    )
    parsed = parser.parse_args()
    WORKER_NICE = parsed.worker_nice
    sys.path.insert(0, str(ROOT))
    if parsed.receiver:
        asyncio.run(_receiver(parsed.receiver))
    else:
        asyncio.run(main(parsed))
