"""``roomApi.RoomApi`` on grpclib: WorkAdventure's five calls, run through the native dispatcher.

Each call maps onto one native method (so the same permissions, room patterns, ``by: room`` rate limits
and room rules apply, and a variable saved here is read and heard through every other surface):

==================  ==================  ==========================================================
roomApi.RoomApi     native method       as WorkAdventure does
==================  ==================  ==========================================================
readVariable        GetVariable         an unset variable (or a room not created yet) → empty Value
saveVariable        SetVariable         the room is created on the first write (implicit rooms)
listenVariable      ListenVariable      only the changes after the call, not the current value
broadcastEvent      PublishEvent        ``targetUserIds`` accepted and ignored
listenToEvent       ListenEvents        ``EventResponse{data}``; ``senderId`` absent (API-sent events)
==================  ==================  ==========================================================

Authentication is WorkAdventure's: ``x-api-key`` metadata only, UNAUTHENTICATED ``"X-API-Key metadata not
defined!"`` when it is missing and ``"Wrong API key"`` when no configured key matches. A key limited to room
patterns gets PERMISSION_DENIED elsewhere, as WorkAdventure's check of a key against its front URL.

grpclib gives a generated method only the request message. :meth:`RoomApiHandler.__mapping__` wraps the
generated ``__rpc_*`` entry points (which do receive the stream) so that each call is authenticated from its
metadata before the request is read, and leaves the principal in a :class:`~contextvars.ContextVar` for the
method: every call runs in its own task, with its own copy of the context.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

import betterproto2
from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from gateway._gen.google import protobuf as wkt
from gateway._gen.roomApi import (
    DispatchEventRequest,
    EventRequest,
    EventResponse,
    RoomApiBase,
    SaveVariableRequest,
    VariableRequest,
)
from gateway.auth.policy import AuthPolicy, Principal
from gateway.core.models import JSON, UNSET, Unset
from gateway.dispatch import Dispatcher
from gateway.errors import NotFound, RoomDeleted, Unauthenticated
from gateway.rpc import codec
from gateway.rpc.errors import grpc_errors
from gateway.rpc.service import RoomServiceHandler

#: Method paths of the service: the native auth listener leaves them to this handler.
ROOM_API_PREFIX = "/roomApi.RoomApi/"
#: WorkAdventure's own messages (play/src/room-api/guards/AuthenticationGuard.ts, LocalAuthenticator.ts).
MISSING_KEY = "X-API-Key metadata not defined!"
WRONG_KEY = "Wrong API key"

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "room_gateway_workadventure_principal", default=None
)

_RpcFunc = Callable[[Stream[Any, Any]], Awaitable[None]]


def _principal() -> Principal:
    principal = _caller.get()
    if principal is None:  # only if called without __mapping__'s wrapper: fail closed
        raise GRPCError(Status.UNAUTHENTICATED, MISSING_KEY)
    return principal


def _value(json: JSON | Unset) -> wkt.Value:
    """A ``Value`` for a JSON value; an empty one for no value (unset or deleted), as WorkAdventure."""
    return wkt.Value() if json is UNSET else wkt.Value.from_dict(json)


def _json(value: wkt.Value | None) -> JSON | Unset:
    """The JSON value a request carries, as the native codec reads it (integral numbers as ints); ``UNSET``
    when absent or when the ``Value`` has no kind set (WorkAdventure's clients unwrap it to ``undefined``)."""
    if value is None or not betterproto2.which_one_of(value, "kind")[0]:
        return UNSET
    # The native gRPC service's own conversion, so a value reads the same through every surface.
    json: JSON = codec._integral_numbers(value.to_dict())
    return json


class RoomApiHandler(RoomApiBase):
    """WorkAdventure's Room API over ``dispatcher`` (the native calls, their authorization and room rules).

    :param dispatcher: the gateway's dispatcher; its policy authenticates the ``x-api-key``.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def __mapping__(self) -> dict[str, Handler]:
        return {
            path: handler._replace(func=self._authenticated(handler.func))
            for path, handler in super().__mapping__().items()
        }

    def _authenticated(self, func: _RpcFunc) -> _RpcFunc:
        policy = self.dispatcher.policy

        async def call(stream: Stream[Any, Any]) -> None:
            _caller.set(_authenticate(policy, stream.metadata))
            await func(stream)

        return call

    # -- variables ----------------------------------------------------------------------------------------

    async def read_variable(self, message: VariableRequest) -> wkt.Value:
        principal = _principal()
        request = {"room_id": message.room, "name": message.name}
        with grpc_errors("readVariable"):
            try:
                variable = await self.dispatcher.call("GetVariable", principal, request)
            except RoomDeleted:  # its writes are refused too: not an empty room
                raise
            except NotFound:  # the variable is unset, or the room not created yet
                await self._unless_rooms_are_explicit(message.room)
                return wkt.Value()
            return _value(variable.value)

    async def save_variable(self, message: SaveVariableRequest) -> wkt.Empty:
        principal = _principal()
        request: dict[str, Any] = {"room_id": message.room, "name": message.name}
        value = _json(message.value)
        if value is not UNSET:
            request["value"] = value  # else INVALID_ARGUMENT "value is required", from the service
        with grpc_errors("saveVariable"):
            await self.dispatcher.call("SetVariable", principal, request)
        return wkt.Empty()

    async def listen_variable(self, message: VariableRequest) -> AsyncGenerator[wkt.Value, None]:
        principal = _principal()
        request = {"room_id": message.room, "name": message.name}
        with grpc_errors("listenVariable"):
            # The native stream starts with the current value; WorkAdventure's sends only what changes after
            # the call. Versions only grow, so "after" is "newer than the version read before subscribing"
            # (a change landing in between is newer, and is sent).
            self.dispatcher.policy.authorize(principal, "ListenVariable", message.room)
            seen = await self._current_version(message.room, message.name)
            stream = await self.dispatcher.call("ListenVariable", principal, request)
            try:
                async for variable in stream:
                    if variable.version > seen:
                        yield _value(variable.value)
            finally:
                await stream.aclose()  # unsubscribes however the stream ends

    # -- events -------------------------------------------------------------------------------------------

    async def broadcast_event(self, message: DispatchEventRequest) -> wkt.Empty:
        principal = _principal()
        data = _json(message.data)
        # targetUserIds names WorkAdventure players; the gateway has none: every listener gets the event.
        request = {"room_id": message.room, "name": message.name, "data": None if data is UNSET else data}
        with grpc_errors("broadcastEvent"):
            await self.dispatcher.call("PublishEvent", principal, request)
        return wkt.Empty()

    async def listen_to_event(self, message: EventRequest) -> AsyncGenerator[EventResponse, None]:
        principal = _principal()
        request = {"room_id": message.room, "name": message.name}
        with grpc_errors("listenToEvent"):
            stream = await self.dispatcher.call("ListenEvents", principal, request)
            try:
                async for event in stream:
                    # No senderId: WorkAdventure leaves it out of events sent through its API (all, here).
                    yield EventResponse(data=_value(event.data))
            finally:
                await stream.aclose()

    #: Closes the stream's generator (and its subscription) when the call ends, as the native service does.
    _call_rpc_handler_server_stream = RoomServiceHandler._call_rpc_handler_server_stream

    # -- rules ----------------------------------------------------------------------------------------------

    async def _unless_rooms_are_explicit(self, room_id: str) -> None:
        """After a NOT_FOUND read: WorkAdventure's rooms are implicit, so a room not created yet reads as
        empty. With ``auto_create_rooms`` off an unknown room stays NOT_FOUND."""
        if not self.dispatcher.implicit_rooms:
            await self.dispatcher.lookup("GetRoom", {"room_id": room_id})

    async def _current_version(self, room_id: str, name: str) -> int:
        try:
            variable = await self.dispatcher.lookup("GetVariable", {"room_id": room_id, "name": name})
        except NotFound:
            return 0
        return int(variable.version)


def _authenticate(policy: AuthPolicy, metadata: Mapping[str, str | bytes] | None) -> Principal:
    """WorkAdventure's check: ``x-api-key`` only, with its messages.

    :raises GRPCError: UNAUTHENTICATED.
    """
    key = metadata.get("x-api-key") if metadata is not None else None
    if not isinstance(key, str) or not key:
        raise GRPCError(Status.UNAUTHENTICATED, MISSING_KEY)
    try:
        return policy.authenticate(api_key=key)
    except Unauthenticated:
        raise GRPCError(Status.UNAUTHENTICATED, WRONG_KEY) from None
