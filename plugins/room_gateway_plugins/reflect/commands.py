"""Reflect's room and connection commands, each onto one native method of the same RoomService.

=====================================  ===========================  ==========================================
Reflect                                native method                permission (Reflect's name → ours)
=====================================  ===========================  ==========================================
``GET /rooms``                         ListRooms                    ``rooms:read``
``GET /rooms/contents?roomID=``        GetRoomContents              ``variables:read`` (a room's data)
``POST /rooms:create?roomID=``         CreateRoom                   ``rooms:create``
``POST /rooms:close?roomID=``          CloseRoom                    ``rooms:close``
``POST /rooms:delete?roomID=``         DeleteRoom                   ``rooms:delete``
``POST /connections/all:invalidate``   InvalidateConnections        ``connections:invalidate`` (every room)
``POST /connections/rooms:invalidate`` InvalidateConnections        ``connections:invalidate``
=====================================  ===========================  ==========================================

Every call goes through :meth:`Dispatcher.call <gateway.dispatch.Dispatcher.call>`, so it is authorized
(permissions and the key's room patterns) and rate-limited ``by: room`` exactly as the native call is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from gateway.auth.policy import Principal
from gateway.core.models import ListRoomsResponse, Room, RoomContents
from gateway.errors import GatewayError, RoomDeleted
from gateway.surfaces import SurfaceContext
from room_gateway_plugins.reflect import parsing
from room_gateway_plugins.reflect.errors import (
    CONNECTIONS,
    REQUEST,
    ROOMS,
    ReflectError,
    bad_request,
    from_gateway_error,
)

Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed Reflect call: who, its query parameters (checked against the command's), its body."""

    context: SurfaceContext
    principal: Principal
    params: dict[str, list[str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Command:
    """One Reflect endpoint: its HTTP method, the query parameters it takes, and what it does."""

    method: str
    run: Callable[[Call], Awaitable[Result]]
    params: frozenset[str] = field(default_factory=frozenset)
    repeatable: frozenset[str] = field(default_factory=frozenset)


def room_result(room: Room) -> Result:
    """Reflect's ``GetRoomResult``: ``roomID``, ``jurisdiction`` and a lower-case ``status``."""
    return {"roomID": room.room_id, "jurisdiction": room.jurisdiction, "status": room.status.value.lower()}


async def _native(call: Call, method: str, request: dict[str, Any]) -> Any:
    """Run a native method; a room error becomes Reflect's (a deleted room: 410 Gone)."""
    try:
        return await call.context.dispatcher.call(method, call.principal, request)
    except RoomDeleted as exc:
        raise ReflectError(410, ROOMS, exc.message) from None
    except GatewayError as exc:
        raise from_gateway_error(exc, ROOMS) from None


async def list_rooms(call: Call) -> Result:
    params = call.params
    parsing.no_body(call.body)
    given = [name for name in ("startKey", "startAfterKey", "roomID") if name in params]
    if len(given) > 1:
        raise bad_request("startKey, startAfterKey, and roomID are mutually exclusive")
    room_ids = [parsing.checked_room_id(value) for value in params.get("roomID", [])]
    start_key = params.get("startKey", [""])[0]
    start_after_key = params.get("startAfterKey", [""])[0]
    for name, value in (("startKey", start_key), ("startAfterKey", start_after_key)):
        if value:
            parsing.checked_room_id(value, name)
    requested = parsing.max_results(params)
    request = {
        "start_key": start_key,
        "start_after_key": start_after_key,
        "room_id": room_ids,
        # maxResults=0 asks for no rooms, only whether there are any (Reflect: min(0, cap) results).
        "max_results": 1 if requested == 0 else (requested or 0),
    }
    page: ListRoomsResponse = await _native(call, "ListRooms", request)
    rooms, more = page.results, page.more
    if requested == 0:
        rooms, more = [], bool(rooms) or more
    patterns = call.principal.rooms
    if patterns:  # a key limited to some rooms sees only those (as on the native ListRooms)
        rooms = [room for room in rooms if any(fnmatchcase(room.room_id, p) for p in patterns)]
    return {"results": [room_result(room) for room in rooms], "numResults": len(rooms), "more": more}


async def room_contents(call: Call) -> Result:
    room_id = parsing.room_id(call.params)
    parsing.no_body(call.body)
    contents: RoomContents = await _native(call, "GetRoomContents", {"room_id": room_id})
    return {"contents": contents.contents}


async def create_room(call: Call) -> Result:
    room_id = parsing.room_id(call.params)
    body = parsing.json_object(call.body, ("jurisdiction",), '{"jurisdiction"?: "eu"}')
    room = {"room_id": room_id, "jurisdiction": parsing.jurisdiction(body)}
    await _native(call, "CreateRoom", {"room": room})
    return {}


async def close_room(call: Call) -> Result:
    room_id = parsing.room_id(call.params)
    parsing.no_body(call.body)
    await _native(call, "CloseRoom", {"room_id": room_id})
    return {}


async def delete_room(call: Call) -> Result:
    room_id = parsing.room_id(call.params)
    parsing.no_body(call.body)
    await _native(call, "DeleteRoom", {"room_id": room_id})
    return {}


async def invalidate_all(call: Call) -> Result:
    parsing.no_body(call.body)
    if call.principal.rooms:  # acts on every room: not for a key limited to some
        raise ReflectError(403, REQUEST, f"{call.principal.name!r} is limited to some rooms")
    try:
        await call.context.dispatcher.call("InvalidateConnections", call.principal, {"room_id": ""})
    except GatewayError as exc:
        raise from_gateway_error(exc, CONNECTIONS) from None
    return {}


async def invalidate_room(call: Call) -> Result:
    room_id = parsing.room_id(call.params)
    parsing.no_body(call.body)
    await _native(call, "InvalidateConnections", {"room_id": room_id})
    return {}


_ROOM = frozenset({"roomID"})

#: Path under ``/v1/apps/{appId}`` → command.
COMMANDS: dict[str, Command] = {
    "/rooms": Command(
        "GET",
        list_rooms,
        frozenset({"startKey", "startAfterKey", "roomID", "maxResults"}),
        repeatable=frozenset({"roomID"}),
    ),
    "/rooms/contents": Command("GET", room_contents, _ROOM),
    "/rooms:create": Command("POST", create_room, _ROOM),
    "/rooms:close": Command("POST", close_room, _ROOM),
    "/rooms:delete": Command("POST", delete_room, _ROOM),
    "/connections/all:invalidate": Command("POST", invalidate_all),
    "/connections/rooms:invalidate": Command("POST", invalidate_room, _ROOM),
}
