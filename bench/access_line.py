"""Instructions per REST access line, counted by valgrind without a server: ``ObservedCalls._write`` as the
shipped defaults run it (text, only the gateway's writer listening), its writer thread included.

    .venv/bin/python bench/access_line.py                 # lines back to back (the writer's batches large)
    .venv/bin/python bench/access_line.py --pace 0.025    # one line per writer round (its wake-ups' cost)

Each count is the whole process under ``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, once with
``--lines`` lines and once with none; the difference over the lines is the line's cost. Served counts
(``bench/instructions.py http``, shipped defaults minus ``access log off``) come out ~0.7k above the
back-to-back figure (the writer's rounds are a few lines each at valgrind's pace).
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


def child(lines: int, pace: float) -> None:
    sys.stderr = open(os.devnull, "w")  # the writer's stream, for the process's life
    import gateway.logs as logs
    from gateway.auth.policy import Principal
    from gateway.edge.accesslog import log
    from gateway.edge.observe import ObservedCalls
    from gateway.edge.routing import PRINCIPAL
    from gateway.observability.calls import Call

    writer = logs.configure_logging("info", "text")
    observed = ObservedCalls.__new__(ObservedCalls)  # only what _write reads
    observed.logger = log
    path = b"/v1/rooms/bench/variables/score"
    scope = {"type": "http", "method": "GET", "raw_path": path, "path": path.decode(),
             "client": ("127.0.0.1", 5555), PRINCIPAL: Principal("bench", frozenset())}  # fmt: skip
    call = Call("4f1c0a9e2b7d3c58")

    def one() -> None:  # as ObservedCalls.__call__ ends (_write checks the level)
        observed._write(scope, 200, "OK", 0.0013, call, None, time.perf_counter())  # type: ignore[arg-type]

    for _ in range(200):  # warm: the caches of paths, keys, heads
        one()
    time.sleep(0.05)
    for _ in range(lines):
        one()
        if pace:
            time.sleep(pace)
    writer.stop()


def counted(lines: int, pace: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, __file__, "--child", "--lines", str(lines), "--pace", str(pace)]
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
    args = parser.parse_args()
    if args.child:
        child(args.lines, args.pace)
        return
    empty, full = counted(0, args.pace), counted(args.lines, args.pace)
    print(f"access line ({'paced ' + str(args.pace) + ' s' if args.pace else 'back to back'}): "
          f"{(full - empty) / args.lines / 1000:,.1f}k instructions")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
