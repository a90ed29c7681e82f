"""Instructions per call, counted by valgrind: a measure that does not move with the load of the machine
(req/s and even CPU time do, on a shared 2-core box). Three views:

    .venv/bin/python bench/instructions.py inproc [--calls 300] [--log] [--no-limit]
    .venv/bin/python bench/instructions.py http [--calls 1500] [--tracing] [--rounds 3]  # REST GET, HTTP/1.1
    .venv/bin/python bench/instructions.py grpc [--calls 800]     # gRPC GetVariable (h2load)
    .venv/bin/python bench/instructions.py grpc --only "access log off" --only "writes coalesced" --no-bare
    .venv/bin/python bench/instructions.py grpc-inproc [--calls 1000]  # the gRPC limits alone, in-process

``inproc`` runs ``bench/inproc.py``'s ASGI calls (memory backend, an API key, a counted never-refusing
per-IP limit) beside the bare Starlette app of ``bench/peers.py``. ``http`` and ``grpc`` run the real server
processes — the bare peer, and ``room-gateway serve`` with the shipped defaults (access log on, the counted
limit), with the access log off, and with neither (``http``), or with grpclib's own HTTP/2 protocol instead
of the gRPC limits (``grpc``: ``bench/grpc_limits.py serve-unlimited``), as it is and with the guarded
protocol's write coalescing (``--coalesced``: then only the limits differ); ``--tracing`` adds the shipped
defaults with ``tracing: {enabled: true}`` (needs ``room-gateway[otel]``; spans exported over OTLP/HTTP to
a collector stand-in in this process that answers 200, so the export's encoding and posting count), and
``--sample-ratio 0.1`` (repeatable) the same with ``tracing.sample_ratio`` — under
``valgrind --tool=callgrind``, instrumentation on only while h2load sends ``--calls`` calls on 8 connections
after a warm-up (``callgrind_control``). Needs ``valgrind`` and ``h2load`` (Debian: ``apt-get install valgrind
nghttp2-client``). Instructions are a proxy for time, not a substitute: a system call is one instruction
here and microseconds on the clock (so the one ``send()`` a response the gateway makes, against the bare
peers' two or three, does not show).

``grpc-inproc`` counts what the gRPC limits cost with nothing else moving: GetVariable calls handed to one
connection's protocol in one process, no socket and no load generator (``bench/grpc_limits.py
inproc-child``), the guarded protocol against grpclib's with the same write coalescing, with
``PYTHONHASHSEED=0``. Served counts move by some ±0.5% between runs (how the loop's turns fall under
h2load); these repeat to about ±0.1%.
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from run import COUNTED_LIMIT, KEY, VAR_PATH, free_port, gateway_config, grpc_frame, wait_port
from run import seed as run_seed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("view", choices=("inproc", "http", "grpc", "grpc-inproc"))
    parser.add_argument("--calls", type=int)
    parser.add_argument("--log", action="store_true", help="inproc: the access log on")
    parser.add_argument("--no-limit", action="store_true", help="inproc: no rate limit")
    parser.add_argument("--tracing", action="store_true", help="http, grpc: a row with tracing on")
    parser.add_argument(
        "--sample-ratio",
        type=float,
        action="append",
        default=[],
        help="http, grpc: a row with tracing on at this tracing.sample_ratio (repeatable)",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="http, grpc: only the configurations naming this"
    )
    parser.add_argument("--no-bare", action="store_true", help="http, grpc: no bare peer (ratios left out)")
    parser.add_argument("--rounds", type=int, default=1, help="http, grpc: times each (median)")
    parser.add_argument(
        "--keep", type=Path, help="keep each run's callgrind output in this directory (callgrind_annotate)"
    )
    args = parser.parse_args()
    global KEEP, ROUNDS
    KEEP, ROUNDS = args.keep, args.rounds
    if args.view == "inproc":
        inproc(
            args.calls or 300, [*(["--log"] if args.log else []), *(["--no-limit"] if args.no_limit else [])]
        )
    elif args.view == "grpc-inproc":
        grpc_inproc(args.calls or 1000)
    else:
        served(
            args.view,
            args.calls or (1500 if args.view == "http" else 800),
            args.only,
            not args.no_bare,
            tracing=args.tracing,
            ratios=args.sample_ratio,
        )


#: Where each run's callgrind output is kept (``--keep``; ``None``: not kept).
KEEP: Path | None = None
#: How often each served configuration is counted (``--rounds``): the median is reported.
ROUNDS = 1

#: A bench gateway's tracing section (``--tracing``; ``--sample-ratio`` adds its ratio).
TRACING = "tracing:\n  enabled: true\n"


def inproc(calls: int, flags: list[str]) -> None:
    results = {
        (app, method): per_call(
            [sys.executable, str(HERE / "inproc.py"), "--child", app, method, str(calls), *flags],
            calls,
            _handshake,
        )
        for method in ("GET", "PUT")
        for app in ("bare", "gateway")
    }
    for method in ("GET", "PUT"):
        report(f"{method} in-process", results["bare", method], results["gateway", method])


def grpc_inproc(calls: int) -> None:
    counts = {
        protocol: per_call(
            [sys.executable, str(HERE / "grpc_limits.py"), "inproc-child", protocol, str(calls)],
            calls,
            _handshake,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict and set layouts every run
        )
        for protocol in ("plain", "guarded")
    }
    guarded, plain = counts["guarded"], counts["plain"]
    print(
        f"grpc GetVariable in-process: guarded protocol {guarded / 1000:,.1f}k instructions a call, grpclib's"
        f" protocol with writes coalesced {plain / 1000:,.1f}k (the limits {guarded / plain - 1:+.2%})",
        flush=True,
    )


def served(
    view: str,
    calls: int,
    only: list[str],
    bare_peer: bool,
    *,
    tracing: bool = False,
    ratios: Sequence[float] = (),
) -> None:
    # name: (rate limits, access log, the flags of `grpc_limits.py serve-unlimited` or None: the gateway,
    # extra configuration)
    variants: dict[str, tuple[str, bool, list[str] | None, str]] = {
        "shipped defaults": (COUNTED_LIMIT, True, None, ""),
        "access log off": (COUNTED_LIMIT, False, None, ""),
        **(
            {"access log and limits off": ("[]", False, None, "")}
            if view == "http"
            else {
                "limits off (grpclib's protocol), access log off": (COUNTED_LIMIT, False, [], ""),
                # Only the limits differ from "access log off": the guarded protocol coalesces writes too.
                "limits off (grpclib's protocol, writes coalesced), access log off": (
                    COUNTED_LIMIT,
                    False,
                    ["--coalesced"],
                    "",
                ),
            }
        ),
        **({"shipped defaults, tracing on": (COUNTED_LIMIT, True, None, TRACING)} if tracing else {}),
        **{
            f"shipped defaults, tracing on, sample_ratio {ratio}": (
                COUNTED_LIMIT,
                True,
                None,
                f"{TRACING}  sample_ratio: {ratio}\n",
            )
            for ratio in ratios
        },
    }
    if tracing or ratios:
        os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_collector()}")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        peer = "starlette" if view == "http" else "grpclib"
        bare = (
            per_call(
                [sys.executable, str(HERE / "peers.py"), peer, str(port)], calls, _load(view, port, {}, calls)
            )
            if bare_peer
            else None
        )
        for name, (limits, access_log, unlimited, extra) in variants.items():
            if only and not any(part in name for part in only):
                continue
            http, grpc = free_port(), free_port()
            config = Path(tmp) / "gateway.yaml"
            config.write_text(gateway_config(http, grpc, access_log=access_log, limits=limits, extra=extra))
            command = (
                [str(HERE / "grpc_limits.py"), "serve-unlimited", str(config), *unlimited]
                if unlimited is not None
                else ["-m", "gateway", "serve", "--config", str(config)]
            )
            target = http if view == "http" else grpc
            load = _load(view, target, {"x-api-key": KEY}, calls, seed=http)
            counts = sorted(per_call([sys.executable, *command], calls, load) for _ in range(ROUNDS))
            if len(counts) > 1:  # rows move by a few k (the log writer's wake-ups follow the clock)
                print(f"({name}: rounds {', '.join(f'{c / 1000:,.1f}k' for c in counts)})", flush=True)
            report(f"{view} GetVariable, {name}", bare, counts[len(counts) // 2])


def _collector() -> int:
    """A stand-in OTLP/HTTP collector on a thread of this process: takes every export, answers 200."""

    class Accept(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def per_call(
    argv: list[str],
    calls: int,
    run: Callable[[subprocess.Popen[str]], None],
    *,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> float:
    """Instructions per call of the process ``argv`` (run in ``cwd``, with ``env`` or this one's) while
    ``run(process)`` makes ``calls`` calls between :func:`instrument` on and off."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=cwd,
            env=env,
        )
        try:
            run(process)
        finally:
            if process.stdin:
                process.stdin.close()
            process.terminate()
            process.wait(120)
        text = out.read_text()
        if KEEP is not None:
            KEEP.mkdir(parents=True, exist_ok=True)
            name = Path(argv[1] if len(argv) > 1 else argv[0]).stem  # the script, or "-m"
            kept = KEEP / f"{len(list(KEEP.glob('*.out'))):02d}{name}.out"
            kept.write_text(text)
            print(f"(callgrind output: {kept})", flush=True)
        totals = re.search(r"^totals: (\d+)", text, re.MULTILINE)
        assert totals is not None, "no totals in the callgrind output"
        return int(totals.group(1)) / calls


def instrument(process: subprocess.Popen[str], on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(process.pid)], check=True, capture_output=True
    )


def _handshake(process: subprocess.Popen[str]) -> None:
    """bench/inproc.py --child: "ready", then the calls when told, then "done"."""
    assert process.stdin is not None and process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    instrument(process, True)
    process.stdin.write("go\n")
    process.stdin.flush()
    assert process.stdout.readline().strip() == "done"
    instrument(process, False)


def _load(
    view: str, port: int, headers: dict[str, str], calls: int, seed: int | None = None
) -> Callable[[subprocess.Popen[str]], None]:
    """h2load against a server on ``port``: a warm-up, then ``calls`` counted calls on 8 connections."""

    def run(process: subprocess.Popen[str]) -> None:
        wait_port(port, 300)
        if seed is not None or view == "http":  # the grpclib peer answers a fixed value
            run_seed(seed or port)
        with tempfile.TemporaryDirectory() as tmp:
            options = ["-c", "8"]
            for name, value in headers.items():
                options += ["-H", f"{name}: {value}"]
            if view == "http":
                options += ["--h1"]
                url = f"http://127.0.0.1:{port}{VAR_PATH}"
            else:
                body = Path(tmp) / "request.bin"
                body.write_bytes(grpc_frame())
                options += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
                url = f"http://127.0.0.1:{port}/roomgateway.v1.RoomService/GetVariable"
            subprocess.run(["h2load", "-n", "300", *options, url], capture_output=True, check=True)
            instrument(process, True)
            done = subprocess.run(
                ["h2load", "-n", str(calls), *options, url], capture_output=True, text=True, check=True
            )
            instrument(process, False)
        succeeded = re.search(r"(\d+) succeeded", done.stdout)
        assert succeeded and int(succeeded.group(1)) == calls, done.stdout

    return run


def report(what: str, bare: float | None, ours: float) -> None:
    peer = "" if bare is None else f", bare peer {bare / 1000:,.1f}k (ratio {bare / ours:.0%})"
    print(f"{what}: gateway {ours / 1000:,.1f}k instructions a call{peer}", flush=True)


if __name__ == "__main__":
    main()
