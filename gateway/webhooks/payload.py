"""A webhook's body and its Standard Webhooks headers.

The body (``API.md``): ``{"type", "timestamp", "data": {"roomId", "seq", "epoch", "change", "previous"?,
"patch"?}}``, the Change in the native API's proto3 JSON (the codec of :mod:`gateway.edge.json_codec`, so a
receiver reads the same shape as ``ListChanges``; 64-bit integers as strings), ``timestamp`` the change's
time. ``previous`` is the variable's value and version before a ``variable.set`` or ``variable.deleted``
when it had one; ``patch`` the RFC 7386 merge patch from the previous value to the new one when both are
objects, made by ``json-merge-patch`` (its ``create_patch``). A merge patch cannot say "set to null" (RFC
7386 §2: null removes a member), so a member that became ``null`` reads as removed: ``change`` has it.

The headers are signed by the ``standardwebhooks`` library itself (``webhook-signature: v1,<base64>`` over
``{id}.{timestamp}.{body}``), the same code receivers verify with; ``webhook-timestamp`` is the attempt's
time (receivers refuse one more than five minutes off), ``webhook-id`` the message's id, kept by retries.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import json_merge_patch  # type: ignore[import-untyped]  # ships no type information
import orjson
from standardwebhooks import Webhook

from gateway import schema
from gateway.core.outbox import OutboxMessage
from gateway.edge.json_codec import Codecs, MessageCodec, format_timestamp

USER_AGENT = "room-gateway-webhooks"


@functools.cache
def _change_codec() -> MessageCodec:
    return Codecs(()).get(schema.message("roomgateway.v1.Change"))


def body(message: OutboxMessage) -> bytes:
    """The JSON body of ``message``."""
    change = message.change
    if change is None:  # webhook.test
        time = message.created_time or datetime.now(UTC)
        data: dict[str, Any] = {"endpoint": message.endpoint}
        return orjson.dumps({"type": message.type, "timestamp": format_timestamp(time), "data": data})
    data = {
        "roomId": message.room_id,
        "seq": str(change.seq),
        "epoch": change.epoch,
        "change": _change_codec().encode(change),
    }
    previous = message.previous
    if previous is not None:
        data["previous"] = {"value": previous.value, "version": str(previous.version)}
        new = change.variable.value if change.variable is not None else None
        if isinstance(previous.value, dict) and isinstance(new, dict):
            data["patch"] = json_merge_patch.create_patch(previous.value, new)
    time = change.time or message.created_time or datetime.now(UTC)
    return orjson.dumps({"type": message.type, "timestamp": format_timestamp(time), "data": data})


class Signer:
    """The Standard Webhooks headers of one endpoint's messages (its ``whsec_`` secret)."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)

    def headers(self, message_id: str, content: bytes, now: datetime) -> dict[str, str]:
        now = now.astimezone(UTC)
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(message_id, now, content.decode()),
        }
