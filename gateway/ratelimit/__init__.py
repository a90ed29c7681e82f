"""Rate limiting: one policy, used by the REST and gRPC adapters alike.

- :mod:`gateway.ratelimit.policy` — :class:`RateLimiter` (which limits apply, the client's address, the
  verdict of a call), transport-free;
- :mod:`gateway.ratelimit.local` — :class:`LocalWindows`, counts kept in this process (``memory://``);
- :mod:`gateway.ratelimit.storage` — :class:`StorageWindows` on a shared ``limits`` storage
  (:func:`open_storage`);
- :mod:`gateway.ratelimit.counter` — what a count answers (:class:`Usage`), shared by both.

The adapters, :mod:`gateway.edge.ratelimit` and :mod:`gateway.rpc.ratelimit`, apply it at three points of a
call (``rate_limits.limits[].by``):

- ``ip`` — before authentication, so an unauthenticated flood is refused before a key is hashed;
- ``key`` — after authentication, by the :class:`~gateway.auth.policy.Principal`'s key name;
- ``room`` — once the request is bound and authorized (:meth:`gateway.dispatch.Dispatcher.call`), by room id.

**Where the counts live.** ``memory://`` counts in this process (:class:`LocalWindows`); any other URL is a
``limits`` async storage, so every instance on it shares one count (:mod:`gateway.ratelimit.storage`).

**Strategies** (``limits``' names; how much a client can send, for a limit of *N* per period *T*):

- ``moving-window`` (default) — exact: at most *N* calls in **any** interval of length *T*. A refused
  client may retry when its oldest counted call is *T* old. Costs one entry per counted call (bounded by
  *N*) per client.
- ``sliding-window-counter`` — approximates the moving window from two fixed-window counters, weighting the
  previous window by how much of it still overlaps; may admit somewhat more or less than *N* in an
  interval when traffic is uneven. Two counters per client.
- ``fixed-window`` — *N* per window that starts at the client's first call; up to *2N* in a short burst
  that straddles the end of one window and the start of the next. One counter per client.
"""

from gateway.ratelimit.counter import Counter, Usage
from gateway.ratelimit.local import LocalWindows
from gateway.ratelimit.policy import (
    FAILURE_LOG_INTERVAL,
    UNAVAILABLE_MESSAGE,
    By,
    Quota,
    RateLimited,
    RateLimiter,
    Verdict,
    begin_call,
    current_verdict,
    end_call,
    retry_after,
)
from gateway.ratelimit.storage import StorageWindows, open_storage

__all__ = [
    "FAILURE_LOG_INTERVAL",
    "UNAVAILABLE_MESSAGE",
    "By",
    "Counter",
    "LocalWindows",
    "Quota",
    "RateLimited",
    "RateLimiter",
    "StorageWindows",
    "Usage",
    "Verdict",
    "begin_call",
    "current_verdict",
    "end_call",
    "open_storage",
    "retry_after",
]
