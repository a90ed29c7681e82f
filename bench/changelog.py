"""The change log's costs, in one run: REST PUT with the log against the code before it, and resumes.

    python bench/changelog.py [--before ../before] [--backends memory,sqlite,postgresql,redis]
                              [--duration 10] [--connections 64] [--rounds 2] [--missed 1000]
    python bench/changelog.py --instructions [--calls 1000] [--before ../before] [--backends memory,sqlite]

**PUT**: two gateway processes per backend, side by side — one from ``--before`` (a checkout of the code
before the change log, with its own ``.venv``: e.g. ``git worktree add ../before <commit>`` then ``make
.venv/.installed``), one from this tree — each on a store of its own, measured alternately with wrk
(``--rounds`` times each, so a drifting machine hits both alike). The ratio is this tree's median over
the before tree's (issue 11: ≥ 0.90 on memory and SQLite).

**Resume**: on this tree's gateway, ``--missed`` changes are written, then
``GET /v1/rooms/r:listen?afterSeq=…`` is timed from the request until the last missed change's SSE frame
has arrived (issue 11: < 100 ms for 1,000 on memory and SQLite), five times; the first frame's delay is
reported too.

**Instructions** (``--instructions``, instead of the two above): the same PUT in-process
(``bench/inproc.py --child``: the gateway's ASGI app, no sockets, limits and the access log off), each tree
with its own venv in its own folder, under valgrind's callgrind (``bench/instructions.py``): instructions per
PUT do not move with the load of the machine, as req/s do. SQLite is a file in a temporary folder.

Prints a markdown table and writes it to ``bench/out/changelog.md`` (``changelog-instructions.md``). Rate
limits and the access log are off in both gateways (bench/backends.py's configuration). Needs ``wrk``
(``--instructions``: ``valgrind``); PostgreSQL and Redis get a fresh ``?schema=`` / ``?prefix=``, removed at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # bench/run.py: a script, not a package
from backends import (
    AUTH,
    PUT_LUA,
    Backend,
    drop_store,
    gateway_command,
    http_json,
    make_backends,
    wait_up,
    write_config,
)
from run import ROOT, VAR_PATH, Proc, free_port

OUT = ROOT / "bench" / "out"
RESUME_RUNS = 5
#: The resume's own room: wrk's last PUTs, still in flight when it exits, land in the PUT room afterwards.
RESUME_ROOM = "resume-room"
#: Seconds a resume may take before the run gives up (keep-alives would otherwise keep a stalled one open).
RESUME_TIMEOUT = 30.0


@dataclass
class Figures:
    backend: str
    before_rps: list[float]
    after_rps: list[float]
    resume_ms: list[float]
    first_ms: list[float]
    errors: int = 0

    @property
    def ratio(self) -> float:
        return statistics.median(self.after_rps) / statistics.median(self.before_rps)


class BeforeProc(Proc):
    """A gateway of the ``--before`` tree: its venv's Python, run from its folder (its code, not ours)."""

    def __init__(self, tree: Path, config: Path) -> None:
        argv = [str(tree / ".venv/bin/python"), *gateway_command(config)[1:]]
        self.p = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": ""}, cwd=tree)


def start(tree: Path | None, backend: Backend, tmp: Path, tag: str) -> tuple[Proc, int]:
    http, grpc = free_port(), free_port()
    config = tmp / f"gateway-{backend.name}-{tag}.yaml"
    write_config(config, backend.url, http, grpc)
    proc: Proc = BeforeProc(tree, config) if tree is not None else Proc(gateway_command(config))
    wait_up(proc, http, grpc)
    return proc, http


async def resume_once(http: int, after_seq: int, epoch: str, missed: int) -> tuple[float, float]:
    """Milliseconds until the first and the last of ``missed`` replayed frames arrive."""
    url = f"http://127.0.0.1:{http}/v1/rooms/{RESUME_ROOM}:listen?afterSeq={after_seq}&epoch={epoch}"
    got, first = 0, 0.0
    async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
        began = time.perf_counter()
        async with client.stream("GET", url) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    if '"kind":"RESET"' in line:
                        raise RuntimeError(f"the position {epoch}:{after_seq} was not served: {line}")
                    got += 1
                    if got == 1:
                        first = (time.perf_counter() - began) * 1000
                    if got == missed:
                        return first, (time.perf_counter() - began) * 1000
    raise RuntimeError(f"the stream ended after {got} of {missed} frames")


async def write_missed(http: int, missed: int) -> tuple[int, str]:
    """Write ``missed`` changes; the position just before them."""
    base = f"http://127.0.0.1:{http}/v1/rooms/{RESUME_ROOM}"
    async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
        await client.put(f"{base}/variables/v0", json={"value": 0})  # the room exists: contents answer
        snapshot = (await client.get(f"{base}/contents")).json()
        for n in range(missed):
            response = await client.put(
                f"{base}/variables/v{n % 50}", json={"value": {"n": n, "pad": "x" * 40}}
            )
            response.raise_for_status()
    return int(snapshot["seq"]), snapshot["epoch"]


def measure(name: str, args: argparse.Namespace, tmp: Path) -> Figures:
    figures = Figures(name, [], [], [], [])
    [before_store] = make_backends([name], args, tmp / "before")
    [after_store] = make_backends([name], args, tmp / "after")
    procs: list[Proc] = []
    try:
        before, before_http = start(args.before, before_store, tmp, "before")
        procs.append(before)
        after, after_http = start(None, after_store, tmp, "after")
        procs.append(after)
        for port in (before_http, after_http):  # seed the variable each PUT overwrites
            http_json("PUT", f"http://127.0.0.1:{port}{VAR_PATH}", {"value": 0}, AUTH)
        for _ in range(args.rounds):
            for port, into in ((before_http, figures.before_rps), (after_http, figures.after_rps)):
                result = harness.wrk(
                    f"{name} PUT", f"http://127.0.0.1:{port}{VAR_PATH}", args, headers=AUTH, lua=PUT_LUA
                )
                figures.errors += result.errors  # non-2xx answers, or a wrk socket-errors line
                into.append(result.rps)
        after_seq, epoch = asyncio.run(write_missed(after_http, args.missed))
        for _ in range(RESUME_RUNS):
            first, last = asyncio.run(
                asyncio.wait_for(resume_once(after_http, after_seq, epoch, args.missed), RESUME_TIMEOUT)
            )
            figures.first_ms.append(first)
            figures.resume_ms.append(last)
    finally:
        for proc in procs:
            proc.stop()
        for store in (before_store, after_store):
            drop_store(store)
    return figures


def report(rows: list[Figures], args: argparse.Namespace) -> str:
    lines = [
        f"REST PUT, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} rounds each, "
        f"alternating; before = {args.before}",
        "",
        "| backend | PUT before (req/s) | PUT with the log (req/s) | ratio | "
        f"resume {args.missed} missed: all (ms, median / max) | first frame (ms, median) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.backend} | {statistics.median(row.before_rps):,.0f} "
            f"| {statistics.median(row.after_rps):,.0f} "
            f"| {row.ratio:.2f} | {statistics.median(row.resume_ms):.1f} / {max(row.resume_ms):.1f} "
            f"| {statistics.median(row.first_ms):.1f} |"
        )
    lines += [
        "",
        "Every round (req/s): "
        + "; ".join(
            f"{r.backend}: before {[round(x) for x in r.before_rps]}, after {[round(x) for x in r.after_rps]}"
            f" (wrk errors: {r.errors})"
            for r in rows
        ),
    ]
    return "\n".join(lines) + "\n"


def instructions(args: argparse.Namespace) -> str:
    """Instructions per in-process PUT, the ``--before`` tree's and this tree's, per backend."""
    from instructions import _handshake, per_call  # bench/instructions.py: needs valgrind, imported here

    lines = [
        f"REST PUT in-process (bench/inproc.py --child, --no-limit, no access log), {args.calls} calls each, "
        f"instructions per call by callgrind; before = {args.before}",
        "",
        "| backend | PUT before (instructions) | PUT with the log (instructions) | ratio (before / with) |",
        "|---|---:|---:|---:|",
    ]
    for name in args.backends.split(","):
        counts = []
        for tree in (args.before, ROOT):
            with tempfile.TemporaryDirectory() as tmp:
                url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp}/rooms.db"}.get(name)
                if url is None:
                    raise SystemExit(f"--instructions: backends memory and sqlite only, not {name!r}")
                script = [str(ROOT / "bench/inproc.py"), "--child", "gateway", "PUT", str(args.calls)]
                argv = [str(tree / ".venv/bin/python"), *script, "--no-limit", "--backend", url]
                # Each tree's own code: its venv, its folder, nothing of this tree on the path.
                env = {**os.environ, "PYTHONPATH": ""}
                counts.append(per_call(argv, args.calls, _handshake, cwd=tree, env=env))
        lines.append(
            f"| {name} | {counts[0] / 1000:,.1f}k | {counts[1] / 1000:,.1f}k | {counts[0] / counts[1]:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, default=ROOT.parent / "before")
    parser.add_argument(
        "--backends", help="default: memory,sqlite,postgresql,redis (--instructions: memory,sqlite)"
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--instructions", action="store_true", help="count instructions, in-process")
    parser.add_argument("--calls", type=int, default=1000, help="--instructions: PUTs counted per tree")
    args = parser.parse_args()
    args.before = args.before.resolve()
    if not (args.before / ".venv/bin/python").exists():
        raise SystemExit(f"--before {args.before}: no .venv/bin/python there (make .venv/.installed in it)")
    if args.instructions:
        args.backends = args.backends or "memory,sqlite"
        table = instructions(args)
        OUT.mkdir(exist_ok=True)
        (OUT / "changelog-instructions.md").write_text(table)
        print(table)
        return
    args.backends = args.backends or "memory,sqlite,postgresql,redis"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            (Path(tmp) / "before").mkdir(exist_ok=True)
            (Path(tmp) / "after").mkdir(exist_ok=True)
            rows.append(measure(name, args, Path(tmp)))
    table = report(rows, args)
    OUT.mkdir(exist_ok=True)
    (OUT / "changelog.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
