"""The one Starlette route of the Reflect surface: everything under ``/v1/apps/``, in Reflect's shapes.

::

    authenticate (Authorization: Basic <key>)  → 401
    app id known (surfaces.reflect.apps)       → 404 apps
    command known, method right                → 404 / 405 request
    query and body strictly parsed             → 400 request
    Dispatcher.call (authorize, by: room limit) → 403 / 404 / 409 / 410 / …
    {"result": …, "error": null}

The route owns its whole prefix (``http_prefixes``), so the edge's authentication stage lets its calls through
and no error under the prefix is answered in the native shape.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from gateway.auth.policy import WWW_AUTHENTICATE, Principal
from gateway.edge.auth import credentials
from gateway.edge.responses import RequestHeaders, read_body, send_json
from gateway.edge.routing import PRINCIPAL, route_path
from gateway.errors import GatewayError
from gateway.surfaces import SurfaceContext
from room_gateway_plugins.reflect.commands import Call, Command
from room_gateway_plugins.reflect.errors import APPS, FRAME, REQUEST, Answer, ReflectError, success
from room_gateway_plugins.reflect.parsing import parse_query

PREFIX = "/v1/apps/"
_CHALLENGE = [(b"www-authenticate", WWW_AUTHENTICATE.encode("ascii"))]


class ReflectRoute(BaseRoute):
    """Serves Reflect's commands for the configured apps.

    :param context: the gateway's core.
    :param apps: the app ids served.
    :param commands: path under ``/v1/apps/{appId}`` → command.
    :param max_body_bytes: request bodies beyond this are refused (413, ``http.max_body_bytes``).
    """

    def __init__(
        self,
        context: SurfaceContext,
        apps: Collection[str],
        commands: Mapping[str, Command],
        *,
        max_body_bytes: int,
    ) -> None:
        self.context = context
        self.apps = frozenset(apps)
        self.commands = dict(commands)
        self.max_body_bytes = max_body_bytes
        self.path = PREFIX + "{appId}/…"
        self.name = "reflect"

    def __repr__(self) -> str:
        return f"ReflectRoute({self.path}, apps={sorted(self.apps)})"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and route_path(scope).startswith(PREFIX):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = await FRAME.answer(self._answer(scope, receive), scope)
        if answer is not None:  # None: the client left
            await send_json(send, *answer)

    async def _answer(self, scope: Scope, receive: Receive) -> Answer:
        principal = self._authenticate(scope)
        scope[PRINCIPAL] = principal  # the access log names the key, as for native calls
        app_id, _, rest = route_path(scope)[len(PREFIX) :].partition("/")
        if app_id not in self.apps:
            raise ReflectError(404, APPS, f"app {app_id!r} not found")
        command = self.commands.get("/" + rest)
        if command is None:
            raise ReflectError(404, REQUEST, f"no such command: {scope['method']} /{rest}")
        if scope["method"] != command.method:
            raise ReflectError(
                405,
                REQUEST,
                f"method {scope['method']} is not allowed on /{rest}; allowed: {command.method}",
                [(b"allow", command.method.encode("ascii"))],
            )
        params = parse_query(scope["query_string"], command.params, command.repeatable)
        body = await read_body(receive, RequestHeaders(scope), self.max_body_bytes)
        return success(await command.run(Call(self.context, principal, params, body)))

    def _authenticate(self, scope: Scope) -> Principal:
        authorization, api_key = credentials(scope)
        if authorization is None and api_key is None:
            raise ReflectError(
                401, REQUEST, "missing credentials: send Authorization: Basic <api-key>", _CHALLENGE
            )
        try:
            return self.context.policy.authenticate(authorization=authorization, api_key=api_key)
        except GatewayError as exc:
            raise ReflectError(401, REQUEST, exc.message, _CHALLENGE) from None
