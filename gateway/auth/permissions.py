"""The permission each method (and each deployment-wide endpoint) needs — declared once, here (a test checks
:data:`REQUIRED` covers the proto exactly)."""

from __future__ import annotations

import re

ALL = "*"
#: Reading ``GET /metrics``: deployment-wide counters, so never for a room token or a room-limited key.
METRICS_READ = "metrics:read"

#: Every permission a key or token can hold (``API.md``).
PERMISSIONS = frozenset(
    {
        "rooms:read",
        "rooms:create",
        "rooms:update",
        "rooms:close",
        "rooms:delete",
        "variables:read",
        "variables:write",
        "events:publish",
        "events:listen",
        "tokens:create",
        "connections:invalidate",
        "presence:read",
        "webhooks:manage",
        METRICS_READ,
        ALL,
    }
)

#: The resource part of our permission names. A name in one of these namespaces must be one of
#: :data:`PERMISSIONS` (a typo such as ``variables:wirte`` is an error, not a silent extra); a room token may
#: carry any other string as an opaque extra (SignalWire's ``room.self.audio_mute``), never enforced.
NAMESPACES = frozenset(name.partition(":")[0] for name in PERMISSIONS if name != ALL)

#: Method of ``roomgateway.v1.RoomService`` → the permission it needs.
REQUIRED: dict[str, str] = {
    "CreateRoom": "rooms:create",
    "GetRoom": "rooms:read",
    "ListRooms": "rooms:read",
    "UpdateRoom": "rooms:update",
    "CloseRoom": "rooms:close",
    "DeleteRoom": "rooms:delete",
    "GetRoomContents": "variables:read",
    "InvalidateConnections": "connections:invalidate",
    "GetVariable": "variables:read",
    "SetVariable": "variables:write",
    "DeleteVariable": "variables:write",
    "ListenVariable": "variables:read",
    "PublishEvent": "events:publish",
    "ListenEvents": "events:listen",
    "CreateRoomToken": "tokens:create",
    "ListenRoom": "variables:read",
    "ListChanges": "variables:read",
    "GetPresence": "presence:read",
    "ListWebhooks": "webhooks:manage",
    "ListWebhookMessages": "webhooks:manage",
    "RetryWebhookMessage": "webhooks:manage",
    "ReplayWebhook": "webhooks:manage",
    "EnableWebhook": "webhooks:manage",
    "SendWebhookTest": "webhooks:manage",
}

#: Methods that name no room and whose *results* are limited to the rooms a caller may access (its key's
#: room patterns). Any other call without a room (the global ``InvalidateConnections``) acts on every room,
#: so it needs a caller limited to none: a key without room patterns, never a room token.
FILTERED_BY_ROOM = frozenset({"ListRooms"})


def is_extra(name: str) -> bool:
    """Whether ``name`` is an opaque extra: neither a permission nor in one of our :data:`NAMESPACES`."""
    return name not in PERMISSIONS and name.partition(":")[0] not in NAMESPACES


#: ``<upstream>:<Method>`` or ``<upstream>:*``: a method of a front-proxy upstream (``gateway.upstream``).
_UPSTREAM_PERMISSION = re.compile(r"(?P<upstream>[a-z0-9-]{1,32}):(?P<method>\*|[A-Za-z_][A-Za-z0-9_]*)")


def upstream_permission(name: str) -> tuple[str, str] | None:
    """``("wa", "readVariable")`` for ``wa:readVariable`` (``"*"`` for ``wa:*``): a permission on an
    upstream's method, outside our :data:`NAMESPACES`; ``None`` for any other name. Which upstreams and
    methods exist is checked against ``upstreams:`` when the configuration is validated."""
    match = _UPSTREAM_PERMISSION.fullmatch(name)
    if match is None or match["upstream"] in NAMESPACES:
        return None
    return match["upstream"], match["method"]
