"""The domain's values.

Each dataclass mirrors one message of ``protos/roomgateway/v1/rooms.proto`` field by field, with the proto's
snake_case field names (a test holds them to it), so that both transports encode them generically from the
descriptors. JSON values (``google.protobuf.Value`` / ``Struct``) are plain Python JSON values here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

#: A JSON value: what ``google.protobuf.Value`` holds.
JSON: TypeAlias = bool | int | float | str | list[Any] | dict[str, Any] | None


class RoomStatus(enum.Enum):
    """A room's lifecycle: OPEN → CLOSED → DELETED, never back."""

    OPEN = "OPEN"
    CLOSED = "CLOSED"
    DELETED = "DELETED"


class Unset:
    """The type of :data:`UNSET`, the value of a deleted variable (distinct from JSON ``null``, which is a
    value). A singleton: compare with ``value is UNSET``, or narrow with ``isinstance(value, Unset)``."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


#: A deleted variable's value, and "no value given" where JSON ``null`` would be one.
UNSET = Unset()


@dataclass(slots=True)
class Room:
    room_id: str
    display_name: str = ""
    description: str = ""
    status: RoomStatus = RoomStatus.OPEN
    jurisdiction: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(slots=True, frozen=True)
class Variable:
    """One version of a variable. ``value is UNSET`` marks a deletion (sent to listeners, never stored)."""

    name: str
    value: JSON | Unset
    version: int
    update_time: datetime | None = None

    @property
    def deleted(self) -> bool:
        return self.value is UNSET


@dataclass(slots=True, frozen=True)
class Event:
    name: str
    data: JSON
    time: datetime | None = None


@dataclass(slots=True, frozen=True)
class ListRoomsResponse:
    results: list[Room]
    num_results: int
    more: bool


@dataclass(slots=True, frozen=True)
class RoomContents:
    contents: dict[str, Any]


@dataclass(slots=True, frozen=True)
class InvalidateConnectionsResponse:
    invalidate_time: datetime


@dataclass(slots=True, frozen=True)
class RoomToken:
    """A minted room token (never logged): the JWT, what it carries (permissions, then extras), its expiry."""

    token: str = field(repr=False)
    permissions: list[str]
    expire_time: datetime


class SignalKind(enum.Enum):
    """Why a room's streams must end (sent to every instance through the backend)."""

    DELETED = "deleted"
    INVALIDATED = "invalidated"


@dataclass(slots=True, frozen=True)
class RoomSignal:
    """A control message on a room's channel: every stream of the room ends when it arrives.

    ``room_id == ""`` addresses every room (InvalidateConnections without a room).
    """

    room_id: str
    kind: SignalKind
    time: datetime


#: What a subscription delivers.
Notification: TypeAlias = Variable | Event | RoomSignal
