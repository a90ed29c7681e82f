"""A cancellation that an await swallowed, raised again before the task goes on to wait for something else."""

from __future__ import annotations

import asyncio
from typing import Any


def stop_if_cancelled(task: asyncio.Task[Any] | None = None) -> None:
    """Raise :class:`asyncio.CancelledError` if ``task`` (default: the running one) was asked to stop during a
    call that swallowed the cancellation.

    redis-py may not let a ``CancelledError`` through: an I/O call that fails while it is delivered
    disconnects and goes on (seen with ``send_command`` after the server dropped the connection), and a read
    whose own timeout fires at the same moment answers ``None`` (Python 3.11's ``asyncio.timeout``). A task
    that then waits for its next item (a stream's queue, a listener's next command) would wait forever,
    and whoever cancelled it and waits for its end (a stream's close, a backend's close) with it.
    ``cancelling()`` counts the requests not withdrawn by ``uncancel()``, which code that stops a
    cancellation on purpose calls.
    """
    if task is None:
        task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
