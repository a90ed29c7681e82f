"""What a variable write, an event and a room read cost the gateway's process on PostgreSQL, in CPU.

    .venv/bin/python bench/postgresql_writes.py [--calls 600] [--url postgresql://postgres@127.0.0.1:5432/test]
    .venv/bin/python bench/postgresql_writes.py --batches 6     # the server's CPU a write, batch by batch

A ``PostgresBackend`` on a fresh schema (dropped at the end): ``set_variable`` one at a time and 60 at once
(64 variables of one room, as bench/backends.py loads it), ``publish_event`` the same two ways to the same
room, then ``get_room``, each ``--calls`` times; and the bare peer, a transaction of the same shape as the
write before session 20 (BEGIN, the variable's upsert, the head's increment, COMMIT) on one asyncpg
connection: the backend's write is one statement since then (one round trip, not four). Printed: the
process's CPU (``time.process_time``) a call. The process's CPU is what the gateway's event loop spends;
the server's own is bench/webhooks.py ``served``'s column.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import sqlalchemy as sa
import uvloop
from room_gateway_plugins.sql import PostgresBackend

from gateway.core.models import Event

T0 = datetime(2026, 1, 2, tzinfo=UTC)
ROOM = "bench-room"
#: The bare peer: the upsert and the head's increment of a write, written by hand for asyncpg.
UPSERT = (
    "INSERT INTO variables (room_id, name, value, version, update_time) VALUES ($1, $2, $3, 1, $4)"
    " ON CONFLICT (room_id, name) DO UPDATE SET value = excluded.value, version = variables.version + 1,"
    " update_time = excluded.update_time RETURNING version"
)
BUMP = (
    "INSERT INTO room_heads (room_id, head) VALUES ($1, 1)"
    " ON CONFLICT (room_id) DO UPDATE SET head = room_heads.head + 1 RETURNING head"
)


def per_call(started: float, calls: int) -> str:
    return f"{(time.process_time() - started) / calls * 1e6:,.0f} µs"


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    schema = f"bench_writes_{uuid.uuid4().hex[:8]}"
    backend = PostgresBackend(f"{args.url}?schema={schema}")
    await backend.open()
    try:
        for i in range(64):  # the pool's connections made, the statements prepared
            await backend.set_variable(ROOM, f"v{i}", i, expected_version=None, now=T0)
        started = time.process_time()
        for i in range(args.calls):
            await backend.set_variable(ROOM, f"v{i % 64}", i, expected_version=None, now=T0)
        print(f"set_variable, one at a time: {per_call(started, args.calls)} a write")
        started = time.process_time()
        for first in range(0, args.calls, 60):
            await asyncio.gather(
                *(
                    backend.set_variable(ROOM, f"v{i % 64}", i, expected_version=None, now=T0)
                    for i in range(first, first + 60)
                )
            )
        print(f"set_variable, 60 at once: {per_call(started, args.calls // 60 * 60)} a write")
        started = time.process_time()
        for i in range(args.calls):
            await backend.publish_event(ROOM, Event("e", {"n": i}, T0))
        print(f"publish_event, one at a time: {per_call(started, args.calls)} an event")
        started = time.process_time()
        for first in range(0, args.calls, 60):
            await asyncio.gather(
                *(backend.publish_event(ROOM, Event("e", {"n": i}, T0)) for i in range(first, first + 60))
            )
        print(f"publish_event, 60 at once: {per_call(started, args.calls // 60 * 60)} an event")
        started = time.process_time()
        for _ in range(args.calls):
            await backend.get_room(ROOM)
        print(f"get_room: {per_call(started, args.calls)} a read")
        conn = await asyncpg.connect(args.url, server_settings={"search_path": schema})
        try:
            started = time.process_time()
            for i in range(args.calls):
                async with conn.transaction():
                    await conn.fetchrow(UPSERT, ROOM, f"v{i % 64}", "1", T0)
                    await conn.fetchval(BUMP, ROOM)
            print(f"bare asyncpg, the same transaction's shape: {per_call(started, args.calls)} a write")
        finally:
            await conn.close()
    finally:
        await backend.close()
        await drop_schema(args.url, schema)


def server_cpu(pid: int) -> float:
    """The CPU seconds of the local server process ``pid`` so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_room(args: argparse.Namespace) -> None:
    """``--batches``: the server's CPU a write, batch after batch of 2,000 writes of one room, on one
    connection (a local server: its process's CPU from /proc), so that a cost growing with the room's
    writes shows (session 20: a trim's plan that grew from 0.5 to 1.7 ms over 12,000)."""
    schema = f"bench_room_{uuid.uuid4().hex[:8]}"
    backend = PostgresBackend(f"{args.url}?schema={schema}&pool_size=1")
    await backend.open()
    try:
        [row] = await backend._fetch(sa.select(sa.func.pg_backend_pid().label("pid")))
        for batch in range(args.batches):
            started = server_cpu(row.pid)
            for i in range(2000):
                await backend.set_variable(ROOM, f"v{i % 64}", i, expected_version=None, now=T0)
            spent = (server_cpu(row.pid) - started) / 2000 * 1e6
            first, last = batch * 2000 + 1, (batch + 1) * 2000
            print(f"writes {first:,}-{last:,} of one room: {spent:,.0f} µs of the server's CPU a write")
    finally:
        await backend.close()
        await drop_schema(args.url, schema)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--batches", type=int, default=0, help="instead: the server's CPU a write, by batch")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parsed = parser.parse_args()
    uvloop.run(one_room(parsed) if parsed.batches else main(parsed))
