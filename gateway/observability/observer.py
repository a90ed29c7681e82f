"""The :class:`Observer`: what both transports record every call into — metrics, request ids, access lines
(and spans, when tracing is on). One per gateway, built by :func:`gateway.app.create_gateway`.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.observability.calls import MAX_REQUEST_ID, MethodRecorder
from gateway.observability.metrics import Metrics

if TYPE_CHECKING:  # tracing is an optional extra: imported only when switched on
    from gateway.observability.tracing import Tracing

#: A request id a client may choose: printable ASCII without spaces (it is written in log lines as is).
_VALID_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")
#: Peers whose trust was decided, kept to skip parsing their address again (cleared when this big).
_TRUST_CACHE_SIZE = 4096


_PREFIX = os.urandom(4).hex()
_SEQUENCE = itertools.count(random.getrandbits(31))


def new_request_id() -> str:
    """A fresh request id: 16 hex digits, a random prefix per process then a counter — unique across
    instances in practice, and no system call per call (``os.urandom`` was the costlier half)."""
    return f"{_PREFIX}{next(_SEQUENCE) & 0xFFFFFFFF:08x}"


class Observer:
    """Records calls of both transports.

    :param metrics: where calls are counted.
    :param trusted_proxies: addresses or networks (``rate_limits.trusted_proxies``) whose ``X-Request-Id``
        (gRPC ``x-request-id``) is taken; any other caller's is replaced by a generated one.
    :param access_log: write one access line per call (config ``access_log``).
    :param tracing: spans per call and per backend operation (``None``: tracing is off).
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        trusted_proxies: Iterable[str] = (),
        access_log: bool = True,
        tracing: Tracing | None = None,
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.tracing = tracing
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self._trusted: dict[str, bool] = {}
        self._recorders: dict[tuple[str, str, str], MethodRecorder] = {}
        #: Which surface serves each HTTP route (by ``id`` of the route object); others are ``native``.
        self.route_surfaces: dict[int, str] = {}
        #: Which surface serves each gRPC method path (``/package.Service/Method``); others are ``native``.
        self.grpc_surfaces: dict[str, str] = {}

    @property
    def takes_request_ids(self) -> bool:
        """Whether some peer's own request id may be taken (a trusted proxy is configured)."""
        return bool(self._networks)

    def recorder(self, transport: str, surface: str, method: str) -> MethodRecorder:
        """The recorder of a method (made once, then shared)."""
        key = (transport, surface, method)
        recorder = self._recorders.get(key)
        if recorder is None:
            recorder = self._recorders[key] = MethodRecorder(self.metrics, transport, surface, method)
        return recorder

    def request_id(self, peer: str | None, given: str | None) -> str:
        """The call's request id: ``given`` when a trusted proxy sent a well-formed one, else a new one."""
        if given is not None and peer and self._networks and self.trusts(peer):
            if _VALID_REQUEST_ID.fullmatch(given):
                return given
        return new_request_id()

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` is one of the trusted proxies."""
        trusted = self._trusted.get(peer)
        if trusted is None:
            try:
                ip = ipaddress.ip_address(peer)
            except ValueError:
                trusted = False
            else:
                trusted = any(ip in network for network in self._networks)
            if len(self._trusted) >= _TRUST_CACHE_SIZE:
                self._trusted.clear()
            self._trusted[peer] = trusted
        return trusted
