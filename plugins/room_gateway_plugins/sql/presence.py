"""Presence in SQL: connections counted per (room, user, instance), and each instance's last heartbeat.

A row of ``presence`` counts one instance's connections of one user in one room; a user is present while
any of their rows is. Joining and leaving touch only their own row and then sum the user's rows, under the
room's head row lock (:meth:`.base.SqlBackend._lock_room`, taken by the caller), so two instances never both
log the user's first join or last leave.

An instance is alive while its ``presence_instances`` row holds a real ``last_seen`` (each heartbeat is one
update of it). Expiry takes two transactions, so that no lock is ever taken out of the writers' order
(room heads first): :func:`mark_silent` sets the silent instances' ``last_seen`` to :data:`EXPIRING`
(waiting for their joins in flight, which hold the row ``FOR KEY SHARE``; a later join finds it expiring
and counts nothing), then :func:`sweep`, under the heads of the rooms they hold, deletes their rows and logs
each user whose last connection they held as left, and deletes their instance rows. A sweeper that dies in
between leaves the mark, and the next expiry finishes the sweep; the expiring instance's heartbeat answers
``False`` until then, and afterwards recreates its row (it rejoins).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import jsontext, times
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
    if not await alive(conn, instance):
        return None
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
    if (await conn.execute(_user_connections(room_id, member.user_id))).scalar_one() != 1:
        return None
    return Member(user_id=member.user_id, connections=1, info=member.info, join_time=now)


async def rejoin(
    conn: AsyncConnection,
    insert: Callable[[sa.Table], Any],
    room_id: str,
    member: Member,
    instance: str,
    connections: int,
    now: datetime,
) -> Member | None:
    """Count exactly ``connections``; return the member to log as joined when the user had none, or as
    left when that count was their last (then ``connections`` is 0)."""
    if not await alive(conn, instance):
        return None
    this = presence.c
    if not connections:
        key = (this.room_id == room_id) & (this.user_id == member.user_id) & (this.instance == instance)
        row = (await conn.execute(presence.delete().where(key).returning(this.info, this.join_time))).first()
        if row is None or (await conn.execute(_user_connections(room_id, member.user_id))).scalar_one():
            return None
        return Member(member.user_id, 0, jsontext.loads(row.info), row.join_time)
    before = (await conn.execute(_user_connections(room_id, member.user_id))).scalar_one()
    await conn.execute(
        insert(presence)
        .values(
            room_id=room_id,
            user_id=member.user_id,
            instance=instance,
            connections=connections,
            info=jsontext.dumps(member.info).decode(),
            join_time=now,
        )
        .on_conflict_do_update(
            index_elements=[this.room_id, this.user_id, this.instance], set_={"connections": connections}
        )
    )
    if before:
        return None
    return Member(user_id=member.user_id, connections=connections, info=member.info, join_time=now)


#: The ``last_seen`` of an instance being expired (a heartbeat never writes a time this old).
EXPIRING = datetime(1970, 1, 1, tzinfo=UTC)


async def alive(conn: AsyncConnection, instance: str) -> bool:
    """Whether the instance is alive, its row held ``FOR KEY SHARE`` until the caller commits: so that
    :func:`mark_silent`, which deletes the row, waits for the join (and the sweep after it sees what the join
    counted), while a heartbeat, which only updates it, never does."""
    this = presence_instances.c
    found = sa.select(this.instance).where(this.instance == instance, this.last_seen > EXPIRING)
    return (await conn.execute(found.with_for_update(read=True, key_share=True))).first() is not None


async def heartbeat(
    conn: AsyncConnection, insert: Callable[[sa.Table], Any], instance: str, now: datetime
) -> bool:
    """Push the instance's ``last_seen`` to ``now``; ``False`` when it was not alive (then its row is created,
    unless its expiry is still under way)."""
    this = presence_instances.c
    beat = presence_instances.update().where(this.instance == instance, this.last_seen > EXPIRING)
    if (await conn.execute(beat.values(last_seen=now))).rowcount:
        return True
    await conn.execute(
        insert(presence_instances).values(instance=instance, last_seen=now).on_conflict_do_nothing()
    )
    return False


async def mark_silent(conn: AsyncConnection, cutoff: datetime) -> list[str]:
    """Mark the instances last seen before ``cutoff`` as expiring; return every expiring instance (those of
    a sweep that did not finish too)."""
    this = presence_instances.c
    # Deleted and inserted again rather than updated: only a delete waits for the joins in flight.
    silent = presence_instances.delete().where(this.last_seen < cutoff, this.last_seen > EXPIRING)
    marked = list((await conn.execute(silent.returning(this.instance))).scalars())
    if marked:
        await conn.execute(
            presence_instances.insert(), [{"instance": i, "last_seen": EXPIRING} for i in marked]
        )
    return list((await conn.execute(sa.select(this.instance).where(this.last_seen == EXPIRING))).scalars())


async def next_deadline(conn: AsyncConnection, ttl: timedelta) -> datetime | None:
    """When the alive instance seen least recently expires if it stays silent."""
    this = presence_instances.c
    oldest = (
        await conn.execute(sa.select(sa.func.min(this.last_seen)).where(this.last_seen > EXPIRING))
    ).scalar()
    return None if oldest is None else times.assume_utc(oldest) + ttl


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


async def rooms_of(conn: AsyncConnection, instances: Sequence[str]) -> list[str]:
    """The rooms where ``instances`` hold connections, in id order (the order every writer locks heads in)."""
    rooms = sa.select(presence.c.room_id).where(presence.c.instance.in_(instances)).distinct()
    return list((await conn.execute(rooms.order_by(presence.c.room_id))).scalars())


async def sweep(conn: AsyncConnection, instances: Sequence[str]) -> list[tuple[str, Member]]:
    """Delete the connections of expiring ``instances`` and their instance rows; return (room id, member)
    for each user who left. Of two sweepers at once, the second finds nothing left."""
    this = presence.c
    deleted = (
        await conn.execute(
            presence.delete()
            .where(this.instance.in_(instances))
            .returning(this.room_id, this.user_id, this.info, this.join_time)
        )
    ).all()
    done = presence_instances.c.instance.in_(instances) & (presence_instances.c.last_seen == EXPIRING)
    await conn.execute(presence_instances.delete().where(done))
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
