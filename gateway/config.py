"""``gateway.yaml``: the typed model of a deployment's configuration.

Loading (``${VAR}`` / ``${VAR:-default}`` interpolation, errors naming the key and the line) is in
:mod:`gateway.config_loader`. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import limits
import limits.storage
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from gateway.auth.permissions import PERMISSIONS, is_extra, upstream_permission
from gateway.core.backend import History
from gateway.core.outbox import ALL_TYPES

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


class GrpcTls(_Strict):
    """``listen.grpc_tls``: serve gRPC over TLS (ALPN ``h2``) instead of plaintext h2c.

    WorkAdventure's client switches to TLS on port 443 (or a host given as ``https://…``).
    """

    #: PEM certificate chain (the server's certificate first).
    cert_file: FilePath
    #: PEM private key of the certificate.
    key_file: FilePath


class Listen(_Strict):
    """``host:port`` of each listener; port 0 picks a free port (tests)."""

    http: str = "127.0.0.1:8080"
    grpc: str = "127.0.0.1:50051"
    #: TLS on the gRPC listener; absent: plaintext HTTP/2 (h2c), for loopback or behind a TLS proxy.
    grpc_tls: GrpcTls | None = None
    #: A listener serving only ``GET /metrics``, without a key (for a scraper on a private network); off
    #: when absent.
    metrics: str | None = None

    @field_validator("http", "grpc", "metrics")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
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
        unknown = sorted(n for n in set(value) - PERMISSIONS if upstream_permission(n) is None)
        if unknown:
            raise ValueError(f"unknown permission(s) {unknown}; known: {sorted(PERMISSIONS)}")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        return self


class RoomTokens(_Strict):
    """``auth.room_tokens``: room tokens (JWT, HS256) are minted only when ``secret`` is set."""

    #: The HS256 signing key, at least 32 bytes (RFC 7518 §3.2), shared by every instance of a deployment;
    #: unset or empty: no room tokens (CreateRoomToken is FAILED_PRECONDITION).
    secret: SecretStr | None = None
    #: Role → permissions (and opaque extras) a token made with ``role`` carries.
    roles: dict[str, list[str]] = {"moderator": ["*"], "guest": ["variables:read", "events:listen"]}
    #: No token lives longer; ``ttlSeconds`` above it is capped.
    max_ttl_seconds: int = Field(default=3600, gt=0)
    #: The lifetime when a request gives no ``ttlSeconds`` (capped at ``max_ttl_seconds``).
    default_ttl_seconds: int = Field(default=600, gt=0)

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None  # "${ROOM_TOKEN_SECRET:-}" unset: no room tokens
        if value is not None and len(value.get_secret_value().encode("utf-8")) < 32:
            raise ValueError(
                "the room token secret must be at least 32 bytes (e.g. `room-gateway keys new --raw`)"
            )
        return value

    @field_validator("roles")
    @classmethod
    def _known_role_permissions(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for role, names in value.items():
            unknown = sorted({n for n in names if n not in PERMISSIONS and not is_extra(n)})
            if unknown:
                raise ValueError(
                    f"role {role!r}: unknown permission(s) {unknown}; known: {sorted(PERMISSIONS)}"
                )
        return value


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
    """``rate_limits``: see :mod:`gateway.ratelimit` (where each ``by`` applies, each strategy's bursts)."""

    #: ``memory://`` (this process) or a ``limits`` storage URL (``redis://…``) shared by every instance.
    storage: str = "memory://"
    strategy: Literal["fixed-window", "moving-window", "sliding-window-counter"] = "moving-window"
    #: ``[]`` switches rate limiting off.
    limits: list[LimitConfig] = [LimitConfig(by="ip", limit="20/second")]
    #: Addresses or CIDR networks of proxies whose ``X-Forwarded-For`` is believed.
    trusted_proxies: list[str] = []
    #: Refuse calls (503 UNAVAILABLE) while the storage is unreachable, instead of serving them unlimited.
    fail_closed: bool = False
    #: Prefix of every key in a shared storage (several deployments on one Redis).
    key_prefix: str = Field(default="room_gateway", min_length=1)
    #: Seconds a shared storage gets to answer before the check counts as failed.
    storage_timeout_seconds: float = Field(default=0.5, gt=0)

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        schemes = limits.storage.SCHEMES  # type: ignore[attr-defined]  # limits' registry, not re-exported
        known = {s.removeprefix("async+") for s in schemes}
        if "://" not in value or scheme.removeprefix("async+") not in known:
            names = ", ".join(sorted(known))
            raise ValueError(f"expected memory:// or a storage URL ({names}), got {value!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"expected an IP address or CIDR network, got {network!r}") from None
        return value


class SurfaceSettings(_Strict):
    """A compatibility surface's section of ``surfaces:``: ``enabled``, plus the keys its plugin declares by
    subclassing this model (:attr:`gateway.surfaces.Surface.settings_model`). Unknown keys are errors."""

    #: Serve the surface; a section that says ``false`` asks for nothing (but must still be valid).
    enabled: bool = False


#: The validation context key under which :func:`gateway.config_loader.load_config` hands the installed
#: surfaces' settings models (name → model) to :class:`Surfaces`.
SURFACE_MODELS = "room_gateway.surface_models"


class Surfaces(_Strict):
    """``surfaces``: the native API, and one section per compatibility surface, each validated by the
    settings model of the plugin that offers it (so a third party's surface gets checked keys and
    line-numbered errors like the built-in ones). A section no installed plugin offers is an error.

    The installed models come from the validation context (:data:`SURFACE_MODELS`, as the loader passes
    them), else from the ``room_gateway`` entry points.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    #: The native API (``/v1/…`` and ``roomgateway.v1.RoomService``); it cannot be switched off yet.
    native: bool = True

    @model_validator(mode="wrap")
    @classmethod
    def _plugin_sections(
        cls, data: Any, handler: ModelWrapValidatorHandler[Surfaces], info: ValidationInfo
    ) -> Surfaces:
        if not isinstance(data, Mapping) or not set(data) - {"native"}:
            return handler(data)
        models = info.context.get(SURFACE_MODELS) if isinstance(info.context, Mapping) else None
        if models is None:
            from gateway.plugins import installed_surface_models  # the plugin host imports this module

            models = installed_surface_models()
        # One model for the whole section, so that pydantic locates every error under its key.
        checked = _sections_model(tuple(sorted(models.items()))).model_validate(data, context=info.context)
        return handler({name: getattr(checked, name) for name in data})

    def sections(self) -> dict[str, SurfaceSettings]:
        """Each compatibility surface's section (validated), by name; absent surfaces are not listed."""
        return dict(self.model_extra or {})

    def enabled(self) -> list[str]:
        """The names of the surfaces switched on, ``native`` first."""
        names = ["native"] if self.native else []
        return names + [name for name, section in self.sections().items() if section.enabled]


@functools.lru_cache(maxsize=8)
def _sections_model(models: tuple[tuple[str, type[SurfaceSettings]], ...]) -> type[BaseModel]:
    """The model of a ``surfaces:`` section for these installed surfaces: ``native`` and one optional field
    per surface, unknown keys forbidden."""
    # A plugin cannot take over ``native``, the core's own key.
    fields: dict[str, Any] = {name: (model, None) for name, model in models if name != "native"}
    return create_model("Surfaces", __base__=_Strict, native=(bool, True), **fields)


def unknown_surface(name: str, installed: Iterable[str]) -> str:
    """Why a section of ``surfaces:`` cannot be served, naming the installed surfaces."""
    known = ", ".join(sorted(installed)) or "none"
    return f"no installed plugin offers the {name} surface (installed: {known})"


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


class CorsConfig(_Strict):
    """``http.cors``: which web pages on other origins may call the REST API (:mod:`gateway.edge.cors`)."""

    #: Origins as a browser sends them (``https://app.example.com``, ``http://localhost:3000``: scheme,
    #: host and port, no path), or ``"*"`` for any. Empty (the default): CORS is off.
    allow_origins: list[str] = []
    #: How long a browser may cache a preflight's answer.
    max_age_seconds: int = Field(default=600, ge=0)

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        for value in values:
            if value != "*" and not _ORIGIN.fullmatch(value):
                raise ValueError(
                    f"expected an origin such as https://app.example.com (scheme://host[:port], lower-case, "
                    f"no path or trailing slash) or '*', got {value!r}"
                )
        return values


class HttpLimits(_Strict):
    """Input limits and timings of the HTTP edge."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    #: Seconds between keep-alive comments on an idle SSE stream (so proxies do not cut it).
    keepalive_seconds: float = Field(default=15.0, gt=0)
    #: Seconds a client gets to send a request's line and headers (408 and close after: slow clients).
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Seconds a client gets to send a request's whole body once its headers are in (408 after).
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Seconds an idle keep-alive connection is kept open between requests (uvicorn's timeout_keep_alive).
    idle_timeout_seconds: float = Field(default=5.0, gt=0)
    #: Bytes of request line and headers accepted (431 beyond).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    #: CORS for pages on other origins; off by default.
    cors: CorsConfig = CorsConfig()
    #: The web console at ``/console/`` (static files; it signs in with a key, like any client).
    console: bool = True


def _rate(value: str) -> str:
    try:
        limits.parse(value)
    except ValueError:
        raise ValueError(f"expected a rate such as '100/10 seconds' or '20/second', got {value!r}") from None
    return value


Rate = Annotated[str, AfterValidator(_rate)]


class GrpcLimits(_Strict):
    """Connection liveness and input limits of the gRPC listener (:mod:`gateway.rpc.h2limits`)."""

    #: Seconds of silence on a connection after which the server sends a PING.
    keepalive_seconds: float = Field(default=60.0, gt=0)
    #: Seconds the client has to answer a PING; no answer closes the connection (half-open, dead peers).
    keepalive_timeout_seconds: float = Field(default=20.0, gt=0)
    #: Bytes of one request message (RESOURCE_EXHAUSTED beyond); ``None``: ``http.max_body_bytes``.
    max_message_bytes: int | None = Field(default=None, gt=0)
    #: Streams open at once on a connection (HTTP/2 ``SETTINGS_MAX_CONCURRENT_STREAMS``).
    max_concurrent_streams: int = Field(default=100, ge=1, le=2**31 - 1)
    #: Bytes of a request's headers as HTTP/2 counts them (``SETTINGS_MAX_HEADER_LIST_SIZE``).
    max_header_list_bytes: int = Field(default=8 * 1024, ge=1024, le=2**31 - 1)
    #: Streams a connection may reset before they are answered, or have refused, beyond those it completes.
    reset_streams_per_connection: Rate = "100/10 seconds"
    #: PING and SETTINGS frames a connection may send.
    control_frames_per_connection: Rate = "100/10 seconds"
    #: New connections per client IP, while rate limiting is on; ``None``: not limited.
    new_connections_per_ip: Rate | None = "20/second"


class InputLimits(_Strict):
    """Bounds on JSON values (a variable's value, an event's data), on every transport."""

    max_value_bytes: int = Field(default=64 * 1024, gt=0)
    max_json_depth: int = Field(default=32, gt=0, le=100)


class LoggingConfig(_Strict):
    """``logging``: how the process writes its log (stderr). ``room-gateway serve --log-level`` overrides
    ``level``."""

    #: ``text``: ``<time> <logger>: <message>`` lines; ``json``: one object a line (docs/operations.md).
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class TracingConfig(_Strict):
    """``tracing``: OpenTelemetry spans, exported over OTLP/HTTP as the ``OTEL_EXPORTER_OTLP_*`` variables
    say; needs the ``room-gateway[otel]`` extra."""

    enabled: bool = False
    #: The share of calls sampled (0 to 1; 0.1: one call in ten), parent-based: a call with a
    #: ``traceparent`` follows its sampled flag. Unset: as ``OTEL_TRACES_SAMPLER`` says, and with that
    #: unset too one call in a hundred (Kong's default; the SDK's own, every call, quadruples a call's cost).
    sample_ratio: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)

    @field_validator("sample_ratio", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # YAML's `true` would be read as 1.0 (every call): say what is meant
            raise ValueError("a share of calls from 0 to 1 (1: every call), not true/false")
        return value


class HistoryConfig(_Strict):
    """How much of each room's change log the backend keeps (``API.md``, "The room change log")."""

    #: A room's last changes kept for resuming and ListChanges; older ones are dropped.
    max_changes: int = Field(default=1000, gt=0)
    #: Seconds a change is kept, whatever their number.
    max_age_seconds: float = Field(default=86400.0, gt=0)
    #: Whether events are logged (resumable); false: live only, with ``seq`` 0.
    events: bool = True

    def to_history(self) -> History:
        """What the backend takes."""
        return History(self.max_changes, self.max_age_seconds, self.events)


class PresenceSettings(_Strict):
    """``presence``: who is in a room (the users of open room-token streams, ``API.md``)."""

    #: Seconds an instance's connections stay counted after its last heartbeat (heartbeats come every
    #: third of it): a dead instance's users leave within this of its death (plus the sweep's time).
    timeout_seconds: float = Field(default=30.0, gt=0)


#: The validation context key under which :func:`gateway.config_loader.load_config` hands the folder of the
#: configuration file: relative ``upstreams`` paths (``protos``, ``descriptor_set``, ``tls_ca``) start there.
CONFIG_DIR = "room_gateway.config_dir"
_UPSTREAM_NAME = r"[a-z0-9-]{1,32}"
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
#: Metadata an upstream's ``metadata`` may not name: HTTP/2 and gRPC's own headers.
_RESERVED_METADATA = frozenset({"te", "content-type", "user-agent"})
#: Client metadata never forwarded (``forward_metadata``): the client's credentials are the gateway's only.
_CREDENTIALS = frozenset({"authorization", "x-api-key"})


class UpstreamConfig(_Strict):
    """One entry of ``upstreams``: a gRPC service run elsewhere, served through the gateway
    (:mod:`gateway.upstream`). Its protos are compiled (or its descriptor set read) when the configuration
    is validated, so a missing file, a syntax error or an unknown service is an error naming its line."""

    #: Names the upstream in permissions (``<name>:<Method>``), metrics (``upstream:<name>``) and logs.
    name: str = Field(pattern=f"^{_UPSTREAM_NAME}$")
    #: ``grpc://host:port`` (h2c) or ``grpcs://host[:port]`` (TLS; port 443 by default).
    url: str
    #: PEM file of the CA that signs the upstream's certificate (``grpcs://``); default: the system's.
    tls_ca: str | None = None
    #: ``.proto`` files declaring the services (compiled with grpcio-tools' protoc, the ``protoc`` extra).
    protos: list[str] = []
    #: A ``FileDescriptorSet`` (``protoc --include_imports --descriptor_set_out``): no protoc needed.
    descriptor_set: str | None = None
    #: Full service names to serve; empty: every service the files declare.
    services: list[str] = []
    #: Metadata added to every upstream call (the upstream's own key, as ``x-api-key``).
    metadata: dict[str, str] = {}
    #: The request field holding the room id (room patterns of keys, ``by: room`` limits).
    room_field: str | None = None
    #: The deadline of a unary call whose client sets none.
    timeout_seconds: float = Field(default=30.0, gt=0)
    #: Client metadata passed on to the upstream (besides the request id and ``traceparent``).
    forward_metadata: list[str] = []

    _schema: Any = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _grpc_url(cls, value: str) -> str:
        from gateway.upstream.address import parse_url

        parse_url(value)
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            _check_metadata_key(key)
        return value

    @field_validator("forward_metadata")
    @classmethod
    def _forwarded_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            _check_metadata_key(key.lower())
            if key.lower() in _CREDENTIALS:
                raise ValueError(f"{key!r} is the client's credentials: they are never forwarded")
        return [key.lower() for key in value]

    @model_validator(mode="after")
    def _compiled(self, info: ValidationInfo) -> UpstreamConfig:
        from gateway.upstream.descriptors import UpstreamSchema

        folder = info.context.get(CONFIG_DIR) if isinstance(info.context, Mapping) else None
        base = Path(folder) if folder is not None else Path.cwd()
        self._schema = UpstreamSchema.load(self, base)  # raises ValueError naming the file or service
        return self

    @property
    def schema(self) -> Any:
        """The compiled descriptors (:class:`gateway.upstream.descriptors.UpstreamSchema`)."""
        return self._schema


def _check_metadata_key(key: str) -> None:
    if not _METADATA_KEY.fullmatch(key) or key.startswith("grpc-") or key in _RESERVED_METADATA:
        raise ValueError(
            f"{key!r} cannot be sent as metadata: lower-case letters, digits, '-', '_', '.'; not grpc-*, "
            f"nor {', '.join(sorted(_RESERVED_METADATA))}"
        )


_WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9+/]+={0,2}")
#: Svix's schedule (``API.md``): 8 attempts over ~27 hours.
DEFAULT_RETRY_SCHEDULE = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


class WebhookEndpoint(_Strict):
    """One receiver of ``webhooks.endpoints`` (``API.md``, "Webhooks")."""

    name: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    #: ``https://…`` or ``http://…`` (a gateway often posts to a neighbour).
    url: str
    #: ``whsec_<base64>``, the Standard Webhooks secret form.
    secret: SecretStr
    #: Types (``*`` globs) sent; empty: every type.
    events: list[str] = []
    #: Room-id patterns (``*`` globs); empty: every room.
    rooms: list[str] = []
    timeout_seconds: float = Field(default=15.0, gt=0)
    #: Attempts in flight at once to this endpoint, so that a slow receiver holds up only itself.
    max_in_flight: int = Field(default=16, ge=1, le=1024)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or rest.startswith("/"):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not _WEBHOOK_SECRET.fullmatch(secret) or len(secret) < len("whsec_") + 24:
            raise ValueError(
                "a webhook secret must be whsec_ followed by the base64 of at least 18 random bytes "
                "(the Standard Webhooks form; docs/webhooks.md shows how to make one)"
            )
        return value

    @field_validator("events")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = [one for one in value if not fnmatch.filter(ALL_TYPES, one)]
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; known: {sorted(ALL_TYPES)}")
        return value


class WebhookRetention(_Strict):
    """``webhooks.retention``: how long settled messages stay for the listing and ``:replay``, counted
    from their creation; pending ones stay until they are settled, whatever their age."""

    #: Delivered messages (default a day).
    delivered_seconds: float = Field(default=86400.0, gt=0)
    #: Failed messages, for ``:retry`` and ``:replay`` (default 14 days: past the default schedule's ~27 h
    #: and ``disable_after_seconds``' 5 days, so a failure is there to look at after a long weekend).
    failed_seconds: float = Field(default=1209600.0, gt=0)


class Webhooks(_Strict):
    """``webhooks``: signed HTTP POSTs of each room change (:mod:`gateway.webhooks`)."""

    endpoints: list[WebhookEndpoint] = []
    #: Each attempt's delay after the previous one, the first included: one entry per attempt.
    retry_schedule_seconds: list[Annotated[float, Field(ge=0)]] = Field(
        default=DEFAULT_RETRY_SCHEDULE, min_length=1, max_length=100
    )
    #: An endpoint failing for that long (no success since its first failure) is disabled.
    disable_after_seconds: float = Field(default=432000.0, gt=0)
    #: Seconds between two looks for due messages written by other instances (this instance's own writes
    #: wake its deliverers at once).
    poll_seconds: float = Field(default=1.0, gt=0)
    retention: WebhookRetention = WebhookRetention()
    #: Where the deliverers run: ``process``, a worker child of the gateway process
    #: (:mod:`gateway.webhooks.supervisor`), or ``inline``, in the gateway's own event loop. Default
    #: (``None``): ``process`` where the outbox is shared between processes (a SQLite file, PostgreSQL,
    #: Redis), ``inline`` for ``memory://`` and ``sqlite:///:memory:``, which only their process sees
    #: (:func:`delivery_of`; docs/webhooks.md says why).
    delivery: Literal["process", "inline"] | None = None
    #: The worker's ``nice`` increment (0 to 19, ``process`` only): under a burst the writes, which clients
    #: wait for, get the CPU first; the durable outbox keeps the deliveries until the worker catches up.
    #: 5, not 10 (until session 8): at +10 the kernel gives the worker a tenth of a busy nice-0 process's
    #: share, and beside a served gateway's writes it fell seconds behind even at 200 writes/s (p99
    #: write→delivery 1.4 to 1.5 s, against 0.14 to 0.35 s at +5 or 0: bench/webhooks.py served on
    #: Redis); +5 (a third of the share) still lets the writes go first.
    worker_nice: int = Field(default=5, ge=0, le=19)

    @model_validator(mode="after")
    def _failed_kept_past_the_schedule(self) -> Webhooks:
        schedule = sum(self.retry_schedule_seconds)
        if self.retention.failed_seconds < schedule:
            raise ValueError(
                f"retention.failed_seconds ({self.retention.failed_seconds:g}) must be at least the retry "
                f"schedule's length ({schedule:g} s): a message fails only once its schedule has run out"
            )
        return self

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: list[WebhookEndpoint]) -> list[WebhookEndpoint]:
        names = [one.name for one in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"webhook endpoint names must be unique: {duplicates}")
        return value


def shared_outbox(backend: str) -> bool:
    """Whether another process opening ``backend`` sees the same outbox: a SQLite file, PostgreSQL,
    Redis — not ``memory://`` nor ``sqlite:///:memory:``. A scheme of a third-party backend counts as
    shared (``webhooks.delivery: inline`` says otherwise)."""
    scheme, _, rest = backend.partition("://")
    if scheme == "memory":
        return False
    if scheme.startswith("sqlite"):
        return rest.lstrip("/") not in ("", ":memory:") and "mode=memory" not in rest
    return True


def delivery_of(backend: str, webhooks: Webhooks) -> Literal["process", "inline"]:
    """``webhooks.delivery`` as it applies to ``backend``: its value, else the default for the backend."""
    if webhooks.delivery is not None:
        return webhooks.delivery
    return "process" if shared_outbox(backend) else "inline"


class GatewayConfig(_Strict):
    """The whole of ``gateway.yaml``."""

    listen: Listen = Listen()
    backend: str = "memory://"
    history: HistoryConfig = HistoryConfig()
    auto_create_rooms: bool = True
    auth: Auth = Auth()
    rate_limits: RateLimits = RateLimits()
    surfaces: Surfaces = Surfaces()
    http: HttpLimits = HttpLimits()
    grpc: GrpcLimits = GrpcLimits()
    input: InputLimits = InputLimits()
    presence: PresenceSettings = PresenceSettings()
    #: Seconds that in-flight calls get to finish on SIGTERM before streams are cut.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    #: One line per call on logger ``room_gateway.access`` (both transports; bench/RESULTS.md says what
    #: it costs a cheap call).
    access_log: bool = True
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    #: gRPC services run elsewhere, served through the gateway (docs/front-proxy.md).
    upstreams: list[UpstreamConfig] = []
    webhooks: Webhooks = Webhooks()

    @field_validator("backend")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(f"expected a URL such as memory:// or sqlite:///rooms.db, got {value!r}")
        return value

    def served_surfaces(self) -> list[str]:
        """Every surface served, as metrics label them: ``native``, the enabled ones, ``upstream:<name>``."""
        return self.surfaces.enabled() + [f"upstream:{upstream.name}" for upstream in self.upstreams]

    @field_validator("upstreams")
    @classmethod
    def _unique_upstreams(cls, value: list[UpstreamConfig]) -> list[UpstreamConfig]:
        names = [upstream.name for upstream in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"upstream names must be unique: {duplicates}")
        services = [s for upstream in value for s in upstream.schema.services]
        twice = sorted({s for s in services if services.count(s) > 1})
        if twice:
            raise ValueError(f"a service is served by one upstream only: {twice}")
        return value

    @model_validator(mode="after")
    def _worker_shares_the_outbox(self) -> GatewayConfig:
        if self.webhooks.delivery == "process" and not shared_outbox(self.backend):
            raise ValueError(
                f"webhooks.delivery: process needs an outbox that another process can open, and "
                f"{self.backend.partition('://')[0]}:// with this URL lives in the gateway's process only; "
                "use inline, or a SQLite file, PostgreSQL or Redis"
            )
        return self

    @model_validator(mode="after")
    def _upstream_permissions(self) -> GatewayConfig:
        from gateway.upstream.permissions import check_key_permissions

        upstreams = {upstream.name: upstream for upstream in self.upstreams}
        for index, key in enumerate(self.auth.keys):
            check_key_permissions(index, key.name, key.permissions, bool(key.rooms), upstreams)
        return self
