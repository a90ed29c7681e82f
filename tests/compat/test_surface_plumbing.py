"""What every compatibility surface stands on: the service's RoomDeleted, the dispatcher's look-ups, and
the one expected-vs-unexpected frame of their REST calls."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from gateway.app import create_gateway
from gateway.auth.policy import ApiKey, AuthPolicy, digest
from gateway.core.models import RoomStatus
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.edge.responses import ClientDisconnected
from gateway.errors import FailedPrecondition, InvalidArgument, NotFound, RoomDeleted
from gateway.surfaces import ErrorFrame
from tests.compat.reflect.conftest import ADMIN_KEY as REFLECT_KEY
from tests.compat.reflect.conftest import APP, reflect_config
from tests.compat.signalwire.conftest import ADMIN_KEY as SIGNALWIRE_KEY
from tests.compat.signalwire.conftest import PROJECT, signalwire_config

# -- RoomDeleted --------------------------------------------------------------------------------------------


async def test_a_deleted_room_is_told_from_one_that_never_was(service: RoomService) -> None:
    await service.create_room({"room_id": "r"})
    await service.close_room("r")
    await service.delete_room("r")
    for call in (
        service.get_room_contents("r"),
        service.close_room("r"),
        service.delete_room("r"),
        service.get_variable("r", "v"),
        service.set_variable("r", "v", 1),
        service.listen_events("r", "e"),
        service.invalidate_connections("r"),
    ):
        with pytest.raises(RoomDeleted, match="was deleted") as deleted:
            await call
        assert isinstance(deleted.value, NotFound)  # still a NOT_FOUND to every native client
    with pytest.raises(NotFound) as never:
        await service.get_room_contents("nowhere")
    assert not isinstance(never.value, RoomDeleted)


async def test_a_stream_of_a_room_being_deleted_ends_with_room_deleted(service: RoomService) -> None:
    await service.create_room({"room_id": "r"})
    stream = await service.listen_events("r", "e")
    await service.close_room("r")
    await service.delete_room("r")
    with pytest.raises(RoomDeleted):
        await anext(stream)


# -- Dispatcher.lookup --------------------------------------------------------------------------------------


def dispatcher_of(service: RoomService) -> Dispatcher:
    key = ApiKey("limited", digest("limited-key-0123456789"), frozenset({"*"}), ("public-*",))
    return Dispatcher(service, AuthPolicy([key]))


async def test_a_lookup_reads_for_no_caller(service: RoomService) -> None:
    dispatcher = dispatcher_of(service)
    for room_id in ("a", "public-b"):
        await service.create_room({"room_id": room_id})
    page = await dispatcher.lookup("ListRooms", {"max_results": 10})
    assert [room.room_id for room in page.results] == ["a", "public-b"]  # not filtered by any key
    assert (await dispatcher.lookup("GetRoom", {"room_id": "a"})).status is RoomStatus.OPEN
    with pytest.raises(NotFound):
        await dispatcher.lookup("GetVariable", {"room_id": "a", "name": "v"})


@pytest.mark.parametrize("method", ["SetVariable", "DeleteRoom", "CreateRoomToken", "ListenVariable", "Nope"])
async def test_a_lookup_only_reads(service: RoomService, method: str) -> None:
    with pytest.raises(ValueError, match="not a read"):
        await dispatcher_of(service).lookup(method, {"room_id": "a"})


async def test_implicit_rooms_follow_the_service(service: RoomService) -> None:
    dispatcher = dispatcher_of(service)
    assert dispatcher.implicit_rooms
    service.auto_create_rooms = False
    assert not dispatcher.implicit_rooms


# -- ErrorFrame ---------------------------------------------------------------------------------------------


class Vendor(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


FRAME: ErrorFrame[Vendor, tuple[int, str]] = ErrorFrame(
    "test",
    Vendor,
    expected=lambda error: Vendor(error.http_status, error.message),
    unexpected=lambda: Vendor(500, "internal"),
    render=lambda error: (error.status, error.text),
)
SCOPE = {"type": "http", "method": "GET", "path": "/x"}


async def answer(exc: BaseException | None) -> tuple[int, str] | None:
    async def call() -> tuple[int, str]:
        if exc is not None:
            raise exc
        return 200, "ok"

    return await FRAME.answer(call(), SCOPE)


async def test_the_frame_answers_outcomes_and_bugs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert await answer(None) == (200, "ok")
        assert await answer(Vendor(405, "no")) == (405, "no")
        assert await answer(FailedPrecondition("room 'r' is closed")) == (400, "room 'r' is closed")
        assert await answer(InvalidArgument("too big", http_status=413)) == (413, "too big")
        assert not caplog.records
        assert await answer(KeyError("secret detail")) == (500, "internal")
    [record] = caplog.records
    assert "test: GET /x failed" in record.getMessage() and record.exc_info is not None


async def test_the_frame_answers_nobody_who_left(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert await answer(ClientDisconnected()) is None
    assert not caplog.records


# -- a client leaving mid-body, on the REST surfaces --------------------------------------------------------


def basic(user: str, key: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{key}".encode())


@pytest.mark.parametrize(
    ("config", "method", "path", "authorization"),
    [
        (signalwire_config, "POST", "/api/video/rooms", basic(PROJECT, SIGNALWIRE_KEY)),
        (reflect_config, "POST", f"/v1/apps/{APP}/rooms:create", b"Basic " + REFLECT_KEY.encode()),
    ],
    ids=["signalwire", "reflect"],
)
async def test_a_client_that_left_mid_body_is_sent_nothing(
    config: Any, method: str, path: str, authorization: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = create_gateway(config())
    await gateway.backend.open()
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b'{"na', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"roomID=r" if "apps" in path else b"",
        "headers": [
            (b"host", b"gateway"),
            (b"authorization", authorization),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
    }
    try:
        with caplog.at_level(logging.ERROR):
            await gateway.http_app(scope, receive, send)
    finally:
        await gateway.backend.close()
    assert [m for m in sent if m["type"] == "http.response.start"] == []
    assert not caplog.records
