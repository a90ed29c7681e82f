"""The upstream's pooled channel: grpclib's client :class:`~grpclib.client.Channel`, its writes corked.

grpclib writes every HTTP/2 frame with a ``transport.write`` of its own: a unary call is a HEADERS write
then a DATA write, each a ``send`` system call that wakes the upstream once more. On a busy machine a
``send`` on loopback took ~0.7 ms (profiled under load: a third of the proxy's time), so the frames
written in one turn of the event loop are sent together here (:class:`CorkedTransport`), in order, when
the turn ends: nothing waits longer than that turn, and grpclib still sees the real transport's buffer
(``pause_writing``) for its flow control.
"""

from __future__ import annotations

import asyncio
from asyncio import BaseTransport
from typing import Any, cast

from grpclib.client import Channel, Handler
from grpclib.protocol import H2Protocol


class CorkedTransport:
    """A transport whose writes of one turn of the event loop go out as one ``write``.

    :param transport: the connection's asyncio transport.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self.get_extra_info = transport.get_extra_info

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Write what is pending, now."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CorkedProtocol(H2Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(cast(BaseTransport, CorkedTransport(transport)))


class UpstreamChannel(Channel):
    """grpclib's channel (one HTTP/2 connection, made again after a loss) over a :class:`CorkedTransport`."""

    def _protocol_factory(self) -> H2Protocol:
        return _CorkedProtocol(Handler(), self._config, self._h2_config)
