"""The HTTP/2 abuse limits of the gRPC listener (``grpc:`` in gateway.yaml) and their counters.

What each limit does to a connection is told in :mod:`gateway.rpc.protocol`, which applies them; this
module holds the values (:class:`Http2Limits`, from the configuration), the per-connection budgets
(:class:`Budget`), the per-IP count of new connections (:class:`Admission`) and the header-block bound
(:class:`HeaderBlockScanner`). Nothing here touches a socket.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import struct
import time
from dataclasses import dataclass

from limits import parse as parse_rate

from gateway.config import DEFAULT_MAX_BODY_BYTES, GatewayConfig
from gateway.ratelimit import LocalWindows

log = logging.getLogger(__name__)

#: Seconds between two log lines about refused connections (each is counted).
REFUSAL_LOG_INTERVAL = 10.0
FRAME_HEADER_BYTES = 9  # RFC 9113 §4.1
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _CONTINUATION, _END_HEADERS = 0x1, 0x9, 0x4
_MAX_PADDING = 256  # a HEADERS frame's pad length byte and padding, and its priority fields
_FRAME_WORD = struct.Struct(">I")  # a frame header's first four bytes: its length, then its type

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Rate:
    """``amount`` per ``seconds``: the size of a budget and how fast it refills."""

    amount: int
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """A rate in the notation of ``limits`` (``"100/10 seconds"``)."""
        item = parse_rate(text)
        return cls(item.amount, float(item.get_expiry()))


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """The limits :mod:`gateway.rpc.protocol` applies (and the message size of :mod:`gateway.rpc.wire`).

    :param new_connections: new connections allowed per client IP; ``None``: not limited.
    :param strategy: the ``limits`` strategy that counts them (``rate_limits.strategy``).
    :param trusted_proxies: peers whose new connections are not counted (every client comes through them).
    """

    max_message_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 8 * 1024
    reset_streams: Rate = Rate(100, 10.0)
    control_frames: Rate = Rate(100, 10.0)
    new_connections: str | None = None
    strategy: str = "moving-window"
    trusted_proxies: tuple[_Network, ...] = ()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Http2Limits:
        """The limits of ``config.grpc``: the message size defaults to ``http.max_body_bytes``, and new
        connections are counted only while rate limiting is on (``rate_limits.limits`` not empty)."""
        grpc, rate_limits = config.grpc, config.rate_limits
        return cls(
            max_message_bytes=grpc.max_message_bytes or config.http.max_body_bytes,
            max_concurrent_streams=grpc.max_concurrent_streams,
            max_header_list_bytes=grpc.max_header_list_bytes,
            reset_streams=Rate.parse(grpc.reset_streams_per_connection),
            control_frames=Rate.parse(grpc.control_frames_per_connection),
            new_connections=grpc.new_connections_per_ip if rate_limits.limits else None,
            strategy=rate_limits.strategy,
            trusted_proxies=tuple(ipaddress.ip_network(n, strict=False) for n in rate_limits.trusted_proxies),
        )


class Admission:
    """Counts new connections per client IP (one :class:`~gateway.ratelimit.LocalWindows` for the server)
    and logs refusals, at most one line every :data:`REFUSAL_LOG_INTERVAL` seconds."""

    def __init__(self, limits: Http2Limits) -> None:
        self._windows = (
            LocalWindows(parse_rate(limits.new_connections), limits.strategy)
            if limits.new_connections is not None
            else None
        )
        self._trusted = limits.trusted_proxies
        #: Connections refused so far.
        self.refused = 0
        self._logged = -math.inf

    def admits(self, peer: object) -> bool:
        """Whether a new connection from ``peer`` (the transport's ``peername``) is within the limit."""
        address = self._limited(peer)
        if address is None or self._windows is None:
            return True
        allowed = self._windows.count_now(str(address))[0]
        if not allowed:
            self._refused(address)
        return allowed

    def penalize(self, peer: object) -> None:
        """Use up the new-connection allowance of ``peer``, whose connection was closed for abuse: its next
        connections are refused until the window lets it in again, so an abuser's reconnections cost a
        refusal each, not a connection's worth of parsing up to the budget."""
        address = self._limited(peer)
        if address is not None and self._windows is not None:
            for _ in range(self._windows.amount):
                self._windows.count_now(str(address))

    def _refused(self, address: _Address) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged >= REFUSAL_LOG_INTERVAL:
            self._logged = now
            log.warning(
                "grpc: refused a connection from %s: over grpc.new_connections_per_ip "
                "(GOAWAY ENHANCE_YOUR_CALM; %d refused so far)",
                address,
                self.refused,
            )

    def _limited(self, peer: object) -> _Address | None:
        """The IP address of ``peer`` when its connections are counted (neither a trusted proxy nor a Unix
        socket)."""
        if self._windows is None or not isinstance(peer, tuple):
            return None
        try:
            address = ipaddress.ip_address(peer[0])
        except ValueError:
            return None
        if any(address in network for network in self._trusted):
            return None
        return address


class Budget:
    """A leaky bucket: :meth:`spend` fails once more than ``rate.amount`` are spent faster than the rate."""

    __slots__ = ("_at", "_capacity", "_level", "_per_second")

    def __init__(self, rate: Rate) -> None:
        self._capacity = rate.amount
        self._per_second = rate.amount / rate.seconds
        self._level = 0.0
        self._at = time.monotonic()

    def spend(self) -> bool:
        now = time.monotonic()
        self._level = max(0.0, self._level - (now - self._at) * self._per_second) + 1
        self._at = now
        return self._level <= self._capacity

    def refund(self) -> None:
        if self._level:  # an empty bucket, the usual case, is left as it is
            self._level = max(0.0, self._level - 1)


class HeaderBlockScanner:
    """Follows the frame headers of a connection's input (RFC 9113 §4.1) a feed ahead of h2, to stop a header
    block larger than ``grpc.max_header_list_bytes`` before h2 buffers and decodes it.

    h2 checks the header list size only once a block is complete and being HPACK-decoded, and takes up to 64
    CONTINUATION frames (about 1 MiB); pure-Python Huffman decoding costs about 0.25 µs a byte, so one such
    block would hold the event loop for a quarter of a second. Encoded headers are no larger than the header
    list they decode to (HPACK never makes a literal longer than it is, and the list counts 32 bytes more per
    field), so a block larger than the list limit, padding aside, is refused as such.
    """

    __slots__ = ("_block", "_head", "_max", "_payload", "_preface")

    def __init__(self, max_list_bytes: int) -> None:
        self._max = max_list_bytes + _MAX_PADDING
        self._preface = len(_PREFACE)  # bytes of the client preface still to come
        self._head = b""  # a frame header split between two feeds
        self._payload = 0  # bytes of the current frame's payload still to come
        self._block = 0  # bytes of the header block in progress

    def scan(self, data: bytes) -> bool:
        """Follow ``data``; ``False`` once a header block grows larger than allowed.

        Run on every read, so the loop does per frame only what the limit needs: one unpack of the frame
        header's first word (length and type), and the rest only for HEADERS and CONTINUATION.
        """
        end = len(data)
        pos = 0
        if self._preface:
            pos = min(self._preface, end)
            self._preface -= pos
        if self._head:  # a frame header split between two feeds: joined to this one (a copy, rarely)
            data, pos = self._head + data[pos:], 0
            end = len(data)
            self._head = b""
        pos += self._payload  # the rest of a payload begun in an earlier feed
        unpack, size, block, limit = _FRAME_WORD.unpack_from, FRAME_HEADER_BYTES, self._block, self._max
        while pos + size <= end:
            (word,) = unpack(data, pos)
            kind = word & 0xFF
            if kind == _HEADERS or kind == _CONTINUATION:
                block = (word >> 8) + (block if kind == _CONTINUATION else 0)
                if block > limit:
                    return False
                if data[pos + 4] & _END_HEADERS:
                    block = 0
            pos += size + (word >> 8)
        self._block = block
        if pos >= end:
            self._payload = pos - end
        else:
            self._payload = 0
            self._head = data[pos:]  # fewer bytes than a frame header
        return True
