"""Coverage-guided fuzzing of the pure parsers (:mod:`tests.fuzz.targets`), bounded, in the test command.

Each target runs under atheris (libFuzzer) for :data:`SECONDS` seconds from the committed seed corpus, in a
process of its own (libFuzzer owns its process); new inputs go to a temporary folder. Any exception but the
parser's documented error is a crash: the test fails with the input, which then belongs in
``test_regressions.py`` (fixed) and in the seed corpus. The corpus is also replayed in-process, so each seed
is checked even where atheris is missing. For a longer run by hand::

    .venv/bin/python -m tests.fuzz.run json_codec -max_total_time=600 /tmp/work tests/fuzz/corpus/json_codec
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import CORPUS, TARGETS, corpus

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 4


@pytest.mark.parametrize("target", TARGETS)
def test_the_seed_corpus_is_parsed_or_refused_as_documented(target: str) -> None:
    seeds = corpus(target)
    assert len(seeds) >= 5, f"tests/fuzz/corpus/{target} needs seeds"
    for seed in seeds:
        TARGETS[target](seed.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_coverage_guided_fuzzing_finds_no_crash(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    work = tmp_path / "new"
    work.mkdir()
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        target,
        f"-max_total_time={SECONDS}",
        "-timeout=10",  # seconds one input may take
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(work),
        str(CORPUS / target),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120)
    found = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    report = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("#"))[-4000:]
    assert result.returncode == 0 and not found, f"{[p.read_bytes() for p in found]}\n{report}"
    assert "Done" in result.stderr, report
