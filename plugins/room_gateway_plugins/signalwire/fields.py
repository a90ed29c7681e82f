"""SignalWire's room and conference objects: their fields, how each is checked, and how a native room shows.

A SignalWire room (``/rooms``) or conference (``/conferences``) is one native room: ``name`` is the room id,
``display_name`` and ``description`` are the native fields of those names, and every other setting the vendor
documents (``size``, ``quality``, ``layout``, ``enable_chat``, ``dark_*`` colours, …) is kept flat in the
room's ``settings`` JSON, as sent. Settings a client never sent are not stored: they show with the vendor's
documented default (``null`` where it documents none). Fields the vendor does not document are ignored, as
the vendor's API ignores unpermitted parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.core.models import Room
from room_gateway_plugins.signalwire.responses import VendorInvalid

Kind = Literal["rooms", "conferences"]

#: The vendor's room names: ``A-Za-z0-9_-``, up to 100 characters.
NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 3000

Check = Callable[[str, Any], Any]


def _label(attribute: str) -> str:
    """``display_name`` → ``Display name`` (how Rails names an attribute in a message)."""
    return attribute.replace("_", " ").capitalize()


def _invalid(attribute: str, message: str) -> VendorInvalid:
    return VendorInvalid(attribute, f"{_label(attribute)} {message}")


def _boolean(attribute: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid(attribute, "must be a boolean")
    return value


def _text(limit: int) -> Check:
    def check(attribute: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _invalid(attribute, "must be a string")
        if len(value) > limit:
            raise _invalid(attribute, f"is too long (maximum is {limit} characters)")
        return value

    return check


def _one_of(*allowed: Any) -> Check:
    def check(attribute: str, value: Any) -> Any:
        if isinstance(value, bool) or value not in allowed:
            raise _invalid(attribute, "is not included in the list")
        return value

    return check


def _integer(low: int, high: int) -> Check:
    def check(attribute: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(attribute, "is not a number")
        if not low <= value <= high:
            raise _invalid(attribute, f"must be between {low} and {high}")
        return value

    return check


def _datetime(attribute: str, value: Any) -> str:
    """RFC 3339; a date alone means its midnight UTC (as the vendor converts it). Stored as given."""
    if not isinstance(value, str):
        raise _invalid(attribute, "must be an RFC 3339 date-time")
    text = value + "T00:00:00Z" if _DATE_ONLY.fullmatch(value) else value
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _invalid(attribute, "must be an RFC 3339 date-time") from None
    if parsed.tzinfo is None:
        raise _invalid(attribute, "must be an RFC 3339 date-time with a time zone")
    return format_time(parsed)


def _color(attribute: str, value: Any) -> str:
    if not isinstance(value, str) or not _COLOR.fullmatch(value):
        raise _invalid(attribute, "must be a colour such as #5BB9A9")
    return value


def _object(attribute: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(attribute, "must be an object")
    return value


@dataclass(frozen=True, slots=True)
class Field:
    """One vendor setting: how it is checked, what shows when unset, whether ``null`` unsets it."""

    check: Check
    default: Any = None
    nullable: bool = False


_QUALITY = Field(_one_of("720p", "1080p"), "720p")
_LAYOUT = Field(_text(100), "grid-responsive")
_WHEN = Field(_datetime, None, nullable=True)

#: Settings of a room without UI (``/rooms``), after ``name``, ``display_name`` and ``description``.
ROOM_SETTINGS: dict[str, Field] = {
    "max_members": Field(_integer(1, 300), 20),
    "quality": _QUALITY,
    "fps": Field(_one_of(20, 30), 20),
    "join_from": _WHEN,
    "join_until": _WHEN,
    "remove_at": _WHEN,
    "remove_after_seconds_elapsed": Field(_integer(0, 200_000), None, nullable=True),
    "layout": _LAYOUT,
    "record_on_start": Field(_boolean, False),
    "tone_on_entry_and_exit": Field(_boolean, True),
    "room_join_video_off": Field(_boolean, False),
    "user_join_video_off": Field(_boolean, False),
    "enable_room_previews": Field(_boolean, False),
    "sync_audio_video": Field(_boolean, True),
    "meta": Field(_object, {}),
    "prioritize_handraise": Field(_boolean, False),
}

_COLORS = [
    f"{mode}_{part}"
    for mode in ("dark", "light")
    for part in ("primary", "background", "foreground", "success", "negative")
]

#: Settings of a conference (a room with the vendor's UI, ``/conferences``).
CONFERENCE_SETTINGS: dict[str, Field] = {
    "join_from": _WHEN,
    "join_until": _WHEN,
    "quality": _QUALITY,
    "layout": _LAYOUT,
    "size": Field(_one_of("small", "medium", "large"), "medium"),
    "record_on_start": Field(_boolean, False),
    "tone_on_entry_and_exit": Field(_boolean, True),
    "user_join_video_off": Field(_boolean, False),
    "room_join_video_off": Field(_boolean, False),
    "enable_chat": Field(_boolean, True),
    "enable_room_previews": Field(_boolean, False),
    **{name: Field(_color, None, nullable=True) for name in _COLORS},
}

SETTINGS: dict[Kind, dict[str, Field]] = {"rooms": ROOM_SETTINGS, "conferences": CONFERENCE_SETTINGS}


def format_time(moment: datetime) -> str:
    """The vendor's times: RFC 3339 in UTC, whole seconds, ``Z`` (``2022-01-01T10:00:00Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def check_name(value: Any) -> str:
    """A room name as the vendor allows it.

    :raises VendorInvalid: missing, not a string, or outside ``A-Za-z0-9_-`` / 100 characters.
    """
    if value is None or value == "":
        raise VendorInvalid("name", "Name can't be blank", code="missing_required_parameter")
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise _invalid("name", "is invalid: use A-Za-z0-9_- and at most 100 characters")
    return value


@dataclass(frozen=True, slots=True)
class Changes:
    """What a create or update body asks for, checked: the native fields, and settings to set or unset."""

    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    settings: dict[str, Any] | None = None
    unset: frozenset[str] = frozenset()


def parse_body(kind: Kind, body: Mapping[str, Any], *, creating: bool) -> Changes:
    """Check a body of ``POST``/``PUT /rooms`` or ``/conferences``; unknown fields are ignored.

    :raises VendorInvalid: the first invalid field (the vendor's 422).
    """
    name = None
    if creating or "name" in body:
        name = check_name(body.get("name"))
    display_name = description = None
    if body.get("display_name") is not None:
        display_name = _text(MAX_DISPLAY_NAME)("display_name", body["display_name"])
    if "description" in body:
        description = (
            "" if body["description"] is None else _text(MAX_DESCRIPTION)("description", body["description"])
        )
    settings: dict[str, Any] = {}
    unset = set()
    for attribute, field in SETTINGS[kind].items():
        if attribute not in body:
            continue
        value = body[attribute]
        if value is None:
            if not field.nullable:
                raise _invalid(attribute, "can't be null")
            unset.add(attribute)
            continue
        settings[attribute] = field.check(attribute, value)
    return Changes(name, display_name, description, settings, frozenset(unset))


def render(kind: Kind, room: Room, room_uuid: str) -> dict[str, Any]:
    """The vendor's object for a native room: every documented field, stored or default."""
    stored = room.settings
    name = vendor_name(room)
    shown: dict[str, Any] = {
        "id": room_uuid,
        "name": name,
        "display_name": room.display_name or name,
        "description": room.description or None,
    }
    for attribute, field in SETTINGS[kind].items():
        shown[attribute] = stored.get(attribute, field.default)
    shown["created_at"] = timestamp(room.create_time)
    shown["updated_at"] = timestamp(room.update_time)
    return shown


#: Where a renamed room keeps its vendor ``name`` (its native id never changes).
NAME_SETTING = "name"


def vendor_name(room: Room) -> str:
    """The room's SignalWire name: its id, unless a ``PUT`` renamed it."""
    renamed = room.settings.get(NAME_SETTING)
    return renamed if isinstance(renamed, str) and renamed else room.room_id
