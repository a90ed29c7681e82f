"""``gateway.yaml``: the typed model of a deployment's configuration.

Loading (``${VAR}`` / ``${VAR:-default}`` interpolation, errors naming the key and the line) is in
:mod:`gateway.config_loader`. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import re
from typing import Literal

import limits
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.auth.permissions import PERMISSIONS

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``"[::1]:0"`` → ``("::1", 0)``.

    :raises ValueError: not ``host:port``.
    """
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port (port 0 picks a free one), got {value!r}")
    return host, int(port)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    """``host:port`` of each listener; port 0 picks a free port (tests)."""

    http: str = "127.0.0.1:8080"
    grpc: str = "127.0.0.1:50051"

    @field_validator("http", "grpc")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value


class KeyConfig(_Strict):
    """One API key: ``key`` (the secret) or ``key_sha256`` (its hex SHA-256), never both."""

    name: str = Field(min_length=1, max_length=128)
    key: SecretStr | None = None
    key_sha256: str | None = None
    permissions: list[str] = Field(min_length=1)
    #: Room-id patterns (``fnmatch``: ``*``, ``?``, ``[…]``) the key is limited to; empty: every room.
    rooms: list[str] = []

    @field_validator("key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("a key must be at least 16 characters (room-gateway keys new makes one)")
        return value

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("key_sha256 must be 64 hexadecimal characters")
        return value.lower() if value is not None else None

    @field_validator("permissions")
    @classmethod
    def _known_permissions(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permission(s) {unknown}; known: {sorted(PERMISSIONS)}")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        return self


class RoomTokens(_Strict):
    secret: SecretStr | None = None
    roles: dict[str, list[str]] = {"moderator": ["*"], "guest": ["variables:read", "events:listen"]}
    max_ttl_seconds: int = Field(default=3600, gt=0)


class Auth(_Strict):
    keys: list[KeyConfig] = []
    room_tokens: RoomTokens = RoomTokens()

    @field_validator("keys")
    @classmethod
    def _unique_names(cls, value: list[KeyConfig]) -> list[KeyConfig]:
        names = [key.name for key in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"key names must be unique: {duplicates}")
        return value


class LimitConfig(_Strict):
    by: Literal["ip", "key", "room"]
    limit: str = Field(examples=["20/second"])

    @field_validator("limit")
    @classmethod
    def _limit_string(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError:
            raise ValueError(
                f"expected a rate such as '20/second' or '100 per minute', got {value!r}"
            ) from None
        return value


class RateLimits(_Strict):
    storage: str = "memory://"
    strategy: Literal["fixed-window", "moving-window", "sliding-window-counter"] = "moving-window"
    limits: list[LimitConfig] = [LimitConfig(by="ip", limit="20/second")]
    trusted_proxies: list[str] = []


class Surface(_Strict):
    enabled: bool = False


class ReflectSurface(Surface):
    apps: list[str] = []


class SignalWireSurface(Surface):
    project_id: str = ""


class Surfaces(_Strict):
    native: bool = True
    workadventure: Surface = Surface()
    reflect: ReflectSurface = ReflectSurface()
    signalwire: SignalWireSurface = SignalWireSurface()


class HttpLimits(_Strict):
    """Input limits and timings of the HTTP edge."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    #: Seconds between keep-alive comments on an idle SSE stream (so proxies do not cut it).
    keepalive_seconds: float = Field(default=15.0, gt=0)


class GatewayConfig(_Strict):
    """The whole of ``gateway.yaml``."""

    listen: Listen = Listen()
    backend: str = "memory://"
    auto_create_rooms: bool = True
    auth: Auth = Auth()
    rate_limits: RateLimits = RateLimits()
    surfaces: Surfaces = Surfaces()
    http: HttpLimits = HttpLimits()
    #: Seconds that in-flight calls get to finish on SIGTERM before streams are cut.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    @field_validator("backend")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(f"expected a URL such as memory:// or sqlite:///rooms.db, got {value!r}")
        return value
