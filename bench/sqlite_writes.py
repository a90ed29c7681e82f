"""What a variable write costs SQLite's one writer connection: trips through its thread, statements, commits.

    .venv/bin/python bench/sqlite_writes.py [--calls 2000] [--writers 64] [--outbox] [--memory]

In process, on a SQLite file in a temporary directory (``--memory``: ``sqlite:///:memory:``):
``--writers`` concurrent tasks call ``set_variable`` ``--calls`` times in all (64 variables of one room,
as bench/backends.py and bench/webhooks_served.py load it); with ``--outbox``, one webhook endpoint takes
every change (its messages written, none delivered). Counted while they run: calls queued to the writer's
aiosqlite thread (each a hand-off through the GIL), statements SQLite ran on that connection (its trace
callback: ``BEGIN``, ``SAVEPOINT``, ``COMMIT`` and the trigger's statements included), and commits; printed
per write, with the writes per second by the clock (noise on a shared machine: the counts compare).
``--busy MS`` keeps the event loop busy meanwhile, as a served gateway's is (see its help).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosqlite
from room_gateway_plugins.sql.sqlite import SQLiteBackend

from gateway.core.outbox import Outbox, Route


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    url = "sqlite:///:memory:" if args.memory else f"sqlite:///{folder / 'rooms.db'}"
    backend = SQLiteBackend(url)
    if args.outbox:
        backend.outbox = Outbox([Route("bench")])
    await backend.open()
    try:
        async with backend.engine.connect() as conn:
            writer = (await conn.get_raw_connection()).driver_connection
        assert isinstance(writer, aiosqlite.Connection)
        statements: list[str] = []
        await writer.set_trace_callback(statements.append)
        trips = [0]
        execute: Any = aiosqlite.Connection._execute

        async def counted(self: aiosqlite.Connection, fn: Any, *a: Any, **kw: Any) -> Any:
            if self is writer:
                trips[0] += 1
            return await execute(self, fn, *a, **kw)

        aiosqlite.Connection._execute = counted  # type: ignore[method-assign]
        now = backend_now()
        for i in range(64):  # the room, its variables, the statements' caches
            await backend.set_variable("bench-room", f"v{i}", {"i": i}, expected_version=None, now=now)
        trips[0] = 0
        statements.clear()
        order = iter(range(args.calls))

        async def write() -> None:
            for i in order:
                await backend.set_variable(
                    "bench-room", f"v{i % 64}", {"points": i}, expected_version=None, now=backend_now()
                )

        done = asyncio.Event()

        async def busy() -> None:  # the event loop's other work (a served gateway parses HTTP meanwhile)
            while not done.is_set():
                until = time.perf_counter() + args.busy / 1000
                while time.perf_counter() < until:
                    pass
                await asyncio.sleep(0)

        burner = asyncio.create_task(busy()) if args.busy else None
        start = time.perf_counter()
        await asyncio.gather(*(write() for _ in range(args.writers)))
        elapsed = time.perf_counter() - start
        done.set()
        if burner is not None:
            await burner
        aiosqlite.Connection._execute = execute  # type: ignore[method-assign]
        await writer.set_trace_callback(None)  # type: ignore[arg-type]  # None: off, as in sqlite3
        commits = sum(1 for s in statements if s.strip().upper().startswith("COMMIT"))
        return {
            "trips per write": trips[0] / args.calls,
            "statements per write": len(statements) / args.calls,
            "writes per commit": args.calls / max(commits, 1),
            "writes/s (clock)": args.calls / elapsed,
        }
    finally:
        await backend.close()


def backend_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--outbox", action="store_true", help="one webhook endpoint taking every change")
    parser.add_argument("--memory", action="store_true", help="sqlite:///:memory: instead of a file")
    parser.add_argument(
        "--busy",
        type=float,
        default=0.0,
        help="keep the event loop busy meanwhile: a task spinning this many ms between yields, as a served "
        "gateway's HTTP work holds the GIL that the writer's thread needs back after each SQLite call",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = asyncio.run(measure(args, Path(folder)))
    for name, value in figures.items():
        print(f"{name}: {value:,.2f}")


if __name__ == "__main__":
    main()
