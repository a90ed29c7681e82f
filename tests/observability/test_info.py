"""``GET /v1/info`` (``metrics:read``) and ``room-gateway status``, which asks a running gateway for it."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.instance import INSTANCE_ID
from tests.security.live import ADMIN_KEY, READER_KEY, live_config, live_gateway


async def test_info_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = live_config(surfaces={"workadventure": {"enabled": True}})
    async with live_gateway(config) as gw, httpx.AsyncClient(base_url=gw.http_url) as client:
        answer = await client.get("/v1/info", headers={"X-API-Key": ADMIN_KEY})
        assert answer.status_code == 200
        info = answer.json()
        assert set(info) == {"version", "instanceId", "startTime", "backend", "surfaces", "listeners"}
        assert info["instanceId"] == INSTANCE_ID and uuid.UUID(info["instanceId"]).version == 4
        assert info["backend"] == {"scheme": "memory", "up": True}
        assert info["surfaces"] == ["native", "workadventure"]
        assert info["listeners"] == {
            "http": f"{gw.http[0]}:{gw.http[1]}",
            "grpc": f"{gw.grpc[0]}:{gw.grpc[1]}",
        }
        assert info["startTime"].endswith("Z")
        assert ADMIN_KEY not in answer.text
        assert (await client.get("/v1/info", headers={"X-API-Key": READER_KEY})).status_code == 403
        assert (await client.get("/v1/info")).status_code == 401

        path = tmp_path / "gateway.yaml"
        path.write_text(
            f'listen: {{http: "{gw.http[0]}:{gw.http[1]}"}}\n'
            "auth:\n  keys:\n"
            f'    - {{name: reader, key: "{READER_KEY}", permissions: [rooms:read]}}\n'
            f'    - {{name: admin, key: "{ADMIN_KEY}", permissions: ["*"]}}\n'
        )
        status = await asyncio.to_thread(main, ["status", "--config", str(path)])
    assert status == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["instanceId"] == INSTANCE_ID
    assert ADMIN_KEY not in printed


def test_status_without_a_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        'listen: {http: "127.0.0.1:1"}\n'
        f'auth: {{keys: [{{name: a, key: "{ADMIN_KEY}", permissions: ["*"]}}]}}\n'
    )
    assert main(["status", "--config", str(path)]) == 1
    assert "no gateway answers at http://127.0.0.1:1/v1/info" in capsys.readouterr().err
