"""Two servers under the same load at the same moment: what one configuration costs against another.

    python bench/ab.py [--pairs control,access-log,...] [--rounds 8] [--duration 5]    # default: every pair

``bench/run.py`` measures a pair back to back. On a host whose speed drifts by tens of percent within a
minute (a shared VM), two runs a few seconds apart differ by more than the few percent an access line or a
counted limit costs, so their on/off ratio is noise (bench/RESULTS.md, session 21: GET ratios from 67% to
131% in four rounds of one run). Loading both servers at once is not enough either: this host's two CPUs
ran the same loop at speeds up to 1.8x apart at the same moment, so two identical gateways read 84% to
209% of each other when the scheduler left them on different CPUs. Here both servers of a pair share
one CPU (``taskset``), time-sliced by the scheduler every few milliseconds, and the load generators run
on the others, each started at the same instant: whatever the CPU's speed does in a round, it does to
both. Each round gives each server's CPU (user + system, ``/proc``) per request served in that round, and
their ratio; the figure is the median of the rounds' ratios, with their range. The ``control`` pair, two
identical gateways, checks the method: it reads 99% to 103% here.

A CPU ratio is a throughput ratio for a process that the CPU bounds (one event loop per server): a request
that costs 5% more CPU is 5% fewer requests a second from the same core. Time-slicing one CPU between two
servers costs each of them cache misses a server alone would not have (a GET's ~50 CPU-µs alone reads
60-90 here), so the absolute figures are higher than bench/run.py's and the ratios the stricter ones.

Pairs (``A`` / ``B``; the ratio is A's CPU per request over B's, so < 100% is what B costs):

- ``edge``: a bare Starlette route / the gateway with the shipped defaults (access log, the counted per-IP
  limit, metrics) — REST GET and PUT (issue 13: ≥ 75%);
- ``access-log``: the shipped defaults with ``access_log: false`` / with it on (issue 13: ≤ 5%);
- ``limit``: the shipped defaults with ``rate_limits: {limits: []}`` / with the counted limit (≤ 5%);
- ``tracing``: the shipped defaults / the same with ``tracing: {enabled: true}`` at its default sample
  ratio, spans exported over OTLP/HTTP to a stand-in collector in this process (≤ 15%; needs
  ``room-gateway[otel]``);
- ``tracing-unsampled``: the same at ``sample_ratio: 0``, what every call pays (its ``traceparent`` read
  and answered, its ids) without the sampled calls' spans;
- ``grpc``: a bare grpclib server / the gateway's gRPC port, GetVariable (h2load; ≥ 80%).

Needs ``wrk`` and ``h2load`` (``apt-get install wrk nghttp2-client``). Every server is its own process on
the memory backend, as in bench/run.py, whose helpers (the configuration, the peers, the load tools' output)
this uses.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py: the gateway's bench configuration, the peers, wrk and h2load
from instructions import _collector  # the stand-in OTLP/HTTP collector

#: ``taskset`` prefixes: both servers of a pair on one CPU, the load generators on the others
#: (``--server-cpu``).
PINNED: dict[str, list[str]] = {"servers": [], "load": []}
#: Every server process started, stopped at the end even when a pair fails half made (a stray server left
#: on the pinned CPU would take from every later pair).
STARTED: list[run.Proc] = []


@dataclass
class Server:
    """A server of a pair: its process, and how to load it."""

    name: str
    proc: run.Proc
    http: int | None = None
    grpc: int | None = None
    key: str | None = None


def gateway(
    tmp: Path, name: str, *, access_log: bool = True, limits: str = run.COUNTED_LIMIT, extra: str = ""
) -> Server:
    http, grpc = run.free_port(), run.free_port()
    config = tmp / f"{name.replace(' ', '-')}.yaml"
    config.write_text(run.gateway_config(http, grpc, access_log=access_log, limits=limits, extra=extra))
    # The access log goes to a file, as a deployment's would, not to this script's terminal.
    log = tmp / f"{name.replace(' ', '-')}.log"
    proc = run.Proc(
        [*PINNED["servers"], sys.executable, "-m", "gateway", "serve", "--config", str(config)], stderr=log
    )
    STARTED.append(proc)
    run.wait_port(http)
    run.wait_port(grpc)
    run.seed(http)
    return Server(name, proc, http=http, grpc=grpc, key=run.KEY)


def peer(kind: str) -> Server:
    port = run.free_port()
    proc = run.Proc([*PINNED["servers"], sys.executable, "bench/peers.py", kind, str(port)])
    STARTED.append(proc)
    run.wait_port(port)
    if kind == "grpclib":
        return Server("bare grpclib", proc, grpc=port)
    return Server("bare Starlette", proc, http=port)


def _load(server: Server, call: str, args: argparse.Namespace, duration: float) -> list[str]:
    """The load generator's command for ``call`` (GET, PUT, gRPC) on ``server``: half the connections and
    one thread each, since two run at once."""
    connections = max(args.connections // 2, 1)
    if call == "gRPC":
        assert server.grpc is not None
        frame = Path(tempfile.gettempdir()) / "ab-get-variable.bin"
        frame.write_bytes(run.grpc_frame())
        cmd = ["h2load", "-c", str(connections), "-m", "1", "-t", "1", "-d", str(frame), "-D", str(duration)]
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        if server.key:
            cmd += ["-H", f"x-api-key: {server.key}"]
        return [
            *PINNED["load"],
            *cmd,
            f"http://127.0.0.1:{server.grpc}/roomgateway.v1.RoomService/GetVariable",
        ]
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if server.key:
        cmd += ["-H", f"X-API-Key: {server.key}"]
    if call == "PUT":
        script = Path(tempfile.gettempdir()) / "ab-put.lua"
        script.write_text(run.PUT_LUA)
        cmd += ["-s", str(script)]
    return [*PINNED["load"], *cmd, f"http://127.0.0.1:{server.http}{run.VAR_PATH}"]


def _served(out: str, call: str) -> tuple[int, int]:
    """Requests completed and failed, from the load generator's output."""
    if call == "gRPC":
        done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))  # type: ignore[union-attr]
        return done, run.h2load_failed(out)
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return done, run.wrk_errors(out)


@dataclass
class Round:
    cpu_us: tuple[float, float]  # A's, B's CPU per request
    rps: tuple[float, float]
    errors: int


def together(a: Server, b: Server, call: str, args: argparse.Namespace) -> Round:
    """Load ``a`` and ``b`` at once for ``args.duration`` seconds (after a warm-up the same way)."""
    commands = [_load(s, call, args, 2) for s in (a, b)]
    for proc in [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands]:  # warm-up
        proc.wait()
    commands = [_load(s, call, args, args.duration) for s in (a, b)]
    before = [s.proc.cpu_seconds() for s in (a, b)]
    started = time.monotonic()
    loads = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
    outs = [p.communicate()[0] for p in loads]
    elapsed = time.monotonic() - started
    spent = [s.proc.cpu_seconds() - t for s, t in zip((a, b), before, strict=True)]
    served = [_served(out, call) for out in outs]
    if any(p.returncode for p in loads):
        raise RuntimeError(f"a load generator failed: {outs}")
    cpu = tuple(s / max(done, 1) * 1e6 for s, (done, _) in zip(spent, served, strict=True))
    rps = tuple(done / elapsed for done, _ in served)
    return Round(cpu, rps, sum(failed for _, failed in served))  # type: ignore[arg-type]


PAIRS: dict[str, tuple[tuple[str, ...], Callable[[Path], tuple[Server, Server]]]] = {
    "edge": (("GET", "PUT"), lambda tmp: (peer("starlette"), gateway(tmp, "shipped defaults"))),
    "access-log": (
        ("GET", "PUT"),
        lambda tmp: (gateway(tmp, "access log off", access_log=False), gateway(tmp, "shipped defaults")),
    ),
    "limit": (
        ("GET", "PUT"),
        lambda tmp: (gateway(tmp, "limits off", limits="[]"), gateway(tmp, "shipped defaults")),
    ),
    "tracing": (
        ("GET",),
        lambda tmp: (
            gateway(tmp, "shipped defaults"),
            gateway(tmp, "tracing on (its default ratio)", extra="tracing:\n  enabled: true\n"),
        ),
    ),
    "tracing-unsampled": (
        ("GET",),
        lambda tmp: (
            gateway(tmp, "shipped defaults"),
            gateway(
                tmp, "tracing on, sample_ratio 0", extra="tracing:\n  enabled: true\n  sample_ratio: 0\n"
            ),
        ),
    ),
    "grpc": (("gRPC",), lambda tmp: (peer("grpclib"), gateway(tmp, "shipped defaults"))),
    # The method's own check: two identical gateways should read 100%, whatever the host does.
    "control": (
        ("GET", "PUT"),
        lambda tmp: (gateway(tmp, "shipped defaults"), gateway(tmp, "shipped defaults, again")),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, of {', '.join(PAIRS)}")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64, help="in all: half to each server")
    parser.add_argument(
        "--server-cpu",
        type=int,
        default=0,
        help="the CPU both servers of a pair share (-1: not pinned); the load generators get the others",
    )
    parser.add_argument("--out", type=Path, default=run.ROOT / "bench" / "out" / "ab.md")
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install wrk nghttp2-client")
    if args.server_cpu >= 0 and args.server_cpu not in os.sched_getaffinity(0):
        raise SystemExit(f"--server-cpu {args.server_cpu}: not a CPU of {sorted(os.sched_getaffinity(0))}")
    if args.server_cpu >= 0 and len(os.sched_getaffinity(0)) > 1:
        others = sorted(os.sched_getaffinity(0) - {args.server_cpu})
        PINNED["servers"] = ["taskset", "-c", str(args.server_cpu)]
        PINNED["load"] = ["taskset", "-c", ",".join(map(str, others))]
    names = [n.strip() for n in args.pairs.split(",") if n.strip()]
    if unknown := [n for n in names if n not in PAIRS]:
        raise SystemExit(f"unknown pair(s): {', '.join(unknown)}; known: {', '.join(PAIRS)}")
    if any(name.startswith("tracing") for name in names):
        os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_collector()}")

    rounds_lines = [
        "| pair | call | round | A CPU/req | B CPU/req | A/B | A req/s | B req/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary = [
        "| A | B | call | A/B by CPU per request, median | range | rounds | errors |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        for name in names:
            calls, make = PAIRS[name]
            try:
                a, b = make(tmp)
                if "gRPC" in calls:
                    run.grpc_check(a.grpc, a.key)  # type: ignore[arg-type]
                    run.grpc_check(b.grpc, b.key)  # type: ignore[arg-type]
                for call in calls:
                    ratios, errors = [], 0
                    for index in range(args.rounds):
                        r = together(a, b, call, args)
                        ratio = r.cpu_us[0] / r.cpu_us[1]
                        ratios.append(ratio)
                        errors += r.errors
                        rounds_lines.append(
                            f"| {name} | {call} | {index + 1} | {r.cpu_us[0]:.1f} µs | "
                            f"{r.cpu_us[1]:.1f} µs | {ratio:.1%} | {r.rps[0]:,.0f} | {r.rps[1]:,.0f} |"
                        )
                        print(rounds_lines[-1], flush=True)
                    summary.append(
                        f"| {a.name} | {b.name} | {call} | **{statistics.median(ratios):.1%}** | "
                        f"{min(ratios):.1%} to {max(ratios):.1%} | {len(ratios)} | {errors} |"
                    )
                    print(summary[-1], flush=True)
            finally:
                while STARTED:
                    STARTED.pop().stop()
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, memory backend, {args.connections} "
        f"connections in all (half to each server), {args.duration} s a round, both servers loaded at once."
    )
    report = "\n\n".join([header, "\n".join(summary), "\n".join(rounds_lines)]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"\n{header}\n\n" + "\n".join(summary) + f"\n\n(also in {args.out})")


if __name__ == "__main__":
    main()
