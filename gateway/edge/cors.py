"""CORS (the Fetch standard's CORS protocol, https://fetch.spec.whatwg.org/#http-cors-protocol) for the
edge: config ``http.cors``.

For a request whose ``Origin`` is allowed:

- a **preflight** (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here, ``204``, before
  authentication and rate limits (a browser sends no credentials with a preflight, so it could not pass
  them); it allows the methods and headers the API uses and is cached for ``max_age_seconds``;
- **every other answer** — a result, an error, a 401, a 429 — carries ``Access-Control-Allow-Origin`` and
  exposes ``RateLimit-*``, ``Retry-After`` and ``X-Request-Id`` to the page (a browser hides them
  otherwise, and a page must see ``Retry-After`` to back off).

Any other origin gets no CORS header and no early answer: its preflight goes through the stages like any
call (and is refused by authentication), so the browser refuses the page's request. No cookies are used,
so credentials mode is never allowed (``Access-Control-Allow-Credentials`` is not sent).

Why not Starlette's ``CORSMiddleware``: it answers a preflight with 200 where ``API.md`` says 204, answers
a preflight from another origin itself (a 400 carrying CORS headers) where ``API.md`` says other origins get
none, and is one more ASGI layer with its own ``send`` wrapper, where the edge runs its stages in one
coroutine and adds its response headers in one ``send`` (:class:`~gateway.edge.observe.ObservedSend`). With
no origin configured the edge holds no :class:`Cors` at all: the default path pays one ``is None`` test.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope, Send

#: What a page may send: the credential headers, JSON bodies, and a resuming stream's position.
ALLOW_HEADERS = b"authorization, content-type, x-api-key, last-event-id, x-request-id"
#: The methods of the native API and the compatibility surfaces.
ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE"
#: Response headers a page may read (API.md, "Browsers").
EXPOSE_HEADERS = b"ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after, x-request-id"
ANY = "*"


class Cors:
    """The CORS rules of the allowed ``origins`` (``"*"``: any).

    :param origins: allowed origins as browsers send them (``scheme://host[:port]``), or ``"*"``.
    :param max_age_seconds: how long a browser may cache a preflight's answer.
    """

    def __init__(self, origins: Iterable[str], max_age_seconds: int) -> None:
        self.origins = frozenset(origins)
        self.any = ANY in self.origins
        self._max_age = b"%d" % max_age_seconds

    def allowed(self, scope: Scope) -> bytes | None:
        """The request's ``Origin`` when it is allowed (``None``: no ``Origin``, or not an allowed one)."""
        for name, value in scope["headers"]:
            if name == b"origin":
                origin: bytes = value
                return origin if self.any or origin.decode("latin-1") in self.origins else None
        return None

    def response_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """What every answer to an allowed ``origin`` carries."""
        return [
            (b"access-control-allow-origin", b"*" if self.any else origin),
            (b"access-control-expose-headers", EXPOSE_HEADERS),
            *([] if self.any else [(b"vary", b"Origin")]),  # answers differ by Origin: caches key on it
        ]

    @staticmethod
    def is_preflight(scope: Scope) -> bool:
        if scope["method"] != "OPTIONS":
            return False
        return any(name == b"access-control-request-method" for name, _ in scope["headers"])

    async def send_preflight(self, send: Send) -> None:
        """The answer to an allowed origin's preflight (204, no body); the request id and the response
        headers are added by ``send``."""
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-methods", ALLOW_METHODS),
                    (b"access-control-allow-headers", ALLOW_HEADERS),
                    (b"access-control-max-age", self._max_age),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
