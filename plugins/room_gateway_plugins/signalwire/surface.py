"""The SignalWire Video REST surface: ``/api/video/…`` on the HTTP edge, onto the native rooms.

::

    /api/video/rooms                              GET (paged) · POST
    /api/video/rooms/{id}                         GET · PUT (partial) · DELETE → 204
    /api/video/conferences                        GET (paged) · POST
    /api/video/conferences/{id}                   GET · PUT (partial) · DELETE → 204
    /api/video/conferences/{id}/conference_tokens GET: the moderator and guest tokens
    /api/video/room_tokens                        POST → {token}

Each call authenticates itself (the edge's authentication stage lets ``/api/video/`` through):
``Authorization: Basic base64(project_id:api_token)`` where ``project_id`` is
``surfaces.signalwire.project_id`` and ``api_token`` is a configured API key. Every answer is in the
vendor's shape, errors included; an unexpected exception is logged and answered
``500 {"error": "Internal Server Error"}``.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gateway.auth.policy import Principal, basic_credentials
from gateway.edge.responses import RequestHeaders, read_body
from gateway.errors import GatewayError
from gateway.surfaces import Surface, SurfaceContext
from room_gateway_plugins.signalwire import endpoints
from room_gateway_plugins.signalwire.directory import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Directory
from room_gateway_plugins.signalwire.fields import Kind
from room_gateway_plugins.signalwire.responses import (
    FRAME,
    WWW_AUTHENTICATE,
    VendorError,
    VendorInvalid,
    json_response,
)
from room_gateway_plugins.signalwire.settings import SignalWireSettings

BASE = "/api/video"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
Handler = Callable[..., Awaitable[Response]]


class SignalWireSurface(Surface):
    """SignalWire's Video REST API (rooms, conferences, room tokens) over the native rooms.

    :param settings: ``surfaces.signalwire``: ``enabled`` and ``project_id`` (the Basic user accepted).
    :param context: the gateway's core.
    """

    name = "signalwire"
    settings_model = SignalWireSettings
    http_prefixes = (f"{BASE}/",)
    settings: SignalWireSettings

    def __init__(self, settings: SignalWireSettings, context: SurfaceContext) -> None:
        super().__init__(settings, context)
        self._project_id = settings.project_id.encode("utf-8")
        self._directory = Directory(context.dispatcher)
        self._max_body_bytes = context.config.http.max_body_bytes

    def http_routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        for kind in ("rooms", "conferences"):
            routes.append(self._route(f"{BASE}/{kind}", GET=self._lister(kind), POST=self._creator(kind)))
            routes.append(
                self._route(
                    f"{BASE}/{kind}/{{id}}",
                    GET=self._getter(kind),
                    PUT=self._updater(kind),
                    DELETE=self._delete,
                )
            )
        routes.append(
            self._route(f"{BASE}/conferences/{{id}}/conference_tokens", GET=self._conference_tokens)
        )
        routes.append(self._route(f"{BASE}/room_tokens", POST=self._room_token))
        routes.append(self._route(f"{BASE}/{{path:path}}"))  # anything else: 404 in the vendor's shape
        return routes

    # -- the frame of every call -----------------------------------------------------------------------------

    def _route(self, path: str, **handlers: Handler) -> Route:
        # Every method reaches the endpoint, so a wrong one is a 405 in the vendor's shape, not Starlette's.
        return Route(path, _Endpoint(functools.partial(self._serve, handlers=handlers)), methods=_METHODS)

    async def _serve(self, request: Request, handlers: Mapping[str, Handler]) -> Response:
        principal = self._authenticate(request.headers.get("authorization"))
        handler = handlers.get(request.method)
        if handler is None:
            raise VendorError(405 if handlers else 404)
        return await handler(request, principal)

    def _authenticate(self, authorization: str | None) -> Principal:
        """The caller of ``Basic base64(project_id:api_token)``.

        :raises VendorError: 401 — no or malformed credentials, another project, or an unknown token.
        """
        challenge = VendorError(401, {"WWW-Authenticate": WWW_AUTHENTICATE})
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        pair = basic_credentials(credentials.strip()) if scheme.lower() == "basic" else None
        if pair is None or not hmac.compare_digest(pair[0].encode("utf-8"), self._project_id):
            raise challenge
        try:
            return self.context.policy.authenticate(api_key=pair[1])
        except GatewayError:
            raise challenge from None

    async def _body(self, request: Request) -> Mapping[str, Any]:
        """The request's JSON object.

        :raises VendorError: 415 not JSON, 400 malformed.
        :raises VendorInvalid: JSON, but not an object.
        :raises RequestTooLarge: over ``http.max_body_bytes`` (the vendor's 413).
        """
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise VendorError(415)
        raw = await read_body(request.receive, RequestHeaders(request.scope), self._max_body_bytes)
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise VendorError(400) from None
        if not isinstance(body, dict):
            raise VendorInvalid(None, "The request body must be a JSON object")
        return body

    # -- endpoints -------------------------------------------------------------------------------------------

    def _creator(self, kind: Kind) -> Handler:
        async def create(request: Request, principal: Principal) -> Response:
            body = await self._body(request)
            return json_response(await endpoints.create(self._directory, principal, kind, body), 201)

        return create

    def _getter(self, kind: Kind) -> Handler:
        async def get(request: Request, principal: Principal) -> Response:
            room_uuid = request.path_params["id"]
            return json_response(await endpoints.get(self._directory, principal, kind, room_uuid))

        return get

    def _updater(self, kind: Kind) -> Handler:
        async def update(request: Request, principal: Principal) -> Response:
            body = await self._body(request)
            room_uuid = request.path_params["id"]
            return json_response(await endpoints.update(self._directory, principal, kind, room_uuid, body))

        return update

    async def _delete(self, request: Request, principal: Principal) -> Response:
        await endpoints.delete(self._directory, principal, request.path_params["id"])
        return Response(status_code=204)

    def _lister(self, kind: Kind) -> Handler:
        async def list_(request: Request, principal: Principal) -> Response:
            page_size = _page_size(request.query_params.get("page_size"))
            page = await self._directory.page(principal, page_size, request.query_params.get("page_token"))
            links = {"self": str(request.url), "first": str(_without_token(request.url))}
            if page.next_token:
                links["next"] = str(request.url.include_query_params(page_token=page.next_token))
            if page.prev_token:
                links["prev"] = str(request.url.include_query_params(page_token=page.prev_token))
            data = endpoints.render_page(kind, self._directory, page.rooms)
            return json_response({"links": links, "data": data})

        return list_

    async def _conference_tokens(self, request: Request, principal: Principal) -> Response:
        data = await endpoints.conference_tokens(self._directory, principal, request.path_params["id"])
        links = {"self": str(request.url), "first": str(_without_token(request.url))}
        return json_response({"links": links, "data": data})

    async def _room_token(self, request: Request, principal: Principal) -> Response:
        body = await self._body(request)
        return json_response({"token": await endpoints.room_token(self._directory, principal, body)})


def _page_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE_SIZE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise VendorInvalid("page_size", f"Page size must be between 1 and {MAX_PAGE_SIZE}")
    return int(text)


def _without_token(url: URL) -> URL:
    return url.remove_query_params(["page_token", "page_number"])


class _Endpoint:
    """A path's calls served as a plain ASGI app, in the surface's frame. Not a Starlette endpoint, which
    must return a response: a client that left while sending its body is sent nothing.

    :param serve: answers one request of the path.
    """

    def __init__(self, serve: Callable[[Request], Awaitable[Response]]) -> None:
        self._serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await FRAME.answer(self._serve(Request(scope, receive)), scope)
        if response is not None:
            await response(scope, receive, send)
