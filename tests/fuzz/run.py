"""Run one target of :mod:`tests.fuzz.targets` under atheris (libFuzzer), its modules instrumented.

    python -m tests.fuzz.run TARGET [libFuzzer options] [CORPUS_DIR ...]

e.g. ``python -m tests.fuzz.run json_codec -max_total_time=60 /tmp/work tests/fuzz/corpus/json_codec``:
new inputs go to the first folder (keep the committed corpus as a later, read-only one). A crash prints the
traceback and writes the input to ``crash-<sha1>`` (``-artifact_prefix=`` sets where).
"""

from __future__ import annotations

import importlib
import sys

import atheris


def main() -> None:
    target, options = sys.argv[1], sys.argv[2:]
    from tests.fuzz.targets import MODULES, TARGETS

    with atheris.instrument_imports(include=["gateway"]):
        for module in MODULES[target]:
            importlib.import_module(module)
    atheris.Setup([sys.argv[0], *options], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
