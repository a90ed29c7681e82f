"""The web console's routes: its static files at ``/console/`` and the redirect of a browser from ``/``.

The console (``gateway/console/``: HTML, CSS and ES modules, no build step, no external asset) is a client
like any other: its files are public, and every call it makes carries the key its user signs in with. So
the files are served without authentication (still rate limited, as any call), with a Content-Security-
Policy that allows nothing but this origin. ``GET /`` from a browser (``Accept: text/html``) is redirected
there; an API client keeps its JSON answer (401 without a key, 404 with one).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from gateway.edge.responses import error_response
from gateway.errors import Code, GatewayError

#: Where the console's files are (they ship in the wheel, inside the package).
CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
PREFIX = "/console"

#: Scripts, styles and calls from this origin only; no frames, no forms posted elsewhere, no referrer.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidated (ETag): a new version of the gateway shows at once
}


class ConsoleFiles(StaticFiles):
    """Starlette's static files, with the console's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def wants_html(scope: Scope) -> bool:
    """Whether the request comes from a browser navigating (it accepts ``text/html``)."""
    return any(name == b"accept" and b"text/html" in value for name, value in scope["headers"])


async def root(request: Request) -> Response:
    """``GET /``: a browser goes to the console; an (authenticated) API client finds no route here."""
    if wants_html(request.scope):
        return RedirectResponse(request.scope.get("root_path", "") + PREFIX + "/", status_code=303)
    message = f"no route for {request.method} /; the API is under /v1 (see /openapi.json)"
    return error_response(GatewayError(message, code=Code.NOT_FOUND, http_status=404))


async def to_folder(request: Request) -> Response:
    """``/console`` → ``/console/`` (the edge's router does not redirect slashes: its raw-path matching)."""
    return RedirectResponse(request.scope.get("root_path", "") + PREFIX + "/", status_code=308)


def console_routes() -> list[BaseRoute]:
    """``/``, ``/console`` and ``/console/…``."""
    return [
        Route("/", root, methods=["GET", "HEAD"], name="root"),
        Route(PREFIX, to_folder, methods=["GET", "HEAD"], name="console_folder"),
        Mount(PREFIX, app=ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console"),
    ]
