"""Instructions per REST access line, counted by valgrind without a server: ``ObservedCalls`` around a
trivial app (a 200 and an empty body), as the shipped defaults run it (text, only the gateway's writer
listening), its writer thread included, against the same calls with ``access_log: false``.

    .venv/bin/python bench/access_line.py                 # calls back to back (the writer's batches large)
    .venv/bin/python bench/access_line.py --pace 0.025    # one line per writer round (its wake-ups' cost)

Each count is the whole process under ``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, once with
the access log on and once off, ``--lines`` calls each; the difference over the calls is the line's cost.
Served counts (``bench/instructions.py http``, shipped defaults minus ``access log off``) come out ~1k above
the back-to-back figure (the writer's rounds are a few lines each at valgrind's pace).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(lines: int, pace: float, access_log: bool) -> None:
    sys.stderr = open(os.devnull, "w")  # the writer's stream, for the process's life
    import gateway.logs as logs
    from gateway.auth.policy import Principal
    from gateway.edge.observe import ObservedCalls
    from gateway.edge.routing import PRINCIPAL
    from gateway.observability.metrics import Metrics
    from gateway.observability.observer import Observer

    writer = logs.configure_logging("info", "text")
    principal = Principal("bench", frozenset())
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    body = {"type": "http.response.body", "body": b""}

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        scope[PRINCIPAL] = principal  # as the edge's authentication leaves it
        await send(start)  # type: ignore[operator]
        await send(body)  # type: ignore[operator]

    async def receive() -> dict[str, object]:
        return {"type": "http.request"}

    async def send(message: object) -> None:
        pass

    observed = ObservedCalls(app, Observer(Metrics(), access_log=access_log))  # type: ignore[arg-type]
    path = b"/v1/rooms/bench/variables/score"

    def one() -> None:  # one call, run to its end without an event loop (nothing in it waits)
        scope = {"type": "http", "method": "GET", "raw_path": path, "path": path.decode(), "headers": [],
                 "client": ("127.0.0.1", 5555)}  # fmt: skip
        try:
            observed(scope, receive, send).send(None)  # type: ignore[arg-type]
        except StopIteration:
            pass

    for _ in range(200):  # warm: the caches of paths, keys, heads
        one()
    time.sleep(0.05)
    for _ in range(lines):
        one()
        if pace:
            time.sleep(pace)
    writer.stop()


def counted(lines: int, pace: float, access_log: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, __file__, "--child", "--lines", str(lines), "--pace", str(pace)]
        argv += [] if access_log else ["--off"]
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *argv],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"},
            check=True,
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", run.stderr)
    assert found is not None, run.stderr[-2000:]
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between lines")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--off", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.lines, args.pace, not args.off)
        return
    empty, full = counted(args.lines, args.pace, False), counted(args.lines, args.pace, True)
    print(f"access line ({'paced ' + str(args.pace) + ' s' if args.pace else 'back to back'}): "
          f"{(full - empty) / args.lines / 1000:,.1f}k instructions")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
