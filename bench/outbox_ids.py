"""What a webhook message's id costs the store's index: random ids against time-ordered ones.

    .venv/bin/python bench/outbox_ids.py [--backends postgresql,sqlite] [--existing 500000]
                                         [--inserts 20000] [--rounds 2]
                                         [--url postgresql://postgres@127.0.0.1:5432/test]

For each kind of id, a fresh store made by the backend's migrations (``webhook_messages`` with its primary
key and its two indexes), ``--existing`` delivered messages loaded, then ``--inserts`` pending messages in
transactions of 20 (as a busy room's writes commit). Printed per insert: the WAL bytes, and the time.
"random" is the id the gateway made before session 19 (``msg_`` and 128 random bits); "time-ordered" is
:func:`gateway.core.outbox.new_message_id`. The kinds alternate over ``--rounds``.

- PostgreSQL: a fresh schema, ``VACUUM ANALYZE`` and a ``CHECKPOINT`` before the inserts; the WAL bytes
  are the server's WAL position, and the full-page images ``pg_stat_wal``'s, both the whole server's (run
  it on a quiet one). A random key lands each insert on a random leaf of the primary key's index, and the
  first change to a page after a checkpoint writes the whole page (8 KiB) to the WAL; a time-ordered key
  lands at the index's end, on pages already written.
- SQLite: a fresh file, its WAL checkpointed and truncated before the inserts and not checkpointed during
  them (``wal_autocheckpoint=0``), ``synchronous=FULL`` as the gateway's writes commit; the WAL bytes are
  the WAL file's growth. Every commit appends each page it changed, whole (4 KiB): random keys change a
  leaf of the index per insert, time-ordered ones share the last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from room_gateway_plugins.sql import PostgresBackend, SQLiteBackend

from gateway.core.outbox import new_message_id

INSERT = (
    "INSERT INTO webhook_messages (endpoint, id, room_id, payload, previous, status, attempts, due_time,"
    " created_time, log) VALUES ('app', $1, 'room', $2, NULL, $3, 1, $4, $4, '[]')"
)
PAYLOAD = '{"kind": "variable.set", "value": "' + "x" * 280 + '"}'
BATCH = 20


def random_id() -> str:
    return "msg_" + secrets.token_hex(16)


async def wal(conn: asyncpg.Connection) -> tuple[int, int]:
    """The server's WAL position (bytes) and its count of full-page images, this session's counts flushed:
    a backend reports its WAL counters to ``pg_stat_wal`` at most once a second otherwise."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT 1")  # the flush happens as a statement ends
    row = await conn.fetchrow(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, wal_fpi FROM pg_stat_wal"
    )
    return int(row[0]), int(row[1])


def report(backend: str, kind: str, existing: int, wal_bytes: float, images: str, seconds: float) -> None:
    print(f"| {backend} | {kind} | {existing:,} | {wal_bytes:,.0f} B | {images} | {seconds * 1e6:.0f} µs |")


async def postgresql(url: str, kind: str, make: Callable[[], str], args: argparse.Namespace) -> None:
    schema = f"bench_ids_{uuid.uuid4().hex[:8]}"
    backend = PostgresBackend(f"{url}?schema={schema}")
    await backend.open()  # the schema and its tables, as the gateway makes them
    await backend.close()
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        now = datetime.now(UTC)
        await conn.executemany(INSERT, [(make(), PAYLOAD, "delivered", now) for _ in range(args.existing)])
        await conn.execute("VACUUM ANALYZE webhook_messages")
        await conn.execute("CHECKPOINT")
        before = await wal(conn)
        started = time.perf_counter()
        for _ in range(0, args.inserts, BATCH):
            async with conn.transaction():
                await conn.executemany(INSERT, [(make(), PAYLOAD, "pending", now) for _ in range(BATCH)])
        spent = time.perf_counter() - started
        after = await wal(conn)
        n = args.inserts
        images = f"{(after[1] - before[1]) / n:.3f}"
        report("PostgreSQL", kind, args.existing, (after[0] - before[0]) / n, images, spent / n)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


#: :data:`INSERT` in sqlite3's numbered parameter style (``?1`` … ``?4``).
SQLITE_INSERT = INSERT.replace("$", "?")


async def sqlite(kind: str, make: Callable[[], str], args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rooms.db"
        backend = SQLiteBackend(f"sqlite:///{path}")
        await backend.open()  # the file and its tables, as the gateway makes them
        await backend.close()
        wal_bytes, spent = sqlite_inserts(path, make, args.existing, args.inserts)
        report("SQLite", kind, args.existing, wal_bytes / args.inserts, "—", spent / args.inserts)


def sqlite_inserts(path: Path, make: Callable[[], str], existing: int, inserts: int) -> tuple[int, float]:
    """The WAL file's growth over ``inserts`` (``existing`` loaded and checkpointed first), and the time."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        now = datetime.now(UTC).isoformat(" ")
        conn.execute("BEGIN")
        conn.executemany(SQLITE_INSERT, [(make(), PAYLOAD, "delivered", now) for _ in range(existing)])
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA synchronous=FULL")
        started = time.perf_counter()
        for _ in range(0, inserts, BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(SQLITE_INSERT, [(make(), PAYLOAD, "pending", now) for _ in range(BATCH)])
            conn.execute("COMMIT")
        return os.path.getsize(f"{path}-wal"), time.perf_counter() - started
    finally:
        conn.close()


async def main(args: argparse.Namespace) -> None:
    print("| store | ids | messages there | WAL an insert | full-page images an insert | time an insert |")
    print("|---|---|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        for _ in range(args.rounds):
            for kind, make in (("random", random_id), ("time-ordered", new_message_id)):
                if backend == "sqlite":
                    await sqlite(kind, make, args)
                else:
                    await postgresql(args.url, kind, make, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--existing", type=int, default=500_000)
    parser.add_argument("--inserts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    asyncio.run(main(parser.parse_args()))
