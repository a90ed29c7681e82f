"""Instructions per REST call in-process, counted by valgrind: a measure that does not move with the load
of the machine (req/s and CPU time both do, on a shared 2-core box).

    .venv/bin/python bench/instructions.py [--calls 300] [--log] [--no-limit]

Runs ``bench/inproc.py``'s calls (memory backend, an API key, a counted never-refusing per-IP limit; the
bare Starlette route beside the gateway) under ``valgrind --tool=callgrind`` with instrumentation switched
on only around the measured calls (``callgrind_control``), after a warm-up. Needs ``valgrind``
(Debian: ``apt-get install valgrind``). Python's own work counts like any other: instructions are a proxy
for time, not a substitute (a system call is one instruction here and microseconds on the clock).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--log", action="store_true", help="the access log on, through the gateway's writer")
    parser.add_argument("--no-limit", action="store_true", help="no rate limit")
    args = parser.parse_args()
    flags = [*(["--log"] if args.log else []), *(["--no-limit"] if args.no_limit else [])]
    results: dict[tuple[str, str], float] = {}
    for method in ("GET", "PUT"):
        for app in ("bare", "gateway"):
            results[app, method] = count(app, method, args.calls, flags)
    for method in ("GET", "PUT"):
        bare, ours = results["bare", method], results["gateway", method]
        print(
            f"{method}: gateway {ours / 1000:,.1f}k instructions a call, bare Starlette {bare / 1000:,.1f}k "
            f"({bare / ours:.0%} of the gateway's)"
        )


def count(app: str, method: str, calls: int, flags: list[str]) -> float:
    """Instructions per call of ``app`` (``bare`` or ``gateway``) for ``calls`` calls of ``method``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        child = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(HERE / "inproc.py"),
                "--child",
                app,
                method,
                str(calls),
                *flags,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        subprocess.run(["callgrind_control", "-i", "on", str(child.pid)], check=True, capture_output=True)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        subprocess.run(["callgrind_control", "-i", "off", str(child.pid)], check=True, capture_output=True)
        child.stdin.close()
        child.wait(120)
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        assert totals is not None, "no totals in the callgrind output"
        return int(totals.group(1)) / calls


if __name__ == "__main__":
    main()
