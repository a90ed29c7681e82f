"""The domain's values.

Each dataclass mirrors one message of ``protos/roomgateway/v1/rooms.proto`` field by field, with the proto's
snake_case field names (a test holds them to it), so that both transports encode them generically from the
descriptors. JSON values (``google.protobuf.Value`` / ``Struct``) are plain Python JSON values here.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field, fields
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
    #: Output only, never stored: how many users are present (filled in from presence when read).
    num_users: int = 0

    def __copy__(self) -> Room:
        """A shallow copy (``copy.copy``), made by the constructor: a store hands out a copy of a room at
        every read (its caller may change it), and the generic copy (``__reduce_ex__``, then each slot set
        one by one) cost ~25k instructions a copy against ~5k this way — a tenth of a REST PUT's."""
        return Room(*_room_fields(self))


#: Every field of a Room, in the constructor's order.
_room_fields = operator.attrgetter(*(one.name for one in fields(Room)))


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
    """Every variable of a room, and the position of that snapshot in the room's change log."""

    contents: dict[str, Any]
    seq: int = 0
    epoch: str = ""


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


class ChangeKind(enum.Enum):
    """What one :class:`Change` of a room's log records (the proto's ``Change.Kind``, by name)."""

    VARIABLE_SET = "VARIABLE_SET"
    VARIABLE_DELETED = "VARIABLE_DELETED"
    EVENT = "EVENT"
    ROOM_CREATED = "ROOM_CREATED"
    ROOM_UPDATED = "ROOM_UPDATED"
    ROOM_CLOSED = "ROOM_CLOSED"
    ROOM_DELETED = "ROOM_DELETED"
    CONNECTIONS_INVALIDATED = "CONNECTIONS_INVALIDATED"
    MEMBER_JOINED = "MEMBER_JOINED"
    MEMBER_LEFT = "MEMBER_LEFT"
    RESET = "RESET"


#: The kinds after which every stream of the room ends (NOT_FOUND, UNAVAILABLE): they are delivered to every
#: subscription of the room, whatever its topic.
ENDING_KINDS = frozenset({ChangeKind.ROOM_DELETED, ChangeKind.CONNECTIONS_INVALIDATED})


@dataclass(slots=True, frozen=True)
class Member:
    """One user present in a room: the ``user_name`` of a room token with open streams there."""

    user_id: str
    connections: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    join_time: datetime | None = None


@dataclass(slots=True, frozen=True)
class Change:
    """One entry of a room's change log (``API.md``, "The room change log").

    ``seq`` increases by exactly 1 per change of the room within one ``epoch``; a live-only event
    (``history.events: false``) has ``seq == 0``. Which of ``variable``, ``event``, ``room`` and ``member`` is
    set follows ``kind``: ``VARIABLE_SET``/``VARIABLE_DELETED`` the variable (a deletion's value is
    :data:`UNSET`, its version the one the deletion took), ``EVENT`` the event, ``ROOM_*`` the room,
    ``MEMBER_*`` the member; ``CONNECTIONS_INVALIDATED`` and ``RESET`` none.
    """

    seq: int
    epoch: str
    kind: ChangeKind
    time: datetime | None = None
    variable: Variable | None = None
    event: Event | None = None
    room: Room | None = None
    member: Member | None = None

    @property
    def name(self) -> str:
        """The variable's or the event's name; ``""`` for the other kinds."""
        if self.variable is not None:
            return self.variable.name
        if self.event is not None:
            return self.event.name
        return ""


@dataclass(slots=True, frozen=True)
class ListChangesResponse:
    changes: list[Change]
    more: bool
    head_seq: int
    epoch: str


@dataclass(slots=True, frozen=True)
class Presence:
    members: list[Member]
    num_users: int
    num_connections: int


#: What a subscription delivers: the room's changes, and the signal that ends every stream of every room
#: (InvalidateConnections without a room, which no room's log records).
Notification: TypeAlias = Change | RoomSignal


@dataclass(slots=True, frozen=True)
class WebhookEndpoint:
    """A configured webhook endpoint as the management API shows it (never its URL nor its secret)."""

    name: str
    events: list[str]
    rooms: list[str]
    enabled: bool
    disabled_reason: str = ""
    last_success_time: datetime | None = None
    failing_since: datetime | None = None
    backlog: int = 0


@dataclass(slots=True, frozen=True)
class ListWebhooksResponse:
    endpoints: list[WebhookEndpoint]


@dataclass(slots=True, frozen=True)
class WebhookAttempt:
    time: datetime
    status_code: int
    duration_ms: float
    error: str = ""


@dataclass(slots=True, frozen=True)
class WebhookMessage:
    message_id: str
    type: str
    room_id: str
    seq: int
    status: str
    attempts: list[WebhookAttempt]
    create_time: datetime | None = None
    next_attempt_time: datetime | None = None


@dataclass(slots=True, frozen=True)
class ListWebhookMessagesResponse:
    messages: list[WebhookMessage]


@dataclass(slots=True, frozen=True)
class ReplayWebhookResponse:
    num_messages: int


@dataclass(slots=True, frozen=True)
class SendWebhookTestResponse:
    message_id: str
