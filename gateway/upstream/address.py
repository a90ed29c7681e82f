"""An upstream's URL: ``grpc://host:port`` (h2c) or ``grpcs://host[:port]`` (TLS)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = {"grpc": False, "grpcs": True}
_TLS_PORT = 443


@dataclass(frozen=True, slots=True)
class Address:
    """Where an upstream listens."""

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'grpcs' if self.tls else 'grpc'}://{host}:{self.port}"


def parse_url(url: str) -> Address:
    """The address of ``url``.

    :raises ValueError: not ``grpc://host:port`` or ``grpcs://host[:port]`` (nothing after the port).
    """
    parts = urlsplit(url)
    tls = SCHEMES.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if tls is None or not parts.hostname or port == -1 or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"expected grpc://host:port or grpcs://host[:port], got {url!r}")
    if port is None:
        if not tls:
            raise ValueError(f"grpc:// needs a port (grpc://host:50051), got {url!r}")
        port = _TLS_PORT
    if parts.username or parts.password:
        raise ValueError("an upstream URL carries no credentials: send them with metadata")
    return Address(parts.hostname, port, tls)
