"""RoomService: the room rules, on one backend, for every transport.

Each public coroutine is one method of ``roomgateway.v1.RoomService`` (``CreateRoom`` → :meth:`create_room`)
and takes the fields of its request message as keyword arguments, named as in the proto: nested messages
as dicts of proto field names, ``Value``/``Struct`` as plain JSON, a missing field as its default. So the
REST transcoder and the gRPC adapter both call it generically from the descriptors, and neither writes a
method twice. It knows nothing of HTTP, gRPC or SQL.

The rules: a room goes OPEN → CLOSED → DELETED and never back; an id is never used twice; only a CLOSED
room can be deleted, which wipes its data and ends its streams; a CLOSED room keeps its data and current
streams but refuses writes and new streams; a DELETED room answers NOT_FOUND except to GetRoom/ListRooms
(as :class:`~gateway.errors.RoomDeleted`, so that no caller needs a second read to tell it from a room that
never existed).

Two methods take the caller (a keyword-only ``caller``, supplied by the dispatcher, never by a request):
ListRooms answers only the rooms a pattern-limited key may access, and CreateRoomToken never grants more
than the caller holds, nor a token outliving the token that minted it.

Room tokens and InvalidateConnections: the time of each invalidation is stored through the backend contract
(so every instance sharing the backend sees it) as a variable of a reserved room, :data:`INVALIDATIONS_ROOM`,
named by the room id (:data:`EVERY_ROOM` for the global one). Its id holds a control character, which no
client can send (``validation.room_id``), and it is never created as a room, so it is never listed. A room
token issued at or before the later of the two times is rejected (UNAUTHENTICATED): equal times reject, so
that the check fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gateway import schema
from gateway.auth.policy import Principal
from gateway.auth.tokens import RoomTokenIssuer, TokenClaims, micros, token_info
from gateway.core import validation
from gateway.core.backend import Backend, LogPage
from gateway.core.cancelled import stop_if_cancelled
from gateway.core.hub import Subscription, Topic
from gateway.core.models import (
    ENDING_KINDS,
    JSON,
    UNSET,
    Change,
    ChangeKind,
    Event,
    InvalidateConnectionsResponse,
    ListChangesResponse,
    ListRoomsResponse,
    ListWebhookMessagesResponse,
    ListWebhooksResponse,
    Presence,
    ReplayWebhookResponse,
    Room,
    RoomContents,
    RoomSignal,
    RoomStatus,
    RoomToken,
    SendWebhookTestResponse,
    SignalKind,
    Unset,
    Variable,
    WebhookEndpoint,
)
from gateway.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RoomDeleted,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from gateway.webhooks.manager import WebhookManager

log = logging.getLogger(__name__)

DEFAULT_MAX_RESULTS = 100
MAX_RESULTS_CAP = 1000

#: The reserved room holding invalidation times (see the module docstring); never a client's room id.
INVALIDATIONS_ROOM = "\x1froom-gateway/invalidations"
#: Its variable for the global InvalidateConnections (the others are named by room id, which has no
#: control character).
EVERY_ROOM = "\x1f*"

#: Room fields a client may set, each with its rule.
_WRITABLE = {
    "display_name": validation.display_name,
    "description": validation.description,
    "jurisdiction": validation.jurisdiction,
    "settings": validation.settings,
}
#: Room fields an update may name and leaves as they are: the proto marks them OUTPUT_ONLY (status, times)
#: or IMMUTABLE (the id), and AIP-203 has them ignored on input, not refused.
_IGNORED_ON_UPDATE = schema.ignored_on_update(schema.message("roomgateway.v1.Room"))

_N = TypeVar("_N", Variable, Event, Change)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: How many changes a replay reads from the log at a time.
REPLAY_PAGE = 500


class ListenStream(Generic[_N], AsyncIterator[_N]):
    """A server stream of a room's changes, events or variable, already subscribed when returned.

    Iterating it yields items; it ends with NOT_FOUND when the room is deleted and UNAVAILABLE when its
    connections are invalidated or the server shuts down. :meth:`aclose` must be called (transports do it in
    ``finally``): it unsubscribes even if iteration never started.

    :param items: what the stream sends, or the Changes it is made of when ``convert`` is given.
    :param convert: the item a Change becomes (ListenEvents sends the Change's Event).
    """

    def __init__(
        self,
        subscription: Subscription,
        items: AsyncGenerator[Any, None],
        convert: Callable[[Change], _N] | None = None,
    ) -> None:
        self._subscription = subscription
        self._items = items
        # Annotated: with a constrained TypeVar mypy cannot infer the attribute's type from ``convert``.
        self._convert: Callable[[Change], _N] | None = convert
        #: The log position of the item last returned, ``"<epoch>:<seq>"`` (an SSE ``id``), or ``None`` when
        #: it has none (a variable, a live-only event).
        self.position: str | None = None

    def __aiter__(self) -> ListenStream[_N]:
        return self

    async def __anext__(self) -> _N:
        item: _N = await self._items.__anext__()
        if isinstance(item, Change):
            self.position = (
                f"{item.epoch}:{item.seq}" if item.seq > 0 or item.kind is ChangeKind.RESET else None
            )
            if self._convert is not None:
                return self._convert(item)
        return item

    async def aclose(self) -> None:
        self._subscription.close()
        # Both producers are async generator functions; the isinstance only narrows the type for ag_running.
        if isinstance(self._items, types.AsyncGeneratorType) and self._items.ag_running:
            return  # being read in another task: the closed subscription ends that read
        await self._items.aclose()


class _Filter:
    """Which changes a stream sends: of ``kinds`` (all when ``None``; RESET always), and variables and
    events whose name starts with ``prefix`` (or is exactly ``name``)."""

    __slots__ = ("kinds", "name", "prefix")

    def __init__(
        self, kinds: frozenset[ChangeKind] | None, prefix: str = "", name: str | None = None
    ) -> None:
        self.kinds = kinds
        self.prefix = prefix
        self.name = name

    def __call__(self, change: Change) -> bool:
        if self.kinds is not None and change.kind not in self.kinds and change.kind is not ChangeKind.RESET:
            return False
        if change.variable is None and change.event is None:
            return True
        named = change.name
        return named == self.name if self.name is not None else named.startswith(self.prefix)


class RoomService:
    """The domain core.

    :param backend: an opened backend.
    :param auto_create_rooms: create a room on its first variable write or event (WorkAdventure and
        Reflect behave so); when off, those calls on an unknown room are NOT_FOUND.
    :param clock: returns the current time (UTC); tests inject their own.
    :param value_limits: bounds on variable values and event data (``input`` in gateway.yaml).
    :param tokens: mints room tokens; ``None`` when ``auth.room_tokens.secret`` is not configured
        (CreateRoomToken is then FAILED_PRECONDITION).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        auto_create_rooms: bool = True,
        clock: Callable[[], datetime] = utcnow,
        value_limits: validation.ValueLimits = validation.DEFAULT_VALUE_LIMITS,
        tokens: RoomTokenIssuer | None = None,
        webhooks: WebhookManager | None = None,
    ) -> None:
        self.backend = backend
        self.tokens = tokens
        #: The webhook endpoints' management (``None``: none configured, every name is unknown).
        self.webhooks = webhooks
        self.value_limits = value_limits
        self.auto_create_rooms = auto_create_rooms
        self._now = clock

    # -- rooms --------------------------------------------------------------------------------------------

    async def create_room(self, room: Mapping[str, Any] | None = None) -> Room:
        fields = dict(room or {})
        room_id = validation.room_id(fields.get("room_id", ""), "room.room_id")
        now = self._now()
        new = Room(room_id=room_id, create_time=now, update_time=now)
        for name, check in _WRITABLE.items():
            if name in fields:
                setattr(new, name, check(fields[name]))
        await self.backend.create_room(new)
        return new

    async def get_room(self, room_id: str = "") -> Room:
        validation.room_id(room_id)
        room = await self.backend.get_room(room_id)
        if room is None:
            raise _room_not_found(room_id)
        if room.status is not RoomStatus.DELETED:
            (room,) = await self._with_users([room])
        return room

    async def list_rooms(
        self,
        start_key: str = "",
        start_after_key: str = "",
        room_id: Sequence[str] = (),
        max_results: int = 0,
        min_users: int = 0,
        *,
        caller: Principal | None = None,
    ) -> ListRoomsResponse:
        """Rooms in code-point order of id, each with its ``num_users``. For a ``caller`` limited to room
        patterns, only the rooms it may access; with ``min_users``, only rooms with at least that many
        present users: the others are skipped as if absent, and ``more`` says whether another *listed* room
        follows, so paging with ``startAfterKey`` (the last id returned) works unchanged."""
        if sum(1 for given in (start_key, start_after_key, room_id) if given) > 1:
            raise InvalidArgument("startKey, startAfterKey and roomId are mutually exclusive")
        if max_results < 0:
            raise InvalidArgument("maxResults must not be negative")
        if min_users < 0:
            raise InvalidArgument("minUsers must not be negative")
        limit = min(max_results or DEFAULT_MAX_RESULTS, MAX_RESULTS_CAP)
        limited = caller is not None and not caller.unrestricted
        if room_id:
            ids = sorted({validation.room_id(one, "roomId") for one in room_id})
            if caller is not None and limited:
                ids = [one for one in ids if caller.may_access(one)]
            found = await self._with_users(await self.backend.get_rooms(ids), min_users)
            rooms, more = found[:limit], len(found) > limit
        else:
            start = start_after_key or start_key
            if start:
                validation.room_id(start, "startAfterKey" if start_after_key else "startKey")
            if limited or min_users:
                rooms, more = await self._visible_rooms(
                    caller if limited else None, start, not start_after_key, limit, min_users
                )
            else:
                found = await self.backend.list_rooms(
                    start=start, inclusive=not start_after_key, limit=limit + 1
                )
                rooms, more = await self._with_users(found[:limit]), len(found) > limit
        return ListRoomsResponse(results=rooms, num_results=len(rooms), more=more)

    async def update_room(
        self, room: Mapping[str, Any] | None = None, update_mask: Sequence[str] | None = None
    ) -> Room:
        fields = dict(room or {})
        room_id = validation.room_id(fields.get("room_id", ""), "room.room_id")
        if update_mask:
            paths = list(update_mask)
        else:
            # AIP-134: no mask means every field that is set.
            paths = [name for name, value in fields.items() if value not in ("", None, {})]
        for path in paths:
            if path not in _WRITABLE and path not in _IGNORED_ON_UPDATE:
                raise InvalidArgument(f"update_mask names an unknown field: {path!r}")
        # A value sent outside the mask is not applied (AIP-134), but it is still input: a bad one is refused
        # rather than silently accepted.
        for name, check in _WRITABLE.items():
            if name in fields and name not in paths:
                check(fields[name])
        current = await self._writable_room(room_id)
        for path in paths:
            if path in _WRITABLE:
                setattr(current, path, _WRITABLE[path](fields.get(path, _empty_of(path))))
        current.update_time = self._now()
        await self.backend.save_room(current)
        return current

    async def close_room(self, room_id: str = "") -> Room:
        room = await self._writable_room(validation.room_id(room_id))
        room.status = RoomStatus.CLOSED
        room.update_time = self._now()
        await self.backend.save_room(room, ChangeKind.ROOM_CLOSED)
        return room

    async def delete_room(self, room_id: str = "") -> Room:
        room = await self._live_room(validation.room_id(room_id))
        if room.status is not RoomStatus.CLOSED:
            raise FailedPrecondition(f"room {room_id!r} is open: close it before deleting it")
        room.status = RoomStatus.DELETED
        room.update_time = self._now()
        # One atomic step: the tombstone, the data and the log go together; ROOM_DELETED ends the streams.
        await self.backend.delete_room(room)
        return room

    async def get_room_contents(self, room_id: str = "") -> RoomContents:
        await self._live_room(validation.room_id(room_id))
        snapshot = await self.backend.get_contents(room_id)
        return RoomContents(contents=snapshot.contents, seq=snapshot.seq, epoch=snapshot.epoch)

    async def invalidate_connections(self, room_id: str = "") -> InvalidateConnectionsResponse:
        if room_id:
            await self._live_room(validation.room_id(room_id))
        now = self._now()
        # Recorded before the signal: a client reconnecting at once with an old token is already refused.
        await self._record_invalidation(room_id or EVERY_ROOM, now)
        await self.backend.publish_signal(RoomSignal(room_id, SignalKind.INVALIDATED, now))
        return InvalidateConnectionsResponse(invalidate_time=now)

    # -- variables ----------------------------------------------------------------------------------------

    async def get_variable(self, room_id: str = "", name: str = "") -> Variable:
        validation.room_id(room_id)
        validation.variable_name(name)
        variable = await self.backend.get_variable(room_id, name)
        if variable is not None:
            return variable
        # The room may be missing too: say which.
        await self._live_room(room_id)
        raise NotFound(f"variable {name!r} is not set in room {room_id!r}")

    async def set_variable(
        self,
        room_id: str = "",
        name: str = "",
        value: JSON | Unset = UNSET,
        expected_version: int | None = None,
    ) -> Variable:
        validation.room_id(room_id)
        validation.variable_name(name)
        if value is UNSET:
            raise InvalidArgument("value is required")
        validation.json_value(value, "value", self.value_limits)
        if expected_version is not None and expected_version < 0:
            raise InvalidArgument("expectedVersion must not be negative")
        await self._room_for_write(room_id)
        variable = await self.backend.set_variable(
            room_id, name, value, expected_version=expected_version, now=self._now()
        )
        if variable is None:  # a backend breaking its contract: a set always yields a version
            raise Unavailable("backend did not store the variable")
        return variable

    async def delete_variable(self, room_id: str = "", name: str = "") -> None:
        validation.room_id(room_id)
        validation.variable_name(name)
        await self._writable_room(room_id)
        await self.backend.set_variable(room_id, name, UNSET, expected_version=None, now=self._now())

    async def listen_variable(self, room_id: str = "", name: str = "") -> ListenStream[Variable]:
        validation.room_id(room_id)
        validation.variable_name(name)
        await self._room_for_new(room_id, "streams")
        sub = await self.backend.subscribe(Topic("variable", room_id, name))
        try:
            current = await self.backend.get_variable(room_id, name)
        except BaseException:
            sub.close()
            raise
        return ListenStream(sub, self._variable_changes(sub, current))

    @staticmethod
    async def _variable_changes(
        sub: Subscription, current: Variable | None
    ) -> AsyncGenerator[Variable, None]:
        try:
            last = 0
            if current is not None:
                last = current.version
                yield current
            # Before the wait for live changes, as a room stream's: the read of the current value may
            # have swallowed a cancellation.
            stop_if_cancelled()
            async for note in sub:
                if isinstance(note, RoomSignal):
                    raise _stream_end(note, sub.topic.room_id)
                if note.kind in ENDING_KINDS:
                    raise _change_end(note, sub.topic.room_id)
                variable = note.variable
                if variable is not None and variable.version > last:
                    last = variable.version
                    yield variable
        finally:
            sub.close()

    # -- events -------------------------------------------------------------------------------------------

    async def publish_event(self, room_id: str = "", name: str = "", data: JSON = None) -> Event:
        validation.room_id(room_id)
        validation.variable_name(name)
        validation.json_value(data, "data", self.value_limits)
        await self._room_for_write(room_id)
        event = Event(name=name, data=data, time=self._now())
        await self.backend.publish_event(room_id, event)
        return event

    async def listen_events(
        self, room_id: str = "", name: str = "", after_seq: int | None = None, epoch: str = ""
    ) -> ListenStream[Event]:
        """Events of one name: live, or with ``after_seq`` those logged after that position first (as
        :meth:`listen_room` resumes)."""
        validation.room_id(room_id)
        validation.variable_name(name)
        _check_position(after_seq)
        await self._room_for_new(room_id, "streams")
        keep = _Filter(frozenset({ChangeKind.EVENT}), name=name)
        if after_seq is None:
            # Live only: the event's own topic, so other changes of the room wake no event listener.
            sub = await self.backend.subscribe(Topic("event", room_id, name))
            return ListenStream(sub, self._changes(sub, room_id, None, None, keep), _event_of)
        sub = await self.backend.subscribe(Topic.room(room_id))
        return await self._log_stream(sub, room_id, (after_seq, epoch), keep, _event_of)

    # -- the change log -----------------------------------------------------------------------------------

    async def listen_room(
        self,
        room_id: str = "",
        after_seq: int | None = None,
        epoch: str = "",
        kinds: Sequence[Any] = (),
        name_prefix: str = "",
    ) -> ListenStream[Change]:
        """Every change of a room: with ``after_seq`` (and ``epoch``) the retained ones after that position
        first, then live, with no gap and no duplicate; a position that cannot be served starts the stream
        with a RESET at the head. Without ``after_seq``: live from now."""
        validation.room_id(room_id)
        _check_position(after_seq)
        keep = _Filter(_kinds(kinds), prefix=name_prefix)
        await self._room_for_new(room_id, "streams")
        sub = await self.backend.subscribe(Topic.room(room_id))
        after = (after_seq, epoch) if after_seq is not None else None
        return await self._log_stream(sub, room_id, after, keep, None)

    async def list_changes(
        self,
        room_id: str = "",
        after_seq: int = 0,
        epoch: str = "",
        max_results: int = 0,
        kinds: Sequence[Any] = (),
    ) -> ListChangesResponse:
        """The retained changes after a position, oldest first.

        :raises OutOfRange: ``after_seq`` is older than what is retained, beyond the head, or of another
            epoch.
        """
        validation.room_id(room_id)
        _check_position(after_seq)
        if max_results < 0:
            raise InvalidArgument("maxResults must not be negative")
        limit = min(max_results or DEFAULT_MAX_RESULTS, MAX_RESULTS_CAP)
        wanted = _kinds(kinds)
        await self._live_room(room_id)
        page = await self.backend.read_changes(room_id, after_seq=after_seq, limit=limit + 1, kinds=wanted)
        if not _serves(page, after_seq, epoch):
            raise OutOfRange(
                f"position {epoch or page.epoch}:{after_seq} is not in the retained log "
                f"({page.epoch}:{page.first_seq - 1}..{page.head_seq}); "
                "re-read the room and list from its seq"
            )
        changes = page.changes[:limit]
        return ListChangesResponse(
            changes=changes, more=len(page.changes) > limit, head_seq=page.head_seq, epoch=page.epoch
        )

    async def _log_stream(
        self,
        sub: Subscription,
        room_id: str,
        after: tuple[int, str] | None,
        keep: _Filter,
        convert: Callable[[Change], _N] | None,
    ) -> ListenStream[_N]:
        """The stream of a subscription to a whole room: the log's first page (or head) is read now, so the
        position is fixed when the call returns (and a store that cannot serve fails the call, not the
        stream)."""
        try:
            if after is None:
                first = await self.backend.read_changes(room_id, after_seq=0, limit=0)
            else:
                first = await self.backend.read_changes(
                    room_id, after_seq=after[0], limit=REPLAY_PAGE, kinds=keep.kinds
                )
        except BaseException:
            sub.close()
            raise
        return ListenStream(sub, self._changes(sub, room_id, first, after, keep), convert)

    async def _changes(
        self,
        sub: Subscription,
        room_id: str,
        first: LogPage | None,
        after: tuple[int, str] | None,
        keep: _Filter,
    ) -> AsyncGenerator[Change, None]:
        """A room's changes that ``keep`` accepts, from a subscription already active: first the log after
        ``after`` (``(seq, epoch)``), then live.

        The handover has no gap and no duplicate: the subscription was active before the log was read, so a
        change is either in what was read (up to the head read with it) or arrives live; live changes at or
        below the position reached are dropped. With ``first`` (the log's first page, read when the stream
        was opened; given for a subscription to the whole room, whose seqs are consecutive), a live change
        beyond the next seq means some were lost on the way (a broker reconnecting): they are read from the
        log. Without ``first``: live only, as the subscription delivers.
        """
        gaps = first is not None
        try:
            position: int | None = None  # the last seq seen, sent or filtered out
            epoch = ""
            if first is not None and after is not None:
                position, expected = after
                page = first
                while True:
                    if not _serves(page, position, expected):
                        position, epoch = page.head_seq, page.epoch
                        yield self._reset(position, epoch)
                        break
                    expected = epoch = page.epoch
                    for change in page.changes:
                        if keep(change):
                            yield change
                    if len(page.changes) < REPLAY_PAGE:
                        position = page.head_seq  # every change up to the head read with the page was seen
                        break
                    position = page.changes[-1].seq
                    page = await self.backend.read_changes(
                        room_id, after_seq=position, limit=REPLAY_PAGE, kinds=keep.kinds
                    )
            elif first is not None:
                position, epoch = first.head_seq, first.epoch
            # Before the wait for live changes: a cancellation that a backend read swallowed (opening the
            # stream, the replay) would otherwise leave the stream waiting for ever, and its closer with it.
            stop_if_cancelled()
            async for note in sub:
                if isinstance(note, RoomSignal):
                    raise _stream_end(note, room_id)
                if note.seq > 0 and position is not None:
                    if note.epoch != epoch:  # the store lost its history: what came before is gone
                        epoch, position = note.epoch, note.seq - 1
                        yield self._reset(position, epoch)
                    elif note.seq <= position:
                        if note.kind in ENDING_KINDS:  # sent with the replay; it still ends the stream
                            raise _change_end(note, room_id)
                        continue  # replayed already
                    elif gaps and note.seq > position + 1:
                        async for missed in self._fill(room_id, position, note.seq, epoch, keep):
                            yield missed
                        stop_if_cancelled()  # (as above: _fill read the log)
                    position = note.seq
                if keep(note):
                    yield note
                if note.kind in ENDING_KINDS:
                    raise _change_end(note, room_id)
        finally:
            sub.close()

    async def _fill(
        self, room_id: str, position: int, upto: int, epoch: str, keep: _Filter
    ) -> AsyncGenerator[Change, None]:
        """The changes after ``position`` and before ``upto`` that a live stream missed, from the log; a
        RESET at ``upto - 1`` when the log no longer has them."""
        while position < upto - 1:
            page = await self.backend.read_changes(
                room_id, after_seq=position, limit=min(REPLAY_PAGE, upto - 1 - position)
            )
            if not page.changes or not _serves(page, position, epoch):
                yield self._reset(upto - 1, epoch)
                return
            for change in page.changes:
                if change.seq >= upto:
                    return
                position = change.seq
                if keep(change):
                    yield change
                if change.kind in ENDING_KINDS:
                    raise _change_end(change, room_id)

    def _reset(self, head: int, epoch: str) -> Change:
        """The stream's RESET: the position asked for cannot be served; go on from the head."""
        return Change(head, epoch, ChangeKind.RESET, self._now())

    # -- room tokens --------------------------------------------------------------------------------------

    async def create_room_token(
        self,
        room_id: str = "",
        user_name: str = "",
        role: str = "",
        permissions: Sequence[str] = (),
        ttl_seconds: int = 0,
        info: Mapping[str, Any] | None = None,
        *,
        caller: Principal,
    ) -> RoomToken:
        """Mint a token for ``room_id`` carrying ``role``'s permissions and the listed ones (or extras), and
        ``info`` (shown in presence).

        :raises FailedPrecondition: room tokens are not configured, or the room is CLOSED.
        :raises PermissionDenied: the token would carry a permission ``caller`` does not hold.
        :raises InvalidArgument: ``info`` is not a JSON object of at most 1 KiB.
        """
        validation.room_id(room_id)
        if self.tokens is None:
            raise FailedPrecondition("room tokens are not configured (auth.room_tokens.secret)")
        checked_info = token_info(info)
        grant = self.tokens.grant(role, permissions)
        beyond = [name for name in grant.permissions if not caller.may(name)]
        if beyond:
            raise PermissionDenied(f"{caller.name!r} cannot grant what it does not hold: {beyond}")
        await self._room_for_new(room_id, "tokens")
        now = self._now()
        expire_time = self.tokens.expiry(now, ttl_seconds, caller.expire_time)
        token = self.tokens.issue(
            room_id=room_id,
            user_name=user_name,
            role=role,
            grant=grant,
            now=now,
            expire_time=expire_time,
            info=checked_info,
        )
        return RoomToken(
            token=token, permissions=[*grant.permissions, *grant.extras], expire_time=expire_time
        )

    async def check_room_token(self, claims: TokenClaims) -> None:
        """Refuse a room token issued at or before its room's (or every room's) last InvalidateConnections.

        Not a method of the proto: the dispatcher calls it for every call made with a room token.

        :raises Unauthenticated: the token was invalidated.
        """
        per_room, every = await asyncio.gather(
            self.backend.get_variable(INVALIDATIONS_ROOM, claims.room_id),
            self.backend.get_variable(INVALIDATIONS_ROOM, EVERY_ROOM),
        )
        for stored in (per_room, every):
            if stored is not None and claims.issued_at_us <= _as_micros(stored.value):
                raise Unauthenticated("room token was invalidated (InvalidateConnections); ask for a new one")

    async def _record_invalidation(self, key: str, now: datetime) -> None:
        """Raise the stored invalidation time of ``key`` to ``now``, never lower it (compare-and-set, so two
        instances invalidating at once keep the later time)."""
        at = micros(now)
        while True:
            current = await self.backend.get_variable(INVALIDATIONS_ROOM, key)
            if current is not None and _as_micros(current.value) >= at:
                return
            try:
                await self.backend.set_variable(
                    INVALIDATIONS_ROOM,
                    key,
                    at,
                    expected_version=current.version if current is not None else 0,
                    now=now,
                )
                return
            except Aborted:  # another instance wrote first: read again
                continue

    async def _visible_rooms(
        self, caller: Principal | None, start: str, inclusive: bool, limit: int, min_users: int = 0
    ) -> tuple[list[Room], bool]:
        """Up to ``limit`` rooms from ``start`` that ``caller`` may access (any, for ``None``) with at least
        ``min_users`` present users, and whether another follows.

        Reads pages from the backend and skips what the patterns exclude. When every pattern begins with a
        literal prefix (``public-*``), the scan starts at the lowest prefix and stops past the highest, so a
        key limited to a prefix reads only its own range. Users are counted once per page, for the rooms
        the patterns let through.
        """
        prefixes = [_literal_prefix(pattern) for pattern in caller.rooms] if caller is not None else []
        bounded = bool(prefixes) and all(prefixes)
        if bounded and min(prefixes) > start:
            start, inclusive = min(prefixes), True
        page_size = limit + 1
        visible: list[Room] = []
        while True:
            page = await self.backend.list_rooms(start=start, inclusive=inclusive, limit=page_size)
            past_range = False
            candidates = []
            for room in page:
                if bounded and all(room.room_id > p and not room.room_id.startswith(p) for p in prefixes):
                    past_range = True  # every later id is past every prefix's range
                    break
                if caller is None or caller.may_access(room.room_id):
                    candidates.append(room)
            for room in await self._with_users(candidates, min_users):
                if len(visible) == limit:
                    return visible, True
                visible.append(room)
            if past_range or len(page) < page_size:
                return visible, False
            start, inclusive = page[-1].room_id, False

    async def _with_users(self, rooms: list[Room], min_users: int = 0) -> list[Room]:
        """``rooms`` with their ``num_users`` filled in from presence (one backend read), those with fewer
        than ``min_users`` left out."""
        if not rooms:
            return rooms
        counts = await self.backend.count_users([room.room_id for room in rooms])
        for room in rooms:
            room.num_users = counts.get(room.room_id, 0)
        return [room for room in rooms if room.num_users >= min_users]

    # -- presence -----------------------------------------------------------------------------------------

    async def get_presence(self, room_id: str = "") -> Presence:
        """Who is in the room: one member per user with open room-token streams, over every instance.

        A room not created yet has its presence too when rooms are implicit (a stream may wait for it).
        """
        validation.room_id(room_id)
        room = await self.backend.get_room(room_id)
        if room is None and not self.auto_create_rooms:
            raise _room_not_found(room_id)
        if room is not None and room.status is RoomStatus.DELETED:
            raise RoomDeleted(f"room {room_id!r} was deleted")
        return await self.backend.get_presence(room_id)

    # -- webhooks (gateway.webhooks.manager) ---------------------------------------------------------------

    async def list_webhooks(self) -> ListWebhooksResponse:
        if self.webhooks is None:
            return ListWebhooksResponse([])
        return await self.webhooks.list_webhooks()

    async def list_webhook_messages(
        self, name: str = "", status: str = "", max_results: int = 0
    ) -> ListWebhookMessagesResponse:
        return await self._webhooks(name).list_messages(name, status, max_results)

    async def retry_webhook_message(self, name: str = "", message_id: str = "") -> None:
        await self._webhooks(name).retry(name, message_id)

    async def replay_webhook(self, name: str = "", since: datetime | None = None) -> ReplayWebhookResponse:
        return await self._webhooks(name).replay(name, since)

    async def enable_webhook(self, name: str = "") -> WebhookEndpoint:
        return await self._webhooks(name).enable(name)

    async def send_webhook_test(self, name: str = "") -> SendWebhookTestResponse:
        return await self._webhooks(name).test(name)

    def _webhooks(self, name: str) -> WebhookManager:
        if self.webhooks is None:
            raise NotFound(f"no webhook endpoint {name!r} (none is configured: webhooks.endpoints)")
        return self.webhooks

    # -- rules shared by the methods ----------------------------------------------------------------------

    async def _live_room(self, room_id: str) -> Room:
        """The room, unless it was never created or is deleted (NOT_FOUND)."""
        room = await self.backend.get_room(room_id)
        if room is None:
            raise _room_not_found(room_id)
        if room.status is RoomStatus.DELETED:
            raise RoomDeleted(f"room {room_id!r} was deleted")
        return room

    async def _writable_room(self, room_id: str) -> Room:
        room = await self._live_room(room_id)
        _require_open(room)
        return room

    async def _room_for_write(self, room_id: str) -> None:
        """An OPEN room, created on the spot when ``auto_create_rooms`` is on."""
        room = await self.backend.get_room(room_id)
        if room is None and self.auto_create_rooms:
            now = self._now()
            try:
                await self.backend.create_room(Room(room_id=room_id, create_time=now, update_time=now))
                return
            except AlreadyExists:  # another writer created it first
                room = await self.backend.get_room(room_id)
        if room is None:
            raise _room_not_found(room_id)
        _require_open(room)

    async def _room_for_new(self, room_id: str, what: str) -> None:
        """New streams and new tokens need an OPEN room, or one not created yet when rooms are implicit.

        :param what: what the room refuses when closed ("streams", "tokens"), for the message.
        """
        room = await self.backend.get_room(room_id)
        if room is None:
            if self.auto_create_rooms:
                return
            raise _room_not_found(room_id)
        _require_open(room, f": it accepts no new {what}")


def _require_open(room: Room, detail: str = "") -> None:
    """NOT_FOUND (:class:`RoomDeleted`) for a deleted room, FAILED_PRECONDITION for a closed one."""
    if room.status is RoomStatus.DELETED:
        raise RoomDeleted(f"room {room.room_id!r} was deleted")
    if room.status is not RoomStatus.OPEN:
        raise FailedPrecondition(f"room {room.room_id!r} is closed{detail}")


def _room_not_found(room_id: str) -> NotFound:
    return NotFound(f"room {room_id!r} does not exist")


def _as_micros(value: object) -> int:
    """A stored invalidation time (µs since the epoch); a value that is not one counts as "never"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return -1
    return int(value)


def _literal_prefix(pattern: str) -> str:
    """The part of an ``fnmatch`` pattern before its first wildcard: every match starts with it."""
    for index, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:index]
    return pattern


def _empty_of(path: str) -> Any:
    return {} if path == "settings" else ""


def _check_position(after_seq: int | None) -> None:
    if after_seq is not None and after_seq < 0:
        raise InvalidArgument("afterSeq must not be negative")


#: The kinds a filter may name, as the messages of a bad one list them (KIND_UNSPECIFIED is none of them).
_KIND_NAMES = sorted(kind.value for kind in ChangeKind)


def _kinds(kinds: Sequence[Any]) -> frozenset[ChangeKind] | None:
    """The kinds a request names (proto enum names; an unknown number stays a number), ``None`` for all.

    :raises InvalidArgument: an unknown or unspecified kind.
    """
    if not kinds:
        return None
    wanted = set()
    for kind in kinds:
        try:
            wanted.add(ChangeKind(kind))
        except ValueError:
            raise InvalidArgument(f"kinds must be one of {_KIND_NAMES}, not {kind!r}") from None
    return frozenset(wanted)


def _serves(page: LogPage, after_seq: int, epoch: str) -> bool:
    """Whether the log read in ``page`` has every change after ``after_seq`` of ``epoch`` ("": the current
    one)."""
    return (not epoch or epoch == page.epoch) and page.first_seq - 1 <= after_seq <= page.head_seq


def _event_of(change: Change) -> Event:
    if change.event is None:  # the filter lets only events through
        raise TypeError(f"not an event: {change.kind}")
    return change.event


def _change_end(change: Change, room_id: str) -> Exception:
    """How a stream ends after a change of an ending kind."""
    if change.kind is ChangeKind.ROOM_DELETED:
        return RoomDeleted(f"room {room_id!r} was deleted")
    return Unavailable(f"connections to room {room_id!r} were invalidated; reconnect")


def _stream_end(signal: RoomSignal, room_id: str) -> Exception:
    if signal.kind is SignalKind.DELETED:
        return RoomDeleted(f"room {room_id!r} was deleted")
    return Unavailable(f"connections to room {room_id!r} were invalidated; reconnect")
