"""What counting one call answers: the :class:`Usage` of a limit, and the :class:`Counter` protocol that
both kinds of windows implement (:mod:`~gateway.ratelimit.local`, :mod:`~gateway.ratelimit.storage`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Usage:
    """One limit as it stands for one client after a call: what the ``RateLimit-*`` headers say.

    :param limit: calls allowed per period.
    :param remaining: calls left now.
    :param reset: seconds until a call is allowed again (for a refused call), or until the count
        next goes down.
    """

    limit: int
    remaining: int
    reset: float

    def tighter_than(self, other: Usage) -> bool:
        return (self.remaining, -self.reset) < (other.remaining, -other.reset)


class Counter(Protocol):
    """Counts hits of one limit (a ``limits.RateLimitItem``) per identifier."""

    async def hit(self, identifier: str) -> tuple[bool, Usage]:
        """Count one call of ``identifier``; ``(allowed, usage after it)``.

        :raises limits.errors.StorageError: the storage cannot be reached.
        """
        ...
