"""The webhook outbox in Redis: what the logging scripts are told to write, and messages read back.

Every logging script writes a change's messages itself (:data:`~.scripts.PRELUDE`'s ``enqueue``), in the
same script as the change, so they exist exactly when the change does. Per endpoint (names are
``[a-z0-9-]``, so they cannot run into each other's keys)::

    {prefix}wh:{endpoint}:due       sorted set: pending message id -> due time (ms); a claim moves it to
                                    the lease's end, so a claimed message is not due again until then
    {prefix}wh:{endpoint}:all       sorted set: every message id -> its creation time (ms)
    {prefix}wh:{endpoint}:m:{id}    hash: room, payload (the Change's record), previous (the variable's
                                    record before the write), status, attempts, due, created, log
    {prefix}wh:{endpoint}:state     hash: enabled, reason, failing_since, last_success

**Keys outside ``KEYS``.** Redis asks scripts to name every key they touch in ``KEYS`` (for Cluster
routing and ACL checks); these do not, and cannot without a round trip more:

- the logging scripts (:data:`~.scripts.PRELUDE`'s ``enqueue``) write each target endpoint's ``:due``,
  ``:all`` and ``:m:{id}``, from the key prefix and endpoint names in ``ARGV[9]``. The message's id ends
  with the seq the script itself assigns (``{id}-{seq}``, several per PRESENCE_SWEEP), so the hash's name
  does not exist before the script runs; declaring it would mean ids without the seq, one per logged
  change passed in, and a variable number of keys after each script's own.
- CLAIM, REPLAY and PRUNE read message ids from a sorted set and then touch those messages' hashes
  (``ARGV[4]``/``ARGV[3]`` is their key prefix): the names are only known inside the script. SETTLE
  takes a batch of attempts, any number, with their ids after the prefix in ``ARGV[1]``: naming each
  hash in ``KEYS`` too would only pass every id twice.

On one server, which is what this backend serves, Redis runs such scripts as written (a script is atomic
whatever keys it touches). A Redis Cluster would need every key of a room and of an endpoint in one hash
slot (a ``{…}`` hash tag in the prefix), which this backend does not do: it is not supported there, and
an ACL user must be allowed the whole prefix (``~{prefix}*``).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from gateway.core import wire
from gateway.core.models import Change
from gateway.core.outbox import EndpointState, MessageStatus, OutboxMessage, dumps_log, loads_log
from room_gateway_plugins.redis import codec, scripts


def base(prefix: str, endpoint: str) -> str:
    return f"{prefix}wh:{endpoint}"


def spec(prefix: str, room_id: str, change: Change, targets: tuple[str, ...], first_delay: timedelta) -> str:
    """The ``ARGV[9]`` of a logging script: the change's messages for ``targets`` (ids ``{id}-{seq}``).

    Tab-separated (Lua parses it with one ``string.match``, decoding no JSON): id, due (ms), created (ms),
    the endpoints joined by commas (names are ``[a-z0-9-]``), then the byte length of the key prefix and
    the key prefix and the room id, both free strings, run together.
    """
    created = codec.milliseconds(change.time)
    due = created + int(first_delay.total_seconds() * 1000)
    keys = prefix + "wh:"
    head = f"msg_{secrets.token_hex(12)}\t{due}\t{created}\t{','.join(targets)}"
    return f"{head}\t{len(keys.encode())}\t{keys}{room_id}"


def time_of(ms: bytes | str | None) -> datetime | None:
    if ms is None or ms in (b"", ""):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def message_of(endpoint: str, message_id: bytes | str, flat: list[Any]) -> OutboxMessage:
    """A message from its hash's fields as HGETALL lists them."""
    fields = {_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
    return _message(
        endpoint,
        message_id,
        MessageStatus(_text(fields["status"])),
        int(fields["attempts"]),
        time_of(fields.get("due")),
        fields.get("room"),
        fields.get("payload"),
        fields.get("previous"),
        fields.get("created"),
        fields.get("log"),
    )


def claimed_of(endpoint: str, lease_end: datetime, reply: bytes | list[Any]) -> list[OutboxMessage]:
    """The messages of CLAIM's reply (a JSON array, :data:`~.scripts.CLAIMED_FIELDS` items a message;
    an empty list when none was due), pending and due at their lease's end."""
    if not reply:
        return []
    flat = orjson.loads(reply)  # type: ignore[arg-type]  # not a list: the array's text
    step = scripts.CLAIMED_FIELDS
    return [
        _message(endpoint, one[0], MessageStatus.PENDING, int(one[1]), lease_end, *one[2:])
        for one in (flat[i : i + step] for i in range(0, len(flat), step))
    ]


def _message(
    endpoint: str,
    message_id: bytes | str,
    status: MessageStatus,
    attempts: int,
    due_time: datetime | None,
    room: bytes | str | None,
    payload: bytes | str | None,
    previous: bytes | str | None,
    created: bytes | str | None,
    log: bytes | str | None,
) -> OutboxMessage:
    change = wire.change_of(payload) if payload else None
    return OutboxMessage(
        id=_text(message_id),
        endpoint=endpoint,
        room_id=_text(room or b""),
        change=change,
        previous=codec.loads_variable(previous) if previous and change is not None else None,
        status=status,
        attempts=attempts,
        due_time=due_time,
        created_time=time_of(created),
        log=loads_log(log),
    )


def fields_of(message: OutboxMessage) -> dict[Any, Any]:
    """The hash of a message made outside a change (``webhook.test``)."""
    payload = b"" if message.change is None else wire.change_bytes(message.change)
    return {
        "room": message.room_id,
        "payload": payload,
        "status": message.status.value,
        "attempts": str(message.attempts),
        "due": str(codec.milliseconds(message.due_time)) if message.due_time else "",
        "created": str(codec.milliseconds(message.created_time)),
        "log": dumps_log(message.log),
    }


def state_of(flat: list[Any] | None) -> EndpointState:
    fields = {_text(k): v for k, v in zip((flat or [])[::2], (flat or [])[1::2], strict=True)}
    return EndpointState(
        enabled=fields.get("enabled", b"1") in (b"1", "1"),
        disabled_reason=_text(fields.get("reason", b"")),
        failing_since=time_of(fields.get("failing_since")),
        last_success_time=time_of(fields.get("last_success")),
    )


def state_fields(state: EndpointState) -> dict[Any, Any]:
    fields: dict[Any, Any] = {
        "enabled": "1" if state.enabled else "0",
        "reason": state.disabled_reason,
    }
    if state.failing_since is not None:
        fields["failing_since"] = str(codec.milliseconds(state.failing_since))
    if state.last_success_time is not None:
        fields["last_success"] = str(codec.milliseconds(state.last_success_time))
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
