"""Every ``curl`` example of SignalWire's document (seed ``002_*``) runs with the real ``curl`` against a real
``room-gateway serve`` with the SignalWire surface on, and answers as the vendor does.

The examples are read from the seed at run time (``shared/seeds/`` beside the clone, as in CI). A command is
run as the document prints it: the only change is its base URL (``https://$SPACE_URL`` → the gateway's
``http://127.0.0.1:PORT``; TLS is a proxy's job here), and its credentials come from the environment the
document names (``PROJECT_ID``, ``API_TOKEN``, ``ROOM_ID`` — the id the create call answered, which the
document says to keep). One quirk of the document is repaired: its last example ends with a ``\\`` that
continues into the Node.js tab that follows, so a ``\\`` before a line that is not part of the command is
dropped. The status of each answer is read without touching the command: ``write-out`` in a ``.curlrc``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import ROOT, GatewayProcess, gateway_env

SEEDS = ROOT.parent / "shared" / "seeds"
PROJECT = "seed-project-0001"
KEY = "signalwire-curl-key-0123456789abcdef"
DOCUMENTED_BASE = "https://$SPACE_URL"
STATUS_MARK = "\n@@status="
TIMEOUT = 15.0


@dataclass(frozen=True)
class Example:
    command: str

    @property
    def method(self) -> str:
        words = shlex.split(self.command.replace("\\\n", " "))
        return words[words.index("-X") + 1] if "-X" in words else "GET"

    @property
    def path(self) -> str:
        words = shlex.split(self.command.replace("\\\n", " "))
        return next(w for w in words if w.startswith(DOCUMENTED_BASE)).removeprefix(DOCUMENTED_BASE)


def seed_document() -> Path | None:
    found = sorted(SEEDS.glob("002_*.txt"))
    return found[0] if found else None


def curl_examples(text: str) -> list[Example]:
    """The ``curl`` commands of the document, each with its continuation lines and quoted bodies."""
    lines = text.splitlines()
    examples, at = [], 0
    while at < len(lines):
        if not lines[at].startswith("curl "):
            at += 1
            continue
        command = [lines[at]]
        at += 1
        while at < len(lines) and (_open_quote("\n".join(command)) or command[-1].endswith("\\")):
            if not _open_quote("\n".join(command)) and not _continues(lines[at]):
                command[-1] = command[-1].removesuffix("\\").rstrip()  # the document's dangling "\"
                break
            command.append(lines[at])
            at += 1
        examples.append(Example("\n".join(command)))
    return examples


def _continues(line: str) -> bool:
    """A line that carries on a shell command: an option or the rest of a quoted argument."""
    return line.lstrip().startswith("-")


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text.replace("\\\n", " ").removesuffix("\\"))
    except ValueError:
        return True
    return False


@dataclass
class Answer:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


class Replayer:
    """Runs commands with bash from a folder whose ``.curlrc`` makes curl quiet and print the status."""

    def __init__(self, folder: Path, base_url: str) -> None:
        self.folder = folder
        self.base_url = base_url
        write_out = STATUS_MARK.encode("unicode_escape").decode() + "%{http_code}"
        (folder / ".curlrc").write_text(f'silent\nshow-error\nwrite-out = "{write_out}"\n')
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CURL")},
            "CURL_HOME": str(folder),
            "HOME": str(folder),
            "PROJECT_ID": PROJECT,
            "API_TOKEN": KEY,
            "SPACE_URL": base_url.removeprefix("http://"),
        }

    def run(self, command: str, **env: str) -> Answer:
        script = command.replace(DOCUMENTED_BASE, self.base_url)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.folder,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        body, _, status = done.stdout.rpartition(STATUS_MARK.lstrip("\n"))
        return Answer(int(status), body.removesuffix("\n"))


@pytest.fixture(scope="module")
def document() -> str:
    found = seed_document()
    if found is None:
        message = f"the seed documents are not beside the clone ({SEEDS}/002_*.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": CI must run this test")
        pytest.skip(message)
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing: CI must run this test")
        pytest.skip("needs the curl binary")
    return found.read_text(encoding="utf-8")


@pytest.fixture
def replayer(tmp_path: Path) -> Iterator[Replayer]:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            listen: {{http: "127.0.0.1:0", grpc: "127.0.0.1:0"}}
            backend: "memory://"
            auth:
              keys:
                - name: admin
                  key: "${{ROOM_API_SECRET_KEY}}"
                  permissions: ["*"]
              room_tokens:
                secret: "signalwire-curl-token-secret-0123456789abcdef"
            surfaces:
              signalwire: {{enabled: true, project_id: "{PROJECT}"}}
            shutdown_grace_seconds: 2
            """
        ),
        encoding="utf-8",
    )
    process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=KEY))
    folder = tmp_path / "client"
    folder.mkdir()
    try:
        yield Replayer(folder, process.http_url)
    finally:
        process.stop()


def test_the_document_has_the_four_examples(document: str) -> None:
    examples = curl_examples(document)
    assert [(e.method, e.path) for e in examples] == [
        ("POST", "/api/video/conferences"),
        ("GET", "/api/video/conferences/$ROOM_ID/conference_tokens"),
        ("PUT", "/api/video/conferences/$ROOM_ID"),
        ("DELETE", "/api/video/conferences/$ROOM_ID"),
    ]
    for example in examples:
        assert '-u "$PROJECT_ID:$API_TOKEN"' in example.command
        assert example.command.count(DOCUMENTED_BASE) == 1 and "axios" not in example.command


def test_every_curl_example_of_the_document_runs_as_written(document: str, replayer: Replayer) -> None:
    create, tokens, update, delete = curl_examples(document)
    sent = json.loads(shlex.split(create.command.replace("\\\n", " "))[-1])

    created = replayer.run(create.command)
    assert created.status == 201, created.body
    room = created.json()
    uuid.UUID(room["id"])
    assert {k: room[k] for k in sent} == sent
    assert {"created_at", "updated_at", "description", "dark_primary"} <= set(room)
    room_id = room["id"]

    # "find it by listing your video conferences, finding the room name … and reading its id"
    listed = replayer.run(f'curl "{DOCUMENTED_BASE}/api/video/conferences" -u "$PROJECT_ID:$API_TOKEN"')
    assert listed.status == 200
    assert {"self", "first"} <= set(listed.json()["links"])
    assert [c["id"] for c in listed.json()["data"] if c["name"] == "my_room"] == [room_id]

    listed_tokens = replayer.run(tokens.command, ROOM_ID=room_id)
    assert listed_tokens.status == 200, listed_tokens.body
    entries = {entry["name"]: entry for entry in listed_tokens.json()["data"]}
    assert set(entries) == {"moderator", "guest"}
    for entry in entries.values():
        assert entry["token"] and entry["scopes"] and uuid.UUID(entry["id"])

    updated = replayer.run(update.command, ROOM_ID=room_id)
    assert updated.status == 200, updated.body
    changed = json.loads(shlex.split(update.command.replace("\\\n", " "))[-1])
    assert changed["display_name"] == "Our Room's Name"  # the shell's '\'' quoting came through
    assert {k: updated.json()[k] for k in changed} == changed
    # "Any room parameters we did not include in the update call will retain the settings we used"
    kept = {k: v for k, v in sent.items() if k not in changed}
    assert {k: updated.json()[k] for k in kept} == kept
    assert updated.json()["id"] == room_id

    deleted = replayer.run(delete.command, ROOM_ID=room_id)
    assert (deleted.status, deleted.body) == (204, "")
    gone = replayer.run(tokens.command, ROOM_ID=room_id)
    assert (gone.status, gone.json()) == (404, {"error": "Not Found"})


def test_the_error_cases_the_document_names(document: str, replayer: Replayer) -> None:
    create = curl_examples(document)[0]
    # "API requests without authentication will also fail."
    anonymous = replayer.run(create.command.replace('-u "$PROJECT_ID:$API_TOKEN"', ""))
    assert (anonymous.status, anonymous.json()) == (401, {"error": "Unauthorized"})
    wrong = replayer.run(create.command, API_TOKEN="not-the-token-0123456789")
    assert (wrong.status, wrong.json()) == (401, {"error": "Unauthorized"})
    other_project = replayer.run(create.command, PROJECT_ID="someone-else")
    assert other_project.status == 401
    # The room name is unique.
    assert replayer.run(create.command).status == 201
    again = replayer.run(create.command)
    assert again.status == 422
    assert again.json()["errors"][0]["code"] == "value_not_unique"
    # The room id is required for the calls that name one.
    missing = replayer.run(curl_examples(document)[1].command, ROOM_ID=str(uuid.uuid4()))
    assert (missing.status, missing.json()) == (404, {"error": "Not Found"})
