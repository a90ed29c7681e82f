"""The upstream's pooled channel: grpclib's client :class:`~grpclib.client.Channel`, its writes corked.

grpclib writes every HTTP/2 frame with a ``transport.write`` of its own: a unary call is a HEADERS write
then a DATA write, each a ``send`` system call that wakes the upstream once more. On a busy machine a
``send`` on loopback took ~0.7 ms (profiled under load: a third of the proxy's time), so the frames
written in one turn of the event loop are sent together here (:class:`gateway.coalesce.CoalescingTransport`,
as the gateway's own listeners do), in order, when the turn ends: nothing waits longer than that turn, and
grpclib still sees the real transport's buffer (``pause_writing``) for its flow control.
"""

from __future__ import annotations

import asyncio
from asyncio import BaseTransport
from typing import Any, cast

from grpclib.client import Channel, Handler
from grpclib.protocol import H2Protocol

from gateway.coalesce import CoalescingTransport


class _CorkedProtocol(H2Protocol):
    def connection_made(self, transport: Any) -> None:
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(cast(BaseTransport, coalescing))


class UpstreamChannel(Channel):
    """grpclib's channel (one HTTP/2 connection, made again after a loss), its writes coalesced."""

    def _protocol_factory(self) -> H2Protocol:
        return _CorkedProtocol(Handler(), self._config, self._h2_config)
