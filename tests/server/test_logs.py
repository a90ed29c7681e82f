"""The process's log writer (gateway.logs): every record written, in order, tracebacks included, none lost
at stop — whether logged from the event loop or from another thread."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.logs import LINGER_SECONDS, Formatter, LogWriter, _WriterHandler


@pytest.fixture
def written() -> Iterator[tuple[logging.Logger, LogWriter, io.StringIO]]:
    stream = io.StringIO()
    writer = LogWriter(stream, Formatter())
    handler = _WriterHandler(writer)
    logger = logging.getLogger("room_gateway.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    writer.start()
    try:
        yield logger, writer, stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger's handlers and level, and the gateway's line sink, as they were before the test
    (which sets up the gateway's own logging and stops its writer itself)."""
    from gateway import logs

    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._sink
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logs._sink = saved[2]


def test_records_from_the_event_loop_are_written_in_order(
    written: tuple[logging.Logger, LogWriter, io.StringIO],
) -> None:
    logger, writer, stream = written

    async def calls() -> None:
        for turn in range(50):
            for n in range(20):  # 20 records in one turn of the loop: one batch
                logger.info("call %d.%d", turn, n)
            await asyncio.sleep(0)

    asyncio.run(calls())
    writer.stop()
    lines = stream.getvalue().splitlines()
    assert lines == [f"room_gateway.test_logs: call {t}.{n}" for t in range(50) for n in range(20)]


def test_records_still_held_for_a_loop_turn_are_written_at_stop(
    written: tuple[logging.Logger, LogWriter, io.StringIO],
) -> None:
    logger, writer, stream = written

    async def last_words() -> None:
        logger.warning("the loop ends before its next turn")

    asyncio.run(last_words())  # stopped within the writer's linger
    writer.stop()
    assert stream.getvalue() == "room_gateway.test_logs: WARNING: the loop ends before its next turn\n"


def test_records_from_other_threads_and_tracebacks(
    written: tuple[logging.Logger, LogWriter, io.StringIO],
) -> None:
    logger, writer, stream = written

    def work(n: int) -> None:
        for i in range(100):
            logger.info("thread %d record %d", n, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    logger.info("after")
    writer.stop()
    text = stream.getvalue()
    for n in range(4):
        numbers = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if f"thread {n} record" in line]
        assert numbers == list(range(100))
    assert "room_gateway.test_logs: ERROR: failed\nTraceback (most recent call last):" in text
    assert "ValueError: boom" in text
    assert text.endswith("room_gateway.test_logs: after\n")


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("format", ["text", "json"])
def test_access_lines_without_records_write_what_records_would(
    format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only the gateway's writer listening, an access line is handed over as text (no LogRecord);
    it is the line the record would have made, and a handler attached later gets records again."""
    import gateway.logs as logs
    from gateway.edge.accesslog import AccessLine, log, write_access_line

    fields = AccessLine("http", "GET", "/v1/rooms/x", "GetRoom", "native", 200, "OK", "admin", 0.00124,
                        "127.0.0.1", "00ff00ff00ff00ff")  # fmt: skip
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    monkeypatch.setattr(logs.time, "time", lambda: 1_800_000_000.5)
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_800_000_000_500_000_000)  # lines without records
    monkeypatch.setattr(logs.time, "perf_counter", lambda: 5000.0)  # (text: a head's millisecond)
    monkeypatch.setattr(logging, "_srcfile", logging._srcfile)  # configure_logging changes these
    monkeypatch.setattr(logging, "logThreads", logging.logThreads)
    monkeypatch.setattr(logging, "logProcesses", logging.logProcesses)
    monkeypatch.setattr(logging, "logMultiprocessing", logging.logMultiprocessing)
    writer = logs.configure_logging("info", format)  # type: ignore[arg-type]
    try:
        assert logs.line_sink(log) is not None
        records: list[logging.LogRecord] = []
        original = writer.formatter.format
        monkeypatch.setattr(writer.formatter, "format", lambda r: records.append(r) or original(r))
        write_access_line(log, fields)  # the fast way
        extra = logging.NullHandler()
        log.addHandler(extra)
        try:
            assert logs.line_sink(log) is None
            write_access_line(log, fields)  # the usual way: a record, formatted by the writer
        finally:
            log.removeHandler(extra)
    finally:
        writer.stop()
    assert len(records) == 1  # the second line only
    first, second = stream.getvalue().splitlines()
    if format == "json":
        first_fields, second_fields = json.loads(first), json.loads(second)
        second_fields["time"] = first_fields["time"]  # the record's own clock is not the patched one
        assert first_fields == second_fields
        assert first_fields["time"] == "2027-01-15T08:00:00.500Z"
        assert {k: v for k, v in first_fields.items() if k not in ("time", "level", "logger", "message")} == {
            "transport": "http", "method": "GET", "path": "/v1/rooms/x", "route": "GetRoom",
            "surface": "native", "status": 200, "code": "OK", "key": "admin", "latency_ms": 1.24,
            "client": "127.0.0.1", "request_id": "00ff00ff00ff00ff"}  # fmt: skip
    else:
        assert first.split(" ", 1)[1] == second.split(" ", 1)[1]
        assert first == (
            "2027-01-15T08:00:00.500Z room_gateway.access: "
            "GET /v1/rooms/x 200 key=admin 1.2ms client=127.0.0.1 request_id=00ff00ff00ff00ff"
        )


def test_lines_handed_over_while_the_writer_drains_are_written_without_waiting_for_stop() -> None:
    """The hand-over takes no lock: a line put while the writer empties its deque must still be written by
    the writer's next rounds, not left until ``stop`` (which would hide it: stop writes what is held)."""
    stream = io.StringIO()
    writer = LogWriter(stream, Formatter())
    writer.start()
    try:

        def work(n: int) -> None:
            for i in range(2000):
                writer.put(f"{n} {i}")
                if i % 100 == 0:
                    time.sleep(LINGER_SECONDS / 3)  # bursts that end in, and after, the writer's rounds

        threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 5
        while stream.getvalue().count("\n") < 6000 and time.monotonic() < deadline:
            time.sleep(LINGER_SECONDS)
        lines = stream.getvalue().splitlines()
    finally:
        writer.stop()
    assert len(lines) == 6000
    for n in range(3):
        assert [int(line.split()[1]) for line in lines if line.startswith(f"{n} ")] == list(range(2000))


def test_a_line_put_beside_another_threads_append_wakes_the_writer() -> None:
    """Two threads appending at once both find two items held: the wake-up must not depend on finding one.
    Here another thread's line sits in the deque (appended, its wake-up check not yet made) when ours is
    put; both must be written within the writer's linger, not at the next line or at ``stop``."""
    stream = io.StringIO()
    writer = LogWriter(stream, Formatter())
    writer.start()
    try:
        writer._held.append("other thread")  # appended; that thread has not looked at the length yet
        writer.put("ours")
        deadline = time.monotonic() + 20 * LINGER_SECONDS
        while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(LINGER_SECONDS / 4)
        written_before_stop = stream.getvalue().splitlines()
    finally:
        writer.stop()
    assert written_before_stop == ["other thread", "ours"]


def _heads(monkeypatch: pytest.MonkeyPatch) -> Callable[[logging.Logger], str]:
    """What a text line of a logger written now starts with (``write_info``'s line of an empty message),
    the process's logging being a writer's alone, at INFO (pytest's log capture taken off the root)."""
    from gateway import logs

    writer = LogWriter(io.StringIO(), Formatter())  # not started: lines stay held
    handler = _WriterHandler(writer)
    monkeypatch.setattr(logs, "_sink", logs._Sink(handler, "text"))
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(logging.root, "level", logging.INFO)

    def head(logger: logging.Logger) -> str:
        assert logs.write_info(logger, "")
        line = writer._held.pop()
        assert isinstance(line, str)
        return line

    return head


def test_a_lines_head_is_its_own_millisecond_and_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head kept from the last line (same second, same logger) never stands for another's: its
    millisecond is the monotonic clock's since the wall clock was read."""
    from gateway import logs

    head = _heads(monkeypatch)
    access, other = logging.getLogger("room_gateway.access"), logging.getLogger("room_gateway.other")
    base = 1_800_000_000  # 2027-01-15T08:00:00Z
    heads = []
    for moment, logger in [
        (0.0001, access),
        (0.0009, access),  # the same millisecond
        (0.00095, other),  # another logger in it
        (0.0012, other),
        (0.9995, access),
        (1.0002, access),  # the next second
        (61.25, access),  # a minute on
    ]:
        monkeypatch.setattr(logs.time, "perf_counter", lambda t=moment: 5000.0 + t)
        monkeypatch.setattr(logs.time, "time", lambda t=moment: base + t)
        heads.append(head(logger))
    assert heads == [
        "2027-01-15T08:00:00.000Z room_gateway.access: ",
        "2027-01-15T08:00:00.000Z room_gateway.access: ",
        "2027-01-15T08:00:00.000Z room_gateway.other: ",
        "2027-01-15T08:00:00.001Z room_gateway.other: ",
        "2027-01-15T08:00:00.999Z room_gateway.access: ",
        "2027-01-15T08:00:01.000Z room_gateway.access: ",
        "2027-01-15T08:01:01.250Z room_gateway.access: ",
    ]


def test_lines_and_records_handed_over_together_keep_their_order() -> None:
    """The writer joins what it took in one ``join``; records among the lines are formatted in place."""
    stream = io.StringIO()
    writer = LogWriter(stream, Formatter())
    record = logging.LogRecord("room_gateway.x", logging.WARNING, __file__, 1, "record %d", (2,), None)
    for item in ["line 1", record, "line 3"]:
        writer._held.append(item)  # held before the writer starts: one batch
    writer.start()
    writer.stop()
    assert stream.getvalue() == "line 1\nroom_gateway.x: WARNING: record 2\nline 3\n"


@pytest.mark.usefixtures("root_logging")
def test_a_handler_attached_to_the_root_or_a_parent_takes_lines_off_the_fast_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """line_sink's one-expression check of the usual shape, and its walk for the others, both see a
    handler, a filter, a disabled logger or propagation stopped, from the next line on."""
    from gateway import logs

    root = logging.getLogger()
    monkeypatch.setattr(logs.sys, "stderr", io.StringIO())
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):  # configure_logging's
        monkeypatch.setattr(logging, name, getattr(logging, name))
    writer = logs.configure_logging("info", "text")
    child = logging.getLogger("room_gateway_test_sink.parent.child")  # under a parent, not the root
    parent = logging.getLogger("room_gateway_test_sink.parent")
    top = logging.getLogger("room_gateway_test_sink_top")  # right under the root
    try:
        assert logs.line_sink(top) is not None and logs.line_sink(child) is not None
        extra = logging.NullHandler()
        for attached in (root, parent, top):
            attached.addHandler(extra)
            assert logs.line_sink(top if attached is not parent else child) is None
            attached.removeHandler(extra)
            assert logs.line_sink(top) is not None and logs.line_sink(child) is not None
        root.addFilter(logging.Filter("x"))
        assert logs.line_sink(top) is None and logs.line_sink(child) is None
        root.filters.clear()
        for logger in (top, parent):
            logger.propagate = False
            assert logs.line_sink(top if logger is top else child) is None
            logger.propagate = True
            logger.disabled = True
            assert logs.line_sink(top if logger is top else child) is None
            logger.disabled = False
        root.handlers.append(extra)  # two handlers at the root, however added
        assert logs.line_sink(top) is None
        root.handlers.remove(extra)
        assert logs.line_sink(top) is logs._sink
    finally:
        writer.stop()


def test_a_lines_head_after_the_wall_clock_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a second a line's time moves with the monotonic clock; a wall clock set back (or forward)
    shows from the next second on, and the monotonic clock never makes a second's text run past it."""
    from gateway import logs

    head = _heads(monkeypatch)
    access = logging.getLogger("room_gateway.access")
    base = 1_800_000_000  # 2027-01-15T08:00:00Z
    heads = []
    for moment, step in [(0.5, 1.0), (0.6, -1.0), (1.2, -1.0), (1.3, 30.0), (2.25, 30.0)]:
        monkeypatch.setattr(logs.time, "perf_counter", lambda t=moment: 5000.0 + t)
        monkeypatch.setattr(logs.time, "time", lambda t=moment, s=step: base + t + s)
        heads.append(head(access))
    assert heads == [
        "2027-01-15T08:00:01.500Z room_gateway.access: ",
        "2027-01-15T08:00:01.600Z room_gateway.access: ",  # set back 2 s: seen from the next second
        "2027-01-15T08:00:00.200Z room_gateway.access: ",
        "2027-01-15T08:00:00.300Z room_gateway.access: ",  # set forward: the same
        "2027-01-15T08:00:32.250Z room_gateway.access: ",
    ]


def test_the_writer_stays_awake_while_lines_keep_coming() -> None:
    """Lines put round after round are each written within a few lingers, with one wake-up asked of the
    putting side in all (the writer keeps looking while its rounds find lines), and one more once it slept."""
    stream = io.StringIO()
    writer = LogWriter(stream, Formatter())
    wake_ups = []
    release = writer._release
    writer._release = lambda: (wake_ups.append(1), release())[1]  # type: ignore[method-assign]
    writer.start()
    try:
        for i in range(12):
            writer.put(f"line {i}")
            deadline = time.monotonic() + 20 * LINGER_SECONDS
            while f"line {i}\n" not in stream.getvalue() and time.monotonic() < deadline:
                time.sleep(LINGER_SECONDS / 8)
            assert f"line {i}\n" in stream.getvalue()  # written by the writer's rounds, not at stop
        assert len(wake_ups) <= 6  # the first line's (more only when a round found none: a starved machine)
        deadline = time.monotonic() + 20 * LINGER_SECONDS
        while writer._awake and time.monotonic() < deadline:  # no lines: the writer goes to sleep
            time.sleep(LINGER_SECONDS)
        assert not writer._awake
        before = len(wake_ups)
        writer.put("after a sleep")
        deadline = time.monotonic() + 20 * LINGER_SECONDS
        while "after a sleep\n" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(LINGER_SECONDS / 8)
        assert "after a sleep\n" in stream.getvalue() and len(wake_ups) == before + 1
    finally:
        writer.stop()


@pytest.mark.usefixtures("root_logging")
def test_a_level_set_or_logging_disabled_at_runtime_applies_from_the_next_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """write_info checks the level per line from the logger's level cache: setLevel (the logger's or the
    root's) and logging.disable, which clear that cache, take its lines off from the next one; lines it
    writes wake the writer as ``put`` does."""
    from gateway import logs

    root = logging.getLogger()
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):  # configure_logging's
        monkeypatch.setattr(logging, name, getattr(logging, name))
    writer = logs.configure_logging("info", "text")
    top = logging.getLogger("room_gateway_test_levels")  # right under the root
    try:
        assert logs.write_info(top, "first") and logs.write_info(top, "cached")  # the cache filled, then read
        for off, on in [
            (lambda: top.setLevel(logging.WARNING), lambda: top.setLevel(logging.NOTSET)),
            (lambda: root.setLevel(logging.WARNING), lambda: root.setLevel(logging.INFO)),
            (lambda: logging.disable(logging.INFO), lambda: logging.disable(logging.NOTSET)),
        ]:
            off()
            assert not logs.write_info(top, "off") and not top.isEnabledFor(logging.INFO)
            on()
            assert logs.write_info(top, "on")
        deadline = time.monotonic() + 20 * LINGER_SECONDS
        while stream.getvalue().count("\n") < 5 and time.monotonic() < deadline:  # woken by write_info
            time.sleep(LINGER_SECONDS / 4)
        written_before_stop = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]
    finally:
        logging.disable(logging.NOTSET)
        writer.stop()
    assert written_before_stop == ["first", "cached", "on", "on", "on"]


@pytest.mark.usefixtures("root_logging")
def test_write_info_leaves_json_and_other_listeners_to_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the json format, or a handler attached under the root, write_info writes nothing."""
    from gateway import logs

    monkeypatch.setattr(logs.sys, "stderr", io.StringIO())
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):  # configure_logging's
        monkeypatch.setattr(logging, name, getattr(logging, name))
    child = logging.getLogger("room_gateway_test_json.child")
    parent = logging.getLogger("room_gateway_test_json")
    try:
        writer = logs.configure_logging("info", "json")
        assert not logs.write_info(child, "x") and logs.line_sink(child) is logs._sink
        writer.stop()
        writer = logs.configure_logging("info", "text")
        assert logs.write_info(child, "x")  # under a parent: the walk finds nothing attached
        extra = logging.NullHandler()
        parent.addHandler(extra)
        try:
            assert not logs.write_info(child, "x")
        finally:
            parent.removeHandler(extra)
    finally:
        writer.stop()


def test_a_principal_is_logged_by_its_escaped_name() -> None:
    """An access line's ``key=`` is the principal's name made safe when the principal is made (a room
    token's name comes from its minter: it must not forge lines): spaces and unprintables escaped, at most
    256 characters; ``-`` for no principal."""
    from gateway.auth.policy import Principal
    from gateway.edge.accesslog import key_name

    assert key_name(Principal("admin", frozenset())) == "admin"
    forging = Principal("token:ann\nGET /v1/rooms 200 key=admin", frozenset())
    assert forging.logged_name == "token:ann%0AGET%20/v1/rooms%20200%20key=admin"
    assert key_name(forging) == forging.logged_name
    assert key_name(Principal("x" * 300, frozenset())) == "x" * 256
    assert key_name(None) == key_name("admin") == "-"
    # Made with the principal, not part of what it is.
    assert Principal("a b", frozenset()) == Principal("a b", frozenset())
    assert "logged_name" not in repr(Principal("a b", frozenset()))
