"""The SignalWire Video REST surface: ``/api/video/…`` on the HTTP edge, onto the native rooms.

::

    /api/video/rooms                              GET (paged) · POST
    /api/video/rooms/{id}                         GET · PUT (partial) · DELETE → 204
    /api/video/conferences                        GET (paged) · POST
    /api/video/conferences/{id}                   GET · PUT (partial) · DELETE → 204
    /api/video/conferences/{id}/conference_tokens GET: the moderator and guest tokens
    /api/video/room_tokens                        POST → {token}

Each call authenticates itself (the native middleware lets ``/api/video/`` through): ``Authorization: Basic
base64(project_id:api_token)`` where ``project_id`` is ``surfaces.signalwire.project_id`` and ``api_token`` is
a configured API key. Every answer is in the vendor's shape, errors included; an unexpected exception is
logged and answered ``500 {"error": "Internal Server Error"}``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.policy import Principal
from gateway.errors import GatewayError
from gateway.plugins import ConfigError
from gateway.surfaces import Surface, SurfaceContext
from room_gateway_plugins.signalwire import endpoints
from room_gateway_plugins.signalwire.directory import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Directory
from room_gateway_plugins.signalwire.fields import Kind
from room_gateway_plugins.signalwire.responses import (
    WWW_AUTHENTICATE,
    VendorError,
    VendorInvalid,
    from_gateway,
    json_response,
)

log = logging.getLogger(__name__)

BASE = "/api/video"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
Handler = Callable[..., Awaitable[Response]]


class SignalWireSurface(Surface):
    """SignalWire's Video REST API (rooms, conferences, room tokens) over the native rooms.

    :param settings: ``surfaces.signalwire``: ``enabled`` and ``project_id`` (the Basic user accepted).
    :param context: the gateway's core.
    :raises ConfigError: ``project_id`` is empty.
    """

    name = "signalwire"
    http_prefixes = (f"{BASE}/",)

    def __init__(self, settings: Mapping[str, Any], context: SurfaceContext) -> None:
        super().__init__(settings, context)
        project_id = settings.get("project_id")
        if not isinstance(project_id, str) or not project_id:
            raise ConfigError("surfaces.signalwire.project_id: set the project id clients send as Basic user")
        self._project_id = project_id.encode("utf-8")
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
        async def endpoint(request: Request) -> Response:
            try:
                principal = self._authenticate(request.headers.get("authorization"))
                handler = handlers.get(request.method)
                if handler is None:
                    raise VendorError(405 if handlers else 404)
                return await handler(request, principal)
            except (VendorError, VendorInvalid) as exc:
                return exc.response()
            except GatewayError as exc:
                return from_gateway(exc).response()
            except Exception:
                log.exception("signalwire: %s %s failed", request.method, request.url.path)
                return VendorError(500).response()

        # Every method reaches the endpoint, so a wrong one is a 405 in the vendor's shape, not Starlette's.
        return Route(path, endpoint, methods=_METHODS)

    def _authenticate(self, authorization: str | None) -> Principal:
        """The caller of ``Basic base64(project_id:api_token)``.

        :raises VendorError: 401 — no or malformed credentials, another project, or an unknown token.
        """
        challenge = VendorError(401, {"WWW-Authenticate": WWW_AUTHENTICATE})
        scheme, _, encoded = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":
            raise challenge
        try:
            user, sep, _ = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            raise challenge from None
        if not sep or not hmac.compare_digest(user, self._project_id):
            raise challenge
        try:
            return self.context.policy.authenticate(authorization=authorization)
        except GatewayError:
            raise challenge from None

    async def _body(self, request: Request) -> Mapping[str, Any]:
        """The request's JSON object.

        :raises VendorError: 413 too large, 415 not JSON, 400 malformed.
        :raises VendorInvalid: JSON, but not an object.
        """
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise VendorError(415)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body_bytes:
            raise VendorError(413)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self._max_body_bytes:
                raise VendorError(413)
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
