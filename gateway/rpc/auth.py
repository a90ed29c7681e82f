"""The gRPC adapter of the auth policy: a grpclib ``RecvRequest`` listener.

grpclib hands a generated handler only the request message, never the stream and its metadata. The
``RecvRequest`` event does see the metadata, may refuse the call by raising ``GRPCError``, and runs in the
task that then runs the handler; so the listener authenticates the call and leaves the
:class:`~gateway.auth.policy.Principal` in a :class:`contextvars.ContextVar` that the handler reads.
Each call runs in its own task with its own copy of the context, so one call's principal never leaks into
another's.

Health checks are answered without credentials (load balancers and orchestrators probe them); every other
method, server reflection included, is authenticated.
"""

from __future__ import annotations

import contextvars

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from gateway.auth.policy import AuthPolicy, Principal
from gateway.errors import GatewayError
from gateway.observability.calls import note_principal
from gateway.rpc.errors import grpc_error

#: Method paths answered without credentials.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "room_gateway_grpc_principal", default=None
)


def current_principal() -> Principal:
    """The principal of the gRPC call running in this task.

    :raises GRPCError: UNAUTHENTICATED when no listener authenticated the call (a server built without
        :func:`install_auth`): handlers fail closed.
    """
    principal = _principal.get()
    if principal is None:
        raise GRPCError(Status.UNAUTHENTICATED, "missing credentials")
    return principal


def install_auth(server: Server, policy: AuthPolicy, *, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Authenticate every call ``server`` receives (but health checks) with ``policy``.

    :param skip_prefixes: method paths (``/package.Service/``) of compatibility surfaces that authenticate
        their calls themselves, with their vendor's messages.
    """
    unauthenticated = UNAUTHENTICATED_PREFIXES + skip_prefixes

    async def authenticate(event: RecvRequest) -> None:
        _principal.set(None)
        if event.method_name.startswith(unauthenticated):
            return
        try:
            principal = policy.authenticate(
                authorization=_text(event.metadata.get("authorization")),
                api_key=_text(event.metadata.get("x-api-key")),
            )
        except GatewayError as err:
            raise grpc_error(err) from None
        _principal.set(principal)
        note_principal(principal)  # for the access line, without a wrapper around the call (rpc.observe)

    listen(server, RecvRequest, authenticate)


def _text(value: object) -> str | None:
    """A metadata value as text (``-bin`` keys arrive as bytes; credentials are never binary)."""
    return value if isinstance(value, str) else None
