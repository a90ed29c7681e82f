"""An upstream as a surface: its gRPC handlers, its REST routes, its health, for one entry of
``upstreams:``. Built by :func:`upstream_surfaces` next to the plugins' surfaces, and wired the same way
(routes and handlers labelled ``upstream:<name>`` in metrics and access lines)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from grpclib.const import Handler
from starlette.routing import BaseRoute

from gateway.config import SurfaceSettings, UpstreamConfig
from gateway.edge.http_rules import bindings
from gateway.observability.calls import MethodRecorder
from gateway.observability.observer import Observer
from gateway.plugins import ConfigError
from gateway.surfaces import Surface, SurfaceContext
from gateway.upstream.health import UpstreamHealth
from gateway.upstream.proxy import UpstreamProxy, open_channel
from gateway.upstream.rest import Binder, UpstreamRoute, upstream_bindings


class UpstreamSurface(Surface):
    """One upstream's services, on both transports, behind the gateway's auth (no self-authenticated
    prefixes: the native auth stage and listener authenticate every call).

    :param upstream: its entry in ``upstreams:``.
    :param context: the gateway's core.
    :param observer: what calls are recorded into: its REST streams are counted open there (the gRPC
        listener counts its own); ``None``: not counted.
    """

    def __init__(
        self, upstream: UpstreamConfig, context: SurfaceContext, observer: Observer | None = None
    ) -> None:
        super().__init__(SurfaceSettings(enabled=True), context)
        self.upstream = upstream
        self.observer = observer
        self.channel = open_channel(upstream.url, upstream.schema.tls_ca)
        self.proxy = UpstreamProxy(
            upstream.name,
            upstream.schema.methods,
            self.channel,
            context.dispatcher,
            metadata=upstream.metadata,
            forward=tuple(upstream.forward_metadata),
            timeout=upstream.timeout_seconds,
        )
        self.health = UpstreamHealth(upstream.name, self.channel)
        self.binders = [
            Binder(binding, method)
            for method in upstream.schema.methods.values()
            for binding in upstream_bindings(method)
        ]

    @property
    def label(self) -> str:
        return f"upstream:{self.upstream.name}"

    def grpc_handlers(self) -> list[object]:
        # One handler per service: grpclib's server reflection names a handler by its first method.
        return [ServiceView(self.proxy, service) for service in self.upstream.schema.services]

    def http_routes(self) -> list[BaseRoute]:
        http = self.context.config.http
        return [
            UpstreamRoute(
                binder,
                self.proxy,
                max_body_bytes=http.max_body_bytes,
                keepalive_seconds=http.keepalive_seconds,
                recorder=self._recorder(binder.method.name) if binder.method.server_streaming else None,
            )
            for binder in self.binders
        ]

    def _recorder(self, method: str) -> MethodRecorder | None:
        if self.observer is None:
            return None
        return self.observer.recorder("rest", self.label, method)  # the label the edge counts its calls by

    def close(self) -> None:
        """Close the channel (its connection); in-flight calls fail."""
        self.channel.close()


class ServiceView:
    """The methods of one service of an upstream, as a grpclib service (``__mapping__``)."""

    def __init__(self, proxy: UpstreamProxy, service: str) -> None:
        self.proxy = proxy
        self.service = service

    def __mapping__(self) -> dict[str, Handler]:
        prefix = f"/{self.service}/"
        return {path: h for path, h in self.proxy.__mapping__().items() if path.startswith(prefix)}


def upstream_surfaces(context: SurfaceContext, observer: Observer | None = None) -> list[UpstreamSurface]:
    """A surface for each entry of ``upstreams:`` (``observer``: see :class:`UpstreamSurface`)."""
    return [UpstreamSurface(upstream, context, observer) for upstream in context.config.upstreams]


#: Services the gateway serves itself on its gRPC port: no upstream may take them.
OWN_SERVICES = ("roomgateway.v1.RoomService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection")  # fmt: skip
_UPSTREAM_LABEL = "upstream:"


def check_clashes(grpc_handlers: Sequence[tuple[str, Sequence[object]]]) -> None:
    """Refuse an upstream serving a service the gateway or an enabled surface already serves (the
    WorkAdventure surface and an upstream serving ``roomApi.RoomApi``).

    :param grpc_handlers: each surface's label and gRPC handlers.
    :raises ConfigError: naming the upstream, the service and the surface.
    """
    served: dict[str, str] = {service: "gateway's own" for service in OWN_SERVICES}
    for label, handlers in grpc_handlers:
        if not label.startswith(_UPSTREAM_LABEL):
            for handler in handlers:
                for path in handler.__mapping__():  # type: ignore[attr-defined]  # grpclib's service protocol
                    served.setdefault(path.split("/")[1], f"{label} surface's")
    for label, handlers in grpc_handlers:
        if not label.startswith(_UPSTREAM_LABEL):
            continue
        for handler in handlers:
            for path in handler.__mapping__():  # type: ignore[attr-defined]
                service = path.split("/")[1]
                other = served.get(service)
                if other is not None and other != label:
                    name = label.removeprefix(_UPSTREAM_LABEL)
                    raise ConfigError(
                        f"upstreams ({name}).services: {service} is also the {other} service on the gRPC "
                        "port; "
                        f"switch that surface off (e.g. surfaces.workadventure.enabled: false) or leave "
                        f"{service} out of the upstream's services"
                    )
                served[service] = label


def check_route_clashes(upstreams: Sequence[UpstreamSurface]) -> None:
    """Refuse an upstream REST route that the native API, or another upstream, has already (same HTTP method
    and template): it would never be reached.

    :raises ConfigError: naming the upstream, the method and the route.
    """
    taken = {(b.http_method, b.template.template): "the native API" for b in bindings()}
    for upstream in upstreams:
        for binder in upstream.binders:
            key = (binder.binding.http_method, binder.binding.template.template)
            other = taken.setdefault(key, f"upstream {upstream.upstream.name!r}")
            if other != f"upstream {upstream.upstream.name!r}":
                raise ConfigError(
                    f"upstreams ({upstream.upstream.name}): {binder.method.name}'s route {key[0]} {key[1]} "
                    f"is {other}'s already; change its google.api.http rule"
                )


def ready_with_upstreams(
    ready: Callable[[], Awaitable[None]], upstreams: Sequence[UpstreamSurface]
) -> Callable[[], Awaitable[None]]:
    """The gateway's readiness: ``ready`` (the backend), then every upstream's health."""
    if not upstreams:
        return ready
    checks = [upstream.health.check for upstream in upstreams]

    async def ready_all() -> None:
        await ready()
        for check in checks:
            await check()

    return ready_all
