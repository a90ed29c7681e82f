"""What the gRPC port's limits cost: GetVariable throughput with them and without them, side by side.

    python bench/grpc_limits.py [--duration 10] [--connections 64] [--rounds 3]

Two gateway processes on one configuration: ``room-gateway serve`` (the limits of ``grpc:``, defaults but
for new connections per IP, raised so that h2load's connections all get in), and the same gateway with
grpclib's own HTTP/2 protocol (``create_grpc_server(limits=None)``: no stream, reset, control-frame or
header-block limits, no message-size check; malformed messages are still refused by the codec). h2load calls
GetVariable on each in turn, ``--rounds`` times, so that drift on a shared machine falls on both; the table
gives each round and the median ratio. Needs ``h2load`` (Debian: ``apt-get install nghttp2-client``).

    python bench/grpc_limits.py serve-unlimited CONFIG    # the second gateway, on its own
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

from run import KEY, Proc, Result, free_port, grpc_check, h2load, wait_port

CONFIG = """\
listen: {{http: "127.0.0.1:{http}", grpc: "127.0.0.1:{grpc}"}}
backend: "memory://"
rate_limits:
  limits: [{{by: ip, limit: "1000000/second"}}]   # counted on every call, never refusing one
grpc:
  new_connections_per_ip: "1000000/second"       # h2load opens all its connections at once
access_log: false
auth:
  keys:
    - {{name: bench, key: "{key}", permissions: ["*"]}}
"""


def serve_unlimited(config_path: str) -> None:
    """``room-gateway serve``, with grpclib's own protocol on the gRPC listener."""
    import uvloop

    from gateway.app import create_gateway
    from gateway.config_loader import load_config
    from gateway.rpc.server import create_grpc_server, keepalive_config
    from gateway.server import serve

    config = load_config(config_path)

    async def run() -> None:
        gateway = create_gateway(config)
        unlimited = create_grpc_server(
            gateway.dispatcher,
            ready=gateway.backend.check,
            config=keepalive_config(config.grpc.keepalive_seconds, config.grpc.keepalive_timeout_seconds),
            limiter=gateway.limiter,
            access_log=config.access_log,
            limits=None,
        )
        await serve(dataclasses.replace(gateway, grpc_server=unlimited))

    uvloop.run(run())


def main() -> None:
    if sys.argv[1:2] == ["serve-unlimited"]:
        serve_unlimited(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")
    results: list[tuple[Result, Result]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ports = {"on": (free_port(), free_port()), "off": (free_port(), free_port())}
        procs = {}
        for name, (http, grpc) in ports.items():
            config = Path(tmp) / f"{name}.yaml"
            config.write_text(textwrap.dedent(CONFIG).format(http=http, grpc=grpc, key=KEY))
            if name == "on":
                command = ["-m", "gateway", "serve", "--config", str(config), "--log-level", "warning"]
            else:
                command = [__file__, "serve-unlimited", str(config)]
            procs[name] = Proc([sys.executable, *command])
        try:
            for http, grpc in ports.values():
                wait_port(http)
                wait_port(grpc)
            for http, _ in ports.values():
                seed(http)
            for _, grpc in ports.values():
                grpc_check(grpc, KEY)
            auth = {"x-api-key": KEY}
            for round_ in range(args.rounds):
                # Alternating which goes first, so that drift during a round falls on both alike.
                order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
                measured = {
                    name: h2load(f"limits {name}", ports[name][1], args, headers=auth, server=procs[name])
                    for name in order
                }
                results.append((measured["off"], measured["on"]))
        finally:
            for proc in procs.values():
                proc.stop()
    report(results, args)


def seed(http: int) -> None:
    """The bench variable, written over REST (as bench/run.py does)."""
    import json
    import urllib.request

    from run import VALUE, VAR_PATH

    request = urllib.request.Request(
        f"http://127.0.0.1:{http}{VAR_PATH}",
        data=json.dumps({"value": VALUE}).encode(),
        method="PUT",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request).read()


def report(results: list[tuple[Result, Result]], args: argparse.Namespace) -> None:
    lines = [
        "| round | limits off req/s | limits on req/s | on/off | off p99 | on p99 | off CPU/req | on CPU/req "
        "| CPU off/on | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (off, on) in enumerate(results, 1):
        lines.append(
            f"| {i} | {off.rps:,.0f} | {on.rps:,.0f} | {on.rps / off.rps:.1%} | {off.p99_ms:.1f} ms | "
            f"{on.p99_ms:.1f} ms | {off.cpu_us:.0f} µs | {on.cpu_us:.0f} µs | {off.cpu_us / on.cpu_us:.1%} | "
            f"{off.errors + on.errors} |"
        )
    ratio = statistics.median(on.rps / off.rps for off, on in results)
    cpu = statistics.median(off.cpu_us / on.cpu_us for off, on in results)
    print("\n".join(lines))
    print(
        f"\nmedian on/off: {ratio:.1%} of the throughput (cost {1 - ratio:+.1%}), {cpu:.1%} by server "
        f"CPU per call (cost {1 - cpu:+.1%}); gRPC GetVariable, {args.connections} connections, "
        f"{args.threads} h2load threads, {args.duration} s per measurement"
    )


if __name__ == "__main__":
    main()
