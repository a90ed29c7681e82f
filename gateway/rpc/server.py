"""The gRPC listener: the native service, any extra services, health and reflection, behind the auth policy.

.. code-block:: python

    server = create_grpc_server(dispatcher, ready=backend.check)
    await server.start("127.0.0.1", 50051)
    ...
    server.close()
    await server.wait_closed()
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpclib.config import Configuration
from grpclib.health.check import ServiceCheck
from grpclib.health.service import Health
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2
from grpclib.server import Server

from gateway import schema
from gateway.dispatch import Dispatcher
from gateway.observability.metrics import Metrics
from gateway.observability.observer import Observer
from gateway.ratelimit import RateLimiter
from gateway.rpc.auth import install_auth
from gateway.rpc.h2limits import Http2Limits
from gateway.rpc.observe import install_observer
from gateway.rpc.protocol import GuardedServer
from gateway.rpc.ratelimit import install_ip_limits, install_key_limits
from gateway.rpc.service import RoomServiceHandler
from gateway.rpc.wire import LastMessageCodec, PassThroughDetailsCodec

#: The limits of a server made without a configuration (tests, embedding): ``grpc:``'s defaults.
DEFAULT_LIMITS = Http2Limits()
#: How long a readiness result is reused by health checks (seconds): probes stay cheap for the backend.
READY_CHECK_TTL = 1.0
#: How long one readiness probe may take before it counts as not ready (seconds).
READY_CHECK_TIMEOUT = 5.0


def build_handlers(
    dispatcher: Dispatcher,
    *,
    ready: Callable[[], Awaitable[None]] | None = None,
    extra_handlers: Sequence[object] = (),
    reflected: Sequence[descriptor_pb2.FileDescriptorProto] = (),
) -> list[Any]:
    """The services of the gRPC listener: RoomService, ``extra_handlers``, health, then reflection.

    Useful on its own with ``grpclib.testing.ChannelFor`` (which runs no server events: install
    :func:`gateway.rpc.auth.install_auth` on its server to authenticate).

    :param dispatcher: runs the native calls.
    :param ready: raises when the gateway cannot serve (backend down); health answers NOT_SERVING then.
        ``None``: always SERVING.
    :param extra_handlers: more grpclib services (compatibility surfaces), served and reflected too.
    :param reflected: descriptor files of extra handlers that the gateway's own set lacks (upstreams').
    """
    services: list[Any] = [RoomServiceHandler(dispatcher), *extra_handlers]  # grpclib types them loosely
    checks = [_readiness_check(ready)] if ready is not None else []
    # One check object shared by every service: the overall status ("") and each service's agree.
    health = Health({service: checks for service in services})
    services.append(health)
    pool = reflection_pool() if not reflected else reflection_pool_with(reflected)
    return ServerReflection.extend(services, pool=pool)


def create_grpc_server(
    dispatcher: Dispatcher,
    *,
    ready: Callable[[], Awaitable[None]] | None = None,
    extra_handlers: Sequence[object] = (),
    reflected: Sequence[descriptor_pb2.FileDescriptorProto] = (),
    self_authenticated_prefixes: tuple[str, ...] = (),
    config: Configuration | None = None,
    limiter: RateLimiter | None = None,
    access_log: bool = True,
    limits: Http2Limits | None = DEFAULT_LIMITS,
    observer: Observer | None = None,
) -> Server:
    """The gRPC server of the gateway, not yet listening.

    The caller runs ``await server.start(host, port)`` and, to stop, ``server.close()`` then
    ``await server.wait_closed()``. Every call but health checks is authenticated with
    ``dispatcher.policy`` (metadata ``x-api-key`` or ``authorization``).

    :param dispatcher: runs the native calls; its policy authenticates every call.
    :param ready: see :func:`build_handlers`.
    :param extra_handlers: see :func:`build_handlers`.
    :param reflected: see :func:`build_handlers`.
    :param config: grpclib's connection settings (HTTP/2 keep-alive: :func:`keepalive_config`).
    :param limiter: the rate-limit policy (``by: ip`` before authentication, ``by: key`` after).
    :param access_log: log one line per call (config ``access_log``), when no ``observer`` is given.
    :param limits: the HTTP/2 abuse limits and the message size (:mod:`gateway.rpc.protocol`, built from
        ``grpc:`` by :meth:`Http2Limits.from_config`); ``None``: grpclib's own protocol, without them (to
        measure what they cost: ``bench/grpc_limits.py``).
    :param observer: what every call is recorded into (metrics, request ids, access lines, spans); default:
        one of its own, counting into metrics nobody reads.
    """
    if observer is None:
        observer = Observer(limiter.metrics if limiter is not None else Metrics(), access_log=access_log)
    handlers = build_handlers(dispatcher, ready=ready, extra_handlers=extra_handlers, reflected=reflected)
    # The codec refuses undecodable requests (INVALID_ARGUMENT) and encodes one write to many listeners once.
    # Status details as grpclib's protobuf codec writes them, an upstream's passed through as they came.
    details = PassThroughDetailsCodec()
    if limits is None:
        server = Server(handlers, codec=LastMessageCodec(), status_details_codec=details, config=config)
    else:
        server = GuardedServer(
            handlers, codec=LastMessageCodec(), status_details_codec=details, config=config, limits=limits
        )
    install_observer(server, observer)  # before auth: refused calls are counted and logged too
    if limiter is not None and limiter.quotas:
        install_ip_limits(server, limiter)  # before auth: an unauthenticated flood is refused first
    install_auth(server, dispatcher.policy, skip_prefixes=self_authenticated_prefixes)
    if limiter is not None:
        install_key_limits(server, limiter)
    return server


def keepalive_config(keepalive_seconds: float, timeout_seconds: float) -> Configuration:
    """Ping every connection silent for ``keepalive_seconds``, idle ones too, and close it when the PING is
    not answered within ``timeout_seconds``: dead and half-open peers do not hold connections for ever.

    grpclib's defaults ping only connections with calls in flight, after two hours, at most twice.
    """
    return Configuration(
        _keepalive_time=keepalive_seconds,
        _keepalive_timeout=timeout_seconds,
        _keepalive_permit_without_calls=True,
        _http2_max_pings_without_data=0,  # no cap: a live idle client answers every PING
        _http2_min_sent_ping_interval_without_data=keepalive_seconds,
    )


def _readiness_check(ready: Callable[[], Awaitable[None]]) -> ServiceCheck:
    async def probe() -> bool:
        await ready()  # an exception is logged by grpclib and reported as NOT_SERVING
        return True

    return ServiceCheck(probe, check_ttl=READY_CHECK_TTL, check_timeout=READY_CHECK_TIMEOUT)


@functools.cache
def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The descriptors server reflection answers from: the checked-in set, plus health and reflection.

    A pool of its own rather than ``descriptor_pool.Default()``: adding our files to the process-wide pool
    would clash with any ``*_pb2`` module of the same file imported later (a client in the same process).
    """
    return _gateway_pool()


def _gateway_pool() -> descriptor_pool.DescriptorPool:
    pool = schema.new_pool()
    for module in (health_pb2, reflection_pb2, reflection_v1alpha_pb2):
        _add_file(pool, module.DESCRIPTOR)
    return pool


def reflection_pool_with(
    files: Sequence[descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    """A pool of :func:`reflection_pool`'s files plus ``files`` (an upstream's): a file whose name is there
    already is skipped, and so is one that declares a symbol there already (an upstream compiled from its
    own copy of a proto the gateway serves too, WorkAdventure's: reflection answers from the gateway's)."""
    pool = _gateway_pool()
    for file in files:
        try:
            pool.FindFileByName(file.name)
            continue
        except KeyError:
            pass
        try:
            pool.Add(file)
        except (TypeError, ValueError):  # a symbol declared twice, or a dependency skipped for that reason
            continue
    return pool


def _add_file(pool: descriptor_pool.DescriptorPool, file: FileDescriptor) -> None:
    """Add ``file`` and its dependencies to ``pool``, skipping those already in it."""
    try:
        pool.FindFileByName(file.name)
        return
    except KeyError:
        pass
    for dependency in file.dependencies:
        _add_file(pool, dependency)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)
