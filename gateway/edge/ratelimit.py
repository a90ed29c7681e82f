"""The REST adapter of the rate-limit policy (:mod:`gateway.ratelimit`): the edge's rate-limit stages.

::

    Edge: the call's Verdict → RateLimiter.check(by_ip, client_ip) → authentication
          → RateLimiter.check(by_key, principal.name) → route → Dispatcher.call (by: room)
    with_rate_limit_headers: the verdict's headers on the response

Every response of a call that a limit applied to carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds) of the tightest limit (draft-ietf-httpapi-ratelimit-headers); a 429 adds
``Retry-After`` (RFC 9110 §10.2.3, whole seconds) and the native error body (RESOURCE_EXHAUSTED, sent by
the edge with :func:`gateway.edge.responses.send_error`). ``/healthz`` and ``/readyz`` are not limited
(probes, like authentication). The refusals are counted in ``/metrics`` (:mod:`gateway.edge.metrics`).
"""

from __future__ import annotations

import math

from starlette.types import Message, Scope, Send

from gateway.ratelimit import RateLimiter, Verdict

#: ``RateLimit-Limit`` and ``RateLimit-Reset`` headers by value: a window's limit and reset repeat call
#: after call, so their bytes are made once (a closed set: configured limits, resets in whole seconds up
#: to the longest period; cleared if ever this big). ``RateLimit-Remaining`` changes per call.
_LIMIT_HEADERS: dict[int, tuple[bytes, bytes]] = {}
_RESET_HEADERS: dict[int, tuple[bytes, bytes]] = {}
_CACHE_SIZE = 4096


def _cached(cache: dict[int, tuple[bytes, bytes]], name: bytes, value: int) -> tuple[bytes, bytes]:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    header = cache[value] = (name, b"%d" % value)
    return header


def add_rate_limit_headers(headers: list[tuple[bytes, bytes]], verdict: Verdict) -> None:
    """Append the ``RateLimit-*`` (and, when refused, ``Retry-After``) headers of ``verdict`` to
    ``headers``: the limit's and the reset's made once per value (dict lookups), the remaining count's per
    call."""
    usage = verdict.usage
    if usage is None:
        return
    reset = math.ceil(usage.reset)
    headers += (
        _LIMIT_HEADERS.get(usage.limit) or _cached(_LIMIT_HEADERS, b"ratelimit-limit", usage.limit),
        (b"ratelimit-remaining", b"%d" % usage.remaining),
        _RESET_HEADERS.get(reset) or _cached(_RESET_HEADERS, b"ratelimit-reset", reset),
    )
    if verdict.limited is not None:
        headers.append((b"retry-after", b"%d" % verdict.limited.retry_after))


#: The ``RateLimit-*`` lines by limit, reset and remaining count: what a window's calls answer, made once
#: per value (the shipped 20/second limit: some twenty a window). Nested dicts of ints: a tuple key would
#: be hashed per call. Per limit and reset, the text before and after the remaining count, and the lines
#: made: at most :data:`_WINDOW_LINES` (a large limit's counts mostly differ: joined per call then, not
#: kept). The limits and resets are few (bounded as above).
_LINES: dict[int, dict[int, tuple[bytes, bytes, dict[int, bytes]]]] = {}
_WINDOW_LINES = 256


def rate_limit_lines(verdict: Verdict) -> bytes:
    """:func:`add_rate_limit_headers` as header lines (``ratelimit-limit: 20\\r\\n…``) for the gateway's own
    response path (:data:`gateway.edge.cycle.HEAD`): numbers only, nothing to check."""
    usage = verdict.usage
    if usage is None:
        return b""
    lines = usage_lines(usage.limit, usage.remaining, usage.reset)
    if verdict.limited is not None:
        lines += b"retry-after: %d\r\n" % verdict.limited.retry_after
    return lines


def usage_lines(limit: int, remaining: int, reset: float) -> bytes:
    """The ``RateLimit-*`` lines of one limit's usage (:class:`~gateway.ratelimit.Usage`'s fields: the edge's
    path for a call that one limit alone counts, :meth:`LocalWindows.count_now
    <gateway.ratelimit.LocalWindows.count_now>`, passes them without making one)."""
    seconds = math.ceil(reset)
    resets = _LINES.get(limit)
    if resets is None:
        if len(_LINES) >= _CACHE_SIZE:
            _LINES.clear()
        resets = _LINES[limit] = {}
    window = resets.get(seconds)
    if window is None:
        if len(resets) >= _CACHE_SIZE:
            resets.clear()
        window = resets[seconds] = (
            b"ratelimit-limit: %d\r\nratelimit-remaining: " % limit,
            b"\r\nratelimit-reset: %d\r\n" % seconds,
            {},
        )
    before, after, made = window
    lines = made.get(remaining)
    if lines is None:
        lines = before + b"%d" % remaining + after
        if len(made) < _WINDOW_LINES:
            made[remaining] = lines
    return lines


def rate_limit_headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """The ``RateLimit-*`` (and, when refused, ``Retry-After``) headers of ``verdict``."""
    headers: list[tuple[bytes, bytes]] = []
    add_rate_limit_headers(headers, verdict)
    return headers


def with_rate_limit_headers(send: Send, verdict: Verdict) -> Send:
    """``send`` that adds the headers of ``verdict`` (as it stands when the response starts) to the
    response: every answer of a limited call carries them, whoever sends it (a route, an error, a surface)."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start" and verdict.usage is not None:
            headers = message.get("headers", [])
            if isinstance(headers, list):  # ours to extend, as Starlette's own middlewares do
                headers.extend(rate_limit_headers(verdict))
            else:
                message["headers"] = [*headers, *rate_limit_headers(verdict)]
        await send(message)

    return send_with_headers


def client_ip(limiter: RateLimiter, scope: Scope) -> str:
    """The address a ``by: ip`` limit counts: the peer, or what a trusted proxy says it forwards for."""
    client = scope.get("client")
    peer = client[0] if client else None
    if not limiter.trusted_proxies:
        return peer or ""
    forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
    return limiter.client_ip(peer, forwarded)
