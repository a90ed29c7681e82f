"""The REST adapter of the auth policy: a pure ASGI middleware (Starlette's ``AuthenticationMiddleware``
pattern, not ``BaseHTTPMiddleware``, which costs ~4x throughput here: STYLE.md).

It hands the ``Authorization`` and ``X-API-Key`` headers to
:meth:`AuthPolicy.authenticate <gateway.auth.policy.AuthPolicy.authenticate>` and stores the
:class:`~gateway.auth.policy.Principal` in ``scope["room_gateway.principal"]``; a failure is a 401 in the
native error shape with ``WWW-Authenticate``. Authorization per method and room happens later, in
:meth:`Dispatcher.call <gateway.dispatch.Dispatcher.call>`, once the request is bound.
"""

from __future__ import annotations

from collections.abc import Collection

# Defined in starlette._utils (routing only re-imports it): the path the router matches, root_path removed.
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.policy import WWW_AUTHENTICATE, AuthPolicy
from gateway.edge.responses import send_error
from gateway.edge.routing import PRINCIPAL
from gateway.errors import GatewayError

#: Paths that need no credentials (API.md: "Every call but /healthz and /readyz is authenticated").
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
_CHALLENGE = [(b"www-authenticate", WWW_AUTHENTICATE.encode("ascii"))]


class AuthMiddleware:
    """Authenticate every HTTP request but those to ``public_paths``.

    :param app: the wrapped ASGI app.
    :param policy: the auth policy.
    :param public_paths: route paths served without credentials.
    :param self_authenticated_prefixes: path prefixes of compatibility surfaces, which authenticate their
        calls themselves and answer in their vendor's error shape.
    """

    def __init__(
        self,
        app: ASGIApp,
        policy: AuthPolicy,
        public_paths: Collection[str] = PUBLIC_PATHS,
        self_authenticated_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.policy = policy
        self.public_paths = frozenset(public_paths)
        self.self_authenticated_prefixes = self_authenticated_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope)
        if path in self.public_paths or (
            self.self_authenticated_prefixes and path.startswith(self.self_authenticated_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        authorization = api_key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
        try:
            principal = self.policy.authenticate(authorization=authorization, api_key=api_key)
        except GatewayError as exc:
            await send_error(send, exc, _CHALLENGE)
            return
        scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)
