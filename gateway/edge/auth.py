"""The REST adapter of the auth policy: the edge's authentication stage.

It hands the ``Authorization`` and ``X-API-Key`` headers to
:meth:`AuthPolicy.authenticate <gateway.auth.policy.AuthPolicy.authenticate>`; the edge stores the
:class:`~gateway.auth.policy.Principal` in ``scope["room_gateway.principal"]``, and answers a failure with a
401 in the native error shape with ``WWW-Authenticate`` (:func:`gateway.edge.responses.send_error`).
Authorization per method and room happens later, in :meth:`Dispatcher.call
<gateway.dispatch.Dispatcher.call>`, once the request is bound.
"""

from __future__ import annotations

from starlette.types import Scope

from gateway.auth.policy import AuthPolicy, Principal

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
