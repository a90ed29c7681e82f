"""Server streams over HTTP/1.1: Server-Sent Events by default, NDJSON on ``Accept: application/x-ndjson``.

SSE (https://html.spec.whatwg.org/multipage/server-sent-events.html): a resumable stream (ListenRoom,
ListenEvents) opens with a ``retry:`` hint (how long a disconnected ``EventSource`` waits before
reconnecting: soon, since it loses nothing); each message is ``data: <json>``
with an ``id:`` saying where the client is — ``<epoch>:<seq>`` for a Change or a logged Event
(ListenRoom, ListenEvents), which a reconnecting ``EventSource`` sends back as ``Last-Event-ID`` to resume
(:func:`resume_position`), ``<version>`` for a Variable; a message without a position (a live-only
event) has no ``id:``, so the last one stays the client's. A comment line ``: keep-alive`` comes every
``keepalive`` seconds of silence, and an ``event: error`` whose data is the native error body when the
stream ends with an error (a deleted room, invalidated connections, a shutdown).

NDJSON follows grpc-gateway's server-streaming shape: one ``{"result": <message>}`` per line and a last
``{"error": {...}}`` line on error; an empty line is the keep-alive (ndjson-spec: parsers may ignore
empty lines).

Whatever ends the stream — its end, an error, the client's ``http.disconnect``, or the server cancelling
the task — :meth:`ListenStream.aclose <gateway.core.service.ListenStream.aclose>` runs, so no subscription
and no task is left behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from starlette.types import Receive, Send

from gateway.core.service import ListenStream
from gateway.edge.cycle import Cycle
from gateway.edge.responses import dumps, error_bytes, internal_error
from gateway.errors import GatewayError, InvalidArgument

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
#: The SSE ``retry:`` hint (milliseconds): reconnect soon, the position makes it lossless.
RETRY_MS = 1000
#: The largest seq (``after_seq`` is an int64): a larger one would reach the store, which cannot take it.
MAX_SEQ = 2**63 - 1


def resume_position(last_event_id: str) -> dict[str, Any]:
    """The request fields (``after_seq``, ``epoch``) of a ``Last-Event-ID`` header: ``<epoch>:<seq>``.

    :raises InvalidArgument: not such a position.
    """
    epoch, colon, seq = last_event_id.strip().rpartition(":")
    digits = seq.isascii() and seq.isdigit() and len(seq) <= 19  # the length before int(): no long number
    if not colon or not epoch or not digits or int(seq) > MAX_SEQ:
        raise InvalidArgument(
            f"Last-Event-ID must be <epoch>:<seq> as the stream sent it, not {last_event_id!r}"
        )
    return {"after_seq": int(seq), "epoch": epoch}


class StreamFormat:
    """How one stream's messages are framed.

    One write reaches every listener of a variable with the *same* notification object, so the framed bytes
    of the last item are kept per format: thousands of listeners encode it once, not once each.
    """

    _last: ClassVar[dict[tuple[str, str | None], tuple[object, str | None, bytes]]] = {}

    def __init__(self, media_type: str, id_field: str | None, *, resumable: bool = False) -> None:
        self.media_type = media_type
        self.sse = media_type == SSE
        self.id_field = id_field
        self.resumable = resumable
        self._key = (media_type, id_field)

    def frame(
        self, item: object, encode: Callable[[Any], dict[str, Any]], position: str | None = None
    ) -> bytes:
        """The framed bytes of ``item`` (at log ``position``, its SSE id), reusing the last framing when it
        is the same object at the same position."""
        last = self._last.get(self._key)
        if last is not None and last[0] is item and last[1] == position:
            return last[2]
        framed = self.message(encode(item), position)
        # Holding the item keeps its id from being reused by another object while it is the key.
        self._last[self._key] = (item, position, framed)
        return framed

    def message(self, encoded: dict[str, Any], position: str | None = None) -> bytes:
        if not self.sse:
            return dumps({"result": encoded}) + b"\n"
        data = b"data: " + dumps(encoded) + b"\n\n"
        if position is not None:
            return b"id: " + position.encode() + b"\n" + data
        if self.id_field is not None and self.id_field in encoded:
            return b"id: " + str(encoded[self.id_field]).encode("ascii") + b"\n" + data
        return data

    @property
    def opening(self) -> bytes:
        """What the body starts with: the ``retry:`` hint on a resumable SSE stream, else nothing."""
        return b"retry: %d\n\n" % RETRY_MS if self.sse and self.resumable else b""

    def error(self, error: GatewayError) -> bytes:
        if self.sse:
            return b"event: error\ndata: " + error_bytes(error) + b"\n\n"
        return error_bytes(error) + b"\n"

    @property
    def keepalive(self) -> bytes:
        return b": keep-alive\n\n" if self.sse else b"\n"


def negotiate(accept: str) -> str:
    """NDJSON when the client asks for it, else SSE (the default)."""
    return NDJSON if NDJSON in accept else SSE


class _Watch:
    """Whether the client left; when it does, the stream is closed, which ends the read of the pump.

    On the gateway's own server the connection says so (:attr:`Cycle.on_disconnect
    <gateway.edge.cycle.Cycle.on_disconnect>`, found through ``receive.__self__``); on any other ASGI server
    a task waits for ``http.disconnect`` (:meth:`watch`). A task per stream costs ~9 objects that the
    cyclic collector walks on every full collection, 10,000 streams' worth (bench/RESULTS.md, session 16).
    """

    __slots__ = ("closing", "cycle", "left", "stream", "task")

    def __init__(self, stream: ListenStream[Any], receive: Receive) -> None:
        self.stream = stream
        self.left = False
        self.closing: asyncio.Task[None] | None = None  # the close, started by the connection's callback
        self.task: asyncio.Task[None] | None = None  # the watching task, on other servers
        cycle = getattr(receive, "__self__", None)
        self.cycle = cycle if isinstance(cycle, Cycle) else None  # the gateway's server's
        if self.cycle is None:
            self.task = asyncio.create_task(self.watch(receive))
        elif self.cycle.disconnected:  # gone before the stream began
            self.leave()
        else:
            self.cycle.on_disconnect = self.leave

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self.closing = asyncio.get_running_loop().create_task(self.stream.aclose())

    async def watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left = True
        await self.stream.aclose()

    async def stop(self) -> None:
        """The stream is over: the connection's callback dropped, the watching task ended, the close done."""
        if self.cycle is not None:
            self.cycle.on_disconnect = None
        if self.task is not None:
            self.task.cancel()
        for task in (self.task, self.closing):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass


class _KeepAlive:
    """A keep-alive whenever ``interval`` seconds pass without a message: a timer, re-armed when it fires,
    and a task only while a keep-alive is being sent (one at a time: a client that does not read gets no
    pile of them). The pump notes each message it sends in :attr:`last_sent`."""

    __slots__ = ("chunk", "interval", "last_sent", "loop", "send", "sending", "timer")

    def __init__(self, send: Send, chunk: bytes, interval: float) -> None:
        self.send = send
        self.chunk = chunk
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.last_sent = self.loop.time()
        self.sending: asyncio.Task[None] | None = None
        self.timer = self.loop.call_at(self.last_sent + interval, self._due)

    def _due(self) -> None:
        now = self.loop.time()
        due = self.last_sent + self.interval
        if now < due:  # a message went meanwhile
            self.timer = self.loop.call_at(due, self._due)
            return
        if self.sending is None or self.sending.done():
            self.last_sent = now
            self.sending = self.loop.create_task(_body(self.send, self.chunk))
            self.sending.add_done_callback(_ignore_failure)  # a broken connection: the pump's sends see it
        self.timer = self.loop.call_at(now + self.interval, self._due)

    async def stop(self) -> None:
        self.timer.cancel()
        sending = self.sending
        if sending is not None and not sending.done():
            sending.cancel()
            try:
                await sending
            except (asyncio.CancelledError, Exception):
                pass


def _ignore_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved


async def pump(
    stream: ListenStream[Any],
    encode: Callable[[Any], dict[str, Any]],
    fmt: StreamFormat,
    receive: Receive,
    send: Send,
    keepalive: float,
    method: str,
) -> None:
    """Send ``stream`` as the body of a 200 response until it ends or the client leaves; close it always.

    No task per message (10,000 listeners make one write 10,000 wake-ups, not 30,000 task creations), and
    none beside the stream's own on the gateway's server: the client's leaving closes the stream, which
    ends the read below (:class:`_Watch`); keep-alives come from a timer (:class:`_KeepAlive`).
    """
    watch: _Watch | None = None
    keep: _KeepAlive | None = None
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", fmt.media_type.encode("ascii")),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
                ],
            }
        )
        if fmt.opening:
            await _body(send, fmt.opening)
        watch = _Watch(stream, receive)
        keep = _KeepAlive(send, fmt.keepalive, keepalive)
        loop = keep.loop
        while True:
            try:
                item = await stream.__anext__()
            except StopAsyncIteration:
                break
            except GatewayError as exc:
                if not watch.left:
                    await _body(send, fmt.error(exc))
                break
            except Exception:
                log.exception("stream of %s failed", method)
                await _body(send, fmt.error(internal_error()))
                break
            if watch.left:
                return
            keep.last_sent = loop.time()
            await _body(send, fmt.frame(item, encode, stream.position))
        if not watch.left:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:  # the connection broke under a send
        pass
    finally:
        if keep is not None:
            await keep.stop()
        if watch is not None:
            await watch.stop()
        await stream.aclose()


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})
