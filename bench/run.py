"""Side-by-side throughput of the gateway against its bare peers, in one run, reported as ratios.

    python bench/run.py [--duration 10] [--connections 64] [--out bench/RESULTS.md]

Needs ``wrk`` and ``h2load`` (Debian: ``apt-get install wrk nghttp2-client``). Every server runs as its own
process (uvicorn / grpclib, one event loop each, as deployed); the load generator runs on the same machine.
Each pair is measured back to back after a warm-up, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"
ROOM, NAME = "bench-room", "score"
VALUE = {"points": 42, "players": ["ada", "linus"]}
VAR_PATH = f"/v1/rooms/{ROOM}/variables/{NAME}"
#: wrk's script for a PUT of the bench variable (every bench that PUTs through wrk).
PUT_LUA = (
    'wrk.method = "PUT"\nwrk.headers["Content-Type"] = "application/json"\n'
    f"wrk.body = {json.dumps(json.dumps({'value': VALUE}))}\n"
)


@dataclass
class Result:
    name: str
    rps: float
    p99_ms: float
    errors: int
    #: The server process's CPU (user + system) per request during the measurement: steadier than req/s on
    #: a machine that does other work, since time the server waits for a core is not counted.
    cpu_us: float = 0.0
    #: The system (kernel) part of ``cpu_us``: valgrind's instruction counts see none of it, so a gap
    #: between their ratio and the clock's is either here or in instructions per cycle (RESULTS.md).
    sys_us: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Proc:
    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, stderr: Path | None = None
    ) -> None:
        """``stderr``: a file for the process's standard error (its log), instead of this one's."""
        log = open(stderr, "w") if stderr else None
        self.p = subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=ROOT, stderr=log)
        if log:
            log.close()

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (Linux ``/proc``)."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds the process has used so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()


#: The rate limit every bench gateway counts on every call, never refusing one under load (the shipped
#: default, 20/second, would refuse a benchmark; a per-second window keeps the moving window's log small).
COUNTED_LIMIT = '[{by: ip, limit: "1000000/second"}]'


def gateway_config(
    http: int,
    grpc: int,
    *,
    access_log: bool,
    limits: str = COUNTED_LIMIT,
    extra: str = "",
    backend: str = "memory://",
) -> str:
    """A bench gateway's ``gateway.yaml``: ``backend`` (default memory), the bench key, ``limits`` counted,
    ``extra`` (more top-level sections) appended."""
    return (
        textwrap.dedent(
            f"""\
            listen: {{http: "127.0.0.1:{http}", grpc: "127.0.0.1:{grpc}"}}
            backend: "{backend}"
            rate_limits:
              limits: {limits}
            grpc:
              new_connections_per_ip: "1000000/second"   # h2load opens all its connections at once
            access_log: {"true" if access_log else "false"}
            auth:
              keys:
                - {{name: bench, key: "{KEY}", permissions: ["*"]}}
            """
        )
        + extra
    )


def seed(http: int) -> None:
    """The bench variable, written once over REST (every GET reads it)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}{VAR_PATH}",
        data=json.dumps({"value": VALUE}).encode(),
        method="PUT",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=60).read()


def start_gateway(config: Path, http: int, grpc: int, args: argparse.Namespace) -> Proc:
    # The full edge as shipped, the access log on (the bare peers log nothing: uvicorn access_log=False);
    # --access-log off measures what it costs.
    config.write_text(gateway_config(http, grpc, access_log=args.access_log == "on"))
    proc = Proc([sys.executable, "-m", "gateway", "serve", "--config", str(config)])
    wait_port(http)
    wait_port(grpc)
    return proc


def wrk(
    name: str,
    url: str,
    args: argparse.Namespace,
    *,
    headers: dict[str, str],
    lua: str | None,
    server: Proc | None = None,
) -> Result:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua or "")
    if lua:
        cmd += ["-s", script.name]
    subprocess.run([*cmd[:4], "-d2s", *cmd[5:], url], capture_output=True, check=True)  # warm-up
    before = server.cpu_split() if server else (0.0, 0.0)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    user, system = _used(server, before)
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    total, kernel = cpu_per_request(user + system, rps, args), cpu_per_request(system, rps, args)
    return Result(name, rps, p99, wrk_errors(out), total, kernel)


def wrk_errors(out: str) -> int:
    """What went wrong in a wrk run, from its output: its non-2xx answers, and 1 if any socket error."""
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: .*", out)
    return (int(bad.group(1)) if bad else 0) + (1 if socket_errors else 0)


def h2load_failed(out: str) -> int:
    """The requests an h2load run counted as failed, from its output."""
    return int(re.search(r"(\d+) failed", out).group(1))  # type: ignore[union-attr]


def _used(server: Proc | None, before: tuple[float, float]) -> tuple[float, float]:
    """User and system CPU seconds ``server`` used since ``before`` (its :meth:`Proc.cpu_split`)."""
    if server is None:
        return 0.0, 0.0
    user, system = server.cpu_split()
    return user - before[0], system - before[1]


def cpu_per_request(cpu_seconds: float, rps: float, args: argparse.Namespace) -> float:
    """Microseconds of server CPU per request over a measurement of ``args.duration`` seconds."""
    return cpu_seconds / max(rps * args.duration, 1) * 1e6


def _ms(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def grpc_frame(message: Any = None) -> bytes:
    """A gRPC length-prefixed frame of ``message`` (default: GetVariable of the bench variable)."""
    from gateway._gen.roomgateway.v1 import GetVariableRequest

    data = bytes(message if message is not None else GetVariableRequest(room_id=ROOM, name=NAME))
    return struct.pack(">?I", False, len(data)) + data


def h2load(
    name: str,
    port: int,
    args: argparse.Namespace,
    *,
    headers: dict[str, str],
    method: str = "GetVariable",
    message: Any = None,
    server: Proc | None = None,
) -> Result:
    """h2load on a unary method of the native service (default: GetVariable of the bench variable)."""
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "req.bin"
        body.write_bytes(grpc_frame(message))
        log = Path(tmp) / "log.tsv"
        base = ["h2load", "-c", str(args.connections), "-m", "1", "-t", str(args.threads), "-d", str(body)]
        base += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        for key, value in headers.items():
            base += ["-H", f"{key}: {value}"]
        url = f"http://127.0.0.1:{port}/roomgateway.v1.RoomService/{method}"
        subprocess.run([*base, "-D", "2", url], capture_output=True, check=True)  # warm-up
        before = server.cpu_split() if server else (0.0, 0.0)
        out = subprocess.run(
            [*base, "-D", str(args.duration), "--log-file", str(log), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        user, system = _used(server, before)
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
        failed = h2load_failed(out)
        times = [int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line]
        p99 = statistics.quantiles(times, n=100)[98] if len(times) > 100 else max(times)
        return Result(
            name,
            rps,
            p99,
            failed,
            cpu_per_request(user + system, rps, args),
            cpu_per_request(system, rps, args),
        )


def grpc_check(port: int, key: str | None) -> None:
    """One real call: h2load counts HTTP 200s, so prove the answer is grpc-status 0 with a value."""
    import asyncio

    from grpclib.client import Channel

    from gateway._gen.roomgateway.v1 import GetVariableRequest, RoomServiceStub

    async def call() -> None:
        channel = Channel("127.0.0.1", port)
        try:
            stub = RoomServiceStub(channel, metadata={"x-api-key": key} if key else None)
            reply = await stub.get_variable(GetVariableRequest(room_id=ROOM, name=NAME))
            assert reply.value is not None and reply.value.to_dict() == VALUE, reply
        finally:
            channel.close()

    asyncio.run(call())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="measure each pair this many times")
    parser.add_argument(
        "--access-log",
        choices=("on", "off"),
        default="on",
        help="the gateway's access log (default on, as shipped; off measures what it costs)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install wrk nghttp2-client")

    auth = {"X-API-Key": KEY}
    results: list[tuple[Result, Result]] = []
    with tempfile.TemporaryDirectory() as tmp:
        http, grpc, peer_http, peer_grpc = free_port(), free_port(), free_port(), free_port()
        gateway = start_gateway(Path(tmp) / "gateway.yaml", http, grpc, args)
        starlette = Proc([sys.executable, "bench/peers.py", "starlette", str(peer_http)])
        grpclib_peer = Proc([sys.executable, "bench/peers.py", "grpclib", str(peer_grpc)])
        try:
            wait_port(peer_http)
            wait_port(peer_grpc)
            seed(http)
            grpc_check(grpc, KEY)
            grpc_check(peer_grpc, None)
            gateway_url, bare_url = (
                f"http://127.0.0.1:{http}{VAR_PATH}",
                f"http://127.0.0.1:{peer_http}{VAR_PATH}",
            )
            pairs = {
                "GET": (
                    lambda: wrk("bare Starlette GET", bare_url, args, headers={}, lua=None, server=starlette),
                    lambda: wrk(
                        "gateway REST GET", gateway_url, args, headers=auth, lua=None, server=gateway
                    ),
                ),
                "PUT": (
                    lambda: wrk(
                        "bare Starlette PUT", bare_url, args, headers={}, lua=PUT_LUA, server=starlette
                    ),
                    lambda: wrk(
                        "gateway REST PUT", gateway_url, args, headers=auth, lua=PUT_LUA, server=gateway
                    ),
                ),
                "gRPC": (
                    lambda: h2load(
                        "bare grpclib GetVariable", peer_grpc, args, headers={}, server=grpclib_peer
                    ),
                    lambda: h2load(
                        "gateway gRPC GetVariable", grpc, args, headers={"x-api-key": KEY}, server=gateway
                    ),
                ),
            }
            for round_ in range(args.rounds):
                for bare, ours in pairs.values():
                    # Alternating which goes first: this machine drifts by tens of percent within minutes.
                    if round_ % 2 == 0:
                        results.append((bare(), ours()))
                    else:
                        ours_first = ours()
                        results.append((bare(), ours_first))
        finally:
            for proc in (gateway, starlette, grpclib_peer):
                proc.stop()
    report(results, args)


def report(results: list[tuple[Result, Result]], args: argparse.Namespace) -> None:
    lines = [
        "| pair | bare req/s | gateway req/s | ratio | bare p99 | gateway p99 | bare CPU/req "
        "| gateway CPU/req | CPU ratio | system part, bare / gateway | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bare, ours in results:
        lines.append(
            f"| {ours.name} vs {bare.name} | {bare.rps:,.0f} | {ours.rps:,.0f} | "
            f"**{ours.rps / bare.rps:.0%}** | {bare.p99_ms:.1f} ms | {ours.p99_ms:.1f} ms | "
            f"{bare.cpu_us:.0f} µs | {ours.cpu_us:.0f} µs | **{bare.cpu_us / max(ours.cpu_us, 1e-9):.0%}** | "
            f"{bare.sys_us:.0f} / {ours.sys_us:.0f} µs | {bare.errors + ours.errors} |"
        )
    by_pair: dict[str, list[tuple[float, float]]] = {}
    for bare, ours in results:
        by_pair.setdefault(ours.name, []).append((ours.rps / bare.rps, bare.cpu_us / max(ours.cpu_us, 1e-9)))
    if args.rounds > 1:
        lines.append("")
        lines.append("| pair | median ratio (req/s) | median ratio (CPU per request) | rounds |")
        lines.append("|---|---:|---:|---:|")
        for name, ratios in by_pair.items():
            rps = statistics.median(r for r, _ in ratios)
            cpu = statistics.median(c for _, c in ratios)
            lines.append(f"| {name} | **{rps:.0%}** | **{cpu:.0%}** | {len(ratios)} |")
    table = "\n".join(lines)
    print(table)
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{args.connections} connections, {args.threads} load threads, {args.duration} s per measurement, "
        f"access log {args.access_log}, {args.rounds} round(s)."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / "last-run.md").write_text(header + "\n\n" + table + "\n")
    print(f"\n{header}\n(table also in {args.out.parent / 'last-run.md'}; copy it into {args.out})")


if __name__ == "__main__":
    main()
