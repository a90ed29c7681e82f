"""The gRPC listener's HTTP/2 protocol, with the abuse limits Go, nginx and Envoy added for rapid reset.

grpclib (0.4.9) runs a handler task for every stream a client opens and cancels it when the client resets
the stream, with no count of either: a client opening and resetting streams as fast as it can write them
(CVE-2023-44487, "rapid reset") keeps the one event loop parsing frames and churning tasks, and every other
client waits. h2 advertises and enforces ``SETTINGS_MAX_CONCURRENT_STREAMS`` (100) and a header list size,
but neither helps: a reset stream is no longer open. Neither library offers a hook per frame or per
connection, so this module is the smallest wrapper around grpclib's protocol that adds them
(:class:`GuardedServer` → :class:`GuardedProtocol` → :class:`GuardedEvents`; the values and counters are
in :mod:`gateway.rpc.h2limits`):

- **concurrent streams** (``grpc.max_concurrent_streams``): advertised in the first SETTINGS frame; a
  stream beyond it, or opened while that many handlers still run (reset streams included, as Go counts
  them), is refused with RST_STREAM REFUSED_STREAM, the stream error RFC 9113 §5.1.2 asks for (h2 would end
  the whole connection);
- **reset streams** (``grpc.reset_streams_per_connection``): every stream the client resets before it was
  answered, and every refused stream, costs one from the connection's budget; every answered stream gives
  one back (so a busy connection that cancels some calls never runs dry, as Envoy's ratio of premature
  resets); the budget refills at its rate. Spent: GOAWAY ENHANCE_YOUR_CALM, and the connection is closed;
- **control frames** (``grpc.control_frames_per_connection``): PING and SETTINGS, each of which makes the
  server send an acknowledgement, within a budget of their own (a PING after the server sent data is free,
  as gRPC's own servers count "ping strikes"); spent: the same GOAWAY;
- **header size** (``grpc.max_header_list_bytes``): ``SETTINGS_MAX_HEADER_LIST_SIZE``, enforced by h2's
  HPACK decoder (larger is GOAWAY ENHANCE_YOUR_CALM from h2 itself), and a header block larger than that is
  refused before h2 buffers it (:class:`~gateway.rpc.h2limits.HeaderBlockScanner`);
- **new connections per client IP** (``grpc.new_connections_per_ip``): counted with the rate-limit policy's
  strategy (:class:`gateway.ratelimit.LocalWindows`, in this process) while rate limiting is on; trusted
  proxies are not counted. A connection over it gets the server preface and GOAWAY ENHANCE_YOUR_CALM, and is
  closed before any stream is read. A connection closed for abuse (or a protocol error) uses up its
  address's allowance, so an abuser's reconnections are refused until the window lets it in again.

Input is also handed to h2 :data:`FEED_BYTES` at a time, one slice per turn of the event loop with the
budgets checked in between: one read of 256 KiB of tiny frames would otherwise be parsed in one go (tens
of milliseconds of a blocked event loop, h2 takes some 50 µs a frame) before any limit could act, and
before any other connection is served. A protocol error's GOAWAY, which h2 prepares and grpclib drops by
closing the transport first, is sent; and every final GOAWAY is followed by a lingering close
(:class:`LingeringTransport`), so that it reaches the client.

A request whose ``grpc-timeout`` is not one (:func:`gateway.rpc.wire.timeout_refusal`) is answered here too,
INVALID_ARGUMENT, trailers-only, before a handler task is made: grpclib would answer it UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from asyncio import Transport
from collections import deque
from collections.abc import Callable, Collection
from typing import Any, cast

from grpclib.config import Configuration
from grpclib.encoding.base import GRPC_CONTENT_TYPE
from grpclib.metadata import encode_grpc_message
from grpclib.protocol import AbstractHandler, Connection, EventsProcessor, H2Protocol
from grpclib.server import Handler, Server
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import PingReceived, RemoteSettingsChanged, RequestReceived, StreamReset
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings

from gateway.coalesce import CoalescingTransport
from gateway.errors import GatewayError
from gateway.rpc.h2limits import FRAME_HEADER_BYTES, Admission, Budget, HeaderBlockScanner, Http2Limits
from gateway.rpc.headerblocks import ServerConnection
from gateway.rpc.wire import MessageStream, ReplyStream, timeout_refusal

log = logging.getLogger(__name__)

#: Bytes handed to h2 at once, one slice per turn of the event loop; the budgets are checked in between.
FEED_BYTES = 8 * 1024
_FRAMES_PER_FEED = FEED_BYTES // FRAME_HEADER_BYTES + 1
#: Seconds a connection closed after a final GOAWAY stays half-open, its input dropped (LingeringTransport).
LINGER_SECONDS = 1.0


class LingeringTransport(CoalescingTransport):
    """A connection's transport, its writes coalesced (:class:`~gateway.coalesce.CoalescingTransport`: a
    unary answer's three frames in one send), whose ``close()`` can linger: after a final GOAWAY it
    half-closes (FIN once the GOAWAY is written) and closes only :data:`LINGER_SECONDS` later, or when the
    client closes first.

    Closing a socket whose peer is still sending makes the kernel answer with a TCP reset, and a reset makes
    the peer's kernel drop what it had not read yet: the GOAWAY telling the client why (nginx's
    ``lingering_close`` does the same). What arrives meanwhile is read and dropped unparsed.

    One class rather than a wrapper around the coalescing one: grpclib asks ``is_closing()`` a few times a
    call, and each layer of wrapping was one more Python call to answer it.
    """

    __slots__ = ("closed", "linger")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport, loop)
        self.linger = False
        #: ``close()`` was called: what the connection reads from now on is dropped unparsed.
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed or self._transport.is_closing()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush()
        transport = self._transport
        if not self.linger or transport.is_closing():
            transport.close()
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_SECONDS, transport.close)


class GuardedServer(Server):
    """grpclib's :class:`~grpclib.server.Server` whose connections run :class:`GuardedProtocol`.

    :param limits: the limits of every connection.
    """

    def __init__(self, handlers: Collection[Any], *, limits: Http2Limits, **kwargs: Any) -> None:
        super().__init__(handlers, **kwargs)
        self.limits = limits
        self.admission = Admission(limits)

    def _protocol_factory(self) -> H2Protocol:
        # grpclib's factory makes and tracks the connection's handler (the server's close() cancels its
        # calls); only the protocol around it is ours.
        plain = super()._protocol_factory()
        return GuardedProtocol(plain.handler, plain.config, plain.h2_config, self.limits, self.admission)


class GuardedProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol with this module's limits (one instance per connection)."""

    processor: GuardedEvents
    transport: LingeringTransport

    def __init__(
        self,
        handler: AbstractHandler,
        config: Configuration,
        h2_config: H2Configuration,
        limits: Http2Limits,
        admission: Admission,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self.limits = limits
        self.admission = admission
        self.refused = False
        self._backlog: deque[bytes] = deque()  # input read but not yet handed to h2 (see _feed)
        self._offset = 0  # of the first read in the backlog: where its next slice starts

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        if not self.admission.admits(peer):
            self._refuse(transport)
            return
        # grpclib's connection_made, but for the first SETTINGS frame: it advertises our stream and header
        # limits (and grpclib's stream window) instead of h2's defaults. TCP_NODELAY is asyncio's default.
        advertised = {
            SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_list_bytes,
            SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size,
        }
        h2 = ServerConnection(config=self.h2_config)  # h2's, its header blocks ours (rpc.headerblocks)
        h2.local_settings = Settings(client=False, initial_values=advertised)
        h2.initiate_connection()
        # h2 answers a stream over its MAX_CONCURRENT_STREAMS with a connection error (GOAWAY
        # PROTOCOL_ERROR) where RFC 9113 §5.1.2 asks for a stream error, and it counts while it parses a
        # whole feed, before any event is seen: it is left the advertised count plus the most HEADERS frames
        # one feed can hold, as a backstop, and GuardedEvents refuses the streams beyond the advertised count.
        h2.local_settings = Settings(
            client=False,
            initial_values={
                **advertised,
                SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams + _FRAMES_PER_FEED,
            },
        )
        h2.decoder.max_header_list_size = self.limits.max_header_list_bytes
        window = self.config.http2_connection_window_size - h2.inbound_flow_control_window
        if window:
            h2.increment_flow_control_window(window)
        self.scanner = HeaderBlockScanner(self.limits.max_header_list_bytes)
        self._h2 = h2
        self.transport = LingeringTransport(transport, asyncio.get_running_loop())
        self.connection = Connection(h2, cast(Transport, self.transport), config=self.config)
        self.connection.flush()
        self.connection.initialize()
        self.processor = GuardedEvents(
            cast(Handler, self.handler),  # made by grpclib's Server._protocol_factory (GuardedServer)
            self.connection,
            h2,
            self.transport,
            self.limits,
            self.admission,
            peer,
        )

    def _refuse(self, transport: Any) -> None:
        self.refused = True
        h2 = H2Connection(config=self.h2_config)
        h2.initiate_connection()
        h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"too many new connections from this address")
        transport.write(h2.data_to_send())
        self.transport = LingeringTransport(transport, asyncio.get_running_loop())
        self.transport.linger = True
        self.transport.close()
        self.handler.close()  # grpclib's server forgets a closed handler with no calls

    def data_received(self, data: bytes) -> None:
        if self.transport.closed:
            return  # refused, or after a final GOAWAY: read (lingering) and dropped unparsed
        if self._backlog:  # the transport was paused, but a read can be under way (TLS)
            self._backlog.append(data)
        elif len(data) <= FEED_BYTES:  # the usual read: one slice, nothing to hold back
            self._parse(data)
        else:
            self._backlog.append(data)
            self.transport.pause_reading()
            self._feed()

    def _feed(self) -> None:
        """Hand the backlog to h2 a :data:`FEED_BYTES` slice per turn of the event loop, reading paused
        until the last slice: a flood of small frames shares the loop with every other connection. Each
        byte is copied once, into its slice (a read of 256 KiB is not re-sliced at every turn)."""
        backlog = self._backlog
        if not self.transport.closed:
            data, start = backlog[0], self._offset
            end = start + FEED_BYTES
            if end < len(data):
                self._offset = end
            else:
                backlog.popleft()
                self._offset = 0
            self._parse(data[start:end])  # the read itself when it is the whole of it
        if self.transport.closed:
            backlog.clear()  # closed for abuse: the rest is not even parsed
            self._offset = 0
        if backlog:
            asyncio.get_running_loop().call_soon(self._feed)
        else:
            self.transport.resume_reading()  # closing too: what a lingering close reads is dropped

    def _parse(self, chunk: bytes) -> None:
        if not self.scanner.scan(chunk):
            self.processor.calm_down("header bytes in one block")
            return
        try:
            events = self._h2.receive_data(chunk)  # grpclib's Connection.feed, one call fewer
        except (ProtocolError, UnicodeDecodeError) as exc:  # UnicodeDecodeError: a header not ASCII
            self.processor.protocol_error(exc)
            return
        self.connection.flush()
        for event in events:
            self.processor.process(event)
        self.connection.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.refused:
            super().connection_lost(exc)


class GuardedEvents(EventsProcessor):
    """grpclib's HTTP/2 event processor, counting streams, resets and control frames of one connection.

    :param handler: grpclib's handler of the connection's calls (its task per stream is watched).
    :param h2: the connection's h2 state machine.
    :param transport: the connection's transport.
    """

    handler: Handler

    def __init__(
        self,
        handler: Handler,
        connection: Connection,
        h2: H2Connection,
        transport: LingeringTransport,
        limits: Http2Limits,
        admission: Admission,
        peer: object,
    ) -> None:
        super().__init__(handler, connection)
        self.h2 = h2
        self.transport = transport
        self.limits = limits
        self.admission = admission
        self.peer = peer
        self.peer_name = _address(peer)
        self.running = 0
        self._resets = Budget(limits.reset_streams)
        self._control = Budget(limits.control_frames)
        self._data_at_ping = 0  # the connection's bytes of DATA sent, at the last PING
        mapping = getattr(handler, "mapping", {})  # grpclib.server.Handler: path -> const.Handler
        self._unary = {path: not h.cardinality.client_streaming for path, h in mapping.items()}
        self._streaming = {path for path, h in mapping.items() if h.cardinality.server_streaming}

    def process_request_received(self, event: RequestReceived) -> None:
        if self.running >= self.limits.max_concurrent_streams:
            with contextlib.suppress(StreamClosedError):  # the client reset it already
                self.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            self._spend_reset()
            return
        headers: list[tuple[str, str]] = event.headers  # type: ignore[assignment]  # decoded: header_encoding
        fields = dict(headers)  # as grpclib reads them: the last of a name counts
        if "grpc-timeout" in fields:  # grpclib takes the shortest of all of them: each must be one
            for name, value in headers:
                if name == "grpc-timeout" and (refusal := timeout_refusal(value)) is not None:
                    self._answer(event.stream_id, refusal)
                    return
        path = fields.get(":path", "")
        stream = (ReplyStream if path in self._streaming else MessageStream)(
            self.connection,
            self.h2,
            self.transport,
            stream_id=event.stream_id,
            max_message_bytes=self.limits.max_message_bytes,
            encoding=fields.get("grpc-encoding"),
            unary=self._unary.get(path, True),
            answered=self._resets.refund,
        )
        release = self.register(stream)
        self.running += 1
        self.handler.accept(stream, headers, release)
        # Counted while its handler task runs, however it ends. And a task cancelled before it started
        # never runs the ``finally`` that releases its stream (grpclib would keep it, and its unread
        # flow-control credit, until the connection ends): released then, when the task ends.
        ended = functools.partial(self._ended, event.stream_id, stream, release)
        self.handler._tasks[stream].add_done_callback(ended)

    def _ended(
        self, stream_id: int, stream: MessageStream, release: Callable[[], None], _task: object
    ) -> None:
        self.running -= 1
        if self.streams.get(stream_id) is stream:  # not released by the handler's ``finally``
            release()

    def _answer(self, stream_id: int, error: GatewayError) -> None:
        """Answer a stream at once with ``error`` (trailers-only, no handler run), then reset it NO_ERROR if
        the client may still send on it, as grpclib answers the requests it refuses before any call."""
        with contextlib.suppress(StreamClosedError):  # the client reset it already
            self.h2.send_headers(
                stream_id,
                [
                    (":status", "200"),
                    ("content-type", GRPC_CONTENT_TYPE),
                    ("grpc-status", str(error.code.value)),
                    ("grpc-message", encode_grpc_message(error.message)),
                ],
                end_stream=True,
            )
            stream = self.h2.streams.get(stream_id)
            if stream is not None and not stream.closed:
                self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def process_stream_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        super().process_stream_reset(event)
        if (
            event.remote_reset
            and isinstance(stream, MessageStream)
            and not stream.answered
            and not self.connection.is_closing()
        ):
            self._spend_reset()

    def process_ping_received(self, event: PingReceived) -> None:
        # As gRPC's own servers count "ping strikes": a PING after the server sent data is free (a client
        # measuring the bandwidth-delay product pings as data arrives); only the others cost one.
        sent = self.connection.data_sent
        if sent != self._data_at_ping:
            self._data_at_ping = sent
            return
        if not self._control.spend():
            self.calm_down("PING and SETTINGS frames")

    def process_remote_settings_changed(self, event: RemoteSettingsChanged) -> None:
        super().process_remote_settings_changed(event)
        if not self._control.spend():
            self.calm_down("PING and SETTINGS frames")

    def _spend_reset(self) -> None:
        if not self._resets.spend():
            self.calm_down("reset or refused streams")

    def calm_down(self, what: str) -> None:
        """Send GOAWAY ENHANCE_YOUR_CALM ("too many …") and close the connection (its calls are cancelled)."""
        if self.connection.is_closing():
            return
        log.warning(
            "grpc: too many %s from %s: GOAWAY ENHANCE_YOUR_CALM, connection closed", what, self.peer_name
        )
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, f"too many {what}".encode())
        self._end()

    def protocol_error(self, exc: Exception) -> None:
        """Close the connection after the GOAWAY h2 prepared for ``exc`` (grpclib would drop it)."""
        if isinstance(exc, UnicodeDecodeError):  # grpclib decodes headers as ASCII; h2 prepared nothing
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR, b"headers must be ASCII")
        log.info("grpc: HTTP/2 protocol error from %s: %s; connection closed", self.peer_name, exc)
        self._end()

    def _end(self) -> None:
        self.connection.flush()
        self.transport.linger = True
        self.admission.penalize(self.peer)
        # grpclib's close(), but for the reason it gives each stream: a call ended with a reason is logged by
        # grpclib ("Request was cancelled: …"), a hundred lines for one abusive connection; cancelled as a
        # task, it is not (the access log still writes its line, CANCELLED).
        self.connection.close()
        self.handler.close()
        if hasattr(self, "processors"):
            del self.processors  # grpclib's mark of a closed processor: later events are dropped


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer or "-")
