"""The domain values' own behaviour (their fields are held to the proto by tests/meta)."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime

from gateway.core.models import Room, RoomStatus


def test_a_room_copy_keeps_every_field_and_is_its_own() -> None:
    room = Room(
        room_id="r",
        display_name="Room",
        description="about",
        status=RoomStatus.CLOSED,
        jurisdiction="eu",
        settings={"size": 3},
        create_time=datetime(2026, 1, 2, tzinfo=UTC),
        update_time=datetime(2026, 1, 3, tzinfo=UTC),
        num_users=4,
    )
    defaults = Room(room_id="")
    # Every field differs from its default, so a field copied into the wrong place (or not at all) shows.
    for one in dataclasses.fields(Room):
        assert getattr(room, one.name) != getattr(defaults, one.name), one.name
    copied = copy.copy(room)
    assert copied == room and copied is not room
    copied.status = RoomStatus.DELETED
    assert room.status is RoomStatus.CLOSED
    assert copied.settings is room.settings  # shallow, as copy.copy: settings are replaced, never edited
