"""The backend contract: what a storage plugin implements.

A backend stores rooms and variables and delivers notifications (variable changes, events, room signals)
to subscriptions — on every gateway instance that shares it. The room *rules* live in
:class:`gateway.core.service.RoomService`; a backend only has to make each operation atomic.

A backend is chosen by the scheme of the ``backend`` URL in ``gateway.yaml``: each class declares its
``schemes`` and is offered to the gateway through the ``gateway_backend_classes`` hook
(:mod:`gateway.hookspecs`). Run the shipped conformance suite against it (:mod:`gateway.testing`).

Driver errors are wrapped automatically: an exception of a class listed in ``base_exceptions`` escaping any
contract coroutine becomes :class:`~gateway.errors.Unavailable` (503 / UNAVAILABLE), with the original as
``__cause__`` — so a backend author cannot forget it (``limits``' ``Storage.__init_subclass__`` does
the same).
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from gateway.core.hub import Subscription, Topic
from gateway.core.models import JSON, Event, Room, RoomSignal, Unset, Variable
from gateway.errors import Aborted, GatewayError, Unavailable

_T = TypeVar("_T")

#: The coroutine methods whose driver errors are wrapped.
CONTRACT_METHODS = (
    "open",
    "close",
    "check",
    "create_room",
    "get_room",
    "save_room",
    "list_rooms",
    "get_rooms",
    "get_variable",
    "set_variable",
    "get_contents",
    "delete_room_data",
    "publish_event",
    "publish_signal",
    "subscribe",
)


def _wrap_driver_errors(
    method: Callable[..., Awaitable[_T]], errors: tuple[type[BaseException], ...]
) -> Callable[..., Awaitable[_T]]:
    @functools.wraps(method)
    async def wrapper(self: Backend, *args: Any, **kwargs: Any) -> _T:
        try:
            return await method(self, *args, **kwargs)
        except GatewayError:
            raise
        except errors as exc:
            raise Unavailable(f"backend unavailable ({type(exc).__name__})") from exc

    wrapper.__wrapped_driver_errors__ = True  # type: ignore[attr-defined]  # a marker on the function
    return wrapper


def version_conflict(name: str, expected: int, current: int) -> Aborted:
    """The ABORTED error of a failed compare-and-set, worded the same by every backend."""
    return Aborted(f"variable {name!r} is at version {current}, not the expected {expected}")


class Backend(abc.ABC):
    """Base class of storage backends.

    :param url: the ``backend`` URL from the configuration; its scheme is one of :attr:`schemes`.
    """

    #: URL schemes this class serves, e.g. ``("memory",)`` or ``("postgresql", "postgresql+asyncpg")``.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Exceptions of the driver that mean "the store cannot be reached": turned into UNAVAILABLE.
    base_exceptions: ClassVar[tuple[type[BaseException], ...]] = (ConnectionError, TimeoutError)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in CONTRACT_METHODS:
            method = cls.__dict__.get(name)
            if method is not None and inspect.iscoroutinefunction(method):
                setattr(cls, name, _wrap_driver_errors(method, cls.base_exceptions))

    def __init__(self, url: str) -> None:
        self.url = url

    # -- life cycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional: a no-op unless the backend needs it
        """Connect, create or upgrade the schema. Called once before any other method."""

    async def close(self) -> None:  # noqa: B027 - optional: a no-op unless the backend needs it
        """Release connections and end every subscription. Called once at shutdown."""

    async def check(self) -> None:  # noqa: B027 - optional: a no-op unless the backend needs it
        """Raise :class:`~gateway.errors.Unavailable` when the store cannot serve (``/readyz``)."""

    # -- rooms --------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_room(self, room: Room) -> None:
        """Store a new room. Raise :class:`~gateway.errors.AlreadyExists` if its id was *ever* stored."""

    @abc.abstractmethod
    async def get_room(self, room_id: str) -> Room | None:
        """Return the room (DELETED rooms included: they are tombstones), or ``None`` if never stored."""

    @abc.abstractmethod
    async def save_room(self, room: Room) -> None:
        """Overwrite an existing room's fields (metadata, status, ``update_time``)."""

    @abc.abstractmethod
    async def list_rooms(self, *, start: str, inclusive: bool, limit: int) -> list[Room]:
        """Up to ``limit`` rooms in code-point order of id, from ``start`` (``inclusive`` or not).

        ``start == ""`` with ``inclusive`` lists from the first room.
        """

    @abc.abstractmethod
    async def get_rooms(self, room_ids: Sequence[str]) -> list[Room]:
        """The rooms among ``room_ids`` that exist, in code-point order of id."""

    # -- variables ----------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_variable(self, room_id: str, name: str) -> Variable | None:
        """The current version of a variable, or ``None`` when it is unset (never set, or deleted)."""

    @abc.abstractmethod
    async def set_variable(
        self,
        room_id: str,
        name: str,
        value: JSON | Unset,
        *,
        expected_version: int | None,
        now: datetime,
    ) -> Variable | None:
        """Write (or, with ``value is UNSET``, delete) a variable atomically and notify its listeners.

        The version is one more than the variable's last version, deletions included, so versions never
        repeat. With ``expected_version`` the write happens only if the current version is that one (``0``:
        the variable is unset); otherwise raise :func:`version_conflict`. Notifications of one variable
        reach listeners in version order. Deleting an unset variable does nothing and returns ``None``.
        """

    @abc.abstractmethod
    async def get_contents(self, room_id: str) -> dict[str, JSON]:
        """Every set variable of the room: ``{name: value}``."""

    @abc.abstractmethod
    async def delete_room_data(self, room_id: str) -> None:
        """Wipe every variable of the room (the room itself stays, as a tombstone)."""

    # -- realtime -----------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def publish_event(self, room_id: str, event: Event) -> None:
        """Deliver ``event`` to the listeners of ``(room_id, event.name)`` on every instance."""

    @abc.abstractmethod
    async def publish_signal(self, signal: RoomSignal) -> None:
        """Deliver ``signal`` to every subscription of its room (of every room if ``room_id == ""``) on every
        instance."""

    @abc.abstractmethod
    async def subscribe(self, topic: Topic) -> Subscription:
        """Start listening to a topic on this instance. Notifications published after this call returns
        are delivered (the subscription is active on return)."""
