"""What rate limiting costs: the gateway's REST GET, rate limits off (``limits: []``) and on, side by side.

    python bench/ratelimit.py [--duration 8] [--connections 64] [--redis redis://127.0.0.1:6379/0]

"On" uses a limit high enough never to trigger (every request is counted and gets its ``RateLimit-*``
headers, none is refused), per client IP, with each strategy on ``memory://`` (counted in the process),
on ``async+memory://`` (``limits``' own in-process storage, for comparison) and, with ``--redis``, on a
shared Redis. Each configuration is a fresh ``room-gateway serve`` process measured with ``wrk`` right
after the "off" baseline of the same run. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import KEY, VALUE, VAR_PATH, Proc, Result, free_port, wait_port, wrk

NEVER = "1000000/second"


def start(tmp: Path, name: str, rate_limits: str) -> tuple[Proc, int]:
    http, grpc = free_port(), free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: {{http: "127.0.0.1:{http}", grpc: "127.0.0.1:{grpc}"}}
            backend: "memory://"
            auth:
              keys:
                - {{name: bench, key: "{KEY}", permissions: ["*"]}}
            rate_limits: {rate_limits}
            """
        )
    )
    # Warnings only: an access line per request would measure the terminal, the same in both columns.
    proc = Proc([sys.executable, "-m", "gateway", "serve", "--log-level", "warning", "--config", str(config)])
    wait_port(http)
    wait_port(grpc)
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}{VAR_PATH}",
        data=json.dumps({"value": VALUE}).encode(),
        method="PUT",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        response.read()
    return proc, http


#: Server CPU µs per request over HTTP (off, on), by configuration name.
CPU_US: dict[str, tuple[float, float]] = {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_pair(tmp: Path, name: str, rate_limits: str, args: argparse.Namespace) -> tuple[Result, Result]:
    """Off and on, both serving at once, measured alternately ``--rounds`` times; the median of each.

    Alternating short runs spreads whatever else the machine is doing over both columns alike.
    """
    slug = "".join(c if c.isalnum() else "_" for c in name)
    (off_proc, off_port), (on_proc, on_port) = (
        start(tmp, "off", "{limits: []}"),
        start(tmp, slug, rate_limits),
    )
    headers = {"X-API-Key": KEY}
    try:
        runs: dict[int, list[Result]] = {off_port: [], on_port: []}
        cpu: dict[int, list[float]] = {off_port: [], on_port: []}
        for _ in range(args.rounds):
            for port, proc in ((off_port, off_proc), (on_port, on_proc)):
                before = cpu_seconds(proc.p.pid)
                result = wrk(name, f"http://127.0.0.1:{port}{VAR_PATH}", args, headers=headers, lua=None)
                # wrk's warm-up run is included: requests = rps x (duration + 2 s warm-up) approximately
                spent = cpu_seconds(proc.p.pid) - before
                cpu[port].append(spent / (result.rps * (args.duration + 2)) * 1e6)
                runs[port].append(result)
        CPU_US[name] = (statistics.median(cpu[off_port]), statistics.median(cpu[on_port]))
    finally:
        off_proc.stop()
        on_proc.stop()

    def median(results: list[Result], label: str) -> Result:
        ordered = sorted(results, key=lambda r: r.rps)
        middle = ordered[len(ordered) // 2]
        return Result(label, middle.rps, middle.p99_ms, sum(r.errors for r in results))

    return median(runs[off_port], "off"), median(runs[on_port], name)


def cpu_per_request(rate_limits: dict[str, object], requests: int) -> float:
    """CPU µs per GET through the whole REST app (every middleware, the route, the memory backend), driven
    in-process: no HTTP parsing and no socket, so the rate limits' share is *larger* here than behind
    uvicorn (a conservative figure), and ``time.process_time`` ignores whatever else the machine runs."""
    import asyncio

    from gateway.app import create_gateway
    from gateway.config import GatewayConfig

    config = GatewayConfig.model_validate(
        {
            "backend": "memory://",
            "auth": {"keys": [{"name": "bench", "key": KEY, "permissions": ["*"]}]},
            "rate_limits": rate_limits,
        }
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": VAR_PATH,
        "raw_path": VAR_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"x-api-key", KEY.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }

    async def run() -> float:
        gateway = create_gateway(config)
        await gateway.backend.open()
        statuses: list[int] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        body = json.dumps({"value": VALUE}).encode()
        length = (b"content-length", str(len(body)).encode())
        put = dict(
            scope, method="PUT", headers=[*scope["headers"], (b"content-type", b"application/json"), length]
        )

        async def receive_put() -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        await gateway.http_app(put, receive_put, send)
        for _ in range(2000):  # warm-up
            await gateway.http_app(dict(scope), receive, send)
        started = time.process_time()
        for _ in range(requests):
            await gateway.http_app(dict(scope), receive, send)
        spent = time.process_time() - started
        await gateway.backend.close()
        if gateway.limiter is not None:
            await gateway.limiter.close()
        if set(statuses) != {200}:
            raise SystemExit(f"unexpected statuses {sorted(set(statuses))}")
        return spent / requests * 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20000, help="in-process requests per configuration")
    parser.add_argument(
        "--wrk", action="store_true", help="also measure over HTTP with wrk (needs a quiet machine)"
    )
    parser.add_argument("--redis", default="", help="also measure a shared Redis storage at this URL")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "last-ratelimit.md")
    args = parser.parse_args()
    on = f'[{{by: ip, limit: "{NEVER}"}}]'
    configs = [
        (f"memory:// {s}", f'{{storage: "memory://", strategy: {s}, limits: {on}}}')
        for s in ("moving-window", "sliding-window-counter", "fixed-window")
    ]
    configs += [
        (
            f"async+memory:// {s} (limits' storage)",
            f'{{storage: "async+memory://", strategy: {s}, limits: {on}}}',
        )
        for s in ("moving-window", "fixed-window")
    ]
    if args.redis:
        prefix = f"bench_{uuid.uuid4().hex[:8]}"
        configs.append(
            ("redis moving-window", f'{{storage: "{args.redis}", key_prefix: {prefix}, limits: {on}}}')
        )
    strategies = ("moving-window", "sliding-window-counter", "fixed-window")
    never = [{"by": "ip", "limit": NEVER}]
    cpu_configs: list[tuple[str, dict[str, object]]] = [
        *((f"memory:// {s}", {"storage": "memory://", "strategy": s, "limits": never}) for s in strategies),
        *(
            (
                f"async+memory:// {s} (limits' storage)",
                {"storage": "async+memory://", "strategy": s, "limits": never},
            )
            for s in ("moving-window", "fixed-window")
        ),
        (
            "memory:// moving-window, ip + key + room limits",
            {"limits": [*never, {"by": "key", "limit": NEVER}, {"by": "room", "limit": NEVER}]},
        ),
    ]
    cpu_lines = [
        "| rate limits on: storage, strategy | off µs/req | on µs/req | cost | on/off throughput |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate_limits in cpu_configs:
        off_us = statistics.median(cpu_per_request({"limits": []}, args.requests) for _ in range(3))
        on_us = statistics.median(cpu_per_request(rate_limits, args.requests) for _ in range(3))
        cpu_lines.append(
            f"| {name} | {off_us:.1f} | {on_us:.1f} | +{on_us - off_us:.1f} µs | **{off_us / on_us:.0%}** |"
        )
        print(cpu_lines[-1], flush=True)
    cpu_table = "\n".join(cpu_lines)
    rows = []
    if not args.wrk:
        configs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rate_limits in configs:
            rows.append(measure_pair(Path(tmp), name, rate_limits, args))
            print(f"{name}: off {rows[-1][0].rps:,.0f}, on {rows[-1][1].rps:,.0f} req/s", flush=True)
    lines = [
        "| rate limits on: storage, strategy | off req/s | on req/s | on/off | off p99 | on p99 | non-2xx "
        "| server CPU µs/req off → on | on/off by CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for off, on_ in rows:
        cpu_off, cpu_on = CPU_US[on_.name]
        lines.append(
            f"| {on_.name} | {off.rps:,.0f} | {on_.rps:,.0f} | **{on_.rps / off.rps:.0%}** | "
            f"{off.p99_ms:.1f} ms | {on_.p99_ms:.1f} ms | {off.errors + on_.errors} | "
            f"{cpu_off:.0f} → {cpu_on:.0f} | **{cpu_off / cpu_on:.0%}** |"
        )
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, gateway REST GET variable, "
        f"{args.connections} connections, {args.threads} wrk threads, median of {args.rounds} alternating "
        f"{args.duration} s runs, "
        f"limit {NEVER} per IP (never refuses)."
    )
    table = "\n".join(lines) if rows else "(wrk not run: --wrk)"
    cpu_header = (
        f"In-process CPU per request (median of 3 x {args.requests:,} GETs, time.process_time), "
        "the whole REST app with the memory backend; on/off throughput = off µs / on µs:"
    )
    report = f"{header}\n\n{cpu_header}\n\n{cpu_table}\n\nOver HTTP (wrk):\n\n{table}\n"
    print("\n" + report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
