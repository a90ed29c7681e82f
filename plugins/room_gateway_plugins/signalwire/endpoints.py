"""What each SignalWire endpoint does, in native calls.

Every native call goes through :meth:`Dispatcher.call <gateway.dispatch.Dispatcher.call>`, which authorizes
the caller for that method and room (``AuthPolicy.authorize``) and applies the ``by: room`` rate limits,
exactly as for a native client. The vendor's lifecycle is flat: ``DELETE`` closes the room (when open) and
deletes it. Room tokens are minted by one function, :func:`mint`.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.auth.policy import Principal
from gateway.core.models import Room, RoomStatus
from gateway.errors import AlreadyExists, InvalidArgument
from room_gateway_plugins.signalwire import fields
from room_gateway_plugins.signalwire.directory import Directory, token_uuid
from room_gateway_plugins.signalwire.fields import Kind
from room_gateway_plugins.signalwire.responses import VendorInvalid

#: The vendor's default token permissions: a member controls their own audio and video.
SELF_SCOPES = (
    "room.self.audio_mute",
    "room.self.audio_unmute",
    "room.self.video_mute",
    "room.self.video_unmute",
    "room.self.deaf",
    "room.self.undeaf",
    "room.self.set_input_volume",
    "room.self.set_output_volume",
    "room.self.set_input_sensitivity",
    "room.self.screenshare",
    "room.self.additional_source",
)
#: What a conference's moderator token adds: the room and any member.
MODERATOR_SCOPES = (
    *SELF_SCOPES,
    "room.list_available_layouts",
    "room.set_layout",
    "room.hide_video_muted",
    "room.show_video_muted",
    "room.recording",
    "room.playback",
    "room.member.audio_mute",
    "room.member.audio_unmute",
    "room.member.video_mute",
    "room.member.video_unmute",
    "room.member.deaf",
    "room.member.undeaf",
    "room.member.remove",
    "room.member.set_input_volume",
    "room.member.set_output_volume",
    "room.member.set_input_sensitivity",
)
#: The two tokens of a conference: the gateway role each is made from, and the vendor scopes it carries.
CONFERENCE_TOKENS: dict[str, tuple[str, ...]] = {"moderator": MODERATOR_SCOPES, "guest": SELF_SCOPES}
#: The role of a ``POST /room_tokens`` token unless its body names another (``role``, our extension).
DEFAULT_TOKEN_ROLE = "guest"
MAX_USER_NAME = 100


async def mint(
    directory: Directory,
    principal: Principal,
    room_id: str,
    *,
    user_name: str,
    role: str,
    permissions: Sequence[str],
) -> tuple[str, list[str]]:
    """A native room token (``CreateRoomToken``) for ``room_id``: the token and what it carries.

    :raises GatewayError: as CreateRoomToken (no ``tokens:create``, a closed room, tokens not configured).
    """
    request = {"room_id": room_id, "user_name": user_name, "role": role, "permissions": list(permissions)}
    minted = await directory.dispatcher.call("CreateRoomToken", principal, request)
    return minted.token, list(minted.permissions)


# -- rooms and conferences -----------------------------------------------------------------------------------


async def create(
    directory: Directory, principal: Principal, kind: Kind, body: Mapping[str, Any]
) -> dict[str, Any]:
    changes = fields.parse_body(kind, body, creating=True)
    name = changes.name or fields.check_name(None)  # parse_body(creating=True) has required it
    if await directory.by_name(name) is not None:
        raise VendorInvalid("name", "Name has already been taken", code="value_not_unique")
    room: dict[str, Any] = {
        "room_id": name,
        "display_name": changes.display_name or name,
        "settings": changes.settings or {},
    }
    if changes.description:
        room["description"] = changes.description
    try:
        created = await directory.dispatcher.call("CreateRoom", principal, {"room": room})
    except AlreadyExists:  # a deleted room's id: never used again
        raise VendorInvalid("name", "Name has already been taken", code="value_not_unique") from None
    return fields.render(kind, created, directory.uuid_of(created.room_id))


async def get(directory: Directory, principal: Principal, kind: Kind, room_uuid: str) -> dict[str, Any]:
    room = await directory.by_uuid(room_uuid)
    room = await directory.dispatcher.call("GetRoom", principal, {"room_id": room.room_id})
    return fields.render(kind, room, directory.uuid_of(room.room_id))


async def update(
    directory: Directory, principal: Principal, kind: Kind, room_uuid: str, body: Mapping[str, Any]
) -> dict[str, Any]:
    room = await directory.by_uuid(room_uuid)
    changes = fields.parse_body(kind, body, creating=False)
    settings = {k: v for k, v in room.settings.items() if k not in changes.unset}
    settings.update(changes.settings or {})
    if changes.name is not None and changes.name != fields.vendor_name(room):
        holder = await directory.by_name(changes.name)
        if holder is not None and holder.room_id != room.room_id:
            raise VendorInvalid("name", "Name has already been taken", code="value_not_unique")
        if changes.name == room.room_id:
            settings.pop(fields.NAME_SETTING, None)
        else:
            settings[fields.NAME_SETTING] = changes.name
    native: dict[str, Any] = {"room_id": room.room_id, "settings": settings}
    mask = ["settings"]
    if changes.display_name is not None:
        native["display_name"] = changes.display_name
        mask.append("display_name")
    if changes.description is not None:
        native["description"] = changes.description
        mask.append("description")
    updated = await directory.dispatcher.call("UpdateRoom", principal, {"room": native, "update_mask": mask})
    return fields.render(kind, updated, directory.uuid_of(updated.room_id))


async def delete(directory: Directory, principal: Principal, room_uuid: str) -> None:
    """The vendor deletes at once: close the room if it is open, then delete it."""
    room = await directory.by_uuid(room_uuid)
    if room.status is RoomStatus.OPEN:
        await directory.dispatcher.call("CloseRoom", principal, {"room_id": room.room_id})
    await directory.dispatcher.call("DeleteRoom", principal, {"room_id": room.room_id})


def render_page(kind: Kind, directory: Directory, rooms: list[Room]) -> list[dict[str, Any]]:
    return [fields.render(kind, room, directory.uuid_of(room.room_id)) for room in rooms]


# -- tokens --------------------------------------------------------------------------------------------------


async def conference_tokens(
    directory: Directory, principal: Principal, room_uuid: str
) -> list[dict[str, Any]]:
    """The conference's moderator and guest tokens, minted now (each good for the configured lifetime)."""
    room = await directory.by_uuid(room_uuid)
    entries = []
    for role, scopes in CONFERENCE_TOKENS.items():
        token, carried = await mint(
            directory, principal, room.room_id, user_name=role, role=role, permissions=scopes
        )
        entries.append(
            {
                "id": token_uuid(room.room_id, role),
                "name": role,
                "token": token,
                "scopes": carried,
                "permissions": carried,
            }
        )
    return entries


async def room_token(directory: Directory, principal: Principal, body: Mapping[str, Any]) -> str:
    """``POST /room_tokens``: a token for the room named ``room_name`` (made if absent and
    ``auto_create_room``, the vendor's default)."""
    name = body.get("room_name")
    if name is None or name == "":
        raise VendorInvalid("room_name", "Room name can't be blank", code="missing_required_parameter")
    if not isinstance(name, str) or not fields.NAME.fullmatch(name):
        raise VendorInvalid("room_name", "Room name is invalid: use A-Za-z0-9_- and at most 100 characters")
    user_name = body.get("user_name")
    if user_name is None:
        user_name = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12))
    if not isinstance(user_name, str) or not 0 < len(user_name) <= MAX_USER_NAME:
        raise VendorInvalid("user_name", f"User name must be 1 to {MAX_USER_NAME} characters")
    permissions = body.get("permissions", list(SELF_SCOPES))
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise VendorInvalid("permissions", "Permissions must be a list of strings")
    if body.get("join_as") == "audience":
        permissions = []  # the vendor empties an audience member's permissions
    role = body.get("role", DEFAULT_TOKEN_ROLE)
    if not isinstance(role, str):
        raise VendorInvalid("role", "Role must be a string")
    auto_create = body.get("auto_create_room", True)
    if not isinstance(auto_create, bool):
        raise VendorInvalid("auto_create_room", "Auto create room must be a boolean")

    room = await directory.by_name(name)
    room_id = room.room_id if room is not None else name
    if room is None and auto_create:
        await _create_for_token(directory, principal, name, body)
    try:
        token, _ = await mint(
            directory, principal, room_id, user_name=user_name, role=role, permissions=permissions
        )
    except InvalidArgument as exc:
        raise VendorInvalid("permissions", exc.message) from None
    return token


async def _create_for_token(
    directory: Directory, principal: Principal, name: str, body: Mapping[str, Any]
) -> None:
    """Create the room a token names, with the creation settings a token may carry."""
    display_name = body.get("room_display_name")
    room: dict[str, Any] = {
        "room_id": name,
        "display_name": display_name if isinstance(display_name, str) else name,
    }
    previews = body.get("enable_room_previews")
    if isinstance(previews, bool):
        room["settings"] = {"enable_room_previews": previews}
    try:
        await directory.dispatcher.call("CreateRoom", principal, {"room": room})
    except AlreadyExists:
        pass  # created meanwhile, or a deleted id: minting says which
