"""Compatibility surfaces: other vendors' room APIs served as adapters onto the same rooms.

A surface is a plugin (``gateway_surfaces`` hook) whose class names its section of ``surfaces:`` in
``gateway.yaml`` (:attr:`Surface.name`) and the model that validates it (:attr:`Surface.settings_model`,
a :class:`SurfaceSettings` subclass), so a third party's section is checked, with errors naming the file,
line and key, exactly like the built-in ones. When its section says ``enabled: true`` the surface is built
with its validated settings and a :class:`SurfaceContext`, and may add HTTP routes to the edge and handlers
to the gRPC server. It reaches the rooms only through the context's
:class:`~gateway.dispatch.Dispatcher`, the same one the native API uses (permissions, room patterns,
``by: room`` limits), so a variable written through one surface is read and heard through every other.

Each surface answers in its own vendor's shapes, errors included: a surface that authenticates its calls
itself names its path prefixes (:attr:`Surface.http_prefixes`, :attr:`Surface.grpc_prefixes`) and the
native auth stage lets those through. :class:`ErrorFrame` is the one expected-vs-unexpected split of their
REST calls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from starlette.routing import BaseRoute
from starlette.types import Scope

from gateway.auth.policy import AuthPolicy, Principal
from gateway.config import GatewayConfig, SurfaceSettings
from gateway.dispatch import Dispatcher
from gateway.edge.responses import ClientDisconnected
from gateway.edge.routing import PRINCIPAL
from gateway.errors import GatewayError, Unauthenticated

__all__ = ["ErrorFrame", "Surface", "SurfaceContext", "SurfaceSettings", "caller"]

log = logging.getLogger(__name__)

VendorError = TypeVar("VendorError", bound=Exception)
Answer = TypeVar("Answer")


@dataclass(frozen=True, slots=True)
class SurfaceContext:
    """What a surface gets to work with: the whole configuration, the auth policy (to authenticate its
    calls in its own way), and the dispatcher (to run them)."""

    config: GatewayConfig
    policy: AuthPolicy
    dispatcher: Dispatcher


class Surface:
    """Base class of compatibility surfaces.

    :param settings: the surface's section of ``surfaces:``, validated by :attr:`settings_model`.
    :param context: the gateway's core.
    """

    #: The key under ``surfaces:`` in gateway.yaml, e.g. ``"reflect"``.
    name: ClassVar[str] = ""
    #: The model of that section: ``enabled`` and the surface's own keys (unknown keys are errors).
    settings_model: ClassVar[type[SurfaceSettings]] = SurfaceSettings
    #: Path prefixes under which this surface authenticates HTTP calls itself, in its vendor's shapes.
    http_prefixes: ClassVar[tuple[str, ...]] = ()
    #: gRPC method path prefixes (``/package.Service/``) this surface authenticates itself.
    grpc_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: SurfaceSettings, context: SurfaceContext) -> None:
        self.settings = settings
        self.context = context

    @property
    def label(self) -> str:
        """The ``surface`` label of its calls in metrics and access lines: its :attr:`name`."""
        return self.name

    def http_routes(self) -> list[BaseRoute]:
        """Routes to add to the HTTP edge, tried after the native ones. Calls under :attr:`http_prefixes`
        reach them unauthenticated; others are authenticated by the native stage first."""
        return []

    def grpc_handlers(self) -> list[object]:
        """grpclib handlers (``__mapping__`` objects) to serve on the gRPC port next to the native service."""
        return []


def caller(scope: Scope) -> Principal:
    """Who makes an HTTP call that the edge authenticated: a call to a surface's route outside its
    :attr:`Surface.http_prefixes` (under them, the surface authenticates calls itself with
    ``context.policy``). Hand it to :meth:`Dispatcher.call <gateway.dispatch.Dispatcher.call>`.

    :raises Unauthenticated: the edge did not authenticate the call.
    """
    principal = scope.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise Unauthenticated("missing credentials")
    return principal


@dataclass(frozen=True, slots=True)
class ErrorFrame(Generic[VendorError, Answer]):
    """The expected-vs-unexpected split of a surface's REST calls (grpclib's ``GRPCError`` vs
    ``Stream.__aexit__``), in the vendor's shapes.

    A call raises its vendor's errors (``vendor``) from anywhere, and :class:`GatewayError` outcomes of the
    native calls it makes: both are expected, and answered. Anything else is a bug: logged with its
    traceback and answered generically, never with the exception's text. A client that left
    (:class:`ClientDisconnected`) is neither: nobody is there to answer.

    :param surface: the surface's name, in the log line of a bug.
    :param vendor: the vendor's error type, raised by the surface's own code.
    :param expected: a :class:`GatewayError` in the vendor's terms.
    :param unexpected: the vendor's answer to a bug (a 500).
    :param render: a vendor error as the answer sent.
    """

    surface: str
    vendor: type[VendorError]
    expected: Callable[[GatewayError], VendorError]
    unexpected: Callable[[], VendorError]
    render: Callable[[VendorError], Answer]

    async def answer(self, call: Awaitable[Answer], scope: Scope) -> Answer | None:
        """What ``call`` answers, or the vendor's answer to what it raised; ``None`` when the client left
        while its request was being read (send nothing).

        :param scope: the request, named in the log line of a bug.
        """
        try:
            return await call
        except ClientDisconnected:
            return None
        except GatewayError as exc:
            error = self.expected(exc)
        except Exception as exc:
            if isinstance(exc, self.vendor):
                error = exc
            else:
                log.exception("%s: %s %s failed", self.surface, scope.get("method"), scope.get("path"))
                error = self.unexpected()
        return self.render(error)
