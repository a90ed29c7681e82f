"""``webhooks:`` in gateway.yaml: a bad endpoint fails ``check-config`` with its line, never its secret."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config_loader import ConfigError, load_config
from tests.server.conftest import KEY, gateway_env, run_cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEAD = f"""
auth:
  keys:
    - {{name: admin, key: "{KEY}", permissions: ["*"]}}
webhooks:
  endpoints:
"""


def write(tmp_path: Path, endpoint: str, tail: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        HEAD.lstrip("\n") + textwrap.indent(textwrap.dedent(endpoint).strip("\n"), "    ") + "\n" + tail
    )
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    return str(info.value)


def test_a_full_endpoint_loads_with_the_defaults_of_api_md(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        - name: app
          url: "https://app.example/hooks/rooms"
          secret: "{SECRET}"
          events: ["variable.set", "room.*"]
          rooms: ["public-*"]
          timeout_seconds: 15
        """,
    )
    webhooks = load_config(path, {}).webhooks
    [app] = webhooks.endpoints
    assert (app.name, app.events, app.rooms, app.timeout_seconds) == (
        "app",
        ["variable.set", "room.*"],
        ["public-*"],
        15,
    )
    assert webhooks.retry_schedule_seconds == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    assert webhooks.disable_after_seconds == 432000
    assert (webhooks.retention.delivered_seconds, webhooks.retention.failed_seconds) == (86400, 1209600)


def test_failed_messages_cannot_be_pruned_before_their_schedule_ends(tmp_path: Path) -> None:
    endpoint = f'- {{name: app, url: "https://app.example/h", secret: "{SECRET}"}}'
    tail = "  retry_schedule_seconds: [0, 60]\n  retention: {failed_seconds: 30}\n"
    message = error_of(write(tmp_path, endpoint, tail))
    assert "retention.failed_seconds (30) must be at least the retry schedule's length (60 s)" in message


@pytest.mark.parametrize(
    ("endpoint", "line", "says"),
    [
        ('- {name: app, url: "http://127.0.0.1:9"}', 6, "secret: required key is missing"),
        ('- name: app\n  url: "http://127.0.0.1:9"\n  secret: "not-a-standard-secret"', 8, "whsec_"),
        ('- name: app\n  url: "http://127.0.0.1:9"\n  secret: "whsec_"', 8, "whsec_"),
        (
            f'- name: app\n  url: "http://x"\n  secret: "{SECRET}"\n  events: [room.created, rooms.*]',
            9,
            "unknown event type(s) ['rooms.*']",
        ),
        (f'- name: App_1\n  url: "http://x"\n  secret: "{SECRET}"', 6, "name: String should match"),
        (f'- name: app\n  url: "ftp://x"\n  secret: "{SECRET}"', 7, "expected an http:// or https:// URL"),
        (f'- name: app\n  url: "http://x"\n  secret: "{SECRET}"\n  timeout_seconds: 0', 9, "greater than 0"),
    ],
    ids=["no-secret", "secret-not-whsec", "empty-whsec", "unknown-type", "bad-name", "bad-url", "timeout"],
)
def test_a_bad_endpoint_is_an_error_at_its_line(tmp_path: Path, endpoint: str, line: int, says: str) -> None:
    message = error_of(write(tmp_path, endpoint))
    assert f"line {line}: webhooks.endpoints[0]." in message
    assert says in message
    assert "not-a-standard-secret" not in message


def test_names_are_unique_and_the_schedule_is_not_empty(tmp_path: Path) -> None:
    one = f'- {{name: app, url: "http://x", secret: "{SECRET}"}}'
    twice = f"{one}\n{one}"
    assert "webhook endpoint names must be unique: ['app']" in error_of(write(tmp_path, twice))
    empty = write(
        tmp_path, f'- {{name: app, url: "http://x", secret: "{SECRET}"}}', "  retry_schedule_seconds: []\n"
    )
    assert "webhooks.retry_schedule_seconds" in error_of(empty)


def test_check_config_fails_with_the_line_and_without_the_secret(tmp_path: Path) -> None:
    path = write(tmp_path, '- name: app\n  url: "http://127.0.0.1:9"\n  secret: "${HOOK_SECRET}"')
    result = run_cli("check-config", "--config", str(path), env=gateway_env(HOOK_SECRET="plain-secret-1234"))
    assert result.returncode == 2
    assert f"{path}, line 8: webhooks.endpoints[0].secret: a webhook secret must be whsec_" in result.stderr
    assert "plain-secret-1234" not in result.stdout + result.stderr
