"""The REST adapter of the auth policy: the edge's authentication stage.

It hands the ``Authorization`` and ``X-API-Key`` headers to
:meth:`AuthPolicy.authenticate <gateway.auth.policy.AuthPolicy.authenticate>`; the edge stores the
:class:`~gateway.auth.policy.Principal` in ``scope["room_gateway.principal"]``, and answers a failure with a
401 in the native error shape with ``WWW-Authenticate`` (:func:`gateway.edge.responses.send_error`).
Authorization per method and room happens later, in :meth:`Dispatcher.call
<gateway.dispatch.Dispatcher.call>`, once the request is bound.

A stream may also be opened with ``?access_token=<room token or key>`` (RFC 6750 §2.3), which a browser's
``EventSource`` needs since it cannot set headers: :func:`take_access_token` turns it into the
``Authorization`` header before anything else reads the request.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from starlette.types import Scope

from gateway.auth.policy import AuthPolicy, Principal
from gateway.errors import InvalidArgument

#: Paths that need no credentials (API.md: "Every call but /healthz and /readyz is authenticated").
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def credentials(scope: Scope) -> tuple[str | None, str | None]:
    """The request's ``Authorization`` and ``X-API-Key`` headers (``None`` for one not sent)."""
    authorization = api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    return authorization, api_key


def authenticate(policy: AuthPolicy, scope: Scope) -> Principal:
    """The caller of an HTTP request, from its credential headers.

    :raises GatewayError: UNAUTHENTICATED (no or a wrong credential).
    """
    authorization, api_key = credentials(scope)
    return policy.authenticate(authorization=authorization, api_key=api_key)


#: RFC 6750 §2.3's query parameter, for clients that cannot set headers (a browser's ``EventSource``).
ACCESS_TOKEN = "access_token"
#: What a query string holding it contains, its name percent-encoded or not (``access%5Ftoken``): the
#: edge's cheap test before :func:`take_access_token` parses.
ACCESS_TOKEN_HINT = b"access"
#: Where an ``access_token`` is accepted: streams, which an ``EventSource`` opens with ``GET``. Anywhere
#: else a token in a URL would only leak (browser history, proxies' logs, ``Referer``) for no reason.
_ONLY_ON_STREAMS = (
    "access_token is accepted only on streaming GET routes (…:listen); "
    "send the credential in the Authorization or X-API-Key header"
)


def take_access_token(scope: Scope, streaming_get: bool) -> None:
    """Move an ``access_token`` query parameter into the request's ``Authorization: Bearer`` header, and out
    of its query string, so that authentication has one source and nothing after it (binding, errors, the
    access log, traces) ever sees the token. A query string merely containing the bytes ``access_token``
    (in a value) is left alone.

    :param streaming_get: whether the call is a ``GET`` of a native server stream.
    :raises InvalidArgument: the parameter is given on another route, more than once, or along with a
        credential header (RFC 6750 §2: a client uses one method only).
    """
    kept: list[bytes] = []
    tokens: list[str] = []
    for part in scope["query_string"].split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name.decode("latin-1")) == ACCESS_TOKEN:
            tokens.append(unquote_plus(value.decode("latin-1")))
        else:
            kept.append(part)
    if not tokens:
        return
    if not streaming_get:
        raise InvalidArgument(_ONLY_ON_STREAMS)
    if len(tokens) > 1:
        raise InvalidArgument("access_token is given more than once")
    if any(name in (b"authorization", b"x-api-key") for name, _ in scope["headers"]):
        raise InvalidArgument(
            "send the credential one way: an access_token or an Authorization / X-API-Key header, not both"
        )
    scope["query_string"] = b"&".join(kept)
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and b"?" in raw:  # some clients' raw_path carries the query string
        scope["raw_path"] = raw.partition(b"?")[0]
    scope["headers"] = [*scope["headers"], (b"authorization", b"Bearer " + tokens[0].encode("utf-8"))]
