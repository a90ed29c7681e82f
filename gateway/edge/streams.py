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


async def _watch_disconnect(receive: Receive, stream: ListenStream[Any], left: asyncio.Event) -> None:
    """Wait for the client to leave, then close the stream: the reader wakes and ends by itself."""
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()
    await stream.aclose()


async def _keep_alive(send: Send, fmt: StreamFormat, interval: float, last_sent: list[float]) -> None:
    """Send a keep-alive whenever ``interval`` seconds pass without a message."""
    loop = asyncio.get_running_loop()
    while True:
        wait = last_sent[0] + interval - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        last_sent[0] = loop.time()
        await _body(send, fmt.keepalive)


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

    Two helper tasks per stream, none per message (10,000 listeners make one write 10,000 wake-ups, not
    30,000 task creations): one watches for ``http.disconnect`` and closes the stream, which ends the read
    below; one sends keep-alives during silence.
    """
    left = asyncio.Event()
    loop = asyncio.get_running_loop()
    last_sent = [loop.time()]
    helpers: list[asyncio.Task[None]] = []
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
        helpers.append(asyncio.create_task(_watch_disconnect(receive, stream, left)))
        helpers.append(asyncio.create_task(_keep_alive(send, fmt, keepalive, last_sent)))
        while True:
            try:
                item = await stream.__anext__()
            except StopAsyncIteration:
                break
            except GatewayError as exc:
                if not left.is_set():
                    await _body(send, fmt.error(exc))
                break
            except Exception:
                log.exception("stream of %s failed", method)
                await _body(send, fmt.error(internal_error()))
                break
            if left.is_set():
                return
            last_sent[0] = loop.time()
            await _body(send, fmt.frame(item, encode, stream.position))
        if not left.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:  # the connection broke under a send
        pass
    finally:
        for task in helpers:
            task.cancel()
        for task in helpers:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await stream.aclose()


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})
