"""What a PostgreSQL webhook settle costs beside a backlog: a fresh store's messages, claimed and settled.

    python bench/outbox_backlog.py [--backlog 1000,10000,50000] [--settles 50] [--analyze]

A fresh schema made by the backend's migrations, one endpoint's messages written through the backend
(8 variable writes), then copied in SQL to ``--backlog`` pending messages. Then ``--settles`` rounds of a
claim of 8 and their settle, as a deliverer does, through the backend itself: the median time of a settle
by the clock, and the plan the server chose for the statement it was sent (``EXPLAIN ANALYZE`` of its
last settle's SQL and arguments, in a transaction rolled back). Without ``--analyze`` the server has no
statistics of the table, as a new store before autovacuum's first ``ANALYZE`` (bench/RESULTS.md, session
21). Needs the PostgreSQL server; the schema is dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from room_gateway_plugins.sql import PostgresBackend, tables

from gateway.core.outbox import Attempt, Outbox, Route, Settled

URL = "postgresql://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def measure(url: str, backlog: int, settles: int, analyze: bool) -> None:
    schema = f"bench_backlog_{uuid.uuid4().hex[:8]}"
    backend = PostgresBackend(f"{url}?schema={schema}")
    backend.outbox = Outbox([Route("app", rooms=("bench",))], first_delay_seconds=0)
    await backend.open()
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        for n in range(8):
            await backend.set_variable("bench", "x", n, expected_version=None, now=T0)
        columns = [c.name for c in tables.webhook_messages.c]
        copied = ", ".join("m.id || '-' || g" if c == "id" else f"m.{c}" for c in columns)
        await conn.execute(
            f"INSERT INTO webhook_messages ({', '.join(columns)}) SELECT {copied} "
            f"FROM webhook_messages AS m, generate_series(1, {max(backlog // 8 - 1, 0)}) AS g"
        )
        if analyze:
            await conn.execute("ANALYZE webhook_messages")
        sent: list[Any] = []
        engine = backend.engine.sync_engine

        def log_on(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.driver_connection.add_query_logger(sent.append)

        sa.event.listen(engine, "checkout", log_on)
        times = []
        for _ in range(settles):
            claimed = await backend.outbox_claim("app", now=T0, lease_seconds=60, limit=8)
            started = time.perf_counter()
            await backend.outbox_settle([Settled(m, Attempt(T0, 204, 1.0)) for m in claimed])
            times.append(time.perf_counter() - started)
        sa.event.remove(engine, "checkout", log_on)
        settle = [q for q in sent if "UPDATE webhook_messages" in q.query][-1]
        explained = conn.transaction()
        await explained.start()
        try:
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) {settle.query}", *settle.args)
        finally:
            await explained.rollback()  # EXPLAIN ANALYZE ran the update: undone
        scans = [r[0].strip() for r in plan if "Scan" in r[0] and "webhook_messages" in r[0]]
        print(
            f"| {backlog:,} | {'yes' if analyze else 'no'} | {statistics.median(times) * 1000:.2f} ms "
            f"| {'; '.join(s.split(' (actual')[0].lstrip('-> ') for s in scans)} |",
            flush=True,
        )
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
        await backend.close()


async def main(args: argparse.Namespace) -> None:
    print("| pending messages | statistics | a settle of 8, median | how the settle reads the messages |")
    print("|---:|---|---:|---|")
    for backlog in (int(b) for b in args.backlog.split(",")):
        await measure(args.url, backlog, args.settles, args.analyze)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", default="1000,10000,50000")
    parser.add_argument("--settles", type=int, default=50)
    parser.add_argument("--analyze", action="store_true", help="ANALYZE the table before the settles")
    parser.add_argument("--url", default=URL)
    asyncio.run(main(parser.parse_args()))
