"""The auth matrix: every native method, every credential case, both transports; each cell's exact status.

Each cell builds a fresh gateway (memory backend, frozen clock, room tokens configured) holding:

- rooms ``private-1`` (OPEN, variable ``v`` set), ``closed-1`` (CLOSED: what DeleteRoom needs) and
  ``other-room``; ``private-2`` is never created (what CreateRoom creates);
- keys: ``admin`` (``*``), one ``all-but-<permission>`` key per permission (every permission but that one,
  not ``*``), and ``public`` (``*`` limited to ``public-*``);
- room tokens for the method's room (``private-1`` for the methods without one): ``expired`` (1 s, then the
  clock moves past it and its leeway), ``invalidated`` (its room's InvalidateConnections came after it — the
  global one for ``private-2``, which cannot be invalidated alone before it exists), ``tampered`` (a valid
  token whose payload was edited, signature kept), ``valid`` (moderator: ``*``), ``guest``; and a valid
  moderator token for ``other-room``.

REST runs in-process (``httpx.ASGITransport``; streams through a hand-driven ASGI call, since httpx buffers
whole responses); gRPC runs on a real grpclib server on a loopback port, called with the generated client.
A stream counts as accepted once it is open with no error (REST: a 200 start; gRPC: a first message or
half a second of silence).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import betterproto2
import httpx
import orjson
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from room_gateway_plugins.memory import MemoryBackend
from starlette.applications import Starlette

from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import (
    CloseRoomRequest,
    CreateRoomRequest,
    CreateRoomTokenRequest,
    DeleteRoomRequest,
    DeleteVariableRequest,
    EnableWebhookRequest,
    GetPresenceRequest,
    GetRoomContentsRequest,
    GetRoomRequest,
    GetVariableRequest,
    InvalidateConnectionsRequest,
    ListChangesRequest,
    ListenEventsRequest,
    ListenRoomRequest,
    ListenVariableRequest,
    ListRoomsRequest,
    ListWebhookMessagesRequest,
    ListWebhooksRequest,
    PublishEventRequest,
    ReplayWebhookRequest,
    RetryWebhookMessageRequest,
    Room,
    RoomServiceStub,
    SendWebhookTestRequest,
    SetVariableRequest,
    UpdateRoomRequest,
)
from gateway.auth.permissions import PERMISSIONS, REQUIRED
from gateway.auth.policy import ApiKey, AuthPolicy, Principal, digest
from gateway.auth.tokens import RoomTokenIssuer
from gateway.config import WebhookEndpoint, Webhooks
from gateway.core.outbox import OutboxMessage
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.observability.metrics import Metrics
from gateway.rpc.server import create_grpc_server
from gateway.webhooks.deliverer import Deliverers, outbox_of
from gateway.webhooks.manager import WebhookManager
from tests.conftest import FrozenClock

SECRET = "matrix-room-token-secret-0123456789abcdef"
HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK_MESSAGE = "msg_matrix"
ROLES = {"moderator": ["*"], "guest": ["variables:read", "events:listen"]}
ADMIN = "matrix-admin-key-0123456789"
PUBLIC = "matrix-public-key-0123456789"


def _all_but(permission: str) -> str:
    return f"matrix-all-but-{permission}-0123456789"


KEYS = [
    ApiKey("admin", digest(ADMIN), frozenset({"*"})),
    ApiKey("public", digest(PUBLIC), frozenset({"*"}), ("public-*",)),
    *(
        ApiKey(f"all-but-{p}", digest(_all_but(p)), PERMISSIONS - {p, "*"})
        for p in sorted(PERMISSIONS - {"*"})
    ),
]


# -- the methods ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One method call, as REST and gRPC send it."""

    id: str
    method: str  # proto name
    room: str | None  # the room it names; None: every room
    http: tuple[str, str, Any]  # verb, path, JSON body (None: no body)
    grpc: betterproto2.Message
    streaming: bool = False

    @property
    def token_room(self) -> str:
        return self.room or "private-1"


OPS = [
    Op("CreateRoom", "CreateRoom", "private-2", ("POST", "/v1/rooms", {"roomId": "private-2"}),
       CreateRoomRequest(room=Room(room_id="private-2"))),
    Op("GetRoom", "GetRoom", "private-1", ("GET", "/v1/rooms/private-1", None),
       GetRoomRequest(room_id="private-1")),
    Op("ListRooms", "ListRooms", None, ("GET", "/v1/rooms", None), ListRoomsRequest()),
    Op("UpdateRoom", "UpdateRoom", "private-1", ("PATCH", "/v1/rooms/private-1", {"displayName": "x"}),
       UpdateRoomRequest(room=Room(room_id="private-1", display_name="x"))),
    Op("CloseRoom", "CloseRoom", "private-1", ("POST", "/v1/rooms/private-1:close", {}),
       CloseRoomRequest(room_id="private-1")),
    Op("DeleteRoom", "DeleteRoom", "closed-1", ("DELETE", "/v1/rooms/closed-1", None),
       DeleteRoomRequest(room_id="closed-1")),
    Op("GetRoomContents", "GetRoomContents", "private-1", ("GET", "/v1/rooms/private-1/contents", None),
       GetRoomContentsRequest(room_id="private-1")),
    Op("InvalidateConnections", "InvalidateConnections", "private-1",
       ("POST", "/v1/rooms/private-1:invalidateConnections", {}),
       InvalidateConnectionsRequest(room_id="private-1")),
    Op("InvalidateConnections-global", "InvalidateConnections", None,
       ("POST", "/v1/connections:invalidate", {}), InvalidateConnectionsRequest()),
    Op("GetVariable", "GetVariable", "private-1", ("GET", "/v1/rooms/private-1/variables/v", None),
       GetVariableRequest(room_id="private-1", name="v")),
    Op("SetVariable", "SetVariable", "private-1", ("PUT", "/v1/rooms/private-1/variables/v", {"value": 2}),
       SetVariableRequest(room_id="private-1", name="v", value=Value.from_dict(2))),
    Op("DeleteVariable", "DeleteVariable", "private-1", ("DELETE", "/v1/rooms/private-1/variables/v", None),
       DeleteVariableRequest(room_id="private-1", name="v")),
    Op("ListenVariable", "ListenVariable", "private-1",
       ("GET", "/v1/rooms/private-1/variables/v:listen", None),
       ListenVariableRequest(room_id="private-1", name="v"), streaming=True),
    Op("PublishEvent", "PublishEvent", "private-1", ("POST", "/v1/rooms/private-1/events/e", {"data": 1}),
       PublishEventRequest(room_id="private-1", name="e", data=Value.from_dict(1))),
    Op("ListenEvents", "ListenEvents", "private-1", ("GET", "/v1/rooms/private-1/events/e:listen", None),
       ListenEventsRequest(room_id="private-1", name="e"), streaming=True),
    Op("CreateRoomToken", "CreateRoomToken", "private-1",
       ("POST", "/v1/rooms/private-1/tokens", {"userName": "bob", "role": "guest"}),
       CreateRoomTokenRequest(room_id="private-1", user_name="bob", role="guest")),
    Op("ListenRoom", "ListenRoom", "private-1", ("GET", "/v1/rooms/private-1:listen", None),
       ListenRoomRequest(room_id="private-1"), streaming=True),
    Op("ListChanges", "ListChanges", "private-1", ("GET", "/v1/rooms/private-1/changes", None),
       ListChangesRequest(room_id="private-1")),
    Op("GetPresence", "GetPresence", "private-1", ("GET", "/v1/rooms/private-1/presence", None),
       GetPresenceRequest(room_id="private-1")),
    Op("ListWebhooks", "ListWebhooks", None, ("GET", "/v1/webhooks", None), ListWebhooksRequest()),
    Op("ListWebhookMessages", "ListWebhookMessages", None, ("GET", "/v1/webhooks/app/messages", None),
       ListWebhookMessagesRequest(name="app")),
    Op("RetryWebhookMessage", "RetryWebhookMessage", None,
       ("POST", f"/v1/webhooks/app/messages/{HOOK_MESSAGE}:retry", {}),
       RetryWebhookMessageRequest(name="app", message_id=HOOK_MESSAGE)),
    Op("ReplayWebhook", "ReplayWebhook", None,
       ("POST", "/v1/webhooks/app:replay", {"since": "2026-01-01T00:00:00Z"}),
       ReplayWebhookRequest(name="app", since=datetime(2026, 1, 1, tzinfo=UTC))),
    Op("EnableWebhook", "EnableWebhook", None, ("POST", "/v1/webhooks/app:enable", {}),
       EnableWebhookRequest(name="app")),
    Op("SendWebhookTest", "SendWebhookTest", None, ("POST", "/v1/webhooks/app:test", {}),
       SendWebhookTestRequest(name="app")),
]  # fmt: skip

# -- the credential cases and the expected statuses ----------------------------------------------------------

CASES = (
    "none",  # no credentials
    "malformed",  # Authorization: Bearer (nothing)
    "wrong_key",  # X-API-Key that is no key
    "no_permission",  # a key with every permission but the method's
    "wrong_room",  # a key for public-* on a private room
    "token_expired",
    "token_tampered",
    "token_other_room",  # a valid moderator token for other-room
    "token_invalidated",
    "token_valid",  # a valid moderator token for the method's room
    "token_guest",  # a valid guest token (variables:read, events:listen) for the method's room
    "key_valid",  # the admin key
)

# fmt: off
#                                  none malf wrong noperm wroom  exp  tamp other inval valid guest key
EXPECTED: dict[str, tuple[int, ...]] = {
    "CreateRoom":                   (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "GetRoom":                      (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "ListRooms":                    (401, 401, 401, 403,  200,  401, 401, 403,  403,  403,  403, 200),
    "UpdateRoom":                   (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "CloseRoom":                    (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "DeleteRoom":                   (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "GetRoomContents":              (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  200, 200),
    "InvalidateConnections":        (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "InvalidateConnections-global": (401, 401, 401, 403,  403,  401, 401, 403,  403,  403,  403, 200),
    "GetVariable":                  (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  200, 200),
    "SetVariable":                  (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "DeleteVariable":               (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "ListenVariable":               (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  200, 200),
    "PublishEvent":                 (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "ListenEvents":                 (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  200, 200),
    "CreateRoomToken":              (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "ListenRoom":                   (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  200, 200),
    "ListChanges":                  (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  200, 200),
    "GetPresence":                  (401, 401, 401, 403,  403,  401, 401, 403,  401,  200,  403, 200),
    "ListWebhooks":                 (401, 401, 401, 403,  403,  401, 401, 403,  403,  403,  403, 200),
    "ListWebhookMessages":          (401, 401, 401, 403,  403,  401, 401, 403,  403,  403,  403, 200),
    "RetryWebhookMessage":          (401, 401, 401, 403,  403,  401, 401, 403,  403,  403,  403, 200),
    "ReplayWebhook":                (401, 401, 401, 403,  403,  401, 401, 403,  403,  403,  403, 200),
    "EnableWebhook":                (401, 401, 401, 403,  403,  401, 401, 403,  403,  403,  403, 200),
    "SendWebhookTest":              (401, 401, 401, 403,  403,  401, 401, 403,  403,  403,  403, 200),
}
# fmt: on

GRPC_STATUS = {200: Status.OK, 401: Status.UNAUTHENTICATED, 403: Status.PERMISSION_DENIED}


def test_the_matrix_covers_every_method_and_case() -> None:
    assert {op.method for op in OPS} == set(REQUIRED)
    assert [op.id for op in OPS] == list(EXPECTED)
    assert all(len(row) == len(CASES) for row in EXPECTED.values())


# -- one cell's gateway --------------------------------------------------------------------------------------


@dataclass
class World:
    dispatcher: Dispatcher
    service: RoomService
    tokens: dict[str, str]


def _tamper(token: str) -> str:
    """The token with its payload edited (permissions widened, room changed) and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["perms"], claims["room"] = ["*"], claims["room"] + "x"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


async def build_world(op: Op, backend: MemoryBackend) -> World:
    clock = FrozenClock()
    issuer = RoomTokenIssuer(SECRET, roles=ROLES, clock=clock)
    service = RoomService(backend, clock=clock, tokens=issuer, webhooks=await _webhooks(backend))
    policy = AuthPolicy(KEYS, tokens=issuer)
    admin = Principal("admin", frozenset({"*"}))
    for room_id in ("private-1", "closed-1", "other-room"):
        await service.create_room({"room_id": room_id})
    await service.set_variable("private-1", "v", 1)
    room = op.token_room

    async def mint(room_id: str, role: str, ttl: int = 0) -> str:
        made = await service.create_room_token(room_id, "ann", role, ttl_seconds=ttl, caller=admin)
        return made.token

    tokens = {
        "token_expired": await mint(room, "moderator", ttl=1),
        "token_other_room": await mint("other-room", "moderator"),
        "token_invalidated": await mint(room, "moderator"),
    }
    clock.advance(1)
    exists = await backend.get_room(room) is not None
    await service.invalidate_connections(room if exists else "")
    clock.advance(1)
    tokens["token_valid"] = await mint(room, "moderator")
    tokens["token_guest"] = await mint(room, "guest")
    tokens["token_tampered"] = _tamper(tokens["token_valid"])
    await service.close_room("closed-1")
    clock.advance(10)  # past the expired token's exp and its leeway
    return World(Dispatcher(service, policy), service, tokens)


async def _webhooks(backend: MemoryBackend) -> WebhookManager:
    """One endpoint, ``app``, holding one message, :data:`HOOK_MESSAGE` (the deliverers never start)."""
    config = Webhooks(endpoints=[WebhookEndpoint(name="app", url="http://127.0.0.1:9", secret=HOOK_SECRET)])
    backend.outbox = outbox_of(config)
    now = datetime(2026, 1, 2, tzinfo=UTC)
    await backend.outbox_add([OutboxMessage(HOOK_MESSAGE, "app", "", None, due_time=now, created_time=now)])
    return WebhookManager(config, backend, Deliverers(config, backend, Metrics()))


def credentials(case: str, op: Op, world: World) -> dict[str, str]:
    """The headers (REST) / metadata (gRPC) of a credential case, lower-case names."""
    if case == "none":
        return {}
    if case == "malformed":
        return {"authorization": "Bearer"}
    if case == "wrong_key":
        return {"x-api-key": "no-such-key-0123456789"}
    if case == "no_permission":
        return {"x-api-key": _all_but(REQUIRED[op.method])}
    if case == "wrong_room":
        return {"x-api-key": PUBLIC}
    if case == "key_valid":
        return {"x-api-key": ADMIN}
    return {"authorization": f"Bearer {world.tokens[case]}"}


# -- the transports ------------------------------------------------------------------------------------------


async def rest_status(app: Starlette, op: Op, headers: dict[str, str]) -> int:
    verb, path, body = op.http
    content = orjson.dumps(body) if body is not None else b""
    if body is not None:
        headers = {**headers, "content-type": "application/json"}
    if not op.streaming:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            response = await client.request(verb, path, content=content or None, headers=headers)
        return response.status_code
    # httpx's ASGITransport waits for the whole body, which a stream never ends: drive the ASGI call.
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": content, "more_body": False})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": verb,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("t", 80),
    }
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    try:
        start = await asyncio.wait_for(outbox.get(), 2)
        assert start["type"] == "http.response.start"
        return int(start["status"])
    finally:
        await inbox.put({"type": "http.disconnect"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 2)
        task.cancel()


@contextlib.asynccontextmanager
async def grpc_stub(dispatcher: Dispatcher) -> AsyncIterator[RoomServiceStub]:
    server = create_grpc_server(dispatcher)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await server.start(sock=sock)
    channel = Channel("127.0.0.1", sock.getsockname()[1])
    try:
        yield RoomServiceStub(channel)
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def grpc_status(stub: RoomServiceStub, op: Op, metadata: dict[str, str]) -> Status:
    call = getattr(stub, _python_name(op.method))
    try:
        if not op.streaming:
            await call(op.grpc, metadata=metadata, timeout=5)
            return Status.OK
        messages = call(op.grpc, metadata=metadata, timeout=5)
        try:
            await asyncio.wait_for(anext(messages), 0.5)
        except (TimeoutError, StopAsyncIteration):
            pass  # open and silent (no event yet), or ended cleanly
        finally:
            await messages.aclose()
        return Status.OK
    except GRPCError as err:
        return err.status


def _python_name(method: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in method).lstrip("_")


# -- the matrix ----------------------------------------------------------------------------------------------


def _cells() -> list[Any]:
    return [
        pytest.param(op, case, EXPECTED[op.id][index], id=f"{op.id}-{case}")
        for op in OPS
        for index, case in enumerate(CASES)
    ]


@pytest.mark.parametrize(("op", "case", "expected"), _cells())
async def test_rest(op: Op, case: str, expected: int, backend: MemoryBackend) -> None:
    world = await build_world(op, backend)
    app = create_http_app(world.dispatcher, keepalive_seconds=0.05)
    assert await rest_status(app, op, credentials(case, op, world)) == expected


@pytest.mark.parametrize(("op", "case", "expected"), _cells())
async def test_grpc(op: Op, case: str, expected: int, backend: MemoryBackend) -> None:
    world = await build_world(op, backend)
    async with grpc_stub(world.dispatcher) as stub:
        assert await grpc_status(stub, op, credentials(case, op, world)) == GRPC_STATUS[expected]


# -- what the statuses alone do not show ---------------------------------------------------------------------


async def test_401_carries_www_authenticate_for_every_kind_of_bad_credential(backend: MemoryBackend) -> None:
    op = next(o for o in OPS if o.id == "GetRoom")
    world = await build_world(op, backend)
    app = create_http_app(world.dispatcher)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        for case in (
            "none",
            "malformed",
            "wrong_key",
            "token_expired",
            "token_tampered",
            "token_invalidated",
        ):
            response = await client.get("/v1/rooms/private-1", headers=credentials(case, op, world))
            assert response.status_code == 401, case
            assert response.headers["www-authenticate"].startswith("Bearer"), case


async def test_errors_never_echo_the_token(backend: MemoryBackend) -> None:
    op = next(o for o in OPS if o.id == "GetRoom")
    world = await build_world(op, backend)
    app = create_http_app(world.dispatcher)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        for case in ("token_expired", "token_tampered", "token_invalidated", "token_other_room"):
            token = world.tokens[case]
            response = await client.get("/v1/rooms/private-1", headers=credentials(case, op, world))
            assert response.status_code in (401, 403)
            for part in token.split("."):
                assert part not in response.text, case


async def test_list_rooms_shows_a_pattern_limited_key_only_its_rooms(backend: MemoryBackend) -> None:
    op = next(o for o in OPS if o.id == "ListRooms")
    world = await build_world(op, backend)
    for room_id in ("public-a", "public-b", "public-c", "q"):
        await world.service.create_room({"room_id": room_id})
    app = create_http_app(world.dispatcher)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://t", headers={"x-api-key": PUBLIC}
    ) as client:
        first = (await client.get("/v1/rooms", params={"maxResults": 2})).json()
        assert [r["roomId"] for r in first["results"]] == ["public-a", "public-b"]
        assert first["more"] is True
        rest = (await client.get("/v1/rooms", params={"startAfterKey": "public-b"})).json()
        assert [r["roomId"] for r in rest["results"]] == ["public-c"]
        assert rest["more"] is False
        asked = (
            await client.get("/v1/rooms", params=[("roomId", "private-1"), ("roomId", "public-a")])
        ).json()
        assert [r["roomId"] for r in asked["results"]] == ["public-a"]
