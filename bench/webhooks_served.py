"""Webhooks with a served gateway (issue 14), the load from other processes:

    .venv/bin/python bench/webhooks.py served [--backends sqlite,postgresql,redis] [--duration 5]
                                       [--rate 1000[,500,200]] [--rounds 2] [--writers 3] [--connections 64]
                                       [--worker-nice 10[,5,0]] [--rooms 1]

bench/webhooks.py writes through ASGI in its own process, with httpx's ASGI transport (~3.4 M instructions
a PUT, mostly the client): it never writes more than a few hundred PUTs/s, so it cannot measure the latency
at 1,000 writes/s. Here the gateway is a real ``python -m gateway serve`` (the worker as shipped, started by
``serve``; a fresh SQLite file, PostgreSQL schema or Redis key prefix for every gateway — Redis is the
backend whose writes reach 1,000/s here: the sql backends' PUT tops out near 500/s on this machine), the
receiver is bench/webhooks.py's own process, and the writers are other processes:

- **PUT/s**: ``wrk -t2 -c{--connections} -d{--duration}s`` (after a 2 s warm-up, bench/run.py's ``wrk``)
  of REST PUTs over 64 variables of one room, a gateway without ``webhooks:`` against one with one endpoint
  subscribed to everything, the order alternated over ``--rounds``; medians and the ratio (issue 14:
  ≥ 0.85). Non-2xx responses and socket errors are counted as errors. With the endpoint, the worker
  delivers during the window: the deliveries that arrived in it and the backlog left at its end are shown.
- **Latency**: ``--rate`` PUTs/s for ``--duration`` s from ``--writers`` processes, each an asyncio loop
  with aiohttp keep-alive connections sending its share on a schedule (the i-th PUT at ``i / rate`` s,
  not after the previous response), PUT ``i`` to room ``i % --rooms`` (on PostgreSQL a process writes a
  room one write at a time, so many rooms reach rates that one cannot); p50/p99 from each change's body
  ``timestamp`` to its arrival at the receiver (issue 14: < 250 ms at 1,000/s), the rate achieved,
  errors. A writer does not start a PUT after the window: a gateway that lags is shown by the rate
  achieved, not given more time.

The gateway's CPU per PUT (user + system of the serving process over wrk's window, not the worker's) is
steadier than PUT/s on a shared machine, as in bench/run.py. On PostgreSQL, the server's CPU per PUT too
(every ``postgres`` process on the machine, over wrk's warm-up and window).

``--worker-nice`` sets ``webhooks.worker_nice`` (unset: the shipped default); several values, comma-separated,
run every backend's rows once per value, so that the priorities compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import run  # bench/run.py: Proc, free_port, wait_port, wrk
import webhooks  # bench/webhooks.py: the receiver, its arrivals, the latencies

KEY = run.KEY  # the key run.gateway_config configures
VARIABLES = 64  # the variables of the room written, so that the writes are not all one row


def config(tmp: Path, backend: str, receiver: str | None, nice: int | None = None) -> tuple[Path, int]:
    """A ``gateway.yaml`` on ``backend`` with the shipped defaults (the access log on, a per-IP limit counted
    that never refuses: bench/run.py's), with one endpoint subscribed to everything when ``receiver`` is
    given, its worker at ``nice`` (unset: the shipped default)."""
    http, grpc = run.free_port(), run.free_port()
    hooks = ""
    if receiver is not None:
        hooks = textwrap.dedent(
            f"""\
            webhooks:
              poll_seconds: 0.5
              endpoints:
                - {{name: bench, url: "{receiver}/hooks", secret: "{webhooks.SECRET}", max_in_flight: 64}}
            """
        )
        if nice is not None:
            hooks += f"  worker_nice: {nice}\n"
    path = tmp / f"gateway-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(run.gateway_config(http, grpc, access_log=True, extra=hooks, backend=backend))
    return path, http


class Served:
    """``python -m gateway serve`` on a fresh store; with ``receiver``, started once a first write has
    arrived there (the worker is then up and delivering)."""

    def __init__(self, tmp: Path, store: str, receiver: str | None, nice: int | None = None) -> None:
        path, self.port = config(tmp, store, receiver, nice)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = run.Proc([sys.executable, "-m", "gateway", "serve", "--config", str(path)])
        run.wait_port(self.port, 60)
        self.room = "served-" + uuid.uuid4().hex[:8]
        httpx.put(
            f"{self.base}/v1/rooms/{self.room}/variables/ready",
            json={"value": 0},
            headers={"X-API-Key": KEY},
            timeout=30,
        ).raise_for_status()
        if receiver is not None:
            deadline = time.monotonic() + 30
            while not webhooks.arrivals(receiver, self.room):
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker delivered nothing in 30 s")
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.stop()


def settle(receiver: str, room: str | list[str], timeout: float = 30.0) -> list[tuple[float, str]]:
    """The arrivals of ``room`` (or of every room of a list) once they stop growing for 1 s (or after
    ``timeout``)."""
    found, deadline, last = webhooks.arrivals(receiver, room), time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = webhooks.arrivals(receiver, room)
        if len(now) != len(found):
            found, last = now, time.monotonic()
        elif time.monotonic() - last > 1.0:
            break
    return found


def put_lua(room: str) -> str:
    return textwrap.dedent(
        f"""\
        local i = 0
        wrk.headers["Content-Type"] = "application/json"  -- with -H's key: format(nil headers) uses them
        local body = {json.dumps(json.dumps({"value": {"points": 42}}))}
        request = function()
          i = i + 1
          return wrk.format("PUT", "/v1/rooms/{room}/variables/v" .. (i % {VARIABLES}), nil, body)
        end
        """
    )


def _cpu_of(pid: int | str) -> tuple[float, float]:
    """A process's user and system CPU seconds so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def cpu_split(proc: run.Proc) -> tuple[float, float]:
    """The serving process's user and system CPU seconds so far."""
    return _cpu_of(proc.p.pid)


def server_cpu(name: str) -> float:
    """CPU seconds (user + system) used so far by the processes named ``name`` (``postgres``: the
    PostgreSQL server's, its connections' backends included; ended processes are not counted)."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                total += sum(_cpu_of(comm.parent.name))
        except OSError:  # ended meanwhile
            continue
    return total


#: wrk's warm-up before each window (bench/run.py's ``wrk``), counted in the database's CPU a PUT.
WARM_UP_SECONDS = 2


def put_round(
    tmp: Path, store: str, receiver: str | None, args: argparse.Namespace, nice: int | None
) -> dict[str, Any]:
    gw = Served(tmp, store, receiver, nice)
    try:
        room = "put-" + uuid.uuid4().hex[:8]
        wrk_args = argparse.Namespace(threads=2, connections=args.connections, duration=args.duration)
        url = f"{gw.base}/v1/rooms/{room}/variables/v0"
        before, database = cpu_split(gw.proc), server_cpu("postgres")
        result = run.wrk("PUT", url, wrk_args, headers={"X-API-Key": KEY}, lua=put_lua(room), server=gw.proc)
        ended = time.time()
        user, system = (b - a for a, b in zip(before, cpu_split(gw.proc), strict=True))
        # Warm-up and window, over the PUTs of both at the window's rate (warm-up's is much the same).
        puts = max(result.rps * (args.duration + WARM_UP_SECONDS), 1)
        row: dict[str, Any] = {
            "rps": result.rps,
            "errors": result.errors,
            "cpu_us": result.cpu_us,
            "system_share": system / max(user + system, 1e-9),  # warm-up and window
            "database_us": (server_cpu("postgres") - database) / puts * 1e6
            if store.startswith("postgresql")
            else None,
        }
        if receiver is not None:
            at_end = [a for a, _ in webhooks.arrivals(receiver, room) if a <= ended]
            in_window = sum(1 for a in at_end if a >= ended - args.duration)
            total = len(settle(receiver, room))  # every write of warm-up and window, once drained
            row |= {"delivered_in_window": in_window / args.duration, "backlog": total - len(at_end)}
        return row
    finally:
        gw.stop()


# -- the paced writers (their own processes) -------------------------------------------------------------


async def _writer(spec: dict[str, Any]) -> None:
    """Share ``k`` of ``n`` of ``total`` PUTs at ``rate``/s: PUT ``i`` (``i % n == k``) is sent at
    ``start + i / rate`` by one of ``connections`` callers, or once one is free when the gateway lags."""
    import aiohttp

    mine = iter(range(spec["k"], spec["total"], spec["n"]))
    ok = errors = 0
    base, rooms, rate, start = spec["base"], spec["rooms"], spec["rate"], spec["start"]
    connector = aiohttp.TCPConnector(limit=spec["connections"])
    async with aiohttp.ClientSession(base, connector=connector, headers={"X-API-Key": KEY}) as http:

        async def caller() -> None:
            nonlocal ok, errors
            for i in mine:
                lag = start + i / rate - time.time()
                if lag > 0:
                    await asyncio.sleep(lag)
                elif time.time() > start + spec["duration"]:
                    break  # the window is over: a gateway that lags is not given the rest of the schedule
                try:
                    room, turn = rooms[i % len(rooms)], i // len(rooms)
                    async with http.put(
                        f"/v1/rooms/{room}/variables/v{turn % VARIABLES}", json={"value": i}
                    ) as response:
                        await response.read()
                        ok, errors = (ok + 1, errors) if response.status < 300 else (ok, errors + 1)
                except aiohttp.ClientError:
                    errors += 1

        await asyncio.gather(*(caller() for _ in range(spec["connections"])))
    print(json.dumps({"ok": ok, "errors": errors, "ended": time.time()}))


def paced_round(
    tmp: Path, store: str, receiver: str, rate: float, args: argparse.Namespace, nice: int | None
) -> dict[str, Any]:
    gw = Served(tmp, store, receiver, nice)
    try:
        paced = "paced-" + uuid.uuid4().hex[:8]
        rooms = [paced] if args.rooms == 1 else [f"{paced}-{n}" for n in range(args.rooms)]
        total = int(rate * args.duration)
        start = time.time() + 3.0  # the writers' imports and connections first
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--writer", json.dumps(spec)], stdout=subprocess.PIPE, text=True
            )
            for spec in (
                {
                    "base": gw.base,
                    "rooms": rooms,
                    "rate": rate,
                    "total": total,
                    "n": args.writers,
                    "k": k,
                    "start": start,
                    "connections": max(1, args.connections // args.writers),
                    "duration": args.duration,
                }
                for k in range(args.writers)
            )
        ]
        done = [json.loads(p.communicate(timeout=args.duration + 120)[0]) for p in procs]
        found = settle(receiver, rooms)
    finally:
        gw.stop()
    late = webhooks._latencies(found)
    ok = sum(d["ok"] for d in done)
    return {
        "rate": rate,
        "rooms": len(rooms),
        "written_per_s": ok / (max(d["ended"] for d in done) - start),
        "errors": sum(d["errors"] for d in done),
        "delivered": len(found),
        "written": ok + len(rooms),  # and each room's room.created
        "p50_ms": 1000 * late[len(late) // 2] if late else float("nan"),
        "p99_ms": 1000 * late[max(0, int(len(late) * 0.99) - 1)] if late else float("nan"),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="webhooks.py served", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--duration", type=int, default=5, help="seconds (whole: wrk's -d)")
    parser.add_argument(
        "--rate", default="1000", help="writes/s, comma-separated for several rows; empty: none"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--writers", type=int, default=3, help="writer processes of the paced load")
    parser.add_argument(
        "--rooms", type=int, default=1, help="rooms of the paced writes, in turn (PUT i to room i %% rooms)"
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--worker-nice",
        help="webhooks.worker_nice, comma-separated: every row once per value (unset: the shipped default)",
    )
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        asyncio.run(_writer(json.loads(args.writer)))
        return
    schemas: list[str] = []
    prefixes: list[str] = []

    def fresh(name: str, tmp: Path) -> str:
        if name == "sqlite":
            return f"sqlite:///{tmp / uuid.uuid4().hex[:8]}.db"
        if name == "redis":  # the one backend whose durable writes reach 1,000/s here: a fresh key prefix
            prefixes.append(f"bench-served-{uuid.uuid4().hex[:8]}:")
            return f"{args.redis_url}?prefix={prefixes[-1]}"
        schemas.append(f"bench_served_{uuid.uuid4().hex[:8]}")
        return f"{args.postgres_url}?schema={schemas[-1]}"

    puts, paced = [], []
    try:
        with webhooks.receiver_process() as receiver, tempfile.TemporaryDirectory() as directory:
            tmp = Path(directory)
            nices = [None] if args.worker_nice is None else [int(n) for n in args.worker_nice.split(",")]
            for name, nice in ((name, nice) for name in args.backends.split(",") for nice in nices):
                label = name if nice is None else f"{name}, nice {nice}"
                without, with_ = [], []
                for round_ in range(args.rounds):
                    order = [None, receiver] if round_ % 2 == 0 else [receiver, None]
                    for hook in order:
                        row = put_round(tmp, fresh(name, tmp), hook, args, nice)
                        (without if hook is None else with_).append(row)
                        print(f"{label} {'with' if hook else 'without'}: {row}", file=sys.stderr)
                puts.append((label, without, with_))
                for rate in (float(r) for r in args.rate.split(",") if r):
                    row = paced_round(tmp, fresh(name, tmp), receiver, rate, args, nice)
                    print(f"{label} paced: {row}", file=sys.stderr)
                    paced.append((label, row))
    finally:
        if schemas:
            asyncio.run(_drop(args.postgres_url, schemas))
        if prefixes:
            asyncio.run(_drop_keys(args.redis_url, prefixes))
    report(puts, paced, args)


async def _drop(url: str, schemas: list[str]) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    for schema in schemas:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


async def _drop_keys(url: str, prefixes: list[str]) -> None:
    import redis.asyncio as redis

    client = redis.from_url(url)
    try:
        for prefix in prefixes:
            async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                await client.delete(key)
    finally:
        await client.aclose()


def report(puts: list[Any], paced: list[Any], args: argparse.Namespace) -> None:
    def median(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    lines = [
        f"PUT over HTTP: wrk -t2 -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds, medians",
        "",
        "| backend | PUT/s without | PUT/s with one endpoint | ratio | errors | rounds (without / with) "
        "| delivered/s in the window | backlog at its end | gateway CPU/PUT without / with "
        "| its system share without / with | PostgreSQL's CPU/PUT without / with |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, without, with_ in puts:
        rounds = " / ".join(", ".join(f"{r['rps']:.0f}" for r in rows) for rows in (without, with_))
        database = (
            f"{median(without, 'database_us'):.0f} / {median(with_, 'database_us'):.0f} µs"
            if without[0]["database_us"] is not None
            else "—"
        )
        lines.append(
            f"| {name} | {median(without, 'rps'):.0f} | {median(with_, 'rps'):.0f} "
            f"| {median(with_, 'rps') / median(without, 'rps'):.2f} "
            f"| {sum(r['errors'] for r in without + with_)} | {rounds} "
            f"| {median(with_, 'delivered_in_window'):.0f} | {median(with_, 'backlog'):.0f} "
            f"| {median(without, 'cpu_us'):.0f} / {median(with_, 'cpu_us'):.0f} µs "
            f"| {median(without, 'system_share'):.0%} / {median(with_, 'system_share'):.0%} | {database} |"
        )
    lines += [
        "",
        f"Paced writes: {args.writers} writer processes, {args.duration:g} s, aiohttp keep-alive",
        "",
        "| backend | rooms | asked writes/s | achieved | errors | delivered / written "
        "| write→delivery p50 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {r['rooms']} | {r['rate']:.0f} | {r['written_per_s']:.0f} | {r['errors']} "
            f"| {r['delivered']} / {r['written']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms |"
            for name, r in paced
        ),
    ]
    table = "\n".join(lines)
    print(table)
    webhooks.OUT.mkdir(exist_ok=True)
    (webhooks.OUT / "webhooks_served.md").write_text(table + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
