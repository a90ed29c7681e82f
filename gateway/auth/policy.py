"""The one auth policy: who is calling (credentials → :class:`Principal`) and may they (method, room).

The REST edge (ASGI middleware) and the gRPC server (grpclib ``RecvRequest`` event) are thin adapters that
hand their headers / metadata to :meth:`AuthPolicy.authenticate` and the bound request to
:meth:`AuthPolicy.authorize`; a difference between the transports would be a bug here, not there.

Accepted credentials (``API.md``): ``X-API-Key: <key>``, ``Authorization: Bearer <key>``,
``Authorization: Basic base64(<user>:<key>)`` and Reflect's raw ``Authorization: Basic <key>``.
Keys are kept only as SHA-256 digests and compared with :func:`hmac.compare_digest` against every configured
key (no early exit), so neither the comparison nor the loop leaks where a guess went wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from gateway.auth.permissions import ALL, REQUIRED
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
    """Who is calling: the key's name, what it may do, and which rooms (patterns; empty: every room)."""

    name: str
    permissions: frozenset[str]
    rooms: tuple[str, ...] = ()

    def may(self, permission: str) -> bool:
        return ALL in self.permissions or permission in self.permissions


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class AuthPolicy:
    """Authenticates credentials against the configured keys and authorizes methods.

    :param keys: the configured API keys; at least one (the gateway fails closed without).
    """

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)
        if not self.keys:
            raise ValueError("no API key configured")

    def authenticate(self, *, authorization: str | None = None, api_key: str | None = None) -> Principal:
        """The principal of a request's credentials.

        :param authorization: the ``Authorization`` header (or gRPC ``authorization`` metadata).
        :param api_key: the ``X-API-Key`` header (or gRPC ``x-api-key`` metadata).
        :raises Unauthenticated: no credentials, a malformed header, or no key matches.
        """
        candidates = self._candidates(authorization, api_key)
        if not candidates:
            raise Unauthenticated("missing credentials: send X-API-Key or an Authorization header")
        for candidate in candidates:
            key = self._match(candidate)
            if key is not None:
                return Principal(key.name, key.permissions, key.rooms)
        raise Unauthenticated("invalid credentials")

    def authorize(self, principal: Principal, method: str, room_id: str = "") -> None:
        """Allow ``principal`` to call ``method`` (a RoomService method name) on ``room_id``.

        :raises PermissionDenied: the principal lacks the method's permission or the room is outside its
            patterns.
        """
        permission = REQUIRED.get(method)
        if permission is None or not principal.may(permission):
            raise PermissionDenied(f"{principal.name!r} lacks the permission {permission or method!r}")
        if room_id and principal.rooms and not any(fnmatchcase(room_id, p) for p in principal.rooms):
            raise PermissionDenied(f"{principal.name!r} may not access room {room_id!r}")

    def _match(self, candidate: str) -> ApiKey | None:
        presented = digest(candidate)
        found = None
        for key in self.keys:  # every key, no early exit
            if hmac.compare_digest(presented, key.sha256):
                found = key
        return found

    @staticmethod
    def _candidates(authorization: str | None, api_key: str | None) -> list[str]:
        """The secrets a request presents, most specific first."""
        found: list[str] = []
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
            elif scheme == "basic":
                try:
                    decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    decoded = ""
                if ":" in decoded:
                    found.append(decoded.partition(":")[2])  # base64(user:key)
                found.append(credentials)  # Reflect sends the raw key: "Basic <key>"
            else:
                raise Unauthenticated(f"unsupported Authorization scheme {scheme!r}")
        return found
