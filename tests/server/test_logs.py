"""The process's log writer (gateway.logs): every record written, in order, tracebacks included, none lost
at stop — whether logged from the event loop (handed over a batch per turn) or from another thread."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import pytest

from gateway.logs import Formatter, LogWriter, _BatchingHandler


@pytest.fixture
def written() -> Iterator[tuple[logging.Logger, LogWriter, io.StringIO]]:
    stream = io.StringIO()
    writer = LogWriter(stream, Formatter())
    handler = _BatchingHandler(writer.batches)
    writer.before_stop = handler.hand_over
    logger = logging.getLogger("room_gateway.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    writer.start()
    try:
        yield logger, writer, stream
    finally:
        logger.removeHandler(handler)


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

    asyncio.run(last_words())  # the hand-over scheduled with call_soon never runs
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
