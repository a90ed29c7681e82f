"""Room tokens: short-lived signed credentials bound to one room (``CreateRoomToken``, ``API.md``).

A room token is a JWT (RFC 7519) signed with HS256 under ``auth.room_tokens.secret`` by PyJWT. Its claims:

==========  =================================================================================================
``iss``     ``"room-gateway"``; ``aud``: ``"room-gateway/room-token"`` (both checked: a JWT minted for
            something else under a shared secret is not a room token)
``sub``     the holder's ``user_name`` (the principal is named ``token:<user_name>`` in logs and errors)
``room``    the one room id the token may act on (compared exactly: never a pattern)
``perms``   the enforced permissions (names of :data:`~gateway.auth.permissions.PERMISSIONS`)
``extras``  opaque strings the minter asked for (SignalWire's ``room.self.audio_mute``): returned, never
            enforced
``role``    the role it was made from, or ``""`` (informational)
``info``    a JSON object of at most :data:`MAX_INFO_BYTES` (CreateRoomToken's ``info``), shown in presence;
            absent when empty (and in tokens minted before it existed)
``iat``     issue time, whole seconds; ``iat_us``: the same in microseconds, because the comparison with the
            room's last ``InvalidateConnections`` needs sub-second precision
``exp``     expiry, whole seconds; ``jti``: a random id
==========  =================================================================================================

Which names are permissions and which are extras (:func:`~gateway.auth.permissions.is_extra`): a name in
one of our namespaces (``rooms:``, ``variables:``, ``events:``, ``tokens:``, ``connections:``) must be a
known permission, else INVALID_ARGUMENT (a typo is not silently dropped); ``*`` is a permission; anything
else is an extra.

Expiry and issue time are checked against the gateway's own clock (injectable, so tests can freeze it;
PyJWT's checks read the wall clock), with :data:`LEEWAY_SECONDS` for clock skew between instances. Error
messages never contain the token.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt

from gateway.auth.permissions import PERMISSIONS, is_extra
from gateway.errors import InvalidArgument, Unauthenticated

if TYPE_CHECKING:
    from gateway.config import RoomTokens

ALGORITHM = "HS256"
ISSUER = "room-gateway"
AUDIENCE = "room-gateway/room-token"
#: RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_SECRET_BYTES = 32
#: Clock skew tolerated between the instance that minted a token and the one checking it.
LEEWAY_SECONDS = 5
MAX_USER_NAME = 256
MAX_ENTRIES = 64
MAX_ENTRY_LENGTH = 128
DEFAULT_TTL_SECONDS = 600
#: The largest ``info`` object, as compact UTF-8 JSON (``API.md``: "a JSON object ≤ 1 KiB").
MAX_INFO_BYTES = 1024

_CLAIMS = ("iss", "aud", "sub", "room", "perms", "extras", "iat", "iat_us", "exp", "jti")
#: Three base64url segments: the shape of a JWS compact serialization (RFC 7515 §7.1).
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def utcnow() -> datetime:
    return datetime.now(UTC)


def looks_like_token(credential: str) -> bool:
    """Whether a Bearer credential has the shape of a JWT (keys made by ``keys new`` never do)."""
    return _JWT_SHAPE.fullmatch(credential) is not None


def micros(moment: datetime) -> int:
    """``moment`` in whole microseconds since the epoch (exact: no float rounding)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified room token says."""

    user_name: str
    room_id: str
    permissions: frozenset[str]
    extras: tuple[str, ...]
    role: str
    #: Issue time in microseconds since the epoch.
    issued_at_us: int
    expire_time: datetime
    token_id: str
    #: The minter's ``info`` object (``{}`` when none); not part of the claims' hash (a dict is unhashable).
    info: dict[str, Any] = field(default_factory=dict, hash=False)


def token_info(value: object) -> dict[str, Any]:
    """CreateRoomToken's ``info``, checked: a JSON object of at most :data:`MAX_INFO_BYTES`.

    :raises InvalidArgument: not an object, or too large.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("info must be a JSON object")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_INFO_BYTES:
        raise InvalidArgument(f"info is {size} bytes as JSON; at most {MAX_INFO_BYTES} are allowed")
    return value


@dataclass(frozen=True, slots=True)
class Grant:
    """What a new token will carry, in the order the minter asked: enforced permissions, then extras."""

    permissions: tuple[str, ...]
    extras: tuple[str, ...]


class RoomTokenIssuer:
    """Mints and verifies room tokens under one secret.

    :param secret: ``auth.room_tokens.secret``, at least :data:`MIN_SECRET_BYTES` bytes.
    :param roles: role name → permission names (and extras), from ``auth.room_tokens.roles``.
    :param max_ttl_seconds: no token lives longer.
    :param default_ttl_seconds: the lifetime when the request gives none (capped at ``max_ttl_seconds``).
    :param clock: the current time (UTC) for verification; tests inject a frozen one.
    :param new_id: makes each token's ``jti``; tests inject a counter for reproducible tokens.
    :raises ValueError: the secret is too short or a role names an unknown permission.
    """

    def __init__(
        self,
        secret: str,
        *,
        roles: Mapping[str, Sequence[str]],
        max_ttl_seconds: int = 3600,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], str] = lambda: secrets.token_urlsafe(16),
    ) -> None:
        key = secret.encode("utf-8")
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"the room token secret must be at least {MIN_SECRET_BYTES} bytes")
        if max_ttl_seconds <= 0:
            raise ValueError("max_ttl_seconds must be positive")
        self._key = key
        self.roles = {name: tuple(names) for name, names in roles.items()}
        for name, names in self.roles.items():
            unknown = unknown_permissions(names)
            if unknown:
                raise ValueError(f"role {name!r} names unknown permission(s) {unknown}")
        self.max_ttl_seconds = max_ttl_seconds
        self.default_ttl_seconds = min(default_ttl_seconds, max_ttl_seconds)
        self._clock = clock
        self._new_id = new_id

    def __repr__(self) -> str:  # never the secret
        return f"RoomTokenIssuer(roles={sorted(self.roles)}, max_ttl_seconds={self.max_ttl_seconds})"

    # -- minting --------------------------------------------------------------------------------------------

    def grant(self, role: str, permissions: Sequence[str]) -> Grant:
        """The permissions and extras of a new token: the role's, then the listed ones (duplicates dropped).

        :raises InvalidArgument: neither a role nor permissions, an unknown role, an unknown name in one of
            our namespaces, or too many / too long / control-character entries.
        """
        if not role and not permissions:
            raise InvalidArgument("give a role or permissions for the token")
        names: list[str] = []
        if role:
            if role not in self.roles:
                raise InvalidArgument(f"unknown role {role!r}; configured: {sorted(self.roles)}")
            names.extend(self.roles[role])
        for name in permissions:
            if not isinstance(name, str) or not name or len(name) > MAX_ENTRY_LENGTH:
                raise InvalidArgument(f"permissions: each entry is 1-{MAX_ENTRY_LENGTH} characters")
            if _CONTROL.search(name):
                raise InvalidArgument("permissions must not contain control characters")
            names.append(name)
        unknown = unknown_permissions(names)
        if unknown:
            raise InvalidArgument(f"unknown permission(s) {unknown}; known: {sorted(PERMISSIONS)}")
        unique = list(dict.fromkeys(names))
        if len(unique) > MAX_ENTRIES:
            raise InvalidArgument(f"a token carries at most {MAX_ENTRIES} permissions and extras")
        return Grant(
            permissions=tuple(n for n in unique if not is_extra(n)),
            extras=tuple(n for n in unique if is_extra(n)),
        )

    def expiry(self, now: datetime, ttl_seconds: int, not_after: datetime | None = None) -> datetime:
        """When a token minted at ``now`` expires: ``ttl_seconds`` (0: the default) capped at the maximum
        and at ``not_after``, in whole seconds (as ``exp`` holds it).

        :raises InvalidArgument: a negative ``ttl_seconds``.
        """
        if ttl_seconds < 0:
            raise InvalidArgument("ttlSeconds must not be negative")
        ttl = min(ttl_seconds or self.default_ttl_seconds, self.max_ttl_seconds)
        expires = now + timedelta(seconds=ttl)
        if not_after is not None and not_after < expires:
            expires = not_after
        return expires.replace(microsecond=0)

    def issue(
        self,
        *,
        room_id: str,
        user_name: str,
        role: str,
        grant: Grant,
        now: datetime,
        expire_time: datetime,
        info: dict[str, Any] | None = None,
    ) -> str:
        """Sign a token; the caller has checked the room, the grant and the expiry.

        :raises InvalidArgument: a bad ``user_name`` or ``info`` (:func:`token_info`).
        """
        if not isinstance(user_name, str) or not user_name or len(user_name) > MAX_USER_NAME:
            raise InvalidArgument(f"userName is required (1-{MAX_USER_NAME} characters)")
        if _CONTROL.search(user_name):
            raise InvalidArgument("userName must not contain control characters")
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_name,
            "room": room_id,
            "perms": list(grant.permissions),
            "extras": list(grant.extras),
            "role": role,
            "iat": int(now.timestamp()),
            "iat_us": micros(now),
            "exp": int(expire_time.timestamp()),
            "jti": self._new_id(),
        }
        checked = token_info(info)
        if checked:
            claims["info"] = checked
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    # -- verifying ------------------------------------------------------------------------------------------

    def verify(self, token: str) -> TokenClaims:
        """The claims of a genuine, current room token.

        :raises Unauthenticated: tampered, signed with another key or algorithm, not a room token, expired,
            or issued in the future. The message never contains the token.
        """
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={
                    "require": list(_CLAIMS),
                    # Times are checked below against our clock (PyJWT reads the wall clock).
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid room token") from None
        parsed = _parse(claims)
        if parsed is None:
            raise Unauthenticated("invalid room token")
        now = self._clock()
        if parsed.expire_time <= now - timedelta(seconds=LEEWAY_SECONDS):
            raise Unauthenticated("room token has expired; ask for a new one")
        if parsed.issued_at_us > micros(now + timedelta(seconds=LEEWAY_SECONDS)):
            raise Unauthenticated("invalid room token")
        return parsed


def room_token_issuer(config: RoomTokens, clock: Callable[[], datetime] = utcnow) -> RoomTokenIssuer | None:
    """The issuer of ``auth.room_tokens``, or ``None`` when no secret is configured (no room tokens)."""
    if config.secret is None:
        return None
    return RoomTokenIssuer(
        config.secret.get_secret_value(),
        roles=config.roles,
        max_ttl_seconds=config.max_ttl_seconds,
        default_ttl_seconds=config.default_ttl_seconds,
        clock=clock,
    )


def unknown_permissions(names: Sequence[str]) -> list[str]:
    """Names in one of our namespaces that are not permissions (see :func:`is_extra`)."""
    return sorted({n for n in names if n not in PERMISSIONS and not is_extra(n)})


def _parse(claims: Mapping[str, Any]) -> TokenClaims | None:
    """Typed claims, or ``None`` when one has the wrong type (not minted by us, yet signed with our key)."""
    perms, extras = claims["perms"], claims["extras"]
    strings = (claims["sub"], claims["room"], claims["jti"], claims.get("role", ""))
    numbers = (claims["iat_us"], claims["exp"])
    if not all(isinstance(s, str) for s in strings):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return None
    if not isinstance(perms, list) or not all(isinstance(p, str) and p in PERMISSIONS for p in perms):
        return None
    if not isinstance(extras, list) or not all(isinstance(e, str) for e in extras):
        return None
    info = claims.get("info", {})
    if not isinstance(info, dict):
        return None
    try:
        expire_time = datetime.fromtimestamp(claims["exp"], UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return TokenClaims(
        user_name=claims["sub"],
        room_id=claims["room"],
        permissions=frozenset(perms),
        extras=tuple(extras),
        role=str(claims.get("role", "")),
        issued_at_us=claims["iat_us"],
        expire_time=expire_time,
        token_id=claims["jti"],
        info=info,
    )
