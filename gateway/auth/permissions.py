"""The permission each method needs — declared once, here (a test checks it covers the proto exactly)."""

from __future__ import annotations

ALL = "*"

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
        ALL,
    }
)

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
}
