"""One call as observability sees it, on either transport: its request id, its outcome, its recorder.

A :class:`Call` is made when a call arrives and is the value of :data:`CURRENT` in the call's task (both
transports run each call in a task of its own), so that whatever runs on its behalf can add to it — the
edge's error answer notes the status code, a log filter reads the request id — without anything passed
along. A :class:`MethodRecorder` holds the label children of one method, bound once, so finishing a call
costs an ``inc()`` and an ``observe()``.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from prometheus_client import Counter

from gateway.errors import Code
from gateway.observability.metrics import Metrics

#: Most characters of a request id taken from a client (longer ones are replaced by a generated one).
MAX_REQUEST_ID = 128


@dataclass(slots=True)
class Call:
    """What is known of one call while it runs.

    :ivar request_id: taken from a trusted proxy or generated (:class:`~.observer.Observer`).
    :ivar code: the gRPC status name it ended with, when something said so (``None``: from the HTTP status).
    :ivar trace_id: the 32-hex-digit trace id when tracing is on, else ``""``.
    :ivar principal: who the call was authenticated as, when the transport notes it (gRPC: the auth
        listener, :func:`note_principal`); its name goes in the access line.
    """

    request_id: str
    code: str | None = None
    trace_id: str = ""
    principal: object = None


#: The call running in this task, if any.
CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("room_gateway_call", default=None)


def current_request_id() -> str | None:
    """The request id of the call running in this task (``None`` outside calls)."""
    call = CURRENT.get()
    return call.request_id if call is not None else None


def note_code(code: Code) -> None:
    """Note the status the running call answers with (the REST edge calls it as it sends an error)."""
    call = CURRENT.get()
    if call is not None:
        call.code = code.name


def note_principal(principal: object) -> None:
    """Note who the running call is authenticated as (the gRPC auth listener calls it)."""
    call = CURRENT.get()
    if call is not None:
        call.principal = principal


#: The status a REST answer counts with when no code was noted: the usual source of each HTTP status.
_CODE_OF_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    410: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def code_of_status(status: int) -> str:
    """The gRPC status name an HTTP status maps from (``OK`` for 1xx-3xx)."""
    if status < 400:
        return "OK"
    return _CODE_OF_STATUS.get(status) or ("INVALID_ARGUMENT" if status < 500 else "INTERNAL")


class MethodRecorder:
    """The metrics of one method of one surface on one transport, their label children bound once.

    :param metrics: the families.
    :param transport: ``rest`` or ``grpc``.
    :param surface: ``native`` or the surface's name.
    :param method: the proto method name (or a surface's route template).
    """

    __slots__ = ("_by_code", "_labels", "_requests", "duration", "messages", "method", "streams", "surface")

    def __init__(self, metrics: Metrics, transport: str, surface: str, method: str) -> None:
        self.surface = surface
        self.method = method
        self._labels = (transport, surface, method)
        self._requests = metrics.requests
        self._by_code: dict[str, Counter] = {}
        self.duration = metrics.request_duration.labels(*self._labels)
        self.streams = metrics.streams_open.labels(*self._labels)
        self.messages = metrics.stream_messages.labels(*self._labels)

    def finish(self, code: str, seconds: float, streaming: bool = False) -> None:
        """Count a finished call; a unary one's latency goes to the histogram too."""
        counter = self._by_code.get(code)
        if counter is None:  # the first call ending so: bind its child (codes are a closed set)
            counter = self._by_code[code] = self._requests.labels(*self._labels, code)
        counter.inc()
        if not streaming:
            self.duration.observe(seconds)
