"""One call of the native API, whatever the transport: authorize, then run the RoomService method.

The REST transcoder and the gRPC server both bind a request into keyword arguments named as the proto
request's fields (see :mod:`gateway.core.service`) and hand them here with the caller's
:class:`~gateway.auth.policy.Principal`. The method table is built from the proto descriptor at start-up,
so a method added to the proto is served by both transports or by neither.

Per call: the policy authorizes the method's one permission (``gateway.auth.permissions.REQUIRED``) and the
room; a room token is then checked against its room's last InvalidateConnections (a backend read, so it
holds across instances); a service method that declares a keyword-only ``caller`` receives the principal.
A server stream opened with a room token makes its user present in the room until it is closed
(:meth:`PresenceRegistry.track <gateway.core.presence.PresenceRegistry.track>`): here, so that REST and
gRPC streams count alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor

from gateway import schema
from gateway.auth.permissions import REQUIRED
from gateway.auth.policy import AuthPolicy, Principal
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.ratelimit import RateLimiter


@dataclass(frozen=True, slots=True)
class Method:
    """A method of the native service, as both transports see it."""

    name: str  # proto name, e.g. "GetVariable"
    python_name: str  # "get_variable"
    input: Descriptor
    output: Descriptor
    server_streaming: bool
    permission: str


def native_methods() -> dict[str, Method]:
    """Every method of ``roomgateway.v1.RoomService``, by proto name."""
    methods = {}
    for m in schema.service().methods:
        methods[m.name] = Method(
            name=m.name,
            python_name=schema.python_name(m.name),
            input=m.input_type,
            output=m.output_type,
            server_streaming=m.server_streaming,
            permission=REQUIRED[m.name],
        )
    return methods


def room_id_of(request: Mapping[str, Any]) -> str:
    """The room a request addresses (``room_id``, or ``room.room_id``), ``""`` for none."""
    room_id = request.get("room_id")
    if isinstance(room_id, str):
        return room_id
    room = request.get("room")
    if isinstance(room, Mapping) and isinstance(room.get("room_id"), str):
        return str(room["room_id"])
    return ""


class Dispatcher:
    """Authorizes and runs native calls.

    :param service: the domain core.
    :param policy: the auth policy (permissions, room patterns).
    :param limiter: the rate-limit policy, whose ``by: room`` limits apply once a call is authorized
        (``None``: no room is limited).
    :param presence: this instance's presence registry (``None``: streams make no one present).
    """

    def __init__(
        self,
        service: RoomService,
        policy: AuthPolicy,
        *,
        limiter: RateLimiter | None = None,
        presence: PresenceRegistry | None = None,
    ) -> None:
        self.service = service
        self.policy = policy
        self.limiter = limiter
        self.presence = presence
        self.methods = native_methods()
        self._handlers = {name: getattr(service, m.python_name) for name, m in self.methods.items()}
        #: Methods whose service coroutine takes the caller (a keyword-only ``caller``): ListRooms filters by
        #: its rooms, CreateRoomToken never grants more than it holds.
        self._takes_caller = frozenset(
            name
            for name, handler in self._handlers.items()
            if (p := inspect.signature(handler).parameters.get("caller")) is not None
            and p.kind is inspect.Parameter.KEYWORD_ONLY
        )
        # Resolved once: a call pays for the room limits only when some are configured.
        self._room_limit = limiter.check_room if limiter is not None and limiter.by_room else None
        self._streams = frozenset(name for name, m in self.methods.items() if m.server_streaming)

    async def call(self, method: str, principal: Principal, request: dict[str, Any]) -> Any:
        """Run ``method`` for ``principal``; returns the domain result (a stream for server streams).

        :raises GatewayError: PERMISSION_DENIED, UNAUTHENTICATED (a room token issued before its room's last
            InvalidateConnections), RESOURCE_EXHAUSTED, or whatever the service answers.
        """
        room_id = room_id_of(request)
        self.policy.authorize(principal, method, room_id)
        if principal.token is not None:
            # Read from the backend, so an InvalidateConnections on any instance counts here.
            await self.service.check_room_token(principal.token)
        if self._room_limit is not None and room_id:
            await self._room_limit(room_id)
        if method in self._takes_caller:
            return await self._handlers[method](**request, caller=principal)
        result = await self._handlers[method](**request)
        if principal.token is not None and self.presence is not None and method in self._streams:
            # The policy has checked that the token's room is the request's.
            return await self.presence.track(result, room_id, principal.token)
        return result

    @property
    def implicit_rooms(self) -> bool:
        """Whether a room comes into being with its first write (``auto_create_rooms``), so that a room not
        created yet is no error to a surface whose vendor has no room lifecycle (WorkAdventure)."""
        return self.service.auto_create_rooms

    async def lookup(self, method: str, request: dict[str, Any]) -> Any:
        """Run a unary read of the native API (GetRoom, ListRooms, GetRoomContents, GetVariable) for a
        surface's own bookkeeping: for no caller, so neither authorized nor rate-limited, and ListRooms sees
        every room. What it finds is the surface's to act on, not to show: a caller gets a room only from
        :meth:`call` (SignalWire finds a room by a name unique across all rooms, WorkAdventure reads the
        version a stream is to start after).

        :raises ValueError: ``method`` is not a unary read.
        :raises GatewayError: whatever the service answers.
        """
        found = self.methods.get(method)
        if found is None or found.server_streaming or not found.permission.endswith(":read"):
            raise ValueError(f"{method} is not a read a surface may look up")
        return await self._handlers[method](**request)
