"""Server streams over HTTP/1.1: Server-Sent Events by default, NDJSON on ``Accept: application/x-ndjson``.

SSE (https://html.spec.whatwg.org/multipage/server-sent-events.html): each message is ``data: <json>``
(with ``id: <version>`` for a Variable, so a client sees where it is), a comment line ``: keep-alive``
every ``keepalive`` seconds of silence, and an ``event: error`` whose data is the native error body when
the stream ends with an error (a deleted room, invalidated connections, a shutdown).

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
from typing import Any

from starlette.types import Receive, Send

from gateway.core.service import ListenStream
from gateway.edge.responses import dumps, error_bytes, internal_error
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


class StreamFormat:
    """How one stream's messages are framed."""

    def __init__(self, media_type: str, id_field: str | None) -> None:
        self.media_type = media_type
        self.sse = media_type == SSE
        self.id_field = id_field

    def message(self, encoded: dict[str, Any]) -> bytes:
        if not self.sse:
            return dumps({"result": encoded}) + b"\n"
        data = b"data: " + dumps(encoded) + b"\n\n"
        if self.id_field is not None and self.id_field in encoded:
            return b"id: " + str(encoded[self.id_field]).encode("ascii") + b"\n" + data
        return data

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


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def pump(
    stream: ListenStream[Any],
    encode: Callable[[Any], dict[str, Any]],
    fmt: StreamFormat,
    receive: Receive,
    send: Send,
    keepalive: float,
    method: str,
) -> None:
    """Send ``stream`` as the body of a 200 response until it ends or the client leaves; close it always."""
    disconnect = asyncio.ensure_future(_disconnected(receive))
    pending: asyncio.Future[Any] | None = None
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
        while True:
            if pending is None:
                pending = asyncio.ensure_future(stream.__anext__())
            done, _ = await asyncio.wait(
                (pending, disconnect), timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
            )
            if disconnect in done:
                return
            if pending not in done:
                await _body(send, fmt.keepalive)
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                break
            except GatewayError as exc:
                await _body(send, fmt.error(exc))
                break
            except Exception:
                log.exception("stream of %s failed", method)
                await _body(send, fmt.error(internal_error()))
                break
            await _body(send, fmt.message(encode(item)))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:  # the connection broke under a send
        pass
    finally:
        # The pending __anext__ must be finished before aclose() (an async generator cannot be closed while
        # it runs); cancelling it ends the generator, whose `finally` unsubscribes.
        for task in (pending, disconnect):
            if task is None:
                continue
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
            if not task.cancelled():
                task.exception()  # retrieved: whatever it was, the stream is over
        await stream.aclose()


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})
