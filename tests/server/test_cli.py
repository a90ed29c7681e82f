"""The command line, run as a subprocess as a user would: check-config, keys new, serve without a key."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.server.conftest import KEY, ROOT, gateway_env, run_cli, write_config


def test_check_config_summarizes_a_valid_file() -> None:
    result = run_cli("check-config", env=gateway_env(ROOM_API_SECRET_KEY=KEY))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(
        "gateway.yaml: OK — http 127.0.0.1:8080, grpc 127.0.0.1:50051, backend sqlite://…"
    )
    assert "1 key(s) (admin)" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_check_config_takes_the_path_from_the_option_or_the_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    by_option = run_cli("check-config", "--config", str(config), env=gateway_env(ROOM_API_SECRET_KEY=KEY))
    by_env = run_cli("check-config", env=gateway_env(ROOM_API_SECRET_KEY=KEY, GATEWAY_CONFIG=str(config)))
    for result in (by_option, by_env):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{config}: OK — http 127.0.0.1:0")


def test_check_config_reports_errors_with_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("auth:\n  keys:\n    - name: admin\n      key: short\n      permissions: [rooms:fly]\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{config}, line 4: auth.keys[0].key: a key must be at least 16 characters" in result.stderr
    assert f"{config}, line 5: auth.keys[0].permissions: unknown permission(s) ['rooms:fly']" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_refuses_a_file_without_keys(tmp_path: Path) -> None:
    config = tmp_path / "nokeys.yaml"
    config.write_text("backend: memory://\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "no API key configured" in result.stderr
    assert "export ROOM_API_SECRET_KEY=$(room-gateway keys new --raw)" in result.stderr


def test_check_config_names_the_installed_backends(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("memory://", "nosuch://somewhere"))
    result = run_cli("check-config", "--config", str(config), env=gateway_env(ROOM_API_SECRET_KEY=KEY))
    assert result.returncode == 2
    assert "backend: no installed plugin serves nosuch://" in result.stderr
    assert "memory://" in result.stderr


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "absent.yaml: no such configuration file" in result.stderr


def test_keys_new_prints_a_key_and_its_sha256_line() -> None:
    result = run_cli("keys", "new")
    assert result.returncode == 0
    key_line, hash_line = result.stdout.splitlines()
    key = key_line.removeprefix("key: ")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)  # secrets.token_urlsafe(32)
    assert hash_line == f"key_sha256: {hashlib.sha256(key.encode()).hexdigest()}"
    assert run_cli("keys", "new").stdout != result.stdout


def test_keys_new_raw_prints_only_the_key() -> None:
    result = run_cli("keys", "new", "--raw")
    assert result.returncode == 0
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}\n", result.stdout)


def test_a_fresh_key_is_accepted_by_check_config(tmp_path: Path) -> None:
    key = run_cli("keys", "new", "--raw").stdout.strip()
    config = write_config(tmp_path)
    result = run_cli("check-config", "--config", str(config), env=gateway_env(ROOM_API_SECRET_KEY=key))
    assert result.returncode == 0, result.stderr


def test_serve_without_a_key_exits_non_zero_and_says_how_to_set_one() -> None:
    result = run_cli("serve")  # the shipped gateway.yaml, ROOM_API_SECRET_KEY unset
    assert result.returncode == 2
    assert "ROOM_API_SECRET_KEY is not set" in result.stderr
    assert "export ROOM_API_SECRET_KEY=$(room-gateway keys new --raw)" in result.stderr
    assert "listening" not in result.stderr


def test_serve_with_no_keys_configured_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "nokeys.yaml"
    config.write_text('listen: {http: "127.0.0.1:0", grpc: "127.0.0.1:0"}\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "refuses to start" in result.stderr
    assert "ROOM_API_SECRET_KEY" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("keys").returncode == 2


def test_the_console_script_is_installed() -> None:
    script = shutil.which("room-gateway", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . installs the room-gateway script"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0
    for command in ("serve", "check-config", "keys"):
        assert command in result.stdout
