"""What the webhook outbox's claims and settles cost on SQLite, and how long they wait for the write lock.

    .venv/bin/python bench/sqlite_outbox.py trips [--messages 640] [--batch 32]
    .venv/bin/python bench/sqlite_outbox.py wait [--rate 1000] [--duration 5] [--batch 32]

``trips``: ``--messages`` changes written (one endpoint takes every change), then claimed ``--batch`` at a
time, each batch settled as delivered, all in this process on a file in a temporary directory: counted per
claim and per settle, the calls queued to the writer connection's aiosqlite thread (each a hand-off through
the GIL) and the statements SQLite ran on it (its trace callback: ``BEGIN``, ``COMMIT``, pragmas included).

``wait``: a second process writes variables on the same file at ``--rate`` writes a second (32 writers of one
room, each change a message, as a served gateway with one endpoint), while this one claims and settles as
the delivery worker does (a claim of up to ``--batch``, a settle of what it claimed, 5 ms between rounds
when nothing was due): the duration of each claim and settle — mostly the wait for the write lock between
the writer's group commits — by the clock, so only a hint on a shared machine, and the messages settled a
second beside the writes. ``--poll MS`` sets how often a transaction tries a taken write lock again
(``sql/writer.py``'s ``LOCK_POLL_SECONDS``), in both processes. Run with ``PYTHONPATH`` on another tree (a
``git archive``) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from room_gateway_plugins.sql import writer
from room_gateway_plugins.sql.sqlite import SQLiteBackend

from gateway.core.outbox import Attempt, Outbox, Route, Settled

ENDPOINT = "bench"


def now() -> datetime:
    return datetime.now(UTC)


async def opened(url: str) -> SQLiteBackend:
    backend = SQLiteBackend(url)
    backend.outbox = Outbox([Route(ENDPOINT)])
    await backend.open()
    return backend


def delivered(claimed: list[Any]) -> list[Settled]:
    return [Settled(message, Attempt(now(), 204, 1.0)) for message in claimed]


async def trips(args: argparse.Namespace, folder: Path) -> None:
    backend = await opened(f"sqlite:///{folder / 'rooms.db'}")
    try:
        for i in range(args.messages):
            await backend.set_variable("bench-room", f"v{i % 64}", {"i": i}, expected_version=None, now=now())
        async with backend.engine.connect() as conn:
            writer = (await conn.get_raw_connection()).driver_connection
        assert isinstance(writer, aiosqlite.Connection)
        statements: list[str] = []
        await writer.set_trace_callback(statements.append)
        counts: dict[str, list[int]] = {"claim": [0, 0, 0], "settle": [0, 0, 0]}  # calls, trips, statements
        execute: Any = aiosqlite.Connection._execute
        current = ["claim"]

        async def counted(self: aiosqlite.Connection, fn: Any, *a: Any, **kw: Any) -> Any:
            if self is writer:
                counts[current[0]][1] += 1
            return await execute(self, fn, *a, **kw)

        aiosqlite.Connection._execute = counted  # type: ignore[method-assign]
        try:
            lease = 60.0
            while True:
                current[0] = "claim"
                before = len(statements)
                claimed = await backend.outbox_claim(
                    ENDPOINT, now=now(), lease_seconds=lease, limit=args.batch
                )
                counts["claim"][0] += 1
                counts["claim"][2] += len(statements) - before
                if not claimed:
                    break
                current[0] = "settle"
                before = len(statements)
                await backend.outbox_settle(delivered(claimed))
                counts["settle"][0] += 1
                counts["settle"][2] += len(statements) - before
        finally:
            aiosqlite.Connection._execute = execute  # type: ignore[method-assign]
            await writer.set_trace_callback(None)  # type: ignore[arg-type]  # None: off, as in sqlite3
        for name, (calls, trip_count, statement_count) in counts.items():
            print(
                f"{name}: {calls} calls, {trip_count / calls:.2f} trips and {statement_count / calls:.2f} "
                f"statements a call"
            )
    finally:
        await backend.close()


async def write_load(url: str, rate: float, duration: float) -> None:
    """The served gateway's side: 32 writers at ``rate`` writes a second in all, for ``duration`` seconds."""
    backend = await opened(url)
    try:
        await backend.set_variable("bench-room", "v0", 0, expected_version=None, now=now())
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        interval = 32 / rate
        written = [0]

        async def writer(k: int) -> None:
            due = start + k * interval / 32
            while (t := time.perf_counter()) < start + duration:
                if due > t:
                    await asyncio.sleep(due - t)
                await backend.set_variable("bench-room", f"v{k}", {"k": k}, expected_version=None, now=now())
                written[0] += 1
                due += interval

        await asyncio.gather(*(writer(k) for k in range(32)))
        print(f"writes/s {written[0] / (time.perf_counter() - start):,.0f}", flush=True)
    finally:
        await backend.close()


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    ms = sorted(v * 1000 for v in values)
    p = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    shown = ", ".join(f"p{q} {p[q - 1]:.1f} ms" for q in (50, 90, 99))
    return f"{shown}, max {ms[-1]:.1f} ms ({len(ms)} calls)"


async def wait(args: argparse.Namespace, folder: Path) -> None:
    url = f"sqlite:///{folder / 'rooms.db'}"
    backend = await opened(url)  # creates the schema before the writer opens it
    load = await asyncio.create_subprocess_exec(
        *[sys.executable, __file__, "load", "--url", url, "--rate", str(args.rate)],
        *["--duration", str(args.duration), *(["--poll", str(args.poll)] if args.poll else [])],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert load.stdin is not None and load.stdout is not None
    try:
        assert (await load.stdout.readline()).strip() == b"ready"
        durations: dict[str, list[float]] = {"claim": [], "settle": []}
        settled = 0
        load.stdin.write(b"go\n")
        start = time.perf_counter()
        while time.perf_counter() < start + args.duration + 1:
            t = time.perf_counter()
            claimed = await backend.outbox_claim(ENDPOINT, now=now(), lease_seconds=60.0, limit=args.batch)
            durations["claim"].append(time.perf_counter() - t)
            if not claimed:
                await asyncio.sleep(0.005)
                continue
            t = time.perf_counter()
            await backend.outbox_settle(delivered(claimed))
            durations["settle"].append(time.perf_counter() - t)
            settled += len(claimed)
        elapsed = time.perf_counter() - start
        print((await load.stdout.readline()).decode().strip())
        print(f"settled/s {settled / elapsed:,.0f} (backlog left {await backend.outbox_backlog(ENDPOINT)})")
        for name, values in durations.items():
            print(f"{name}: {percentiles(values)}")
    finally:
        await asyncio.wait_for(load.wait(), 30)
        await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("trips", "wait", "load"))
    parser.add_argument("--messages", type=int, default=640)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--poll", type=float, help="ms between two tries of a taken write lock")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll and hasattr(writer, "LOCK_POLL_SECONDS"):  # not in an older tree
        writer.LOCK_POLL_SECONDS = args.poll / 1000
    if args.mode == "load":
        asyncio.run(write_load(args.url, args.rate, args.duration))
        return
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run((trips if args.mode == "trips" else wait)(args, Path(folder)))


if __name__ == "__main__":
    main()
