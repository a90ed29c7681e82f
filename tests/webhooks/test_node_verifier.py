"""docs/webhooks.md's Node verifier (the ``standardwebhooks`` npm package) accepts a real delivery and
refuses a tampered one. The package is installed into ``node/node_modules`` from ``node/package-lock.json``
once; without node/npm or the registry the test skips, naming what is missing — except under ``CI``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.webhooks.conftest import running, webhook_config
from tests.webhooks.receiver import SECRET, Receiver
from tests.webhooks.test_docs import blocks

NODE_DIR = Path(__file__).resolve().parent / "node"


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the Node verifier test")
    pytest.skip(message)


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are not installed")
    assert node is not None and npm is not None
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            _unavailable(f"npm ci failed (is the npm registry reachable?):\n{result.stderr[-2000:]}")
    [example] = blocks("js")
    (NODE_DIR / "verifier.mjs").write_text(example, encoding="utf-8")
    return node


def check(node: str, body: bytes, headers: dict[str, str]) -> subprocess.CompletedProcess[str]:
    payload = json.dumps({"body": body.decode(), "headers": headers, "secret": SECRET})
    return subprocess.run(
        [node, "check.mjs"], cwd=NODE_DIR, input=payload, capture_output=True, text=True, timeout=30
    )


async def test_the_node_verifier_accepts_a_real_delivery(node: str, receiver: Receiver) -> None:
    async with running(webhook_config("memory://", {"app": receiver.url})) as (_, client):
        await client.post("/v1/rooms", json={"roomId": "lobby"})
        await receiver.until(lambda r: len(r.delivered) == 1)
    [delivery] = receiver.delivered.values()
    good = check(node, delivery.raw, delivery.headers)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout) == delivery.body
    bad = check(node, delivery.raw.replace(b"lobby", b"lobbx"), delivery.headers)
    assert bad.returncode == 1 and "signature" in bad.stderr.lower()
