"""The one auth policy: who is calling (credentials → :class:`Principal`) and may they (method, room).

The REST edge (the authentication stage of :class:`gateway.edge.app.Edge`) and the gRPC server
(grpclib ``RecvRequest`` event) are thin adapters that hand their headers / metadata to
:meth:`AuthPolicy.authenticate` and the bound request to :meth:`AuthPolicy.authorize`; a difference
between the transports would be a bug here, not there.

Accepted credentials (``API.md``): ``X-API-Key: <key>``, ``Authorization: Bearer <key>``,
``Authorization: Basic base64(<user>:<key>)`` and Reflect's raw ``Authorization: Basic <key>``.
Keys are kept only as SHA-256 digests. A presented secret is hashed and its digest looked up in a dict of
the configured digests: the lookup's time depends on the digest of the guess, never on how much of a key
it got right (no comparison of the secret itself). Nothing remembers a presented secret: remembering
accepted header values would spare the hash (~3k instructions a call) but keep keys in memory as sent.

A Bearer credential that matches no key and has the shape of a JWT is verified as a room token
(:mod:`gateway.auth.tokens`): its principal may act on its one room only. What needs the backend — whether
the token was issued before its room's last ``InvalidateConnections`` — is checked per call, by
:meth:`Dispatcher.call <gateway.dispatch.Dispatcher.call>`.

Room scope (:meth:`AuthPolicy.authorize`): a call naming a room needs a caller that may access it (a key's
room patterns, ``fnmatch``-style; a token's room, compared exactly). A call naming none acts on every room:
ListRooms (:data:`~gateway.auth.permissions.FILTERED_BY_ROOM`) is allowed to pattern-limited keys and
answers only their rooms; anything else, and any roomless call with a room token, is PERMISSION_DENIED.
What is not a RoomService method but acts on the whole deployment (``GET /metrics``, permission
``metrics:read``) follows the same rule (:meth:`AuthPolicy.authorize_deployment`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import NoReturn

from gateway.auth.permissions import ALL, FILTERED_BY_ROOM, REQUIRED
from gateway.auth.tokens import RoomTokenIssuer, TokenClaims, looks_like_token
from gateway.errors import PermissionDenied, Unauthenticated

#: Sent with every 401 (RFC 9110 §11.6.1).
WWW_AUTHENTICATE = 'Bearer realm="room-gateway", Basic realm="room-gateway"'


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its name (for logs, never the key), SHA-256 digest, permissions, room patterns."""

    name: str
    sha256: bytes
    permissions: frozenset[str]
    rooms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name, what it may do, and which rooms (patterns; empty: every room).

    A room token's principal is named ``token:<user_name>`` and carries its :attr:`token` claims; it may
    access the token's room only.
    """

    name: str
    permissions: frozenset[str]
    rooms: tuple[str, ...] = ()
    token: TokenClaims | None = None
    #: :attr:`name` as access lines write it (:func:`logged_name`), made with the principal: a key's once,
    #: at startup (an access line looked it up by name per call, ~0.3k instructions).
    logged_name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "logged_name", logged_name(self.name))

    def may(self, permission: str) -> bool:
        return ALL in self.permissions or permission in self.permissions

    def may_access(self, room_id: str) -> bool:
        """Whether ``room_id`` is within this caller's rooms."""
        if self.token is not None:
            return room_id == self.token.room_id
        return not self.rooms or any(fnmatchcase(room_id, pattern) for pattern in self.rooms)

    @property
    def unrestricted(self) -> bool:
        """A key limited to no room patterns (a room token never is)."""
        return self.token is None and not self.rooms

    @property
    def expire_time(self) -> datetime | None:
        """When this credential stops working (a room token's expiry); ``None`` for a key."""
        return self.token.expire_time if self.token is not None else None


def logged_name(name: str) -> str:
    """``name`` safe to write on one log line: at most 256 characters, spaces and unprintable characters
    percent-escaped (``%20``). A room token's name comes from its minter's request (``userName``): it must
    not forge log lines."""
    name = name[:256]
    if name.isprintable() and " " not in name:
        return name
    return "".join(c if c.isprintable() and c != " " else f"%{ord(c):02X}" for c in name)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def basic_credentials(credentials: str) -> tuple[str, str] | None:
    """The user and password of a Basic credential (what follows ``Basic``: base64 of UTF-8
    ``user:password``, RFC 7617), ``None`` when it is not one."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class AuthPolicy:
    """Authenticates credentials against the configured keys and authorizes methods.

    :param keys: the configured API keys; at least one (the gateway fails closed without).
    :param tokens: verifies room tokens; ``None`` when room tokens are not configured (a token is then
        just a wrong credential).
    """

    def __init__(self, keys: Iterable[ApiKey], *, tokens: RoomTokenIssuer | None = None) -> None:
        self.keys = tuple(keys)
        self.tokens = tokens
        if not self.keys:
            raise ValueError("no API key configured")
        # One Principal per key, made once (a frozen dataclass costs a call more than a dict lookup); a
        # digest configured twice keeps its last key, as the scan over every key did.
        self._by_digest = {key.sha256: Principal(key.name, key.permissions, key.rooms) for key in self.keys}

    def authenticate(self, *, authorization: str | None = None, api_key: str | None = None) -> Principal:
        """The principal of a request's credentials.

        :param authorization: the ``Authorization`` header (or gRPC ``authorization`` metadata).
        :param api_key: the ``X-API-Key`` header (or gRPC ``x-api-key`` metadata).
        :raises Unauthenticated: no credentials, a malformed header, no key matches, or a room token that
            is not genuine or has expired.
        """
        candidates, bearer = self._candidates(authorization, api_key)
        if not candidates:
            raise Unauthenticated("missing credentials: send X-API-Key or an Authorization header")
        by_digest = self._by_digest
        for candidate in candidates:
            principal = by_digest.get(digest(candidate))
            if principal is not None:
                return principal
        if bearer is not None and self.tokens is not None and looks_like_token(bearer):
            claims = self.tokens.verify(bearer)
            return Principal(f"token:{claims.user_name}", claims.permissions, token=claims)
        raise Unauthenticated("invalid credentials")

    def authorize(self, principal: Principal, method: str, room_id: str = "") -> None:
        """Allow ``principal`` to call ``method`` (a RoomService method name) on ``room_id``.

        :raises PermissionDenied: the principal lacks the method's permission, the room is outside its
            rooms, or the call names no room and the principal is limited to some.
        """
        permission = REQUIRED.get(method)
        if permission is None or not principal.may(permission):
            raise PermissionDenied(f"{principal.name!r} lacks the permission {permission or method!r}")
        if room_id:
            if not principal.may_access(room_id):
                raise PermissionDenied(f"{principal.name!r} may not access room {room_id!r}")
        elif principal.token is not None or (principal.rooms and method not in FILTERED_BY_ROOM):
            _deny_roomless(principal, f"{method} needs a room", f"{method} without a room")

    def authorize_deployment(self, principal: Principal, permission: str, action: str) -> None:
        """Allow ``principal`` an action on the whole deployment rather than on rooms (reading
        ``/metrics``): it needs ``permission`` and, like a call naming no room, a key limited to no rooms.

        :param permission: e.g. :data:`~gateway.auth.permissions.METRICS_READ`.
        :param action: what is asked, for the message (``"/metrics"``).
        :raises PermissionDenied: the principal lacks ``permission``, is a room token, or is limited to
            some rooms.
        """
        if not principal.may(permission):
            raise PermissionDenied(f"{principal.name!r} lacks the permission {permission!r}")
        if not principal.unrestricted:
            _deny_roomless(principal, f"{action} needs an API key", action)

    @staticmethod
    def _candidates(authorization: str | None, api_key: str | None) -> tuple[list[str], str | None]:
        """The secrets a request presents, most specific first, and the Bearer credential if any."""
        found: list[str] = []
        bearer = None
        if api_key:
            found.append(api_key.strip())
        if authorization:
            scheme, _, credentials = authorization.strip().partition(" ")
            credentials = credentials.strip()
            scheme = scheme.lower()
            if not credentials:
                raise Unauthenticated("malformed Authorization header")
            if scheme == "bearer":
                found.append(credentials)
                bearer = credentials
            elif scheme == "basic":
                pair = basic_credentials(credentials)
                if pair is not None:
                    found.append(pair[1])  # base64(user:key)
                found.append(credentials)  # Reflect sends the raw key: "Basic <key>"
            else:
                raise Unauthenticated(f"unsupported Authorization scheme {scheme!r}")
        return found, bearer


def _deny_roomless(principal: Principal, for_token: str, for_key: str) -> NoReturn:
    """Refuse what acts on every room to a room token (``for_token``: why) or a key limited to some rooms
    (``for_key``: what it asked)."""
    if principal.token is not None:
        raise PermissionDenied(f"a room token acts on its room only: {for_token}")
    raise PermissionDenied(
        f"{principal.name!r} is limited to some rooms: {for_key} needs a key without room patterns"
    )
