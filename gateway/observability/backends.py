"""Backend operations timed and counted: every contract method of the backend, wrapped once at start-up.

:func:`instrument` replaces each coroutine of :data:`gateway.core.backend.CONTRACT_METHODS` on the backend
*instance* with one that records ``room_gateway_backend_operation_duration_seconds{backend,operation}``,
counts ``room_gateway_backend_errors_total`` for failures that are the backend's (UNAVAILABLE, or an
unexpected exception — a missing room or a version conflict is an answer, not a failure), and keeps
``room_gateway_backend_up`` (0 from a failure until the next operation that succeeds). With tracing on, each
operation also runs in a client span. The label children are bound here, once per operation, as the
driver-error wrapping of :class:`~gateway.core.backend.Backend` is done once per class.
"""

from __future__ import annotations

import functools
import time
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.core.backend import CONTRACT_METHODS, Backend, driver_unavailable
from gateway.errors import GatewayError, Unavailable
from gateway.observability.metrics import Metrics

if TYPE_CHECKING:
    from gateway.observability.tracing import ClientSpan, Tracing


def backend_label(backend: Backend) -> str:
    """The ``backend`` label: the URL's scheme (``memory``, ``sqlite``, ``postgresql``, ``redis``, …)."""
    return backend.url.partition("://")[0].partition("+")[0] or type(backend).__name__


def instrument(backend: Backend, metrics: Metrics, tracing: Tracing | None = None) -> None:
    """Record every contract operation of ``backend`` into ``metrics`` (and spans into ``tracing``)."""
    label = backend_label(backend)
    up = _Up(metrics)
    for name in CONTRACT_METHODS:
        method = getattr(backend, name, None)
        if method is None:
            continue
        method, driver_errors = _unwrapped(backend, name, method)
        spans = tracing.client_span(label, name) if tracing is not None else None
        timed = _timed(method, name, up, metrics.backend_duration.labels(label, name),
                       metrics.backend_errors.labels(label, name), driver_errors, spans)  # fmt: skip
        setattr(backend, name, timed)


class _Up:
    """``room_gateway_backend_up``, written only when it changes (a bool test per operation otherwise)."""

    __slots__ = ("gauge", "up")

    def __init__(self, metrics: Metrics) -> None:
        self.gauge = metrics.backend_up
        self.up = False

    def set(self, up: bool) -> None:
        if up is not self.up:
            self.up = up
            self.gauge.set(1 if up else 0)


def _unwrapped(
    backend: Backend, name: str, method: Callable[..., Awaitable[Any]]
) -> tuple[Callable[..., Awaitable[Any]], tuple[type[BaseException], ...]]:
    """``method`` without the class's driver-error wrapper, bound to ``backend``, and the driver errors
    that wrapper turns into UNAVAILABLE — so that an operation pays one wrapper frame, not two.
    ``(method, ())`` when it is not the class's wrapped method (an instance's own, say)."""
    function = getattr(type(backend), name, None)
    errors = getattr(function, "__wrapped_driver_errors__", None)
    inner = getattr(function, "__wrapped__", None)
    if name in vars(backend) or not isinstance(errors, tuple) or inner is None:
        return method, ()
    return types.MethodType(inner, backend), errors


def _timed(
    method: Callable[..., Awaitable[Any]],
    operation: str,
    up: _Up,
    duration: Any,
    errors: Any,
    driver_errors: tuple[type[BaseException], ...] = (),
    spans: ClientSpan | None = None,
) -> Callable[..., Awaitable[Any]]:
    """``method`` timed and counted; driver errors (of an unwrapped method) turned into UNAVAILABLE as
    :func:`gateway.core.backend._wrap_driver_errors` does; with ``spans`` (tracing on), run in a CLIENT
    span when a sampled call is running — in this one frame, not a wrapper of its own."""
    closing = operation == "close"
    sampled, in_span = spans if spans is not None else (None, None)

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            try:
                if sampled is not None and sampled():
                    result = await in_span(method, args, kwargs)  # type: ignore[misc]  # set with sampled
                else:
                    result = await method(*args, **kwargs)
            except GatewayError:
                raise
            except driver_errors as exc:
                raise driver_unavailable(exc) from exc
        except Unavailable:
            errors.inc()
            up.set(False)
            raise
        except GatewayError:  # an answer (NOT_FOUND, ABORTED, …): the backend works
            up.set(True)
            raise
        except BaseException as exc:
            if isinstance(exc, Exception):  # a bug or a driver error; cancellation is neither
                errors.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - start)
        up.set(not closing)
        return result

    return timed
