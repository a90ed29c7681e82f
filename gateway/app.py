"""Assembly: one configuration in, one gateway out — the flow of ``DESIGN.md`` in one function.

    plugins → backend → RoomService → AuthPolicy, RateLimiter, PresenceRegistry → Dispatcher
            → Starlette edge + grpclib server

Nothing here listens or connects: :func:`create_gateway` only builds. :mod:`gateway.server` opens the
backend, starts the presence heartbeat, binds the listeners and drains them on shutdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pluggy
from grpclib.server import Server as GrpcServer
from pydantic import ValidationError
from starlette.routing import BaseRoute

from gateway.auth.policy import AuthPolicy
from gateway.auth.tokens import room_token_issuer
from gateway.config import GatewayConfig, delivery_of, unknown_surface
from gateway.config_loader import api_keys
from gateway.core.backend import Backend
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.core.validation import ValueLimits
from gateway.dispatch import Dispatcher
from gateway.edge.app import Edge, create_http_app
from gateway.edge.cors import Cors
from gateway.observability.backends import instrument
from gateway.observability.info import info_source
from gateway.observability.metrics import Metrics
from gateway.observability.observer import Observer
from gateway.plugins import ConfigError, Plugins, create_plugin_manager
from gateway.ratelimit import RateLimiter
from gateway.rpc.h2limits import Http2Limits
from gateway.rpc.server import create_grpc_server, keepalive_config
from gateway.surfaces import Surface, SurfaceContext
from gateway.upstream.surface import (
    UpstreamSurface,
    check_clashes,
    check_route_clashes,
    ready_with_upstreams,
    upstream_surfaces,
)
from gateway.webhooks.deliverer import Deliverers, Delivery, outbox_of
from gateway.webhooks.manager import WebhookManager
from gateway.webhooks.supervisor import Supervisor

if TYPE_CHECKING:
    from gateway.observability.tracing import Tracing

#: What to do when no key is configured: the gateway fails closed (as WorkAdventure's Room API does).
NO_KEY_HINT = (
    "auth.keys: no API key configured, and the gateway refuses to start without one. Make a key and put "
    "it in the environment:\n"
    "    export ROOM_API_SECRET_KEY=$(room-gateway keys new --raw)\n"
    'then start again: the shipped gateway.yaml reads it as `key: "${ROOM_API_SECRET_KEY}"`. '
    "(`room-gateway keys new` also prints a key_sha256 line, to store only the key's hash.)"
)


@dataclass(frozen=True, slots=True)
class Gateway:
    """A built gateway, not yet serving: its parts, for the runner and for tests."""

    config: GatewayConfig
    backend: Backend
    service: RoomService
    dispatcher: Dispatcher
    http_app: Edge
    grpc_server: GrpcServer
    limiter: RateLimiter | None = None  # None: rate limiting is off
    metrics: Metrics | None = None  # what /metrics answers
    observer: Observer | None = None  # what both transports record calls into
    presence: PresenceRegistry | None = None  # this instance's room-token streams and heartbeat
    #: The addresses the runner bound (``http``, ``grpc``, ``metrics``: ``host:port``), once it serves.
    listeners: dict[str, str] = field(default_factory=dict)
    #: The front-proxy upstreams (their channels are closed when the gateway stops).
    upstreams: tuple[UpstreamSurface, ...] = ()
    #: The deliverers (``inline``) or their worker process's supervisor (``process``); ``None``: no webhook
    #: endpoint configured.
    webhooks: Delivery | None = None


def create_gateway(config: GatewayConfig, *, plugin_manager: pluggy.PluginManager | None = None) -> Gateway:
    """Build the whole gateway from its configuration. Call it inside the event loop that will serve it
    (grpclib binds its server to the running loop).

    :param config: a validated configuration (:func:`gateway.config_loader.load_config`).
    :param plugin_manager: plugins to use; default: a fresh one from the ``room_gateway`` entry points.
    :raises ConfigError: no API key is configured, or no installed plugin serves the backend's scheme.
    """
    keys = api_keys(config.auth)
    if not keys:
        raise ConfigError(NO_KEY_HINT)
    if not config.surfaces.native:
        raise ConfigError("surfaces.native: the native API cannot be switched off yet; set native: true")
    plugins = Plugins(plugin_manager or create_plugin_manager())
    backend = plugins.create_backend(config.backend, config.history.to_history())
    metrics = Metrics()
    tracing = _tracing(config)
    observer = Observer(
        metrics,
        trusted_proxies=config.rate_limits.trusted_proxies,
        access_log=config.access_log,
        tracing=tracing,
    )
    instrument(backend, metrics, tracing)  # before anything holds its bound methods
    webhooks = _webhooks(config, backend, metrics)
    manager = WebhookManager(config.webhooks, backend, webhooks) if webhooks is not None else None
    tokens = room_token_issuer(config.auth.room_tokens)  # None: no secret, no room tokens
    service = RoomService(
        backend,
        tokens=tokens,
        auto_create_rooms=config.auto_create_rooms,
        value_limits=ValueLimits(config.input.max_value_bytes, config.input.max_json_depth),
        webhooks=manager,
    )
    policy = AuthPolicy(keys, tokens=tokens)
    limiter = _rate_limiter(config, metrics)
    presence = PresenceRegistry(backend, timeout_seconds=config.presence.timeout_seconds)
    metrics.count_presence(lambda: presence.connections)
    dispatcher = Dispatcher(service, policy, limiter=limiter, presence=presence)
    context = SurfaceContext(config, policy, dispatcher)
    upstreams = upstream_surfaces(context, observer)
    surfaces = [*_enabled_surfaces(config, plugins, context), *upstreams]
    http_routes = [(surface.label, surface.http_routes()) for surface in surfaces]
    grpc_handlers = [(surface.label, surface.grpc_handlers()) for surface in surfaces]
    check_clashes(grpc_handlers)
    check_route_clashes(upstreams)
    _label_surfaces(observer, http_routes, grpc_handlers)
    ready = ready_with_upstreams(backend.check, upstreams)
    listeners: dict[str, str] = {}  # filled by the runner
    http_app = create_http_app(
        dispatcher,
        max_body_bytes=config.http.max_body_bytes,
        ready=ready,
        keepalive_seconds=config.http.keepalive_seconds,
        extra_routes=[route for _, routes in http_routes for route in routes],
        extra_documented=[binder for upstream in upstreams for binder in upstream.binders],
        self_authenticated_prefixes=tuple(p for surface in surfaces for p in surface.http_prefixes),
        limiter=limiter,
        metrics=metrics,
        observer=observer,
        info=info_source(config, listeners, backend.check),
        cors=_cors(config),
        console=config.http.console,
    )
    grpc_server = create_grpc_server(
        dispatcher,
        ready=ready,
        extra_handlers=[handler for _, handlers in grpc_handlers for handler in handlers],
        reflected=[file for upstream in upstreams for file in upstream.upstream.schema.files],
        self_authenticated_prefixes=tuple(p for surface in surfaces for p in surface.grpc_prefixes),
        config=keepalive_config(config.grpc.keepalive_seconds, config.grpc.keepalive_timeout_seconds),
        limiter=limiter,
        access_log=config.access_log,
        limits=Http2Limits.from_config(config),
        observer=observer,
    )
    return Gateway(
        config,
        backend,
        service,
        dispatcher,
        http_app,
        grpc_server,
        limiter,
        metrics,
        observer,
        presence,
        listeners,
        tuple(upstreams),
        webhooks,
    )


def _cors(config: GatewayConfig) -> Cors | None:
    """The CORS rules of ``http.cors``; ``None`` (no CORS stage at all) when no origin is allowed."""
    cors = config.http.cors
    return Cors(cors.allow_origins, cors.max_age_seconds) if cors.allow_origins else None


def _webhooks(config: GatewayConfig, backend: Backend, metrics: Metrics) -> Delivery | None:
    """The webhook deliverers — in this process, or the supervisor of the worker process that runs them
    (``webhooks.delivery``) — and the backend told which endpoints to write outbox messages for; ``None``
    without endpoints (the write path then does no outbox work).

    :raises ConfigError: endpoints are configured but the backend has no outbox.
    """
    if not config.webhooks.endpoints:
        return None
    if not backend.supports_outbox:
        raise ConfigError(
            f"webhooks.endpoints: the {type(backend).__name__} backend has no webhook outbox "
            "(supports_outbox); use memory://, sqlite://, postgresql:// or redis://"
        )
    backend.outbox = outbox_of(config.webhooks)
    if delivery_of(config.backend, config.webhooks) == "process":
        return Supervisor(config, backend, metrics)
    return Deliverers(config.webhooks, backend, metrics)


def _tracing(config: GatewayConfig) -> Tracing | None:
    """The gateway's tracing when ``tracing.enabled`` (OpenTelemetry is imported only then).

    :raises ConfigError: tracing is on but the ``otel`` extra is not installed.
    """
    if not config.tracing.enabled:
        return None
    try:
        from gateway.observability.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled: OpenTelemetry is not installed ({exc.name}); "
            "pip install 'room-gateway[otel]', or set enabled: false"
        ) from None
    return Tracing(sample_ratio=config.tracing.sample_ratio)


def _label_surfaces(
    observer: Observer,
    http_routes: Sequence[tuple[str, Sequence[BaseRoute]]],
    grpc_handlers: Sequence[tuple[str, Sequence[object]]],
) -> None:
    """Tell ``observer`` which surface serves each route and gRPC method (the ``surface`` label)."""
    for name, routes in http_routes:
        pending = list(routes)
        while pending:
            route = pending.pop()
            observer.route_surfaces[id(route)] = name
            pending.extend(getattr(route, "routes", ()))  # a Mount's own routes
    for name, handlers in grpc_handlers:
        for handler in handlers:
            for path in handler.__mapping__():  # type: ignore[attr-defined]  # grpclib's service protocol
                observer.grpc_surfaces[path] = name


def _rate_limiter(config: GatewayConfig, metrics: Metrics) -> RateLimiter | None:
    """The rate-limit policy of ``rate_limits`` (``None`` when ``limits: []`` switches it off), counting
    its refusals in ``metrics``."""
    if not config.rate_limits.limits:
        return None
    try:
        return RateLimiter.from_config(config.rate_limits, metrics=metrics)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _enabled_surfaces(config: GatewayConfig, plugins: Plugins, context: SurfaceContext) -> list[Surface]:
    """The compatibility surfaces switched on in ``surfaces:``, each from the plugin that offers it, with
    its section as that plugin's settings model validates it.

    :raises ConfigError: a surface is enabled that no installed plugin offers, or its section does not
        validate with the offering plugin's model (a configuration validated against other plugins).
    """
    offered = plugins.surface_classes()
    enabled = []
    for name, settings in config.surfaces.sections().items():
        if not settings.enabled:
            continue
        cls = offered.get(name)
        if cls is None:
            raise ConfigError(f"surfaces.{name}.enabled: {unknown_surface(name, offered)}; set it false")
        if not isinstance(settings, cls.settings_model):
            try:
                settings = cls.settings_model.model_validate(settings.model_dump())
            except ValidationError as exc:
                raise ConfigError(f"surfaces.{name}: {exc}") from None
        enabled.append(cls(settings, context))
    return enabled
