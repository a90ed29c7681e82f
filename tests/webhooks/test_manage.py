"""The management API (``webhooks:manage``) over REST, against a real receiver: a message failed after the
whole schedule is delivered by ``:retry`` (same id) and ``:replay`` (new ids); disabling and ``:enable``;
``:test``; unknown endpoints and bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx

from gateway.config import GatewayConfig
from tests.conftest import READER_KEY
from tests.webhooks.conftest import running, webhook_config
from tests.webhooks.receiver import Receiver


async def wait_for_status(client: httpx.AsyncClient, status: str, count: int) -> list[dict[str, object]]:
    for _ in range(200):
        found = (await client.get("/v1/webhooks/app/messages", params={"status": status})).json()["messages"]
        if len(found) >= count:
            return found  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {count} {status} message(s): {found}")


def short(backend_url: str, receiver: Receiver, **webhooks: object) -> GatewayConfig:
    return webhook_config(
        backend_url, {"app": receiver.url}, retry_schedule_seconds=[0, 0.1, 0.1], **webhooks
    )


async def test_a_message_failed_after_the_schedule_is_retried_then_replayed(
    receiver: Receiver, backend_url: str
) -> None:
    down = True
    receiver.answer = lambda _id, _n: 503 if down else 204
    async with running(short(backend_url, receiver)) as (_, client):
        before = datetime.now(UTC) - timedelta(seconds=1)
        assert (await client.post("/v1/rooms", json={"roomId": "r"})).status_code == 200
        [failed] = await wait_for_status(client, "failed", 1)
        assert failed["type"] == "room.created" and failed["roomId"] == "r" and failed["seq"] == "1"
        assert [a["statusCode"] for a in failed["attempts"]] == [503, 503, 503]  # type: ignore[index]
        assert receiver.attempts[failed["messageId"]] == 3 and not receiver.delivered  # type: ignore[index]
        [listed] = (await client.get("/v1/webhooks")).json()["endpoints"]
        assert listed["name"] == "app" and listed["enabled"] is True and listed["failingSince"]
        assert "url" not in listed and "secret" not in listed

        down = False
        retried = await client.post(f"/v1/webhooks/app/messages/{failed['messageId']}:retry", json={})
        assert retried.status_code == 200, retried.text
        await receiver.until(lambda r: failed["messageId"] in r.delivered)
        [delivered] = await wait_for_status(client, "delivered", 1)
        assert delivered["messageId"] == failed["messageId"]

        replayed = await client.post("/v1/webhooks/app:replay", json={"since": before.isoformat()})
        assert replayed.status_code == 200 and replayed.json() == {"numMessages": 1}
        await receiver.until(lambda r: len(r.delivered) == 2)
        copy = next(d for d in receiver.delivered.values() if d.id != failed["messageId"])
        assert copy.body["type"] == "room.created" and copy.body["data"]["seq"] == "1"
        [listed] = (await client.get("/v1/webhooks")).json()["endpoints"]
        assert listed.get("failingSince") is None and listed["lastSuccessTime"]


async def test_an_endpoint_failing_too_long_is_disabled_until_enabled(receiver: Receiver) -> None:
    down = True
    receiver.answer = lambda _id, _n: 500 if down else 200
    config = short("memory://", receiver, disable_after_seconds=0.15)
    async with running(config) as (gateway, client):
        await client.post("/v1/rooms", json={"roomId": "r"})
        for _ in range(200):
            [endpoint] = (await client.get("/v1/webhooks")).json()["endpoints"]
            if not endpoint["enabled"]:
                break
            await asyncio.sleep(0.05)
        assert endpoint["enabled"] is False and "no successful delivery since" in endpoint["disabledReason"]
        assert gateway.metrics is not None
        assert gateway.metrics.sample("room_gateway_webhook_endpoint_disabled", endpoint="app") == 1
        await client.put("/v1/rooms/r/variables/v", json={"value": 1})  # kept while disabled
        await asyncio.sleep(0.3)
        assert not receiver.delivered
        down = False
        enabled = await client.post("/v1/webhooks/app:enable", json={})
        assert enabled.status_code == 200 and enabled.json()["enabled"] is True
        await receiver.until(lambda r: len(r.delivered) == 1)  # the variable.set (room.created had failed)
        assert next(iter(receiver.delivered.values())).body["type"] == "variable.set"


async def test_test_sends_a_webhook_test_ignoring_filters(receiver: Receiver) -> None:
    config = webhook_config("memory://", {"app": receiver.url})
    endpoint = config.webhooks.endpoints[0].model_copy(update={"events": ["member.joined"]})
    config = config.model_copy(
        update={"webhooks": config.webhooks.model_copy(update={"endpoints": [endpoint]})}
    )
    async with running(config) as (_, client):
        sent = await client.post("/v1/webhooks/app:test", json={})
        assert sent.status_code == 200
        message_id = sent.json()["messageId"]
        await receiver.until(lambda r: message_id in r.delivered)
    body = receiver.delivered[message_id].body
    assert body["type"] == "webhook.test" and body["data"] == {"endpoint": "app"}


async def test_unknown_endpoints_bad_input_and_permissions(receiver: Receiver) -> None:
    async with running(webhook_config("memory://", {"app": receiver.url})) as (_, client):
        for method, path in [
            ("GET", "/v1/webhooks/nope/messages"),
            ("POST", "/v1/webhooks/nope:enable"),
            ("POST", "/v1/webhooks/nope:test"),
            ("POST", "/v1/webhooks/app/messages/msg_nope:retry"),
        ]:
            answer = await client.request(method, path, json={} if method == "POST" else None)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["status"] == "NOT_FOUND"
        bad = await client.get("/v1/webhooks/app/messages", params={"status": "lost"})
        assert bad.status_code == 400 and "pending, failed or delivered" in bad.json()["error"]["message"]
        no_since = await client.post("/v1/webhooks/app:replay", json={})
        assert no_since.status_code == 400
        reader = await client.get("/v1/webhooks", headers={"X-API-Key": READER_KEY})
        assert reader.status_code == 403 and reader.json()["error"]["status"] == "PERMISSION_DENIED"
