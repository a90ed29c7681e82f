"""What the gRPC port's limits cost: GetVariable throughput with them and without them, side by side.

    python bench/grpc_limits.py [--duration 10] [--connections 64] [--rounds 3]

Three gateway processes on one configuration: ``room-gateway serve`` (the limits of ``grpc:``, defaults but
for new connections per IP, raised so that h2load's connections all get in); the same gateway with
grpclib's own HTTP/2 protocol (``create_grpc_server(limits=None)``: no stream, reset, control-frame or
header-block limits, no message-size check; malformed messages are still refused by the codec); and that
one with its writes coalesced and its header blocks made as the guarded protocol's are
(:mod:`gateway.coalesce`, :mod:`gateway.rpc.headerblocks`), so that only the limits differ. h2load calls
GetVariable on each in turn, ``--rounds`` times, a different one first each round, so that drift on a shared
machine falls on all; the table gives each round and the median ratios.
Needs ``h2load`` (Debian: ``apt-get install nghttp2-client``).

    python bench/grpc_limits.py serve-unlimited CONFIG [--coalesced]    # the second (third) gateway alone
    python bench/grpc_limits.py inproc-child guarded|plain CALLS        # bench/instructions.py grpc-inproc
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from run import (
    KEY,
    NAME,
    ROOM,
    VALUE,
    Proc,
    Result,
    free_port,
    gateway_config,
    grpc_check,
    grpc_frame,
    h2load,
    seed,
    wait_port,
)


def unlimited_server(gateway: Any, coalesced: bool) -> Any:
    """``gateway``'s gRPC server with grpclib's own protocol (``create_grpc_server(limits=None)``);
    ``coalesced``: its writes coalesced and its header blocks made as the guarded protocol's are
    (gateway.coalesce, gateway.rpc.headerblocks), so that only the limits differ."""
    import asyncio

    from grpclib.protocol import H2Protocol

    from gateway.coalesce import CoalescingTransport
    from gateway.rpc.server import create_grpc_server, keepalive_config

    config = gateway.config
    unlimited = create_grpc_server(
        gateway.dispatcher,
        ready=gateway.backend.check,
        config=keepalive_config(config.grpc.keepalive_seconds, config.grpc.keepalive_timeout_seconds),
        limiter=gateway.limiter,
        access_log=config.access_log,
        limits=None,
    )
    if coalesced:
        import grpclib.protocol

        from gateway.rpc.headerblocks import ServerConnection

        # grpclib's protocol makes its connection's h2 state machine by this name: this process serves only
        # this server (no grpclib client), so the swap reaches nothing else.
        grpclib.protocol.H2Connection = ServerConnection  # type: ignore[attr-defined]
        plain_factory = unlimited._protocol_factory

        def coalescing_factory() -> H2Protocol:
            protocol = plain_factory()
            made = protocol.connection_made

            def connection_made(transport: Any) -> None:
                made(CoalescingTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

            protocol.connection_made = connection_made  # type: ignore[method-assign]
            return protocol

        unlimited._protocol_factory = coalescing_factory  # type: ignore[method-assign]
    return unlimited


def serve_unlimited(config_path: str, coalesced: bool = False) -> None:
    """``room-gateway serve``, with :func:`unlimited_server` on the gRPC listener."""
    import uvloop

    from gateway.app import create_gateway
    from gateway.config_loader import load_config
    from gateway.server import serve

    config = load_config(config_path)

    async def run() -> None:
        gateway = create_gateway(config)
        await serve(dataclasses.replace(gateway, grpc_server=unlimited_server(gateway, coalesced)))

    uvloop.run(run())


def inproc_child(protocol: str, calls: int) -> None:
    """``calls`` GetVariable calls handed to one connection's protocol in this process, no socket: the
    client's bytes of each call recorded first on another connection (h2's client, one stream at a time,
    as h2load), then fed again, the answers written to a transport that keeps nothing. ``protocol``:
    ``guarded`` (the shipped listener's), or ``plain`` (grpclib's, writes coalesced). Says "ready", makes
    the calls when it reads "go", then says "done" (bench/instructions.py's handshake)."""
    import asyncio
    from datetime import UTC, datetime

    import grpclib.protocol
    import h2.config
    import h2.connection
    import h2.events
    import uvloop

    from gateway.app import create_gateway
    from gateway.config_loader import load_config

    # Nobody answers a keep-alive PING here: without this, the connection closes when the first goes
    # unanswered (with valgrind, the calls take long enough).
    grpclib.protocol.Connection.initialize = lambda self: None  # type: ignore[method-assign]

    class Sink:
        def write(self, data: bytes) -> None:
            written.append(data)

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("127.0.0.1", 40000) if name == "peername" else default

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    written: list[bytes] = []
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/roomgateway.v1.RoomService/GetVariable"),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-api-key", KEY),
    ]

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "gateway.yaml"
            path.write_text(gateway_config(free_port(), free_port(), access_log=False))
            gateway = create_gateway(load_config(str(path)))
        await gateway.backend.open()
        await gateway.backend.set_variable(ROOM, NAME, VALUE, expected_version=None, now=datetime.now(UTC))
        server = gateway.grpc_server if protocol == "guarded" else unlimited_server(gateway, coalesced=True)

        def connect() -> Any:
            connection = server._protocol_factory()
            connection.connection_made(Sink())  # type: ignore[arg-type]  # what the protocol uses of one
            return connection

        async def call(connection: Any, data: bytes) -> None:
            connection.data_received(data)
            await list(connection.handler._tasks.values())[-1]
            for _ in range(3):  # the coalesced write, then the stream's release
                await asyncio.sleep(0)

        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        client.initiate_connection()
        preface = client.data_to_send()
        recording, recorded = connect(), []
        recording.data_received(preface)
        ended = 0
        for _ in range(WARM_UP + calls):
            await asyncio.sleep(0)
            for event in client.receive_data(b"".join(written)):
                if isinstance(event, h2.events.DataReceived):
                    client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                ended += isinstance(event, h2.events.StreamEnded)
            written.clear()
            stream = client.get_next_available_stream_id()
            client.send_headers(stream, headers)
            client.send_data(stream, grpc_frame(), end_stream=True)
            recorded.append(client.data_to_send())
            await call(recording, recorded[-1])
        assert ended == WARM_UP + calls - 1, "a call was not answered"
        replay = connect()
        replay.data_received(preface)
        for data in recorded[:WARM_UP]:
            await call(replay, data)
        print("ready", flush=True)
        assert sys.stdin.readline().strip() == "go"
        for data in recorded[WARM_UP:]:
            await call(replay, data)
            written.clear()
        print("done", flush=True)
        sys.stdin.read()

    uvloop.run(run())


#: Calls made before those counted (inproc_child).
WARM_UP = 200


def main() -> None:
    if sys.argv[1:2] == ["serve-unlimited"]:
        serve_unlimited(sys.argv[2], coalesced="--coalesced" in sys.argv)
        return
    if sys.argv[1:2] == ["inproc-child"]:
        inproc_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")
    results: list[dict[str, Result]] = []
    with tempfile.TemporaryDirectory() as tmp:
        names = ("on", "off", "off, coalesced")
        ports = {name: (free_port(), free_port()) for name in names}
        procs: dict[str, Proc] = {}
        for name, (http, grpc) in ports.items():
            config = Path(tmp) / f"{len(procs)}.yaml"
            config.write_text(gateway_config(http, grpc, access_log=False))
            if name == "on":
                command = ["-m", "gateway", "serve", "--config", str(config), "--log-level", "warning"]
            else:
                command = [__file__, "serve-unlimited", str(config)]
                if "coalesced" in name:
                    command.append("--coalesced")
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
                # A different one first each round, so that drift during a round falls on all alike.
                order = names[round_ % 3 :] + names[: round_ % 3]
                results.append(
                    {
                        name: h2load(f"limits {name}", ports[name][1], args, headers=auth, server=procs[name])
                        for name in order
                    }
                )
        finally:
            for proc in procs.values():
                proc.stop()
    report(results, args)


def report(results: list[dict[str, Result]], args: argparse.Namespace) -> None:
    lines = [
        "| round | limits on req/s | off | off, coalesced | on/off | on/(off, coalesced) "
        "| CPU/call on | off | off, coalesced | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, round_ in enumerate(results, 1):
        on, off, coalesced = round_["on"], round_["off"], round_["off, coalesced"]
        lines.append(
            f"| {i} | {on.rps:,.0f} | {off.rps:,.0f} | {coalesced.rps:,.0f} | {on.rps / off.rps:.1%} | "
            f"{on.rps / coalesced.rps:.1%} | {on.cpu_us:.0f} µs | {off.cpu_us:.0f} µs | "
            f"{coalesced.cpu_us:.0f} µs | {sum(r.errors for r in round_.values())} |"
        )
    print("\n".join(lines))
    for other in ("off", "off, coalesced"):
        rps = statistics.median(r["on"].rps / r[other].rps for r in results)
        cpu = statistics.median(r[other].cpu_us / r["on"].cpu_us for r in results)
        print(
            f"median limits on / {other}: {rps:.1%} of the throughput (cost {1 - rps:+.1%}), {cpu:.1%} by "
            f"server CPU per call (cost {1 - cpu:+.1%})"
        )
    print(
        f"gRPC GetVariable, {args.connections} connections, {args.threads} h2load threads, {args.duration} s "
        f"per measurement, {args.rounds} rounds; 'off, coalesced': grpclib's protocol with the guarded one's "
        "write coalescing, so that only the limits differ"
    )


if __name__ == "__main__":
    main()
