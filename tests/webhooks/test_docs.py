"""docs/webhooks.md's examples run: its configuration loads, and its Python verifier accepts a real delivery
(and refuses a tampered one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.config_loader import load_config
from tests.conftest import ADMIN_KEY
from tests.webhooks.conftest import running, webhook_config
from tests.webhooks.receiver import SECRET, Receiver

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)


def test_the_configuration_example_loads(tmp_path: Path) -> None:
    [example] = blocks("yaml")
    config = yaml.safe_load(example)
    config["auth"] = {"keys": [{"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]}]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config).replace(SECRET, "${ROOM_WEBHOOK_SECRET}"))
    loaded = load_config(path, {"ROOM_WEBHOOK_SECRET": SECRET}).webhooks
    assert [e.name for e in loaded.endpoints] == ["app"]
    assert loaded.retry_schedule_seconds == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]


async def test_the_python_verifier_accepts_a_real_delivery(receiver: Receiver) -> None:
    [code] = blocks("python")
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    verified = namespace["verified"]
    async with running(webhook_config("memory://", {"app": receiver.url})) as (_, client):
        await client.put("/v1/rooms/lobby/variables/v", json={"value": {"a": 1}})
        await receiver.until(lambda r: len(r.delivered) == 2)
    delivery = next(d for d in receiver.delivered.values() if d.body["type"] == "variable.set")
    assert verified(delivery.raw, delivery.headers, SECRET) == delivery.body  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError):
        verified(delivery.raw.replace(b'"a":1', b'"a":2'), delivery.headers, SECRET)  # type: ignore[operator]
