"""``roomgateway.v1.RoomService`` on grpclib: the generated base class, its methods made from the descriptor.

No method is written out here. For each method of the proto service (``gateway.dispatch.native_methods``)
the handler gets a coroutine (or, for a server stream, an async generator) under the name the generated
``RoomServiceBase`` calls, which converts the request to keyword arguments, runs the call through the
:class:`~gateway.dispatch.Dispatcher` with the caller's principal, and converts the result back
(:mod:`gateway.rpc.codec`). A method added to the proto is served here without a line changing.

Errors follow grpclib's split (:func:`gateway.rpc.errors.grpc_errors`): a
:class:`~gateway.errors.GatewayError` is an expected outcome and becomes a ``GRPCError`` with its status and
message; anything else is a bug, logged with its traceback and answered INTERNAL with a generic message.
Streams end the same way (NOT_FOUND when the room is deleted, UNAVAILABLE when its connections are
invalidated).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

import betterproto2
from grpclib.server import Stream

from gateway._gen.roomgateway.v1 import RoomServiceBase
from gateway.dispatch import Dispatcher, Method
from gateway.rpc import codec
from gateway.rpc.auth import current_principal
from gateway.rpc.errors import grpc_errors
from gateway.rpc.wire import LastConversion

_Unary = Callable[[betterproto2.Message], Coroutine[Any, Any, betterproto2.Message]]
_ServerStream = Callable[[betterproto2.Message], AsyncGenerator[betterproto2.Message, None]]


class RoomServiceHandler(RoomServiceBase):
    """The native gRPC service, serving every method of the proto through ``dispatcher``.

    :param dispatcher: authorizes and runs the calls.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        missing = [
            m.python_name for m in dispatcher.methods.values() if not hasattr(RoomServiceBase, m.python_name)
        ]
        if missing:
            raise RuntimeError(
                f"the generated RoomServiceBase lacks {missing}: "
                "regenerate gateway/_gen (scripts/genproto.py)"
            )
        for method in dispatcher.methods.values():
            # Instance attributes shadow the base class's UNIMPLEMENTED stubs, which its generated
            # ``__rpc_*`` wrappers call as ``self.<python_name>(request)``.
            handler = self._server_stream(method) if method.server_streaming else self._unary(method)
            setattr(self, method.python_name, handler)

    def _unary(self, method: Method) -> _Unary:
        dispatcher = self.dispatcher

        async def handle(request: betterproto2.Message) -> betterproto2.Message:
            principal = current_principal()
            with grpc_errors(method.name):
                result = await dispatcher.call(method.name, principal, codec.to_kwargs(request, method.input))
                return codec.to_message(result, method.output)

        handle.__name__ = handle.__qualname__ = method.python_name
        return handle

    def _server_stream(self, method: Method) -> _ServerStream:
        dispatcher = self.dispatcher
        # Shared by every stream of the method: a write fanned out to many listeners converts once.
        convert = LastConversion(lambda item: codec.to_message(item, method.output))

        async def handle(request: betterproto2.Message) -> AsyncGenerator[betterproto2.Message, None]:
            principal = current_principal()
            with grpc_errors(method.name):
                stream = await dispatcher.call(method.name, principal, codec.to_kwargs(request, method.input))
                try:
                    async for item in stream:
                        yield convert(item)
                finally:
                    # Unsubscribes at once, however the stream ends: the room's end, an error, the client
                    # cancelling (the generator is closed by _call_rpc_handler_server_stream below).
                    await stream.aclose()

        handle.__name__ = handle.__qualname__ = method.python_name
        return handle

    async def _call_rpc_handler_server_stream(
        self,
        handler: Callable[..., Any],
        stream: Stream[Any, Any],
        request: Any,
    ) -> None:
        # betterproto2's version iterates the generator without closing it: when the call is cancelled while
        # a message is being sent, the generator (and its subscription) would live on until garbage
        # collection. ``aclosing`` runs its ``finally`` before the call ends.
        messages: AsyncGenerator[Any, None] = handler(request)
        async with contextlib.aclosing(messages) as closing:
            async for message in closing:
                await stream.send_message(message)
