"""Loading gateway.yaml: interpolation, defaults, errors that name the key and the line (never a secret)."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from gateway.config_loader import ConfigError, api_keys, config_path, load_config

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-value-from-the-environment-0123"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ if environ is not None else {})
    return str(info.value)


ADMIN = """
auth:
  keys:
    - name: admin
      key: "${KEY}"
      permissions: ["*"]
"""


# -- shipped files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [ROOT / "gateway.yaml", *sorted((ROOT / "config").glob("*.yaml"))],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path, {"ROOM_API_SECRET_KEY": SECRET})
    assert config.auth.keys, "a shipped config without a key could not start"


def test_the_default_config_is_the_embedded_default() -> None:
    config = load_config(ROOT / "gateway.yaml", {"ROOM_API_SECRET_KEY": SECRET})
    assert config.listen.http == "127.0.0.1:8080"
    assert config.listen.grpc == "127.0.0.1:50051"
    assert config.backend == "sqlite:///rooms.db"  # persists with no server
    [admin] = config.auth.keys
    assert admin.key is not None and admin.key.get_secret_value() == SECRET
    assert admin.permissions == ["*"]


def test_the_default_config_without_its_key_says_how_to_set_it() -> None:
    message = error_of(ROOT / "gateway.yaml")
    assert "ROOM_API_SECRET_KEY is not set" in message
    assert "export ROOM_API_SECRET_KEY=$(room-gateway keys new --raw)" in message
    assert "auth.keys[0].key" in message


# -- path ---------------------------------------------------------------------------------------------------


def test_config_path_prefers_the_option_then_the_environment_then_the_default() -> None:
    assert config_path("a.yaml", {"GATEWAY_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert config_path(None, {"GATEWAY_CONFIG": "b.yaml"}) == Path("b.yaml")
    assert config_path(None, {}) == Path("gateway.yaml")


# -- interpolation ------------------------------------------------------------------------------------------


def test_variables_and_defaults_are_interpolated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen:
          http: "${HOST:-127.0.0.1}:${HTTP_PORT:-8080}"
          grpc: ${GRPC:-127.0.0.1:0}
        auto_create_rooms: ${AUTO:-false}
        shutdown_grace_seconds: ${GRACE}
        auth:
          keys:
            - name: admin
              key: "${KEY}"
              permissions: ["*"]
              rooms: ["${PREFIX}-*", "literal-$${NOT_A_VARIABLE}"]
        """,
    )
    config = load_config(
        path, {"KEY": SECRET, "HTTP_PORT": "9000", "GRACE": "2.5", "PREFIX": "team", "GRPC": ""}
    )
    assert config.listen.http == "127.0.0.1:9000"
    assert config.listen.grpc == "127.0.0.1:0"  # set but empty: the default applies (as ${VAR:-} in sh)
    assert config.auto_create_rooms is False
    assert config.shutdown_grace_seconds == 2.5
    assert config.auth.keys[0].rooms == ["team-*", "literal-${NOT_A_VARIABLE}"]


def test_a_value_from_the_environment_cannot_change_the_structure(tmp_path: Path) -> None:
    tricky = "abc: def # not a comment\n  - not: a list 0123456789"
    config = load_config(write(tmp_path, ADMIN), {"KEY": tricky})
    key = config.auth.keys[0].key
    assert key is not None and key.get_secret_value() == tricky


def test_an_unset_variable_names_the_variable_the_key_and_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backend: "${BACKEND_URL}"
        auth:
          keys:
            - name: admin
              key: "${KEY}"
              permissions: ["*"]
        """,
    )
    message = error_of(path, {"KEY": SECRET})
    assert "line 1: backend: environment variable BACKEND_URL is not set" in message
    assert "${BACKEND_URL:-default}" in message


def test_every_unset_variable_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend: "${ONE}"\nlisten: {http: "${TWO}"}\n')
    message = error_of(path)
    assert "line 1: backend: environment variable ONE" in message
    assert "line 2: listen.http: environment variable TWO" in message


@pytest.mark.parametrize("reference", ["${}", "${1ABC}", "${A:B}", "${A:-${B}}", "${UNCLOSED"])
def test_a_malformed_reference_is_an_error(tmp_path: Path, reference: str) -> None:
    message = error_of(write(tmp_path, f'backend: "{reference}"\n'), {"A": "x", "B": "y"})
    assert "line 1: backend: malformed variable reference" in message


# -- defaults -----------------------------------------------------------------------------------------------


def test_defaults_fill_what_is_not_given(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ADMIN), {"KEY": SECRET})
    assert config.listen.http == "127.0.0.1:8080"
    assert config.backend == "memory://"
    assert config.auto_create_rooms is True
    assert config.http.max_body_bytes == 1024 * 1024
    assert config.rate_limits.limits[0].limit == "20/second"
    assert config.shutdown_grace_seconds == 10.0


# -- errors name the key path and the line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            """
            auth:
              keys:
                - name: admin
                  key: "${KEY}"
            """,
            "line 3: auth.keys[0].permissions: required key is missing",
        ),
        (
            """
            auth:
              keys:
                - name: admin
                  key: "${KEY}"
                  permissions: [rooms:read, rooms:fly]
            """,
            "line 5: auth.keys[0].permissions: unknown permission(s) ['rooms:fly']",
        ),
        (
            """
            auth:
              keys:
                - name: admin
                  key: "${KEY}"
                  key_sha256: "00"
                  permissions: ["*"]
            """,
            "line 5: auth.keys[0].key_sha256: key_sha256 must be 64 hexadecimal characters",
        ),
        (
            """
            auth:
              keys:
                - name: admin
                  permissions: ["*"]
            """,
            "line 3: auth.keys[0]: give exactly one of key and key_sha256",
        ),
        (
            """
            listen:
              http: localhost
            """,
            "line 2: listen.http: expected host:port",
        ),
        (
            """
            listen: {grpc: "127.0.0.1:70000"}
            """,
            "line 1: listen.grpc: expected host:port",
        ),
        (
            """
            auth:
              keyz: []
            """,
            "line 2: auth.keyz: unknown key (known here: keys, room_tokens)",
        ),
        (
            """
            backend: memory
            """,
            "line 1: backend: expected a URL such as memory://",
        ),
        (
            """
            auto_create_rooms: maybe
            """,
            "line 1: auto_create_rooms: Input should be a valid boolean",
        ),
        (
            """
            rate_limits:
              strategy: leaky-bucket
            """,
            "line 2: rate_limits.strategy: Input should be 'fixed-window', 'moving-window' or",
        ),
        (
            """
            rate_limits:
              limits:
                - by: ip
                  limit: lots
            """,
            "line 4: rate_limits.limits[0].limit: expected a rate such as '20/second'",
        ),
        (
            """
            shutdown_grace_seconds: -1
            """,
            "line 1: shutdown_grace_seconds: Input should be greater than or equal to 0",
        ),
        (
            """
            listen:
              http: "127.0.0.1:1"
            listen:
              http: "127.0.0.1:2"
            """,
            "line 3: listen: duplicate key",
        ),
    ],
)
def test_an_invalid_value_names_its_key_and_line(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = write(tmp_path, yaml_text)
    message = error_of(path, {"KEY": SECRET})
    assert f"{path}, {expected}" in message


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml: no such configuration file" in message
    assert "--config" in message and "GATEWAY_CONFIG" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1: (top level): the file is empty"),
        ("- a\n- b\n", "line 1: (top level): expected a mapping of settings, got a list"),
        ("just words\n", "line 1: (top level): expected a mapping of settings, got a single value"),
        ("listen: {http: [1\n", "line 2, column 1: not valid YAML"),
        (
            "a: 1\n---\nb: 2\n",
            "not valid YAML: expected a single document in the stream: but found another document",
        ),
        ("backend: !!python/object:os.system x\n", "line 1, column 10: not valid YAML"),
    ],
)
def test_a_file_that_is_not_a_yaml_mapping_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    assert expected in error_of(path)


def test_a_file_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    assert "cannot read the configuration: it is not UTF-8 text" in error_of(path)


# -- secrets ------------------------------------------------------------------------------------------------


def test_secrets_are_never_echoed(tmp_path: Path) -> None:
    literal = "a-literal-key-written-in-the-file"
    path = write(
        tmp_path,
        f"""
        listen:
          http: "${{API_TOKEN}}"
        backend: "${{DATABASE_URL}}"
        auth:
          keys:
            - name: admin
              key: "{literal}"
              permissions: [nope]
            - name: other
              key: "${{KEY}}"
              permissions: [nope]
        """,
    )
    environ = {
        "API_TOKEN": "tok-0123456789abcdef",
        "DATABASE_URL": "pg-without-scheme:hunter2-password",
        "KEY": SECRET,
    }
    message = error_of(path, environ)
    for secret in (literal, SECRET, *environ.values()):
        assert secret not in message
    assert "listen.http" in message and "backend" in message and "***" in message


def test_a_yaml_error_does_not_quote_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'auth:\n  keys:\n    - key: "a-literal-secret-0123456789"\n      name: [\n')
    message = error_of(path)
    assert "a-literal-secret" not in message
    assert "not valid YAML" in message


# -- keys for the policy ----------------------------------------------------------------------------------


def test_keys_become_digests(tmp_path: Path) -> None:
    hashed = hashlib.sha256(b"another-key-0123456789").hexdigest().upper()
    path = write(
        tmp_path,
        f"""
        auth:
          keys:
            - name: admin
              key: "${{KEY}}"
              permissions: ["*"]
            - name: reader
              key_sha256: "{hashed}"
              permissions: [rooms:read]
              rooms: ["public-*"]
        """,
    )
    admin, reader = api_keys(load_config(path, {"KEY": SECRET}).auth)
    assert admin.name == "admin"
    assert admin.sha256 == hashlib.sha256(SECRET.encode()).digest()
    assert admin.permissions == frozenset({"*"})
    assert reader.sha256 == bytes.fromhex(hashed)
    assert reader.rooms == ("public-*",)
    assert SECRET not in repr(load_config(path, {"KEY": SECRET}))
