"""What the front proxy costs: unary gRPC through the gateway vs straight to the upstream, and REST through
the proxy vs the native REST GetVariable, side by side in one run.

    python bench/proxy.py [--duration 10] [--connections 64] [--rounds 3]

Two processes: an upstream (``bench.Echo/Say``, which answers the request's bytes: the upstream's own cost
is as small as a gRPC server's can be) and a gateway with that upstream in ``upstreams:`` (rate
limits counted on every call but never refusing, the access log on as shipped — ``--access-log off``
measures without it —, as bench/run.py). Each round measures, back to back:

- ``direct``: h2load on the upstream's port, ``/bench.Echo/Say``;
- ``proxied``: h2load on the gateway's gRPC port, the same call with a gateway key;
- ``native REST``: wrk on the gateway's ``GET /v1/rooms/{room}/variables/{name}`` (memory backend);
- ``proxied REST``: wrk on the gateway's auto-mapped ``POST /bench.Echo/Say`` (JSON → upstream → JSON).

Targets (issue 15): proxied ≥ 70% of direct, proxied REST ≥ 60% of native REST. Needs ``h2load`` and
``wrk`` (Debian: ``apt-get install nghttp2-client wrk``). Compare the ratios of one run, not figures
across runs (bench/RESULTS.md: the machine varies).

    python bench/proxy.py serve-upstream PORT     # the upstream, on its own
    python bench/proxy.py instructions [--calls 2000] [--only grpc|rest] [--keep DIR]   # instructions a call
    python bench/proxy.py cpu [--duration 5] [--rounds 2]             # CPU a call, per process (see below)

Every mode takes ``--upstream grpclib|node|cpp``: the upstream is a grpclib server (the default, the one
issue 15 names), nice-grpc over @grpc/grpc-js on Node (the stack of WorkAdventure's Room API server, the
real drop-in case; bench/node, its npm packages installed by the bench with ``npm ci``) or gRPC C++'s
callback server (bench/cpp, built by the bench with g++ against Debian's ``libgrpc++-dev``: the upstream
whose own CPU per call is smallest, so the ratios are nearest the gateway's own), each answering the
request's bytes. On two cores the upstream's CPU is taken from the gateway's: with the grpclib upstream a
proxied REST call's ratio says more about grpclib's cost than about the proxy's.

``instructions`` counts what each process spends per call (``valgrind --tool=callgrind``, counting on only
while h2load sends ``--calls`` calls on 8 connections after a warm-up, as bench/instructions.py does): the
upstream called directly; the gateway and the upstream during proxied gRPC calls; the gateway (and the
upstream) during native and proxied REST calls; and h2load itself (its count for ``2 * calls`` minus its
count for ``calls``, so that its start-up cancels out). These are the figures of the model in
bench/RESULTS.md: on two cores, with each server one event loop, the proxied rate is bounded by the
gateway's core and by the two cores shared by all three processes.

``cpu`` runs the loads of the clock mode (h2load direct and proxied, wrk on the native REST GET and on the
proxied REST call; ``--connections`` connections) and reads what each process spent on them: user and
system CPU (``/proc/<pid>/stat``; the load generator's, as ``client``, from its ``wait4`` usage), read and
write system calls (``/proc/<pid>/io``) and context switches (``/proc/<pid>/status``), each per call. CPU
per call does not count the time a process waits for a core, so it means something on a loaded machine
too, where req/s does not; and unlike instructions it has the kernel's share. The model of
``instructions`` is then printed with CPU-µs in place of instructions, for gRPC and for REST.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from instructions import instrument
from run import KEY, VAR_PATH, Proc, Result, free_port, gateway_config, h2load_failed, seed, wait_port, wrk

PROTO = """\
syntax = "proto3";
package bench;
message Msg {
  string room = 1;
  string text = 2;
}
service Echo {
  rpc Say(Msg) returns (Msg);
}
"""
#: The gateway's upstream, after bench/run.py's gateway configuration (access log off).
UPSTREAM = """\
upstreams:
  - name: bench
    url: "grpc://127.0.0.1:{upstream}"
    protos: ["bench.proto"]
    metadata: {{x-api-key: "bench-upstream-key"}}
    room_field: room
"""
#: The request of every call: Msg{room: "bench-room", text: "hello"}, as protobuf writes it.
REQUEST = b"\n\nbench-room\x12\x05hello"
SAY = "/bench.Echo/Say"
#: wrk's script of the proxied REST call: ``POST /bench.Echo/Say`` with the request as JSON.
POST_LUA = (
    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    f"wrk.body = {json.dumps(json.dumps({'room': 'bench-room', 'text': 'hello'}))}\n"
)
#: What may serve bench.Echo/Say (``--upstream``): grpclib, the issue's, is the default.
UPSTREAMS = ("grpclib", "node", "cpp")


def serve_upstream(port: int) -> None:
    """A grpclib server whose ``bench.Echo/Say`` answers the request's bytes."""
    import uvloop
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server, Stream

    from gateway.rpc.wire import RawCodec, RawMessage

    class Echo:
        def __mapping__(self) -> dict[str, Handler]:
            return {SAY: Handler(self.say, Cardinality.UNARY_UNARY, RawMessage, RawMessage)}

        async def say(self, stream: Stream[Any, Any]) -> None:
            await stream.send_message(await stream.recv_message())

    async def run() -> None:
        server = Server([Echo()], codec=RawCodec())
        await server.start("127.0.0.1", port)
        await server.wait_closed()

    uvloop.run(run())


NODE_DIR = Path(__file__).resolve().parent / "node"
CPP_DIR = Path(__file__).resolve().parent / "cpp"


def cpp_upstream() -> Path:
    """bench/cpp/echo_server.cc built into bench/cpp/build/ (again when the source is newer)."""
    source, binary = CPP_DIR / "echo_server.cc", CPP_DIR / "build" / "echo_server"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    compiler, pkg_config = shutil.which("g++"), shutil.which("pkg-config")
    flags = None
    if pkg_config is not None:
        found = subprocess.run([pkg_config, "--cflags", "--libs", "grpc++"], capture_output=True, text=True)
        flags = found.stdout.split() if found.returncode == 0 else None
    if compiler is None or flags is None:
        raise SystemExit(
            "--upstream cpp needs g++ and gRPC C++ (Debian: apt-get install g++ pkg-config libgrpc++-dev)"
        )
    binary.parent.mkdir(exist_ok=True)
    subprocess.run(
        [compiler, "-std=c++17", "-O2", "-o", str(binary), str(source), *flags], check=True, timeout=600
    )
    return binary


def upstream_command(kind: str) -> list[str]:
    """The argv of an upstream serving ``bench.Echo/Say`` (its port appended): ``grpclib`` (the default,
    the issue's); ``node`` — nice-grpc over @grpc/grpc-js, WorkAdventure's Room API stack — whose npm
    packages are installed into bench/node/node_modules from its package-lock.json (``npm ci``) once; or
    ``cpp`` — gRPC C++'s callback server, compiled once (:func:`cpp_upstream`)."""
    if kind == "grpclib":
        return [sys.executable, __file__, "serve-upstream"]
    if kind == "cpp":
        return [str(cpp_upstream())]
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("--upstream node needs node and npm")
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600)
    return [node, str(NODE_DIR / "server.mjs")]


def h2load_warmed(
    port: int, args: argparse.Namespace, headers: dict[str, str], tmp: Path
) -> tuple[list[str], str]:
    """h2load's argv (but its duration) and URL for ``bench.Echo/Say`` at ``port``, after a 2 s warm-up."""
    body = tmp / "req.bin"
    body.write_bytes(struct.pack(">?I", False, len(REQUEST)) + REQUEST)
    argv = ["h2load", "-c", str(args.connections), "-m", "1", "-t", str(args.threads), "-d", str(body)]
    argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    url = f"http://127.0.0.1:{port}{SAY}"
    subprocess.run([*argv, "-D", "2", url], capture_output=True, check=True)
    return argv, url


def h2load(name: str, port: int, args: argparse.Namespace, headers: dict[str, str]) -> Result:
    """h2load on ``bench.Echo/Say`` at ``port``."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.tsv"
        base, url = h2load_warmed(port, args, headers, Path(tmp))
        out = subprocess.run(
            [*base, "-D", str(args.duration), "--log-file", str(log), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
        failed = h2load_failed(out)
        times = [int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line]
        p99 = statistics.quantiles(times, n=100)[98] if len(times) > 100 else max(times)
        return Result(name, rps, p99, failed)


def check(grpc: int, http: int) -> None:
    """Real calls first: h2load and wrk count HTTP statuses, so prove the answers are right."""
    import urllib.request

    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from gateway.rpc.wire import RawCodec, RawMessage

    async def call() -> None:
        channel = Channel("127.0.0.1", grpc, codec=RawCodec())
        try:
            async with channel.request(
                SAY, Cardinality.UNARY_UNARY, RawMessage, RawMessage, metadata={"x-api-key": KEY}
            ) as stream:
                await stream.send_message(RawMessage(REQUEST), end=True)
                assert await stream.recv_message() == REQUEST
        finally:
            channel.close()

    asyncio.run(call())
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}{SAY}",
        data=json.dumps({"room": "bench-room", "text": "hello"}).encode(),
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    assert json.loads(urllib.request.urlopen(request).read()) == {"room": "bench-room", "text": "hello"}
    seed(http)


class Counted:
    """A process run under callgrind, counting only between :meth:`on` and :meth:`off`."""

    #: ``--cache-sim=yes`` with ``instructions --cache-sim``: callgrind simulates the caches too.
    options: ClassVar[list[str]] = []

    def __init__(self, argv: list[str], out: Path) -> None:
        self.out = out
        #: Every event counted (``Ir``; with the cache simulation ``I1mr``, ``D1mr``, ``DLmr``…).
        self.events: dict[str, int] = {}
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", *self.options]
        self.proc = subprocess.Popen(
            [*valgrind, f"--callgrind-out-file={out}", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def on(self) -> None:
        instrument(self.proc, True)  # type: ignore[arg-type]  # any Popen

    def off(self) -> None:
        instrument(self.proc, False)  # type: ignore[arg-type]

    def total(self, keep: Path | None = None, name: str = "") -> int:
        """Stop the process; the instructions counted (its callgrind output copied to ``keep/name.out``)."""
        self.proc.terminate()
        self.proc.wait(120)
        if keep is not None:
            shutil.copy(self.out, keep / f"{re.sub(r'[^a-z]+', '-', name.lower()).strip('-')}.out")
        text = self.out.read_text()
        names = re.search(r"^events: (.*)$", text, re.MULTILINE)
        found = re.search(r"^totals: (.*)$", text, re.MULTILINE)
        assert names is not None and found is not None, "no totals in the callgrind output"
        self.events = dict(zip(names.group(1).split(), map(int, found.group(1).split()), strict=False))
        if self.options:
            misses.append((name, self.events))
        return self.events["Ir"]


#: Each counted process's events, by its name (printed per call with ``--cache-sim``).
misses: list[tuple[str, dict[str, int]]] = []


def _h2load_argv(
    url: str, calls: int, body: Path | None, headers: dict[str, str], h1: bool, connections: int = 8
) -> list[str]:
    argv = [
        "h2load",
        "-n",
        str(calls),
        "-c",
        str(connections),
        *(["-d", str(body)] if body is not None else []),
    ]
    argv += ["--h1"] if h1 else ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    return [*argv, url]


def _run_h2load(argv: list[str], calls: int) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    succeeded = re.search(r"(\d+) succeeded", out)
    assert succeeded and int(succeeded.group(1)) == calls, out


def count_calls(
    servers: list[Counted],
    url: str,
    calls: int,
    body: Path | None,
    headers: dict[str, str],
    h1: bool = False,
    connections: int = 8,
) -> None:
    """A warm-up, then ``calls`` calls counted in every one of ``servers``."""
    _run_h2load(_h2load_argv(url, 300, body, headers, h1, connections), 300)
    for server in servers:
        server.on()
    _run_h2load(_h2load_argv(url, calls, body, headers, h1, connections), calls)
    for server in servers:
        server.off()


def h2load_instructions(
    url: str, calls: int, body: Path, headers: dict[str, str], tmp: Path, connections: int = 8
) -> float:
    """h2load's own instructions per call (``2 * calls`` minus ``calls``: its start-up cancels out)."""
    totals = []
    for n in (calls, 2 * calls):
        out = tmp / f"h2load.{n}.out"
        argv = _h2load_argv(url, n, body, headers, False, connections)
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
            capture_output=True,
            check=True,
        )
        found = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        assert found is not None
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / calls


def instructions(
    calls: int,
    only: str | None = None,
    upstream_kind: str = "grpclib",
    keep: Path | None = None,
    connections: int = 8,
) -> None:
    """Instructions per call of each process (module docstring); ``only``: ``grpc``, the proxied gRPC call
    alone (the gateway and the upstream), a quicker count while working on the gateway's gRPC side, or
    ``rest``, the native REST GET and the proxied REST call alone (the REST proxy path's);
    ``connections``: h2load's (the clock mode's 64 batch more calls per turn of the event loops)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        grpc_body = tmp / "req.bin"
        grpc_body.write_bytes(struct.pack(">?I", False, len(REQUEST)) + REQUEST)
        json_body = tmp / "req.json"
        json_body.write_text(json.dumps({"room": "bench-room", "text": "hello"}))
        (tmp / "bench.proto").write_text(PROTO)
        upstream_argv = upstream_command(upstream_kind)
        figures: dict[str, float] = {}

        if only is None:
            port = free_port()
            direct = Counted([*upstream_argv, str(port)], tmp / "direct.out")
            wait_port(port, 300)
            url = f"http://127.0.0.1:{port}{SAY}"
            count_calls([direct], url, calls, grpc_body, {}, connections=connections)
            figures["h2load, per gRPC call"] = h2load_instructions(
                url, calls, grpc_body, {}, tmp, connections
            )
            figures["upstream, called directly"] = direct.total(keep, "upstream direct") / calls

        config = tmp / "gateway.yaml"
        gateway_argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        key = {"x-api-key": KEY}

        def counted_pair() -> tuple[Counted, Counted, int, int]:
            """A counted upstream and a counted gateway in front of it, seeded: both, and the gateway's
            HTTP and gRPC ports."""
            port, http, grpc = free_port(), free_port(), free_port()
            config.write_text(
                gateway_config(http, grpc, access_log=False, extra=UPSTREAM.format(upstream=port))
            )
            upstream = Counted([*upstream_argv, str(port)], tmp / "upstream.out")
            wait_port(port, 300)
            gateway = Counted([*gateway_argv, "--log-level", "warning"], tmp / "gateway.out")
            wait_port(grpc, 300)
            wait_port(http, 300)
            seed(http)
            return gateway, upstream, http, grpc

        if only != "rest":
            gateway, upstream, http, grpc = counted_pair()
            url = f"http://127.0.0.1:{grpc}{SAY}"
            count_calls([gateway, upstream], url, calls, grpc_body, key, connections=connections)
            figures["gateway, proxied gRPC"] = gateway.total(keep, "gateway proxied gRPC") / calls
            figures["upstream, proxied gRPC"] = upstream.total(keep, "upstream proxied gRPC") / calls

        rest = [("native REST GET", VAR_PATH, None), ("proxied REST POST", SAY, json_body)]
        for name, path, body in [] if only == "grpc" else rest:
            gateway, upstream, http, grpc = counted_pair()
            headers = {**key, **({"content-type": "application/json"} if body else {})}
            url = f"http://127.0.0.1:{http}{path}"
            count_calls([gateway, upstream], url, calls, body, headers, h1=True, connections=connections)
            figures[f"gateway, {name}"] = gateway.total(keep, f"gateway {name}") / calls
            figures[f"upstream, {name}"] = upstream.total(keep, f"upstream {name}") / calls
    for name, value in figures.items():
        print(f"{name}: {value / 1000:,.1f}k instructions a call", flush=True)
    for name, events in misses if Counted.options else ():
        per_call = {key: value / calls for key, value in events.items()}
        data = per_call.get("D1mr", 0) + per_call.get("D1mw", 0)
        last = per_call.get("ILmr", 0) + per_call.get("DLmr", 0) + per_call.get("DLmw", 0)
        print(
            f"{name}: a call's L1 misses, instructions {per_call.get('I1mr', 0):,.0f}, data {data:,.0f}; "
            f"last-level {last:,.0f} (simulated)"
        )


@dataclasses.dataclass(frozen=True)
class Usage:
    """What a process has spent so far: CPU seconds, system calls, context switches."""

    user: float
    system: float
    reads: int = 0
    writes: int = 0
    voluntary: int = 0
    involuntary: int = 0
    #: CPU seconds of the threads but the main one (the event loop's)
    threads: float = 0.0

    @classmethod
    def of(cls, pid: int) -> Usage:
        """A running process's (Linux ``/proc``; every thread's CPU and I/O, the main thread's switches)."""
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        main = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        return cls(
            int(stat[11]) / tick,
            int(stat[12]) / tick,
            int(io["syscr"]),
            int(io["syscw"]),
            int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]),
            (int(stat[11]) + int(stat[12]) - int(main[11]) - int(main[12])) / tick,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            *(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True))
        )


def client_usage(argv: list[str], tmp: Path) -> tuple[str, Usage]:
    """Run a load generator; its output, and its own usage (``wait4``: no system call counts)."""
    out_path = tmp / "out.txt"
    with out_path.open("w") as out_file:
        proc = subprocess.Popen(argv, stdout=out_file)
        _, status, usage = os.wait4(proc.pid, 0)
    out = out_path.read_text()
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out, Usage(usage.ru_utime, usage.ru_stime, voluntary=usage.ru_nvcsw, involuntary=usage.ru_nivcsw)


def h2load_usage(port: int, args: argparse.Namespace, headers: dict[str, str]) -> tuple[int, float, Usage]:
    """h2load on ``bench.Echo/Say`` at ``port`` (after a warm-up): the calls that succeeded, req/s, and
    h2load's own usage."""
    with tempfile.TemporaryDirectory() as tmp:
        argv, url = h2load_warmed(port, args, headers, Path(tmp))
        out, own = client_usage([*argv, "-D", str(args.duration), url], Path(tmp))
        calls = int(re.search(r"(\d+) succeeded", out).group(1))  # type: ignore[union-attr]
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
        return calls, rps, own


def wrk_usage(url: str, args: argparse.Namespace, lua: str | None) -> tuple[int, float, Usage]:
    """wrk on ``url`` with the bench key (after a warm-up), as :func:`h2load_usage`."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "-H", f"X-API-Key: {KEY}"]
        if lua:
            (Path(tmp) / "post.lua").write_text(lua)
            argv += ["-s", str(Path(tmp) / "post.lua")]
        subprocess.run([*argv, "-d2s", url], capture_output=True, check=True)  # warm-up
        out, own = client_usage([*argv, f"-d{args.duration}s", url], Path(tmp))
        assert "Non-2xx" not in out, out
        calls = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return calls, rps, own


def measured(
    load: Callable[[], tuple[int, float, Usage]], servers: dict[str, Proc]
) -> tuple[int, float, dict[str, Usage]]:
    """One load, and what each of ``servers`` and the load generator (``client``) spent on it."""
    before = {name: Usage.of(proc.p.pid) for name, proc in servers.items()}
    calls, rps, own = load()
    spent = {name: Usage.of(proc.p.pid) - before[name] for name, proc in servers.items()}
    return calls, rps, {**spent, "client": own}


def log_level(args: argparse.Namespace) -> list[str]:
    """The gateway's ``--log-level``: the shipped ``info`` with the access log on (its lines are INFO), else
    ``warning`` (no start-up lines either)."""
    return [] if args.access_log == "on" else ["--log-level", "warning"]


def cpu(args: argparse.Namespace) -> None:
    """The ``cpu`` mode (module docstring)."""
    rows: list[tuple[int, str, int, float, dict[str, Usage]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        upstream, http, grpc = free_port(), free_port(), free_port()
        (Path(tmp) / "bench.proto").write_text(PROTO)
        config = Path(tmp) / "gateway.yaml"
        config.write_text(
            gateway_config(
                http, grpc, access_log=args.access_log == "on", extra=UPSTREAM.format(upstream=upstream)
            )
        )
        up = Proc([*upstream_command(args.upstream), str(upstream)])
        procs = [up]
        try:
            wait_port(upstream)
            command = ["-m", "gateway", "serve", "--config", str(config), *log_level(args)]
            gw = Proc([sys.executable, *command])
            procs.append(gw)
            wait_port(http)
            wait_port(grpc)
            check(grpc, http)
            both = {"gateway": gw, "upstream": up}
            native_url, say_url = f"http://127.0.0.1:{http}{VAR_PATH}", f"http://127.0.0.1:{http}{SAY}"
            loads: list[tuple[str, Callable[[], tuple[int, float, Usage]], dict[str, Proc]]] = [
                ("direct", lambda: h2load_usage(upstream, args, {}), {"upstream": up}),
                ("proxied", lambda: h2load_usage(grpc, args, {"x-api-key": KEY}), both),
                ("native REST", lambda: wrk_usage(native_url, args, None), {"gateway": gw}),
                ("proxied REST", lambda: wrk_usage(say_url, args, POST_LUA), both),
            ]
            for n in range(1, args.rounds + 1):
                for name, run, servers in loads:
                    rows.append((n, name, *measured(run, servers)))
        finally:
            for proc in reversed(procs):
                proc.stop()
    lines = [
        "| round | load | req/s | process | user µs/call | system µs/call | CPU µs/call | reads/call | "
        "writes/call | voluntary / involuntary switches/call | other threads µs/call |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    per_call: dict[tuple[str, str], list[float]] = {}
    for n, load, calls, rps, usages in rows:
        for name, u in usages.items():
            total = (u.user + u.system) / calls * 1e6
            per_call.setdefault((load, name), []).append(total)
            io = f"{u.reads / calls:.2f} | {u.writes / calls:.2f}" if name != "client" else "— | —"
            lines.append(
                f"| {n} | {load} | {rps:,.0f} | {name} | {u.user / calls * 1e6:.1f} | "
                f"{u.system / calls * 1e6:.1f} | {total:.1f} | {io} | "
                f"{u.voluntary / calls:.2f} / {u.involuntary / calls:.2f} | {u.threads / calls * 1e6:.1f} |"
            )
    print("\n".join(lines))
    median = {key: statistics.median(values) for key, values in per_call.items()}
    rates = {(n, load): rps for n, load, _, rps, _ in rows}
    for title, (base, on) in {
        "unary gRPC": ("direct", "proxied"),
        "REST": ("native REST", "proxied REST"),
    }.items():
        alone = median[base, "upstream" if base == "direct" else "gateway"]
        c_gw, c_up, c_client = median[on, "gateway"], median[on, "upstream"], median[on, "client"]
        limits = (alone / c_gw, alone / c_up, 2 * alone / (c_gw + c_up + c_client))
        measured_ratios = ", ".join(f"{rates[n, on] / rates[n, base]:.1%}" for n in range(1, args.rounds + 1))
        print(
            f"\n{title}, the model by CPU-µs a call (medians): {base} {alone:.1f}; {on}: gateway {c_gw:.1f}, "
            f"upstream {c_up:.1f}, client {c_client:.1f} → min({limits[0]:.1%}, {limits[1]:.1%}, "
            f"{limits[2]:.1%}) = {min(limits):.1%}; measured {on}/{base} req/s: {measured_ratios}"
        )


def main() -> None:
    if sys.argv[1:2] == ["serve-upstream"]:
        serve_upstream(int(sys.argv[2]))
        return
    if sys.argv[1:2] == ["instructions"]:
        counting = argparse.ArgumentParser(prog="proxy.py instructions")
        counting.add_argument("--calls", type=int, default=2000)
        counting.add_argument(
            "--only", choices=["grpc", "rest"], help="the proxied gRPC call, or the two REST calls, alone"
        )
        counting.add_argument("--upstream", choices=UPSTREAMS, default="grpclib")
        counting.add_argument(
            "--keep", type=Path, help="copy each process's callgrind output into this folder"
        )
        counting.add_argument("--connections", type=int, default=8, help="h2load's connections")
        counting.add_argument("--cache-sim", action="store_true", help="simulate the caches too (slower)")
        counting.add_argument(
            "--last-level", type=int, help="--cache-sim: the simulated last level's bytes (e.g. a core's L2)"
        )
        options = counting.parse_args(sys.argv[2:])
        if options.keep is not None:
            options.keep.mkdir(parents=True, exist_ok=True)
        if options.cache_sim:
            Counted.options = ["--cache-sim=yes"]
            if options.last_level:  # callgrind simulates two levels: L1 and this one (default: the host's L3)
                Counted.options.append(f"--LL={options.last_level},16,64")
        instructions(
            options.calls,
            only=options.only,
            upstream_kind=options.upstream,
            keep=options.keep,
            connections=options.connections,
        )
        return
    measuring_cpu = sys.argv[1:2] == ["cpu"]
    parser = argparse.ArgumentParser(prog="proxy.py cpu" if measuring_cpu else None)
    parser.add_argument("--duration", type=int, default=5 if measuring_cpu else 10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2 if measuring_cpu else 3)
    parser.add_argument("--upstream", choices=UPSTREAMS, default="grpclib", help="what serves bench.Echo/Say")
    parser.add_argument(
        "--access-log",
        choices=("on", "off"),
        default="on",
        help="the gateway's access log (default on, as shipped; its lines go to this script's stderr)",
    )
    args = parser.parse_args(sys.argv[2:] if measuring_cpu else sys.argv[1:])
    if measuring_cpu:
        cpu(args)
        return
    for tool in ("h2load", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install nghttp2-client wrk")
    rounds: list[dict[str, Result]] = []
    with tempfile.TemporaryDirectory() as tmp:
        upstream, http, grpc = free_port(), free_port(), free_port()
        (Path(tmp) / "bench.proto").write_text(PROTO)
        config = Path(tmp) / "gateway.yaml"
        upstreams = UPSTREAM.format(upstream=upstream)
        config.write_text(gateway_config(http, grpc, access_log=args.access_log == "on", extra=upstreams))
        procs = [Proc([*upstream_command(args.upstream), str(upstream)])]
        try:
            wait_port(upstream)
            command = ["-m", "gateway", "serve", "--config", str(config), *log_level(args)]
            procs.append(Proc([sys.executable, *command]))
            wait_port(http)
            wait_port(grpc)
            check(grpc, http)
            lua = POST_LUA
            for _ in range(args.rounds):
                rounds.append(
                    {
                        "direct": h2load("direct", upstream, args, {}),
                        "proxied": h2load("proxied", grpc, args, {"x-api-key": KEY}),
                        "native REST": wrk(
                            "native REST",
                            f"http://127.0.0.1:{http}{VAR_PATH}",
                            args,
                            headers={"X-API-Key": KEY},
                            lua=None,
                        ),
                        "proxied REST": wrk(
                            "proxied REST",
                            f"http://127.0.0.1:{http}{SAY}",
                            args,
                            headers={"X-API-Key": KEY},
                            lua=lua,
                        ),
                    }
                )
        finally:
            for proc in reversed(procs):
                proc.stop()
    report(rounds, args)


def report(rounds: list[dict[str, Result]], args: argparse.Namespace) -> None:
    lines = [
        "| round | direct gRPC | proxied gRPC | proxied/direct | native REST GET | proxied REST | "
        "proxied REST/native | p99 direct / proxied / native / proxied REST | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for i, r in enumerate(rounds, 1):
        d, p, n, pr = r["direct"], r["proxied"], r["native REST"], r["proxied REST"]
        lines.append(
            f"| {i} | {d.rps:,.0f} | {p.rps:,.0f} | {p.rps / d.rps:.1%} | {n.rps:,.0f} | {pr.rps:,.0f} | "
            f"{pr.rps / n.rps:.1%} | {d.p99_ms:.1f} / {p.p99_ms:.1f} / {n.p99_ms:.1f} / {pr.p99_ms:.1f} ms | "
            f"{d.errors + p.errors + n.errors + pr.errors} |"
        )
    grpc_ratio = statistics.median(r["proxied"].rps / r["direct"].rps for r in rounds)
    rest_ratio = statistics.median(r["proxied REST"].rps / r["native REST"].rps for r in rounds)
    print("\n".join(lines))
    print(
        f"\nmedian proxied/direct gRPC: {grpc_ratio:.1%} (target ≥ 70%); median proxied REST/native REST "
        f"GetVariable: {rest_ratio:.1%} (target ≥ 60%); {args.connections} connections, {args.threads} "
        f"threads, {args.duration} s per measurement, {args.upstream} upstream, access log {args.access_log}"
    )


if __name__ == "__main__":
    main()
