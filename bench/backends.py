"""Per-backend throughput, in one run: the gateway on each store against a bare route on the same store.

    python bench/backends.py [--duration 10] [--connections 64] [--backends memory,sqlite,postgresql,redis]
                             [--postgres-url postgresql://postgres@127.0.0.1:5432/test]
                             [--redis-url redis://127.0.0.1:6379/0]

For each backend, one gateway process (``python -m gateway serve --config <tmp yaml>``) and one bare
Starlette process on the same store (``bench/bare_stores.py``: the same single query with the same driver;
for ``memory`` the dict route of ``bench/peers.py``) are started side by side; the variable is seeded
through the gateway, then measured back to back: REST GET and PUT with wrk (bare, then gateway), gRPC
GetVariable and SetVariable with h2load (gateway only: the bare peers speak REST). SQLite has a second,
stricter peer: aiosqlite by hand, without SQLAlchemy (``sqlite+rawaiosqlite://`` in bench/bare_stores.py),
measured between the two and reported in columns of its own. SQLite is a file in a
temporary directory; PostgreSQL gets a fresh ``?schema=`` and Redis a fresh ``?prefix=``, both removed at
the end. Rate limits are switched off in the gateway's configuration: the bare routes have none.

Prints a markdown table (req/s, p99, gateway/bare and gateway vs the memory backend, with the exact
command lines) and writes it to ``bench/out/backends.md``. The wrk/h2load helpers are bench/run.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # bench/run.py: a script, not a package
from room_gateway_plugins.sql.sqlite import READERS
from run import (
    KEY,
    NAME,
    PUT_LUA,
    ROOM,
    ROOT,
    VALUE,
    VAR_PATH,
    Proc,
    Result,
    free_port,
    grpc_check,
    wait_port,
)

OUT = ROOT / "bench" / "out"
AUTH = {"X-API-Key": KEY}
CALLS = ("REST GET", "REST PUT", "gRPC GetVariable", "gRPC SetVariable")


@dataclass
class Backend:
    name: str
    url: str
    #: The bare peer's command line (a list of argv strings).
    bare: list[str]
    #: A stricter peer's command line, if any: the same driver by hand, without library layers.
    strict: list[str] | None = None
    cleanup: list[Any] = field(default_factory=list)


@dataclass
class Row:
    backend: str
    call: str
    gateway: Result
    bare: Result | None
    #: The load commands, each with what it loaded: bare, by hand (the strict peer), gateway.
    commands: list[tuple[str, str]]
    servers: list[str]
    strict: Result | None = None


# -- processes -----------------------------------------------------------------------------------------------


def write_config(path: Path, backend_url: str, http: int, grpc: int) -> None:
    path.write_text(
        textwrap.dedent(
            f"""\
            listen: {{http: "127.0.0.1:{http}", grpc: "127.0.0.1:{grpc}"}}
            backend: {json.dumps(backend_url)}
            rate_limits: {{limits: []}}   # the bare routes have none
            access_log: false             # nor an access log (its cost: bench/RESULTS.md)
            auth:
              keys:
                - {{name: bench, key: "{KEY}", permissions: ["*"]}}
            """
        )
    )


def gateway_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--log-level", "warning"]


def wait_up(proc: Proc, *ports: int, timeout: float = 30.0) -> None:
    """bench/run.py's ``wait_port``, giving up at once if the process has exited."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if proc.p.poll() is not None:
                raise RuntimeError(f"{shell([str(a) for a in proc.p.args])} exited with {proc.p.returncode}")
            try:
                wait_port(port, timeout=0.5)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# -- load generators -----------------------------------------------------------------------------------------


@contextmanager
def recording() -> Iterator[list[list[str]]]:
    """Record the argv of every wrk/h2load run (bench/run.py's helpers run them with subprocess.run)."""
    seen: list[list[str]] = []
    real = subprocess.run

    def run(cmd: Any, *a: Any, **kw: Any) -> Any:
        if isinstance(cmd, list) and cmd and cmd[0] in ("wrk", "h2load"):
            seen.append([str(part) for part in cmd])
        return real(cmd, *a, **kw)

    with mock.patch.object(subprocess, "run", run):
        yield seen


def shell(argv: list[str]) -> str:
    import shlex

    text = " ".join(shlex.quote(part) for part in argv)
    return text.replace(sys.executable, "python")


def measured(seen: list[list[str]]) -> str:
    """The last command run: the measurement (the one before it is the warm-up)."""
    return shell(seen[-1])


def set_request() -> Any:
    from gateway._gen.google.protobuf import Value
    from gateway._gen.roomgateway.v1 import SetVariableRequest

    return SetVariableRequest(room_id=ROOM, name=NAME, value=Value.from_dict(VALUE))


def grpc_set_check(port: int) -> None:
    """One real SetVariable: h2load counts HTTP 200s, so prove the answer is grpc-status 0."""
    from grpclib.client import Channel

    from gateway._gen.roomgateway.v1 import RoomServiceStub

    async def call() -> None:
        channel = Channel("127.0.0.1", port)
        try:
            reply = await RoomServiceStub(channel, metadata={"x-api-key": KEY}).set_variable(set_request())
            if reply.version < 1:
                raise RuntimeError(f"SetVariable answered {reply}")
        finally:
            channel.close()

    asyncio.run(call())


# -- backends ------------------------------------------------------------------------------------------------


def make_backends(names: list[str], args: argparse.Namespace, tmp: Path) -> list[Backend]:
    tag = f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    made = []
    for name in names:
        bare_port = free_port()
        if name == "memory":
            made.append(
                Backend(name, "memory://", [sys.executable, "bench/peers.py", "starlette", str(bare_port)])
            )
            continue
        if name == "sqlite":
            url = f"sqlite:///{tmp / 'rooms.db'}"
        elif name == "postgresql":
            url = f"{args.postgres_url}{'&' if '?' in args.postgres_url else '?'}schema={tag}"
        elif name == "redis":
            url = f"{args.redis_url}{'&' if '?' in args.redis_url else '?'}prefix={tag}:"
        else:
            raise SystemExit(f"unknown backend {name!r}: memory, sqlite, postgresql, redis")
        bare = [sys.executable, "bench/bare_stores.py", url, str(bare_port)]
        strict = None
        if name == "sqlite":
            raw = url.replace("sqlite://", "sqlite+rawaiosqlite://", 1)
            strict = [sys.executable, "bench/bare_stores.py", raw, str(free_port())]
        made.append(Backend(name, url, bare, strict))
    return made


def drop_store(backend: Backend) -> None:
    """Remove what the run wrote: the PostgreSQL schema, the Redis keys under the prefix."""
    if backend.name == "postgresql":
        import asyncpg
        from bare_stores import split_query

        url, schema = split_query(backend.url, "schema")

        async def drop() -> None:
            conn = await asyncpg.connect(url, timeout=5)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())
    elif backend.name == "redis":
        import redis
        from bare_stores import split_query

        url, prefix = split_query(backend.url, "prefix")
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def measure(backend: Backend, args: argparse.Namespace, tmp: Path) -> list[Row]:
    http, grpc = free_port(), free_port()
    config = tmp / f"gateway-{backend.name}.yaml"
    write_config(config, backend.url, http, grpc)
    gateway = Proc(gateway_command(config))
    peers: list[Proc] = []
    rows: list[Row] = []
    try:
        wait_up(gateway, http, grpc)
        gateway_url = f"http://127.0.0.1:{http}{VAR_PATH}"
        seeded = http_json("PUT", gateway_url, {"value": VALUE}, AUTH)  # seed the row through the gateway
        peer_urls = []
        for argv in (backend.bare, backend.strict):
            if argv is None:
                continue
            peers.append(Proc(argv))
            wait_up(peers[-1], int(argv[-1]))
            peer_urls.append(f"http://127.0.0.1:{argv[-1]}{VAR_PATH}")
            if backend.name != "memory":  # the same row, the same JSON (the dict peer answers a constant)
                theirs, ours = http_json("GET", peer_urls[-1]), http_json("GET", gateway_url, headers=AUTH)
                if theirs != ours or ours != seeded:
                    raise RuntimeError(f"{backend.name}: {shell(argv)} answers {theirs}, gateway {ours}")
        bare_url, strict_url = peer_urls[0], (peer_urls[1:] or [None])[0]
        grpc_check(grpc, KEY)
        grpc_set_check(grpc)
        servers = [shell(gateway_command(config)) + f"   # backend: {backend.url}"]
        servers += [shell(argv) for argv in (backend.bare, backend.strict) if argv is not None]
        for call, lua in (("REST GET", None), ("REST PUT", PUT_LUA)):
            strict: Result | None = None
            with recording() as seen:
                theirs = harness.wrk(f"bare {call}", bare_url, args, headers={}, lua=lua)
                commands = [("bare", measured(seen))]
                if strict_url is not None:
                    strict = harness.wrk(f"by-hand {call}", strict_url, args, headers={}, lua=lua)
                    commands.append(("by hand", measured(seen)))
                ours = harness.wrk(f"gateway {call}", gateway_url, args, headers=AUTH, lua=lua)
                commands.append(("gateway", measured(seen)))
            rows.append(Row(backend.name, call, ours, theirs, commands, servers, strict))
        with recording() as seen:
            ours = harness.h2load(f"gateway {CALLS[2]}", grpc, args, headers={"x-api-key": KEY})
        rows.append(Row(backend.name, CALLS[2], ours, None, [("gateway", measured(seen))], servers))
        with recording() as seen:
            ours = harness.h2load(
                f"gateway {CALLS[3]}",
                grpc,
                args,
                headers={"x-api-key": KEY},
                method="SetVariable",
                message=set_request(),
            )
        rows.append(Row(backend.name, CALLS[3], ours, None, [("gateway", measured(seen))], servers))
    finally:
        for proc in (gateway, *peers):
            proc.stop()
    return rows


# -- report --------------------------------------------------------------------------------------------------


def report(rows: list[Row], args: argparse.Namespace, target: float) -> str:
    memory = {row.call: row.gateway.rps for row in rows if row.backend == "memory"}
    lines = [
        "| backend | call | bare req/s | gateway req/s | gateway/bare | by-hand req/s | gateway/by-hand "
        "| vs memory | bare p99 | by-hand p99 | gateway p99 | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def verdict(share: float) -> str:
        return f"{share:.0%} {'✓' if share >= target else '✗'}"

    verdicts = []
    for row in rows:
        ratio = f"**{row.gateway.rps / row.bare.rps:.0%}**" if row.bare else "—"
        strict_ratio = f"**{row.gateway.rps / row.strict.rps:.0%}**" if row.strict else "—"
        vs_memory = f"{row.gateway.rps / memory[row.call]:.0%}" if row.call in memory else "—"
        errors = sum(result.errors for result in (row.gateway, row.bare, row.strict) if result is not None)
        lines.append(
            f"| {row.backend} | {row.call} | {f'{row.bare.rps:,.0f}' if row.bare else '—'} | "
            f"{row.gateway.rps:,.0f} | {ratio} | {f'{row.strict.rps:,.0f}' if row.strict else '—'} | "
            f"{strict_ratio} | {vs_memory} | {f'{row.bare.p99_ms:.1f} ms' if row.bare else '—'} | "
            f"{f'{row.strict.p99_ms:.1f} ms' if row.strict else '—'} | {row.gateway.p99_ms:.1f} ms | "
            f"{errors} |"
        )
        if row.call == "REST GET" and row.bare:
            text = f"{row.backend} {verdict(row.gateway.rps / row.bare.rps)}"
            if row.strict:
                text += f" (by hand: {verdict(row.gateway.rps / row.strict.rps)})"
            verdicts.append(text)
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {args.connections} connections, "
        f"{args.threads} load threads, {args.duration} s per measurement (after 2 s of warm-up). "
        "Bare = a Starlette route doing the same single query with the same driver (memory: a dict), "
        "built with the libraries' defaults (SQLAlchemy's create_async_engine, redis-py's from_url); "
        "by-hand = the same route with the driver used directly, the best a user would write (SQLite: "
        "aiosqlite's execute_fetchall on a pool of as many connections as the gateway's SQLite readers, "
        f"{READERS} here; no SQLAlchemy). "
        "gRPC rows have no bare peer."
    )
    target_line = f"Target REST GET ≥ {target:.0%} of the bare route: " + ", ".join(verdicts)
    commands = [
        "",
        "Commands (each wrk/h2load line is the measurement; a 2 s warm-up with the same flags ran "
        "first). PUT Lua script for wrk:",
        "",
        "```lua",
        PUT_LUA.rstrip(),
        "```",
    ]
    for backend in dict.fromkeys(row.backend for row in rows):
        mine = [row for row in rows if row.backend == backend]
        commands += ["", f"{backend}:", *(f"- `{c}`" for c in mine[0].servers)]
        commands += [f"- {row.call}, {who}: `{c}`" for row in mine for who, c in row.commands]
    return "\n".join([header, "", *lines, "", target_line, *commands]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="memory,sqlite,postgresql,redis")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--target", type=float, default=0.75, help="REST GET share of the bare route to reach"
    )
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install wrk nghttp2-client")
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for backend in make_backends(names, args, Path(tmp)):
            print(f"== {backend.name}: {backend.url}", flush=True)
            try:
                rows.extend(measure(backend, args, Path(tmp)))
            finally:
                drop_store(backend)
    text = report(rows, args, args.target)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "backends.md").write_text(text)
    print(f"(written to {OUT / 'backends.md'})")


if __name__ == "__main__":
    main()
