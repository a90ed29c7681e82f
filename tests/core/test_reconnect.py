"""The reconnect supervisor: capped exponential backoff with full jitter, reset after a healthy connection,
woken by a waiter, stopped by close with no task left behind."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest

from gateway.core.reconnect import Backoff, Reconnector

log = logging.getLogger("tests.reconnect")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=1.0, random=lambda: 1.0)  # the top of each range: the ceilings
    assert [round(backoff.next(), 6) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)


def test_backoff_delays_are_fully_jittered_below_their_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=4.0, random=random.Random(7).random)
    delays, ceilings = [], []
    for _ in range(200):
        ceilings.append(backoff.ceiling)
        delays.append(backoff.next())
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(delays, ceilings, strict=True))
    capped = delays[3:]  # from the fourth on, every ceiling is the cap
    assert max(capped) <= 4.0
    assert min(capped) < 1.0 < 3.0 < max(capped)  # spread over the whole range, not around the ceiling
    assert len(set(capped)) == len(capped)


def test_backoff_refuses_nonsense() -> None:
    for base, cap in ((0, 1), (-1, 1), (2, 1)):
        with pytest.raises(ValueError):
            Backoff(base=base, cap=cap)


class Script:
    """A session that plays one step per run: fail to connect, or connect and then drop after some
    (fake) seconds; it records the backoff ceiling each run started with."""

    def __init__(self, steps: list[float | None], clock: FakeClock) -> None:
        self.steps = steps  # None: cannot connect; a number: connected for that long, then dropped
        self.clock = clock
        self.ceilings: list[float] = []
        self.reconnector: Reconnector | None = None
        self.done = asyncio.Event()

    async def __call__(self, connected: Callable[[], None]) -> None:
        assert self.reconnector is not None
        self.ceilings.append(self.reconnector.backoff.ceiling)
        if not self.steps:
            self.done.set()
            await asyncio.Event().wait()  # stay connected until closed
        step = self.steps.pop(0)
        if step is None:
            raise ConnectionRefusedError("refused")
        connected()
        self.clock.now += step
        raise ConnectionResetError("dropped")


async def play(steps: list[float | None], *, healthy_after: float = 10.0) -> list[float]:
    clock = FakeClock()
    script = Script(steps, clock)
    reconnector = script.reconnector = Reconnector(
        script,
        name="test",
        logger=log,
        backoff=Backoff(base=0.001, cap=0.008, random=lambda: 1.0),
        healthy_after=healthy_after,
        clock=clock,
    )
    reconnector.start()
    try:
        await asyncio.wait_for(script.done.wait(), 5)
    finally:
        await reconnector.close()
    return script.ceilings


async def test_backoff_grows_over_failures_and_short_connections_and_is_capped() -> None:
    # Refused twice, up for 1 s (not healthy), refused three times more: the ceiling only grows.
    ceilings = await play([None, None, 1.0, None, None, None])
    assert ceilings == [0.001, 0.002, 0.004, 0.008, 0.008, 0.008, 0.008]


async def test_backoff_resets_after_a_healthy_connection() -> None:
    ceilings = await play([None, None, None, 30.0, None])
    # The delay after the healthy connection's loss was drawn below the base again, and growth restarted.
    assert ceilings == [0.001, 0.002, 0.004, 0.008, 0.002, 0.004]


async def test_wake_cuts_the_backoff_short() -> None:
    attempts = 0

    async def refused(connected: Callable[[], None]) -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError

    reconnector = Reconnector(
        refused, name="test", logger=log, backoff=Backoff(base=60, cap=60, random=lambda: 1.0)
    )
    reconnector.start()
    try:
        for expected in (1, 2, 3):
            async with asyncio.timeout(5):
                while attempts < expected:
                    await asyncio.sleep(0.01)
            reconnector.wake()  # the next attempt comes now, not in 60 s
    finally:
        await reconnector.close()
    assert attempts >= 3


def test_close_ends_the_session_and_leaves_no_task() -> None:
    async def main() -> None:
        ended = asyncio.Event()

        async def session(connected: Callable[[], None]) -> None:
            connected()
            try:
                await asyncio.Event().wait()
            finally:
                ended.set()

        reconnector = Reconnector(session, name="test", logger=log)
        reconnector.start()
        await asyncio.sleep(0.01)
        assert reconnector.running
        await reconnector.close()
        assert ended.is_set()
        assert not reconnector.running
        await reconnector.close()  # idempotent
        with pytest.raises(RuntimeError):
            reconnector.start()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_close_during_a_backoff_leaves_no_task() -> None:
    async def main() -> None:
        async def refused(connected: Callable[[], None]) -> None:
            raise ConnectionRefusedError

        reconnector = Reconnector(
            refused, name="test", logger=log, backoff=Backoff(base=60, cap=60, random=lambda: 1.0)
        )
        reconnector.start()
        await asyncio.sleep(0.01)  # now sleeping for 60 s
        async with asyncio.timeout(1):
            await reconnector.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_a_cancellation_the_session_swallowed_still_stops_it() -> None:
    async def main() -> None:
        runs = 0

        async def swallowing(connected: Callable[[], None]) -> None:
            nonlocal runs
            runs += 1
            connected()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:  # as redis-py's I/O calls may do
                raise ConnectionResetError("disconnected") from None

        reconnector = Reconnector(swallowing, name="test", logger=log)
        reconnector.start()
        await asyncio.sleep(0.01)
        async with asyncio.timeout(1):
            await reconnector.close()
        assert runs == 1
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


async def test_logs_an_outage_once_and_a_bug_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[Exception] = [ConnectionRefusedError("refused")] * 3 + [KeyError("bug")]
    connecting = asyncio.Event()

    async def session(connected: Callable[[], None]) -> None:
        if errors:
            raise errors.pop(0)
        connected()
        connecting.set()
        await asyncio.Event().wait()

    reconnector = Reconnector(session, name="test link", logger=log, backoff=Backoff(base=0.001, cap=0.001))
    with caplog.at_level(logging.DEBUG, logger=log.name):
        reconnector.start()
        await asyncio.wait_for(connecting.wait(), 5)
        await reconnector.close()
    levels = [(r.levelno, r.exc_info is not None) for r in caplog.records]
    assert levels == [
        (logging.WARNING, False),  # the first failure of the outage
        (logging.DEBUG, False),
        (logging.DEBUG, False),
        (logging.ERROR, True),  # not a connection error: a bug, with its traceback
        (logging.INFO, False),  # connected again
    ]
    assert all(r.getMessage().startswith("test link: ") for r in caplog.records)
