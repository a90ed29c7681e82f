"""The process's logging: records and lines are handed to one writer thread, which writes them in batches.

Formatting and the write to stderr (which blocks when the reader is slow) happen off the event loop
(logging cookbook, "Dealing with handlers that block"): a profile put the access log's synchronous write at
~20% of a request's time on the loop. The writer wakes at most once per :data:`LINGER_SECONDS` and writes
all it was handed since it last looked with one ``write`` and one ``flush``: one record per call under load
(the access log) would otherwise cost a wake-up of the writer and a system call per call, each fighting the
event loop for the GIL (:class:`LogWriter`).

Access lines take a shorter way (:func:`write_info`) when the process logs through the gateway's own writer
in ``text`` and nothing else listens: the line is made on the loop (one f-string and, per second, one
``strftime``) and handed to the writer as a string, with no :class:`logging.LogRecord` and no trip through
the logging machinery; the writer only joins and writes. Whenever a handler or filter is attached anywhere
between the access logger and the root (tests, embedders), records go the usual way. A ``json`` line
takes a like way (:func:`line_sink`, then :meth:`_Sink.write_json`).

Formats (``logging.format``): ``text`` (:class:`TextFormatter`, the time first) or ``json``
(:class:`JsonFormatter`, one object a line). Every record made during a call carries the call's request id
(:class:`RequestIdFilter`): error lines name the call they belong to.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Any, Literal, TextIO

import orjson

from gateway.observability.calls import current_request_id

#: How long the writer waits, once woken, for more lines to write with the same ``write``: a line reaches
#: stderr at most this late.
LINGER_SECONDS = 0.02


class Formatter(logging.Formatter):
    """``room-gateway: http listening on 127.0.0.1:8080``; warnings and errors name their level."""

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        text = f"{record.name}: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


#: The last second formatted by :func:`_timestamp` and its text (one ``strftime`` per second, not per line),
#: and the last millisecond and its whole text (under load, lines come several a millisecond). Each one
#: tuple: read whole, whichever thread wrote it last.
_second: tuple[int, str] = (-1, "")
_millisecond: tuple[int, str] = (-1, "")


#: ``.000Z`` … ``.999Z``: a line's milliseconds, formatted once.
_MILLISECONDS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _timestamp(created: float) -> str:
    """``2026-12-01T10:00:00.123Z`` (UTC, milliseconds) of a record's time."""
    return _milliseconds_text(int(created * 1000))


def _now() -> str:
    """:func:`_timestamp` of now, for a line made without a record."""
    # time_ns: integer milliseconds without int() of a float (a type call: ~1k instructions a line).
    return _milliseconds_text(time.time_ns() // 1_000_000)


def _milliseconds_text(milliseconds: int) -> str:
    """:func:`_timestamp` of milliseconds since the epoch."""
    global _second, _millisecond
    last, text = _millisecond
    if last == milliseconds:
        return text
    whole, fraction = divmod(milliseconds, 1000)
    second, text = _second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    text += _MILLISECONDS[fraction]
    _millisecond = (milliseconds, text)
    return text


class TextFormatter(Formatter):
    """:class:`Formatter`'s line after its time; a warning or error made during a call ends with the
    call's ``request_id=`` (an access line has it already)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id and record.levelno >= logging.WARNING:
            first, newline, rest = text.partition("\n")
            text = f"{first} request_id={request_id}{newline}{rest}"
        return f"{_timestamp(record.created)} {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message``, the call's ``request_id``,
    ``exception`` (a traceback's text), and an access line's fields
    (:func:`gateway.edge.accesslog.write_access_line`)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        else:
            request_id = getattr(record, "request_id", None)
            if request_id:
                line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted by the handler, while the traceback was alive
            line["exception"] = record.exc_text
            record.exc_text = None  # written here, not appended by the writer
        return orjson.dumps(line, default=str).decode()


class RequestIdFilter(logging.Filter):
    """Puts the running call's request id on every record (``record.request_id``; ``None`` outside calls).

    It runs where the record is made, in the call's task, so it reads the call's context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class _WriterHandler(logging.Handler):
    """Hands records to the writer unformatted; the writer formats them on its own thread. Records with a
    traceback are formatted here, while the traceback is still alive (as
    ``logging.handlers.QueueHandler.prepare`` does).
    """

    def __init__(self, writer: LogWriter) -> None:
        super().__init__()
        self.writer = writer
        self.put = writer.put

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.stack_info:
            formatter = logging.Formatter()
            parts = [formatter.formatException(record.exc_info)] if record.exc_info else []
            if record.stack_info:
                parts.append(formatter.formatStack(record.stack_info))
            record.exc_text = "\n".join(parts)
            record.exc_info = record.stack_info = None
        self.put(record)


class LogWriter:
    """The writer thread: formats what it was handed and writes it with one write and one flush.

    Lines and records are appended to a list (no lock, no queue, no per-turn hand-over: ``append``, and
    the writer's slice and delete of what it found, are each atomic, and only the writer removes). Lines
    are joined in one ``join``; records among them are formatted first (the join's ``TypeError`` says
    so). The writer is woken only by the first item after it last looked, then sleeps
    :data:`LINGER_SECONDS` before it takes them all, and keeps doing so while each round finds lines (no
    wake-up asked of the event loop meanwhile): under load that is one GIL hand-over and one ``write`` per
    period, where a queue wakes the writer once per hand-over (strace: a futex storm of
    ~1,200 calls a second, which cost the access log ~20% of a GET's throughput), and a lock taken per line
    cost the event loop a lock round trip per call. The wake-up is a plain lock released by whoever finds
    the writer asleep (a ``threading.Event``'s ``set`` and ``wait`` run a condition variable's Python code
    each time: several thousand instructions per wake-up, on the loop).

    :param stream: where lines go (stderr).
    :param formatter: formats each record.
    """

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        self.stream = stream
        self.formatter = formatter
        self._held: list[logging.LogRecord | str] = []
        self._wake = threading.Lock()  # held while the writer may sleep: released to wake it
        self._wake.acquire()
        self._awake = False  # woken, and not yet taking what was handed over
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="room-gateway log writer", daemon=True)

    def put(self, item: logging.LogRecord | str) -> None:
        """Hand the writer a record, or a line formatted already (:func:`line_sink`), in order."""
        self._held.append(item)
        # Wake the writer unless it is awake already (it says it is not, then drains to empty, so an item
        # appended after that is taken now or by the next wake-up). Not "the list's length is 1": two
        # threads appending at once would both see 2, and their lines would wait for the next item.
        # (write_info appends and checks the same way, without this call.)
        if not self._awake:
            self.wake()

    def wake(self) -> None:
        """Wake the writer, asleep since it last found nothing held (an item was just appended)."""
        self._awake = True
        self._release()

    def _release(self) -> None:
        try:
            self._wake.release()
        except RuntimeError:  # released already: another thread woke the writer at the same moment
            pass

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is held, then end the thread."""
        self._stopping = True
        self._release()
        self._thread.join()
        self._write(self._take())  # what other threads handed over while the writer ended

    def _take(self) -> list[logging.LogRecord | str]:
        # One slice and one delete, each a single C operation under the GIL: what other threads append
        # meanwhile lands after the first ``count`` items and stays for the next round (they found the
        # writer awake, or woke it). Item by item, the take was ~0.7k instructions a line.
        held = self._held
        count = len(held)
        items = held[:count]
        del held[:count]
        return items

    def _run(self) -> None:
        while not self._stopping:
            self._wake.acquire()
            # Awake while lines keep coming: a round per LINGER_SECONDS with no wake-up asked of whoever
            # puts (a wake-up is a lock release on the loop and one more GIL hand-over here: ~4k
            # instructions a round, where a round under valgrind's pace is a few lines).
            while not self._stopping:
                time.sleep(LINGER_SECONDS)
                items = self._take()
                if not items:
                    break
                self._write(items)
            # Said before taking: an item handed over from now on is taken now or wakes us again.
            self._awake = False
            self._write(self._take())

    def _format(self, record: logging.LogRecord) -> str:
        try:
            text = self.formatter.format(record)
        except Exception:  # a bad format string or argument: say so instead of losing the writer
            text = f"{record.name}: ERROR: unformattable log record {record.msg!r}"
        if record.exc_text:
            text += "\n" + record.exc_text
        return text

    def _write(self, items: list[logging.LogRecord | str]) -> None:
        if not items:
            return
        items.append("")  # the last line's newline, in the same join
        try:
            text = "\n".join(items)  # type: ignore[arg-type]  # records among them: TypeError, below
        except TypeError:  # records among the lines: formatted here, off the event loop
            text = "\n".join([item if isinstance(item, str) else self._format(item) for item in items])
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nothing left to tell
            pass


def configure_logging(level: str, format: Literal["text", "json"] = "text") -> LogWriter:
    """Log at ``level`` in ``format`` through a :class:`LogWriter` on stderr; the caller stops it at exit
    (which writes what is held)."""
    # The formatter names neither caller, thread nor process: don't collect them per record (logging
    # HOWTO, "Optimization"; finding the caller walks the stack).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    writer = LogWriter(sys.stderr, JsonFormatter() if format == "json" else TextFormatter())
    handler = _WriterHandler(writer)
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    global _sink
    _sink = _Sink(handler, "json" if format == "json" else "text")
    writer.start()
    return writer


#: Per logger name, what follows a second's text in a ``text`` line's head: ``.000Z name: `` …
#: ``.999Z name: `` (made once per logger, for the few loggers whose lines take :func:`line_sink`'s way).
_HEAD_TAILS: dict[str, tuple[str, ...]] = {}


def _head_tails(name: str) -> tuple[str, ...]:
    tails = _HEAD_TAILS.get(name)
    if tails is None:
        tails = _HEAD_TAILS[name] = tuple(f"{fraction} {name}: " for fraction in _MILLISECONDS)
    return tails


class _Sink:
    """Where :func:`write_info` and :func:`line_sink` hand lines: the gateway's handler and writer, and how
    the writer formats."""

    __slots__ = ("_head", "_held", "_writer", "format", "handler", "handlers")

    def __init__(self, handler: _WriterHandler, format: Literal["text", "json"]) -> None:
        self.handler = handler
        #: What the root's handlers are while lines may take this way (compared as a list: one C call).
        self.handlers: list[logging.Handler] = [handler]
        self.format = format
        #: The writer, and the list it takes lines from (appended to by :func:`write_info` itself).
        self._writer = handler.writer
        self._held = handler.writer._held
        #: The current second's head: where it began on the monotonic clock (``time.perf_counter``), its
        #: text, the logger's tails, the logger's name (one tuple, replaced whole).
        self._head: tuple[float, str, tuple[str, ...], str] = (-math.inf, "", (), "")

    def _new_head(self, logger: logging.Logger) -> str:
        """:func:`write_info`'s head of a line of ``logger`` in a second (or of a logger) not kept: the
        wall clock read, and the second's text made, once a second."""
        now, wall = time.perf_counter(), time.time()
        second = math.floor(wall)
        start = now - (wall - second)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        tails = _head_tails(logger.name)
        self._head = (start, text, tails, logger.name)
        return text + tails[min(999, math.floor((now - start) * 1000.0))]

    def write_json(self, logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
        """Write what ``logger.info(message, extra={"access": fields})`` would (``json``: JsonFormatter's
        line of a record with ``access`` fields)."""
        line = {"time": _now(), "level": "info", "logger": logger.name, "message": message}
        line.update(fields)
        self.handler.put(orjson.dumps(line, default=str).decode())


_sink: _Sink | None = None


_INFO = logging.INFO


def write_info(logger: logging.Logger, message: str, now: float | None = None) -> bool:
    """Write what ``logger.info(message)`` would, as a ``text`` line made here with no
    :class:`logging.LogRecord` (``TextFormatter``'s line: time, logger, message), when the gateway's writer
    alone would handle it (:func:`line_sink`) in ``text`` and INFO is enabled for ``logger``; else write
    nothing and return ``False`` (the caller logs the usual way, or not at all).

    Checked per line, so a handler, filter, level or ``logging.disable`` set later applies from the next
    line on. The usual shape — ``logger`` right under the root with nothing attached, the root's handlers
    exactly the writer's, INFO enabled — is checked in one expression; the call is the line's one frame
    here (the level, the check, the head and the hand-over to the writer were a call each: ~1k
    instructions of the line in all).

    The line's head — ``2026-12-01T10:00:00.123Z room_gateway.access: `` — comes from the second's text
    and the logger's millisecond tails, kept; the wall clock is read once a second: within it, a line's
    millisecond is the monotonic clock's time since (float arithmetic and an index, where a millisecond's
    text from ``time_ns`` per line was ~2.5k instructions). A wall clock set forward or back shows from the
    next second on.

    :param now: ``time.perf_counter()`` read by the caller just before (the end of the call the line is
        about), for one clock reading less.
    """
    sink = _sink
    if sink is None:
        return False
    # isEnabledFor(INFO) (``disabled`` checked below) from the level cache it keeps, which setLevel and
    # logging.disable clear (private, in CPython since 3.7; half the call's ~0.8k instructions) — by a
    # subscript, not ``get`` (a method call more, ~0.2k).
    try:
        enabled = logger._cache[_INFO]  # type: ignore[attr-defined]
    except KeyError:
        enabled = logger.isEnabledFor(_INFO)
    root = logging.root
    if not (
        enabled
        and logger.parent is root
        and not (logger.handlers or logger.filters or logger.disabled or root.filters)
        and logger.propagate
        and root.handlers == sink.handlers
        and sink.format == "text"
    ) and (sink.format != "text" or line_sink(logger) is not sink or not logger.isEnabledFor(_INFO)):
        return False
    start, text, tails, name = sink._head
    into = ((time.perf_counter() if now is None else now) - start) * 1000.0
    if 0.0 <= into < 1000.0 and name == logger.name:
        line = f"{text}{tails[into.__floor__()]}{message}"  # one string made, head and message
    else:
        line = sink._new_head(logger) + message
    # LogWriter.put, without its call: appended, then the writer woken unless it is awake already.
    sink._held.append(line)
    writer = sink._writer
    if not writer._awake:
        writer.wake()
    return True


def line_sink(logger: logging.Logger) -> _Sink | None:
    """The gateway's own writer when it alone would handle ``logger``'s INFO records, else ``None``.

    That is: :func:`configure_logging` made it, its handler is the root's only one, and neither ``logger``
    nor any logger between it and the root has a handler or a filter of its own or stops propagation
    (the caller has checked ``logger.isEnabledFor(INFO)``). Checked per line: a handler attached later
    (a test's, an embedder's) gets its records again from the next line on.
    """
    sink = _sink
    if sink is None:
        return None
    root = logging.root
    if (  # the usual shape, checked in one expression: the logger right under the root, nothing attached
        logger.parent is root
        and not (logger.handlers or logger.filters or logger.disabled or root.filters)
        and logger.propagate
        and root.handlers == sink.handlers
    ):
        return sink
    current: logging.Logger | None = logger
    while current is not None and current.parent is not None:  # up to the root, which has none
        if current.handlers or current.filters or current.disabled or not current.propagate:
            return None
        current = current.parent
    if root.filters or root.handlers != sink.handlers:
        return None
    return sink
