"""The management API's operations on webhooks (``API.md``: list, messages, retry, replay, enable, test),
behind the RoomService methods of the proto's webhook RPCs."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.config import Webhooks
from gateway.core.backend import Backend
from gateway.core.models import (
    ListWebhookMessagesResponse,
    ListWebhooksResponse,
    ReplayWebhookResponse,
    SendWebhookTestResponse,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from gateway.core.outbox import EndpointState, MessageStatus, OutboxMessage, new_message_id
from gateway.errors import InvalidArgument, NotFound
from gateway.webhooks.deliverer import Delivery

#: Messages listed at most (and by default).
MAX_LISTED = 1000


class WebhookManager:
    """What ``webhooks:manage`` may do, over the backend's outbox and this instance's deliverers (in its
    loop or its worker process: the state is the backend's, the wake-ups go where they run)."""

    def __init__(self, config: Webhooks, backend: Backend, deliverers: Delivery) -> None:
        self._endpoints = {e.name: e for e in config.endpoints}
        self._backend = backend
        self._deliverers = deliverers

    def _known(self, name: str) -> str:
        if name not in self._endpoints:
            known = ", ".join(sorted(self._endpoints)) or "none"
            raise NotFound(f"no webhook endpoint {name!r} (configured: {known})")
        return name

    async def list_webhooks(self) -> ListWebhooksResponse:
        return ListWebhooksResponse([await self._endpoint(name) for name in self._endpoints])

    async def _endpoint(self, name: str) -> WebhookEndpoint:
        endpoint = self._endpoints[name]
        state = await self._backend.get_endpoint_state(name)
        return WebhookEndpoint(
            name=name,
            events=list(endpoint.events),
            rooms=list(endpoint.rooms),
            enabled=state.enabled,
            disabled_reason=state.disabled_reason,
            last_success_time=state.last_success_time,
            failing_since=state.failing_since,
            backlog=await self._backend.outbox_backlog(name),
        )

    async def list_messages(self, name: str, status: str, max_results: int) -> ListWebhookMessagesResponse:
        self._known(name)
        try:
            wanted = MessageStatus(status) if status else None
        except ValueError:
            raise InvalidArgument(f"status must be pending, failed or delivered, not {status!r}") from None
        if max_results < 0:
            raise InvalidArgument("max_results must not be negative")
        limit = min(max_results or MAX_LISTED, MAX_LISTED)
        messages = await self._backend.outbox_messages(name, status=wanted, limit=limit)
        return ListWebhookMessagesResponse([_shown(m) for m in messages])

    async def retry(self, name: str, message_id: str) -> None:
        if not await self._backend.outbox_retry(self._known(name), message_id, now=_now()):
            raise NotFound(f"webhook endpoint {name!r} has no message {message_id!r}")
        self._deliverers.wake()

    async def replay(self, name: str, since: datetime | None) -> ReplayWebhookResponse:
        self._known(name)
        if since is None:
            raise InvalidArgument("since is required: the time from which to send the messages again")
        copied = await self._backend.outbox_replay(name, since=since, now=_now())
        self._deliverers.wake()
        return ReplayWebhookResponse(copied)

    async def enable(self, name: str) -> WebhookEndpoint:
        self._known(name)
        state = await self._backend.get_endpoint_state(name)
        await self._backend.save_endpoint_state(name, EndpointState(True, "", None, state.last_success_time))
        self._deliverers.refresh(name)
        return await self._endpoint(name)

    async def test(self, name: str) -> SendWebhookTestResponse:
        now = _now()
        message = OutboxMessage(new_message_id(), self._known(name), "", None, due_time=now, created_time=now)
        await self._backend.outbox_add([message])
        self._deliverers.wake()
        return SendWebhookTestResponse(message.id)


def _now() -> datetime:
    return datetime.now(UTC)


def _shown(message: OutboxMessage) -> WebhookMessage:
    pending = message.status is MessageStatus.PENDING
    return WebhookMessage(
        message_id=message.id,
        type=message.type,
        room_id=message.room_id,
        seq=message.change.seq if message.change is not None else 0,
        status=message.status.value,
        attempts=[WebhookAttempt(a.time, a.status_code, a.duration_ms, a.error) for a in message.log],
        create_time=message.created_time,
        next_attempt_time=message.due_time if pending else None,
    )
