"""The gRPC adapter of the rate-limit policy (:mod:`gateway.ratelimit`): grpclib server events.

Two ``RecvRequest`` listeners around the auth listener (:mod:`gateway.rpc.auth`) — ``by: ip`` before it,
``by: key`` after it — and a ``SendTrailingMetadata`` listener that adds ``retry-after`` (whole seconds) to
the trailers of a RESOURCE_EXHAUSTED answer. All three run in the call's task, so the call's
:class:`~gateway.ratelimit.Verdict` (a ContextVar) is theirs and the handler's, whose
:meth:`Dispatcher.call <gateway.dispatch.Dispatcher.call>` applies the ``by: room`` limits.
Health checks are not limited (as they are not authenticated).

.. code-block:: python

    install_ip_limits(server, limiter)   # before install_auth
    install_auth(server, policy)
    install_key_limits(server, limiter)  # after
"""

from __future__ import annotations

from grpclib.const import Status
from grpclib.events import RecvRequest, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from gateway.errors import GatewayError
from gateway.ratelimit import RateLimiter, begin_call, current_verdict
from gateway.rpc.auth import UNAUTHENTICATED_PREFIXES, current_principal
from gateway.rpc.errors import grpc_error


def install_ip_limits(server: Server, limiter: RateLimiter) -> None:
    """Start each call's verdict, apply the ``by: ip`` limits, and answer refusals with ``retry-after``.
    Install it before :func:`gateway.rpc.auth.install_auth`."""

    async def limit_ip(event: RecvRequest) -> None:
        if event.method_name.startswith(UNAUTHENTICATED_PREFIXES):
            return
        verdict, _ = begin_call()  # the call's task ends with the call: nothing to reset
        if not limiter.by_ip:
            return
        address = event.peer.addr() if event.peer is not None else None
        peer = str(address[0]) if address else None
        forwarded: list[str] = []
        if limiter.trusted_proxies:
            forwarded = [
                v for k, v in event.metadata.items() if k == "x-forwarded-for" and isinstance(v, str)
            ]
        try:
            if limiter.local:  # counted here, no await (as the REST edge does)
                limiter.check_now(limiter.by_ip, limiter.client_ip(peer, forwarded), verdict)
            else:
                await limiter.check(limiter.by_ip, limiter.client_ip(peer, forwarded), verdict)
        except GatewayError as err:
            raise grpc_error(err) from None

    async def add_retry_after(event: SendTrailingMetadata) -> None:
        verdict = current_verdict()
        if verdict is not None and verdict.limited is not None and event.status is Status.RESOURCE_EXHAUSTED:
            event.metadata["retry-after"] = str(verdict.limited.retry_after)

    listen(server, RecvRequest, limit_ip)
    listen(server, SendTrailingMetadata, add_retry_after)


def install_key_limits(server: Server, limiter: RateLimiter) -> None:
    """Apply the ``by: key`` limits to the authenticated principal. Install it after ``install_auth``."""
    if not limiter.by_key:
        return

    async def limit_key(event: RecvRequest) -> None:
        if event.method_name.startswith(UNAUTHENTICATED_PREFIXES):
            return
        try:
            principal = current_principal()
        except GRPCError:
            return  # a surface that authenticates its calls itself: its key is unknown here
        try:
            await limiter.check(limiter.by_key, principal.name, current_verdict())
        except GatewayError as err:
            raise grpc_error(err) from None

    listen(server, RecvRequest, limit_key)
