"""Fan-out: N idle listeners on one gateway process, one write, how long until every listener has it.

    python bench/fanout.py [--listeners 1000,10000] [--transports sse,grpc] [--backend memory://]
                           [--streams-per-connection 100] [--open-concurrency 100]
                           [--open-timeout 180] [--delivery-timeout 10]

For each transport and N, a fresh gateway process (``python -m gateway serve``, one process; fresh so that
memory freed by an earlier round does not hide the cost of this one) gets N listeners of one variable:

- ``sse``: N HTTP/1.1 connections, ``GET /v1/rooms/{room}/variables/{name}:listen``, read with plain
  asyncio protocols (no HTTP client library in the timed path);
- ``grpc``: N ``ListenVariable`` streams through grpclib, multiplexed over
  ``ceil(N / streams-per-connection)`` HTTP/2 connections (the server advertises MAX_CONCURRENT_STREAMS,
  h2's default 100: more streams per connection would only queue). The client's codec hands over the raw
  bytes, so no protobuf decoding sits between a frame's arrival and its timestamp.

Each listener first receives the variable's current value (that is how it knows it is subscribed); the
gateway's RSS (``VmRSS`` of ``/proc/PID/status``) is read before the listeners open and once they are all
idle, giving the memory per idle listener. Then one REST PUT is sent on an already open connection, and
each listener's delay is the time from just before that PUT's bytes are written to the arrival of its
next message (both clocks are this process's ``perf_counter``). Reported: p50/p99/max and how many
received, per transport and N, against the targets (p99 < 250 ms for 1,000, < 1 s for 10,000).

The client is this process (uvloop when installed), separate from the gateway's. Its own work is part of
the delay: with 10,000 connections the client handles 10,000 readiness events one after the other, so the
numbers are an upper bound of the gateway's. Everything is bounded: opening by ``--open-timeout``, delivery
by ``--delivery-timeout``. Writes ``bench/out/fanout.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import gateway_command, shell, wait_up, write_config
from run import KEY, NAME, ROOM, ROOT, VALUE, VAR_PATH, Proc, free_port

OUT = ROOT / "bench" / "out"
LISTEN_PATH = f"{VAR_PATH}:listen"
LISTEN_METHOD = "/roomgateway.v1.RoomService/ListenVariable"
TARGET_P99_MS = {1000: 250.0, 10000: 1000.0}


@dataclass
class Round:
    transport: str
    listeners: int
    connections: int = 0
    ready: int = 0
    received: int = 0
    delays_ms: list[float] = field(default_factory=list)
    open_seconds: float = 0.0
    rss_before_kib: int = 0
    rss_idle_kib: int = 0
    wrong: int = 0  # messages that were not the written version
    note: str = ""

    @property
    def per_listener_kib(self) -> float:
        return (self.rss_idle_kib - self.rss_before_kib) / self.ready if self.ready else 0.0


class Shared:
    """What the listeners of one round report to: counts, and the moment every one has the write."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.ready = 0
        self.arrivals: list[float] = []
        self.payloads: list[bytes] = []
        self.all_ready = asyncio.Event()
        self.all_received = asyncio.Event()

    def on_ready(self) -> None:
        self.ready += 1
        if self.ready >= self.expected:
            self.all_ready.set()

    def on_message(self, now: float, payload: bytes) -> None:
        self.arrivals.append(now)
        self.payloads.append(payload)
        if len(self.arrivals) >= self.ready:
            self.all_received.set()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_fd_limit(needed: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; the gateway started after this inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"ulimit -Hn is {hard}; {needed} descriptors are needed (raise it, e.g. in limits.conf)"
        )


# -- SSE -----------------------------------------------------------------------------------------------------


class SseListener(asyncio.Protocol):
    """One ``:listen`` connection: ready at its first ``data:`` (the current value), then timestamps the
    first chunk holding another ``data:`` (the write: nothing else writes, keep-alives are comments)."""

    def __init__(self, request: bytes, shared: Shared, ready: asyncio.Future[None]) -> None:
        self.request = request
        self.shared = shared
        self.ready = ready
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.done:
            return
        if not self.ready.done():
            self.buffer += data
            if b"data: " in self.buffer:
                if not self.buffer.startswith(b"HTTP/1.1 200"):
                    self.ready.set_exception(RuntimeError(self.buffer[:200].decode(errors="replace")))
                    return
                self.buffer = b""
                self.shared.on_ready()
                self.ready.set_result(None)
            return
        self.buffer = self.buffer[-8:] + data  # "data: " split across two reads
        if b"data: " in self.buffer:
            self.done = True
            self.shared.on_message(now, self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed before the first message"))


async def open_sse(
    port: int, n: int, shared: Shared, concurrency: int
) -> tuple[list[asyncio.BaseTransport], int]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET {LISTEN_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {KEY}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(concurrency)
    transports: list[asyncio.BaseTransport] = []

    async def one() -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: SseListener(request, shared, ready), "127.0.0.1", port
            )
            transports.append(transport)
            await ready

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        print(f"  {len(failures)} SSE listeners failed to open, e.g. {failures[0]!r}", flush=True)
    return transports, len(transports)


# -- gRPC ----------------------------------------------------------------------------------------------------


def grpc_listen_frame() -> bytes:
    from gateway._gen.roomgateway.v1 import ListenVariableRequest

    return bytes(ListenVariableRequest(room_id=ROOM, name=NAME))


def raw_codec() -> Any:
    from grpclib.encoding.base import CodecBase

    class RawCodec(CodecBase):
        """Bytes in, bytes out: the timestamp is taken before anything is decoded."""

        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return message  # type: ignore[no-any-return]

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    return RawCodec()


async def open_grpc(
    port: int, n: int, shared: Shared, concurrency: int, per_connection: int, stop: asyncio.Event
) -> tuple[list[Any], list[asyncio.Task[None]]]:
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    codec = raw_codec()
    channels = [Channel("127.0.0.1", port, codec=codec) for _ in range(math.ceil(n / per_connection))]
    request = grpc_listen_frame()
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()

    async def one(channel: Channel, ready: asyncio.Future[None]) -> None:
        try:
            async with channel.request(
                LISTEN_METHOD, Cardinality.UNARY_STREAM, None, None, metadata={"x-api-key": KEY}
            ) as stream:
                async with gate:
                    await stream.send_message(request, end=True)
                    if await stream.recv_message() is None:
                        raise RuntimeError("stream ended before the current value")
                shared.on_ready()
                ready.set_result(None)
                message = await stream.recv_message()
                now = time.perf_counter()
                if message is not None:
                    shared.on_message(now, message)
                await stop.wait()
                await stream.cancel()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)

    readies = [loop.create_future() for _ in range(n)]
    tasks = [asyncio.create_task(one(channels[i % len(channels)], readies[i])) for i in range(n)]
    results = await asyncio.gather(*readies, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        print(f"  {len(failures)} gRPC listeners failed to open, e.g. {failures[0]!r}", flush=True)
    return channels, tasks


# -- one round -----------------------------------------------------------------------------------------------


async def put_variable(port: int) -> tuple[float, int]:
    """One REST PUT of the variable: (perf_counter just before its bytes are written, the new version).

    The connection is opened first, outside the timed span (a kept-alive one would be closed by uvicorn
    while the listeners open: its keep-alive timeout is 5 s).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"value": VALUE}).encode()
    request = (
        f"PUT {VAR_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    try:
        sent = time.perf_counter()
        writer.write(request)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        answer = await reader.readexactly(length)
    finally:
        writer.close()
    if b" 200 " not in status:
        raise RuntimeError(f"PUT answered {status!r}: {answer[:300]!r}")
    return sent, int(json.loads(answer)["version"])


async def run_round(transport: str, n: int, args: argparse.Namespace, tmp: Path) -> Round:
    result = Round(transport, n)
    http, grpc = free_port(), free_port()
    config = tmp / f"fanout-{transport}-{n}.yaml"
    write_config(config, args.backend, http, grpc)
    gateway = Proc(gateway_command(config))
    stop = asyncio.Event()
    transports: list[asyncio.BaseTransport] = []
    channels: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(wait_up, gateway, http, grpc)
        _, seeded = await put_variable(http)  # every listener starts with this value
        await asyncio.sleep(1.0)
        result.rss_before_kib = rss_kib(gateway.p.pid)
        shared = Shared(n)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(args.open_timeout):
                if transport == "sse":
                    transports, result.connections = await open_sse(http, n, shared, args.open_concurrency)
                else:
                    channels, tasks = await open_grpc(
                        grpc, n, shared, args.open_concurrency, args.streams_per_connection, stop
                    )
                    result.connections = len(channels)
        except TimeoutError:
            result.note = f"only {shared.ready} of {n} listening after {args.open_timeout} s"
        result.open_seconds = time.perf_counter() - started
        result.ready = shared.ready
        await asyncio.sleep(2.0)  # idle: let the gateway settle (and its allocator) before reading RSS
        result.rss_idle_kib = rss_kib(gateway.p.pid)
        profiler = start_profiler(gateway.p.pid, args.profile, f"{transport}-{n}") if args.profile else None
        sent, version = await put_variable(http)
        try:
            async with asyncio.timeout(args.delivery_timeout):
                await shared.all_received.wait()
        except TimeoutError:
            result.note += (
                f" {len(shared.arrivals)} of {shared.ready} received within {args.delivery_timeout} s"
            )
        result.received = len(shared.arrivals)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 30)
        result.delays_ms = sorted((t - sent) * 1000 for t in shared.arrivals)
        marker = b"id: %d\n" % version if transport == "sse" else None
        result.wrong = sum(1 for p in shared.payloads if not _is_version(p, version, marker))
        if version != seeded + 1:
            result.note += f" (the write made version {version}, expected {seeded + 1}: another writer?)"
    finally:
        stop.set()
        for t in transports:
            t.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for channel in channels:
            channel.close()
        await asyncio.to_thread(gateway.stop)
    return result


def start_profiler(pid: int, folder: Path, name: str) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) on the gateway for the write and its delivery: collapsed stacks
    (``--format raw``, for flamegraph.pl or speedscope) in ``folder/fanout-NAME.txt``."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"fanout-{name}.txt"
    proc = subprocess.Popen(
        [py_spy, "record", "-p", str(pid), "-d", "4", "-r", "250", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach before the write
    return proc


def _is_version(payload: bytes, version: int, marker: bytes | None) -> bool:
    if marker is not None:
        return marker in payload
    from gateway._gen.roomgateway.v1 import Variable

    return Variable.parse(payload).version == version


# -- report --------------------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) < 100:
        return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def report(rounds: list[Round], args: argparse.Namespace) -> str:
    lines = [
        "| transport | listeners | connections | listening | received | p50 | p99 | max | p99 target | "
        "open time | RSS before | RSS idle | per idle listener |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rounds:
        p99 = quantile(r.delays_ms, 0.99)
        target = TARGET_P99_MS.get(r.listeners)
        verdict = (
            "—"
            if target is None
            else f"< {target:,.0f} ms {'✓' if r.received == r.listeners and p99 < target else '✗'}"
        )
        lines.append(
            f"| {r.transport} | {r.listeners:,} | {r.connections:,} | {r.ready:,} | {r.received:,}"
            f"{f' ({r.wrong} wrong)' if r.wrong else ''} | {quantile(r.delays_ms, 0.5):.1f} ms | "
            f"{p99:.1f} ms | "
            f"{max(r.delays_ms, default=float('nan')):.1f} ms | {verdict} | {r.open_seconds:.1f} s | "
            f"{r.rss_before_kib / 1024:.1f} MiB | {r.rss_idle_kib / 1024:.1f} MiB | "
            f"{r.per_listener_kib:.1f} KiB |"
        )
    notes = [f"- {r.transport} {r.listeners:,}: {r.note.strip()}" for r in rounds if r.note.strip()]
    header = (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, backend `{args.backend}`, one gateway "
        f"process per row, gRPC at up to {args.streams_per_connection} streams per HTTP/2 connection. "
        "Delay = "
        "from just before the PUT is written to the listener's receipt, both in the client process "
        "(an upper bound: it includes the client's own handling of N arrivals)."
    )
    command = shell([sys.executable, *sys.argv])
    return (
        "\n".join([header, "", *lines, *(["", *notes] if notes else []), "", f"Command: `{command}`"]) + "\n"
    )


async def main_async(args: argparse.Namespace) -> list[Round]:
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        for n in args.listeners:
            for transport in args.transports:
                print(f"== {transport}, {n:,} listeners", flush=True)
                result = await run_round(transport, n, args, Path(tmp))
                print(
                    f"  {result.ready} listening after {result.open_seconds:.1f} s, "
                    f"{result.received} received, p99 {quantile(result.delays_ms, 0.99):.1f} ms, "
                    f"{result.per_listener_kib:.1f} KiB/listener "
                    f"{result.note}",
                    flush=True,
                )
                rounds.append(result)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", default="1000,10000", help="comma-separated counts")
    parser.add_argument("--transports", default="sse,grpc", help="sse, grpc or both")
    parser.add_argument("--backend", default="memory://", help="the gateway's backend URL")
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument("--open-concurrency", type=int, default=100, help="listeners being opened at once")
    parser.add_argument("--open-timeout", type=float, default=180.0, help="seconds to open all listeners")
    parser.add_argument("--delivery-timeout", type=float, default=10.0, help="seconds to wait for the write")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the gateway during each write, stacks to this folder"
    )
    args = parser.parse_args()
    args.listeners = [int(n) for n in args.listeners.split(",")]
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if set(args.transports) - {"sse", "grpc"}:
        raise SystemExit("--transports: sse, grpc")
    raise_fd_limit(max(args.listeners) + 256)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        rounds = runner.run(main_async(args))
    text = report(rounds, args)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fanout.md").write_text(text)
    print(f"(written to {OUT / 'fanout.md'})")


if __name__ == "__main__":
    main()
