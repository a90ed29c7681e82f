"""Every curl example of Reflect's document (seed ``003_*``) runs verbatim, with the real ``curl``, against a
real gateway with the Reflect surface on.

The examples are read from the seed at test time (``shared/seeds`` beside the clone, as in CI). The only
changes made to a command: the base URL (``https://api.reflect-server.net`` → the test gateway), the
credentials (``{api-key}``), and the ``{app-id}`` and ``{room-id}`` placeholders. The seed's text lost the
line breaks of the examples' ``\\`` continuations (``\\     -H``); they are put back, which is what the
document shows. The HTTP status is read through a ``.curlrc`` (``CURL_HOME``), so no option is added to
the commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import KEY, ROOT, StartGateway, start_gateway  # noqa: F401  (fixture)

SEEDS = ROOT.parent / "shared" / "seeds"
VENDOR_BASE = "https://api.reflect-server.net"
APP = "my-app"
STEP_TIMEOUT = 15.0
#: The seed's commands by the command each performs (its path after ``/v1/apps/{app-id}``).
COMMANDS = ("/rooms'", "/rooms/contents?", "/rooms:create?", "/rooms:close?", "/rooms:delete?")


def seed_text() -> str:
    found = sorted(SEEDS.glob("003_*.txt"))
    if not found:
        message = f"the Reflect seed (003_*.txt) is not in {SEEDS}: shared/ must sit beside the clone"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found[0].read_text(encoding="utf-8")


def curl_examples(text: str) -> list[str]:
    """Every ``curl …`` command of the document, its continuations restored."""
    commands = []
    for line in text.splitlines():
        if line.startswith("curl "):
            commands.append(re.sub(r" \\ +", " \\\n    ", line.rstrip()))
    return commands


def command_of(example: str) -> str:
    matches = [command for command in COMMANDS if command in example]
    assert len(matches) == 1, example
    return matches[0]


@dataclass
class Outcome:
    status: int
    body: Any


class Replay:
    """Runs seed examples with the real curl against ``base_url``."""

    def __init__(self, examples: list[str], base_url: str, tmp_path: Path) -> None:
        self.examples = {command_of(example): example for example in examples}
        self.base_url = base_url
        (tmp_path / ".curlrc").write_text('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')
        self.env = {**os.environ, "CURL_HOME": str(tmp_path)}
        self.cwd = tmp_path

    def command(self, name: str, room_id: str = "") -> str:
        example = self.examples[name]
        return (
            example.replace(VENDOR_BASE, self.base_url)
            .replace("{app-id}", APP)
            .replace("{api-key}", KEY)
            .replace("{room-id}", room_id)
        )

    def run(self, name: str, room_id: str = "") -> Outcome:
        command = self.command(name, room_id)
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        body, _, status = result.stdout.rpartition("\n")
        return Outcome(int(status), json.loads(body))


def succeeded(outcome: Outcome) -> Any:
    assert outcome.status == 200, outcome
    assert outcome.body["error"] is None, outcome
    return outcome.body["result"]


def failed(outcome: Outcome, status: int, resource: str = "rooms") -> None:
    assert outcome.status == status, outcome
    assert outcome.body["result"] is None, outcome
    assert outcome.body["error"]["code"] == status
    assert outcome.body["error"]["resource"] == resource
    assert outcome.body["error"]["message"]


def test_the_seed_has_an_example_for_each_command() -> None:
    examples = curl_examples(seed_text())
    assert sorted(command_of(example) for example in examples) == sorted(COMMANDS)
    for example in examples:
        assert example.startswith("curl -X ") and f"{VENDOR_BASE}/v1/apps/{{app-id}}/" in example
        assert "-H 'Authorization: Basic {api-key}'" in example


def test_every_seed_example_runs_as_written(start_gateway: StartGateway, tmp_path: Path) -> None:  # noqa: F811
    if shutil.which("curl") is None:
        if os.environ.get("CI"):
            pytest.fail("curl is missing (CI must run this test)")
        pytest.skip("needs the curl binary")
    replay_examples = curl_examples(seed_text())
    gateway = start_gateway(extra=f"surfaces:\n  reflect: {{enabled: true, apps: [{APP}]}}\n")
    replay = Replay(replay_examples, gateway.http_url, tmp_path)
    with httpx.Client(base_url=gateway.http_url, headers={"X-API-Key": KEY}, timeout=STEP_TIMEOUT) as native:

        def native_ok(method: str, path: str, body: object) -> None:
            response = native.request(method, path, json=body)
            assert response.status_code == 200, response.text

        # Each example, where it succeeds: the state it needs is made through the native API.
        native_ok("POST", "/v1/rooms", {"roomId": "contents-room"})
        native_ok("PUT", "/v1/rooms/contents-room/variables/score", {"value": {"a": 1}})
        native_ok("POST", "/v1/rooms", {"roomId": "close-room"})
        native_ok("POST", "/v1/rooms", {"roomId": "delete-room"})
        native_ok("POST", "/v1/rooms/delete-room:close", {})

        listed = succeeded(replay.run("/rooms'"))
        assert listed == {
            "results": [
                {"roomID": "close-room", "jurisdiction": "", "status": "open"},
                {"roomID": "contents-room", "jurisdiction": "", "status": "open"},
                {"roomID": "delete-room", "jurisdiction": "", "status": "closed"},
            ],
            "numResults": 3,
            "more": False,
        }
        assert succeeded(replay.run("/rooms/contents?", "contents-room")) == {"contents": {"score": {"a": 1}}}
        assert succeeded(replay.run("/rooms:create?", "created-room")) == {}
        assert succeeded(replay.run("/rooms:close?", "close-room")) == {}
        assert succeeded(replay.run("/rooms:delete?", "delete-room")) == {}

        rooms = {room["roomID"]: room for room in succeeded(replay.run("/rooms'"))["results"]}
        assert rooms["created-room"] == {"roomID": "created-room", "jurisdiction": "eu", "status": "open"}
        assert rooms["close-room"]["status"] == "closed"
        assert rooms["delete-room"]["status"] == "deleted"

        # The error cases the seed names, with the same commands.
        failed(replay.run("/rooms:create?", "created-room"), 409)  # create twice
        failed(replay.run("/rooms:delete?", "created-room"), 409)  # delete an open room
        failed(replay.run("/rooms:close?", "close-room"), 409)  # close a closed room
        failed(replay.run("/rooms:delete?", "delete-room"), 410)  # delete a deleted room
        failed(replay.run("/rooms/contents?", "delete-room"), 410)  # contents of a deleted room
        failed(replay.run("/rooms/contents?", "never-made"), 404)
        failed(replay.run("/rooms:close?", "never-made"), 404)

        # One set of rooms: the room closed through Reflect refuses new native streams.
        response = native.get("/v1/rooms/close-room/variables/x:listen")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["status"] == "FAILED_PRECONDITION"
