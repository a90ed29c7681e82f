"""The gRPC transport: ``roomgateway.v1.RoomService`` on grpclib, with health and server reflection.

- :mod:`gateway.rpc.server` — :func:`~gateway.rpc.server.create_grpc_server`, the entry point.
- :mod:`gateway.rpc.service` — the handler, its methods made from the proto descriptor.
- :mod:`gateway.rpc.codec` — betterproto2 messages ↔ RoomService arguments and results.
- :mod:`gateway.rpc.auth` — the auth policy's gRPC adapter (a ``RecvRequest`` listener).
- :mod:`gateway.rpc.ratelimit` — the rate-limit policy's gRPC adapter (server events).
- :mod:`gateway.rpc.errors` — a :class:`~gateway.errors.GatewayError` as a gRPC status, made in one place.
- :mod:`gateway.rpc.wire` — request messages read within limits (a bad one INVALID_ARGUMENT), replies encoded.
- :mod:`gateway.rpc.protocol` — grpclib's HTTP/2 protocol with the abuse limits (:mod:`gateway.rpc.h2limits`).
"""

from gateway.rpc.server import build_handlers, create_grpc_server

__all__ = ["build_handlers", "create_grpc_server"]
