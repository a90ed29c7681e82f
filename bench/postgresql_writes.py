"""What a variable write, an event and a room read cost the gateway's process on PostgreSQL, in CPU.

    .venv/bin/python bench/postgresql_writes.py [--calls 600] [--url postgresql://postgres@127.0.0.1:5432/test]

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
import time
import uuid
from datetime import UTC, datetime

import asyncpg
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
        conn = await asyncpg.connect(args.url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    uvloop.run(main(parser.parse_args()))
