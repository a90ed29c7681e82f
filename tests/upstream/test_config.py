"""``upstreams:`` in gateway.yaml: what loads, and the errors that name the line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.app import create_gateway
from gateway.config_loader import ConfigError, load_config
from gateway.upstream.descriptors import include_paths
from tests.compat.workadventure.conftest import PROTOS
from tests.server.conftest import run_cli
from tests.upstream.conftest import ECHO_PROTO, HERE

KEY = "config-test-key-0123456789"
ENV = {"ECHO_KEY": "the-echo-upstream-secret-0123"}


def write(folder: Path, upstream: str, *, keys: str = "", extra: str = "") -> Path:
    path = folder / "gateway.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            auth:
              keys:
                - name: admin
                  key: "{KEY}"
                  permissions: ["*"]
            """
        )
        + textwrap.indent(textwrap.dedent(keys), "    ")
        + textwrap.dedent(extra)
        + "upstreams:\n"
        + textwrap.indent(textwrap.dedent(upstream), "  "),
        encoding="utf-8",
    )
    return path


def echo(**fields: str) -> str:
    values = {
        "name": "echo",
        "url": '"grpc://127.0.0.1:50099"',
        "protos": f'["{ECHO_PROTO}"]',
        "room_field": "room",
        **fields,
    }
    return "- " + "\n  ".join(f"{key}: {value}" for key, value in values.items() if value) + "\n"


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as failure:
        load_config(path, ENV)
    return str(failure.value)


def test_an_upstream_loads_with_its_methods(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, echo(metadata='{x-api-key: "${ECHO_KEY}"}')), ENV)
    [upstream] = config.upstreams
    assert upstream.schema.services == ("echo.v1.Echo",)
    assert {m.name for m in upstream.schema.methods.values()} == {
        "Say",
        "Repeat",
        "Collect",
        "Chat",
        "Fail",
        "Whoami",
    }
    assert upstream.metadata == {"x-api-key": ENV["ECHO_KEY"]}


def test_relative_protos_resolve_from_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    (folder / "protos").mkdir(parents=True)
    (folder / "protos" / "room-api.proto").write_text((PROTOS / "roomApi" / "room-api.proto").read_text())
    path = write(folder, echo(name="wa", protos='["protos/room-api.proto"]'))
    assert load_config(path, ENV).upstreams[0].schema.services == ("roomApi.RoomApi",)


def test_a_descriptor_set_needs_no_protoc(tmp_path: Path) -> None:
    out = tmp_path / "echo.binpb"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE / 'protos'}",
            *(f"-I{p}" for p in include_paths()),
            "--include_imports", f"--descriptor_set_out={out}", "echo/v1/echo.proto",
        ],
        check=True,
    )  # fmt: skip
    path = write(tmp_path, echo(protos="", descriptor_set=f'"{out}"', services='["echo.v1.Echo"]'))
    assert "/echo.v1.Echo/Say" in load_config(path, ENV).upstreams[0].schema.methods


@pytest.mark.parametrize(
    ("fields", "line", "message"),
    [
        ({"protos": '["missing.proto"]'}, 9, "upstreams[0].protos[0]: no such file"),
        (
            {"services": '["echo.v1.Nope"]'},
            11,
            "unknown service 'echo.v1.Nope' (the files declare: echo.v1.Echo)",
        ),
        ({"room_field": "roomId"}, 10, "no request of the services has a field 'roomId'"),
        ({"room_field": "count"}, 10, "echo.v1.EchoRequest.count is not a string"),
        ({"url": '"http://127.0.0.1:1"'}, 8, "expected grpc://host:port or grpcs://host[:port]"),
        ({"name": "Echo"}, 7, "upstreams[0].name"),
        ({"descriptor_set": '"x.binpb"'}, 7, "give protos (files to compile) or descriptor_set"),
        ({"forward_metadata": "[x-api-key]"}, 11, "the client's credentials: they are never forwarded"),
        ({"metadata": "{grpc-timeout: 1S}"}, 11, "'grpc-timeout' cannot be sent as metadata"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, fields: dict[str, str], line: int, message: str) -> None:
    text = error_of(write(tmp_path, echo(**fields)))
    assert f"line {line}:" in text and message in text, text


def test_a_syntax_error_quotes_protoc(tmp_path: Path) -> None:
    (tmp_path / "bad.proto").write_text('syntax = "proto3";\nmessage {', encoding="utf-8")
    text = error_of(write(tmp_path, echo(protos='["bad.proto"]')))
    assert "line 9: upstreams[0].protos: protoc failed: " in text, text
    assert "bad.proto:2:9: Expected message name" in text


@pytest.mark.parametrize(
    ("permissions", "rooms", "message"),
    [
        ('["echo:Sayy"]', "", "'echo:Sayy': the upstream has no method 'Sayy' (known: Chat, Collect"),
        ('["other:*"]', "", "'other:*': no upstream named 'other' (upstreams: echo)"),
        ('["echo:*"]', '["public-*"]', "upstream 'echo' has no room_field to check them against"),
    ],
)
def test_key_permissions_are_checked_against_the_upstreams(
    tmp_path: Path, permissions: str, rooms: str, message: str
) -> None:
    key = f'- name: limited\n  key: "limited-key-0123456789"\n  permissions: {permissions}\n'
    key += f"  rooms: {rooms}\n" if rooms else ""
    text = error_of(write(tmp_path, echo(room_field="" if rooms else "room"), keys=key))
    assert "auth.keys[1]" in text and message in text, text


def test_secrets_of_metadata_stay_out_of_errors(tmp_path: Path) -> None:
    text = error_of(write(tmp_path, echo(metadata='{x-api-key: "literal-upstream-secret-99", "Bad Key": x}')))
    assert "literal-upstream-secret-99" not in text and "'Bad Key' cannot be sent" in text


async def test_the_workadventure_surface_and_an_upstream_serving_room_api_clash(tmp_path: Path) -> None:
    upstream = echo(name="wa", protos=f'["{PROTOS / "roomApi" / "room-api.proto"}"]')
    config = load_config(
        write(tmp_path, upstream, extra="surfaces:\n  workadventure: {enabled: true}\n"), ENV
    )
    with pytest.raises(ConfigError) as clash:
        create_gateway(config)
    assert "roomApi.RoomApi is also the workadventure surface's service" in str(clash.value)
    assert "surfaces.workadventure.enabled: false" in str(clash.value)


def test_check_config_names_the_upstreams(tmp_path: Path) -> None:
    path = write(tmp_path, echo())
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "surfaces: native, upstream:echo" in result.stdout + result.stderr


async def test_a_rest_route_the_native_api_has_is_refused(tmp_path: Path) -> None:
    (tmp_path / "clash.proto").write_text(
        'syntax = "proto3";\npackage clash.v1;\nimport "google/api/annotations.proto";\n'
        "message R { string room_id = 1; }\n"
        'service C { rpc Get(R) returns (R) { option (google.api.http) = {get: "/v1/rooms/{room_id}"}; } }\n',
        encoding="utf-8",
    )
    config = load_config(
        write(tmp_path, echo(name="clash", protos='["clash.proto"]', room_field="room_id")), ENV
    )
    with pytest.raises(ConfigError) as clash:
        create_gateway(config)
    assert "Get's route GET /v1/rooms/{room_id} is the native API's already" in str(clash.value)
