"""SignalWire ids and names ↔ native room ids, and the vendor's ``{links, data}`` paging.

**Ids.** The vendor gives each room a UUID; here a room's SignalWire ``id`` is ``uuid5(NAMESPACE, room_id)``:
stable, the same on every gateway instance and after a restart, stored nowhere, and defined for rooms made
through any surface. The reverse (UUID → room id) is a per-process cache filled by every answer that shows
a room; a miss reads the room list once (one ListRooms page per 1,000 rooms) and fills it.

**Names.** A room's vendor ``name`` is its id until a ``PUT`` renames it; the new name is kept in the
room's settings (:data:`~room_gateway_plugins.signalwire.fields.NAME_SETTING`) and the id stays. So finding
a room by name is one read when it was never renamed, and a scan of the room list otherwise.

**Paging.** ``page_token`` is opaque: base64url JSON of ``{"a": <last id of the previous page>}`` (forward)
or ``{"b": <first id of the next page>}`` (the ``prev`` link; served by reading forward to that id).
Deleted rooms (the native tombstones) are not SignalWire rooms and are skipped.
"""

from __future__ import annotations

import base64
import binascii
import collections
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.policy import Principal
from gateway.core.models import Room, RoomStatus
from gateway.dispatch import Dispatcher
from gateway.errors import InvalidArgument, NotFound
from room_gateway_plugins.signalwire.fields import vendor_name
from room_gateway_plugins.signalwire.responses import VendorError, VendorInvalid

#: The namespace of SignalWire ids (fixed: changing it would change every room's id).
NAMESPACE = uuid.UUID("fda7882e-d2b5-4ea7-be2a-f635993e9d2e")
SCAN_PAGE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Entries of the UUID → room id cache before it starts over (a miss costs one scan).
MAX_CACHED = 100_000


def room_uuid(room_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, room_id))


def token_uuid(room_id: str, role: str) -> str:
    """The id of a conference's ``moderator`` or ``guest`` token entry."""
    return str(uuid.uuid5(NAMESPACE, f"{room_id}\x1f{role}"))


@dataclass(frozen=True, slots=True)
class Page:
    rooms: list[Room]
    next_token: str | None
    prev_token: str | None


class Directory:
    """Finds native rooms by SignalWire id or name, and pages through them.

    :param dispatcher: the native calls (authorized for the caller, rate-limited by room).
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._ids: dict[str, str] = {}

    def uuid_of(self, room_id: str) -> str:
        """The room's SignalWire id (remembered for :meth:`by_uuid`)."""
        found = room_uuid(room_id)
        if len(self._ids) >= MAX_CACHED:
            self._ids.clear()
        self._ids[found] = room_id
        return found

    async def by_uuid(self, text: str) -> Room:
        """The live room whose SignalWire id is ``text``.

        :raises VendorError: 404 — not a UUID, no such room, or a deleted one.
        """
        try:
            key = str(uuid.UUID(text))
        except ValueError:
            raise VendorError(404) from None
        room_id = self._ids.get(key)
        if room_id is not None:
            room = await self._live(room_id)
            if room is not None:
                return room
            raise VendorError(404)
        async for room in self._scan():
            if self.uuid_of(room.room_id) == key:
                return room
        raise VendorError(404)

    async def by_name(self, name: str) -> Room | None:
        """The live room whose SignalWire name is ``name``, if any."""
        room = await self._live(name)
        if room is not None and vendor_name(room) == name:
            return room
        async for room in self._scan():
            if room.room_id != name and vendor_name(room) == name:
                return room
        return None

    async def _live(self, room_id: str) -> Room | None:
        """The room ``room_id`` unless it is missing or deleted. A look-up across every room (names are
        unique across them all): the endpoints then act on it through calls authorized for the caller."""
        try:
            room: Room = await self.dispatcher.lookup("GetRoom", {"room_id": room_id})
        except (NotFound, InvalidArgument):  # an id no room can have is no room
            return None
        return None if room.status is RoomStatus.DELETED else room

    async def _scan(self) -> AsyncIterator[Room]:
        """Every live room, in id order, read in pages (for no caller: the directory's own bookkeeping)."""
        async for room in _live_rooms(
            lambda request: self.dispatcher.lookup("ListRooms", request), "", SCAN_PAGE
        ):
            yield room

    # -- paging -------------------------------------------------------------------------------------------

    async def page(self, principal: Principal, page_size: int, page_token: str | None) -> Page:
        """One page of the live rooms ``principal`` may list (ListRooms permission and room patterns).

        :raises VendorInvalid: a malformed ``page_token``.
        """
        cursor = _decode(page_token) if page_token else {}
        if "b" in cursor:
            before = cursor["b"]
            window: collections.deque[Room] = collections.deque(maxlen=page_size + 1)
            async for room in self._visible(principal, "", SCAN_PAGE):
                if room.room_id >= before:
                    break
                window.append(room)
            rooms = list(window)[-page_size:]
            has_prev = len(window) > page_size
            has_next = True
        else:
            after = cursor.get("a", "")
            rooms = []
            has_next = False
            async for room in self._visible(principal, after, page_size + 1):
                if len(rooms) == page_size:
                    has_next = True
                    break
                rooms.append(room)
            has_prev = bool(after)
        for room in rooms:
            self.uuid_of(room.room_id)
        next_token = _encode({"a": rooms[-1].room_id}) if has_next and rooms else None
        prev_token = None
        if has_prev:
            prev_token = _encode({"b": rooms[0].room_id}) if rooms else _encode({"b": cursor.get("a", "")})
        return Page(rooms, next_token, prev_token)

    async def _visible(self, principal: Principal, after: str, chunk: int) -> AsyncIterator[Room]:
        """Live rooms after ``after`` through the native ListRooms (so its authorization and filtering),
        read ``chunk`` at a time."""
        async for room in _live_rooms(
            lambda request: self.dispatcher.call("ListRooms", principal, request), after, chunk
        ):
            yield room


async def _live_rooms(
    list_rooms: Callable[[dict[str, object]], Awaitable[Any]], after: str, chunk: int
) -> AsyncIterator[Room]:
    """The live rooms after ``after``, in id order, from ListRooms pages of ``chunk`` rooms."""
    while True:
        request: dict[str, object] = {"max_results": chunk}
        if after:
            request["start_after_key"] = after
        page = await list_rooms(request)
        for room in page.results:
            if room.status is not RoomStatus.DELETED:
                yield room
        if not page.more or not page.results:
            return
        after = page.results[-1].room_id


def _encode(cursor: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(cursor)).decode("ascii").rstrip("=")


def _decode(token: str) -> dict[str, str]:
    try:
        cursor = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        cursor = None
    if (
        not isinstance(cursor, dict)
        or len(cursor) != 1
        or not all(k in ("a", "b") and isinstance(v, str) for k, v in cursor.items())
    ):
        raise VendorInvalid("page_token", "Page token is invalid")
    return cursor
