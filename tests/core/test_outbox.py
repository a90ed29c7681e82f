"""The outbox's own parts (gateway.core.outbox) that no backend decides: the messages' ids."""

from __future__ import annotations

import re
import time

from gateway.core.outbox import new_message_id


def test_message_ids_sort_by_creation_time_and_stay_unique() -> None:
    # Time-ordered to the millisecond, as UUIDv7s are: a message's row then lands at the end of the store's
    # index instead of on a random page of it (bench/outbox_ids.py: ~3x less WAL an insert on PostgreSQL).
    first = [new_message_id() for _ in range(5000)]
    time.sleep(0.003)
    later = [new_message_id() for _ in range(5000)]
    assert all(re.fullmatch(r"msg_[0-9a-f]{32}", one) for one in first + later)
    assert len(set(first + later)) == 10_000
    assert max(first) < min(later)
    assert abs(int(first[0][4:16], 16) / 1000 - time.time()) < 5  # the milliseconds since the epoch
