"""Presence in SQL: connections counted per (room, user, instance), and each instance's last heartbeat.

A row of ``presence`` counts one instance's connections of one user in one room; a user is present while
any of their rows is. Joining and leaving touch only their own row and then sum the user's rows, under the
room's head row lock (:meth:`.base.SqlBackend._lock_room`, taken by the caller), so two instances never both
log the user's first join or last leave. An instance's heartbeat is one upsert of its ``presence_instances``
row; it also sweeps instances silent for longer than the timeout: their rows are deleted (``DELETE …
RETURNING``, so of two sweepers only one gets them) and each user whose last connection they held leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import jsontext
from gateway.core.models import Member, Presence
from room_gateway_plugins.sql.tables import presence, presence_instances

#: The rows of a room, by user (for :func:`of_rows`).
ROOM = (
    sa.select(presence.c.user_id, presence.c.connections, presence.c.info, presence.c.join_time)
    .where(presence.c.room_id == sa.bindparam("room_id"))
    .order_by(presence.c.user_id, presence.c.join_time)
)
#: How many users each of some rooms has.
USERS = (
    sa.select(presence.c.room_id, sa.func.count(sa.distinct(presence.c.user_id)).label("users"))
    .where(presence.c.room_id.in_(sa.bindparam("room_ids", expanding=True)))
    .group_by(presence.c.room_id)
)


def _user_connections(room_id: str, user_id: str) -> sa.Select[Any]:
    return sa.select(sa.func.coalesce(sa.func.sum(presence.c.connections), 0)).where(
        presence.c.room_id == room_id, presence.c.user_id == user_id
    )


async def join(
    conn: AsyncConnection,
    insert: Callable[[sa.Table], Any],
    room_id: str,
    member: Member,
    instance: str,
    now: datetime,
) -> Member | None:
    """Count one more connection; return the member to log as joined when it is the user's first."""
    this = presence.c
    await conn.execute(
        insert(presence)
        .values(
            room_id=room_id,
            user_id=member.user_id,
            instance=instance,
            connections=1,
            info=jsontext.dumps(member.info).decode(),
            join_time=now,
        )
        .on_conflict_do_update(
            index_elements=[this.room_id, this.user_id, this.instance],
            set_={"connections": this.connections + 1},
        )
    )
    # An instance that joins before its first heartbeat is swept too if it dies; an existing row is left
    # alone (and unlocked: DO NOTHING), so joins in many rooms do not queue on it.
    await conn.execute(
        insert(presence_instances)
        .values(instance=instance, last_seen=now)
        .on_conflict_do_nothing(index_elements=[presence_instances.c.instance])
    )
    if (await conn.execute(_user_connections(room_id, member.user_id))).scalar_one() != 1:
        return None
    return Member(user_id=member.user_id, connections=1, info=member.info, join_time=now)


async def leave(conn: AsyncConnection, room_id: str, user_id: str, instance: str) -> Member | None:
    """Count one connection fewer; return the member to log as left when it was the user's last."""
    this = presence.c
    key = (this.room_id == room_id) & (this.user_id == user_id) & (this.instance == instance)
    row = (
        await conn.execute(
            presence.update()
            .where(key)
            .values(connections=this.connections - 1)
            .returning(this.connections, this.info, this.join_time)
        )
    ).first()
    if row is None:
        return None  # not counted (swept as silent meanwhile, or never joined): nothing to leave
    if row.connections > 0:
        return None
    await conn.execute(presence.delete().where(key))
    if (await conn.execute(_user_connections(room_id, user_id))).scalar_one() != 0:
        return None
    return Member(user_id=user_id, connections=0, info=jsontext.loads(row.info), join_time=row.join_time)


class Silent(NamedTuple):
    """Instances silent since before a cutoff, and the rooms they hold connections in (in id order)."""

    instances: list[str]
    rooms: list[str]


async def silent_rooms(conn: AsyncConnection, cutoff: datetime) -> Silent:
    """The instances last seen before ``cutoff`` and their rooms (read without locks: the caller then locks
    the rooms' heads in this order, and :func:`sweep` deletes what is still there)."""
    silent = sa.select(presence_instances.c.instance).where(presence_instances.c.last_seen < cutoff)
    instances = list((await conn.execute(silent)).scalars())
    if not instances:
        return Silent([], [])
    rooms = (
        sa.select(presence.c.room_id)
        .where(presence.c.instance.in_(instances))
        .distinct()
        .order_by(presence.c.room_id)
    )
    return Silent(instances, list((await conn.execute(rooms)).scalars()))


async def sweep(conn: AsyncConnection, instances: Sequence[str]) -> list[tuple[str, Member]]:
    """Delete the connections of silent ``instances``; return (room id, member) for each user who left."""
    if not instances:
        return []
    this = presence.c
    deleted = (
        await conn.execute(
            presence.delete()
            .where(this.instance.in_(instances))
            .returning(this.room_id, this.user_id, this.info, this.join_time)
        )
    ).all()
    await conn.execute(presence_instances.delete().where(presence_instances.c.instance.in_(instances)))
    left: list[tuple[str, Member]] = []
    for row in sorted(deleted, key=lambda row: (row.room_id, row.user_id)):
        if left and left[-1][0] == row.room_id and left[-1][1].user_id == row.user_id:
            continue
        if (await conn.execute(_user_connections(row.room_id, row.user_id))).scalar_one() == 0:
            member = Member(row.user_id, 0, jsontext.loads(row.info), row.join_time)
            left.append((row.room_id, member))
    return left


def of_rows(rows: Sequence[Any]) -> Presence:
    """The :class:`Presence` of :data:`ROOM`'s rows: one member per user, connections summed, the info and
    join time of their earliest row."""
    members: list[Member] = []
    for row in rows:
        if members and members[-1].user_id == row.user_id:
            last = members[-1]
            members[-1] = Member(last.user_id, last.connections + row.connections, last.info, last.join_time)
        else:
            members.append(Member(row.user_id, row.connections, jsontext.loads(row.info), row.join_time))
    return Presence(
        members=members,
        num_users=len(members),
        num_connections=sum(member.connections for member in members),
    )
