"""The Reflect surface in-process: every command, its envelopes, statuses, strict parsing and permissions,
and the same rooms seen through the native API."""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import ValidationError
from room_gateway_plugins.reflect.route import ReflectRoute

from gateway.app import create_gateway
from gateway.config import GatewayConfig
from tests.compat.reflect.conftest import (
    ADMIN_KEY,
    APP,
    CREATOR_KEY,
    PUBLIC_KEY,
    READER_KEY,
    basic,
    reflect_config,
)

BASE = f"/v1/apps/{APP}"
NATIVE = {"X-API-Key": ADMIN_KEY}


async def create(http: httpx.AsyncClient, room_id: str, body: bytes = b"{}") -> httpx.Response:
    return await http.post(f"{BASE}/rooms:create", params={"roomID": room_id}, content=body)


async def post(http: httpx.AsyncClient, command: str, room_id: str) -> httpx.Response:
    return await http.post(f"{BASE}/{command}", params={"roomID": room_id})


def ok(response: httpx.Response) -> object:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"result", "error"} and body["error"] is None
    return body["result"]


def error(response: httpx.Response, status: int, resource: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["result"] is None
    assert set(body["error"]) == {"code", "resource", "message"}
    assert body["error"]["code"] == status
    assert body["error"]["resource"] == resource
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


# -- the room lifecycle -------------------------------------------------------------------------------------


async def test_a_room_goes_open_closed_deleted(http: httpx.AsyncClient) -> None:
    assert ok(await create(http, "r1", b'{"jurisdiction":"eu"}')) == {}
    rooms = ok(await http.get(f"{BASE}/rooms"))
    assert rooms == {
        "results": [{"roomID": "r1", "jurisdiction": "eu", "status": "open"}],
        "numResults": 1,
        "more": False,
    }
    assert ok(await post(http, "rooms:close", "r1")) == {}
    assert ok(await http.get(f"{BASE}/rooms", params={"roomID": "r1"}))["results"][0]["status"] == "closed"
    assert ok(await post(http, "rooms:delete", "r1")) == {}
    assert ok(await http.get(f"{BASE}/rooms", params={"roomID": "r1"}))["results"] == [
        {"roomID": "r1", "jurisdiction": "eu", "status": "deleted"}
    ]


async def test_create_twice_is_409(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    error(await create(http, "r"), 409, "rooms")


async def test_a_deleted_id_is_never_created_again(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    ok(await post(http, "rooms:close", "r"))
    ok(await post(http, "rooms:delete", "r"))
    error(await create(http, "r"), 409, "rooms")


async def test_delete_an_open_room_is_409(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    error(await post(http, "rooms:delete", "r"), 409, "rooms")


async def test_close_a_closed_room_is_409(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    ok(await post(http, "rooms:close", "r"))
    error(await post(http, "rooms:close", "r"), 409, "rooms")


@pytest.mark.parametrize("command", ["rooms:close", "rooms:delete", "connections/rooms:invalidate"])
async def test_commands_on_an_unknown_room_are_404(http: httpx.AsyncClient, command: str) -> None:
    error(await post(http, command, "nowhere"), 404, "rooms")


async def test_contents_of_an_unknown_room_is_404(http: httpx.AsyncClient) -> None:
    error(await http.get(f"{BASE}/rooms/contents", params={"roomID": "nowhere"}), 404, "rooms")


@pytest.mark.parametrize("command", ["rooms:close", "rooms:delete", "connections/rooms:invalidate"])
async def test_commands_on_a_deleted_room_are_410(http: httpx.AsyncClient, command: str) -> None:
    ok(await create(http, "r"))
    ok(await post(http, "rooms:close", "r"))
    ok(await post(http, "rooms:delete", "r"))
    error(await post(http, command, "r"), 410, "rooms")


async def test_contents_of_a_deleted_room_is_410(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    ok(await post(http, "rooms:close", "r"))
    ok(await post(http, "rooms:delete", "r"))
    error(await http.get(f"{BASE}/rooms/contents", params={"roomID": "r"}), 410, "rooms")


async def test_contents_is_every_variable_as_one_object(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    assert ok(await http.get(f"{BASE}/rooms/contents", params={"roomID": "r"})) == {"contents": {}}
    for name, value in {"count": 3, "doc": {"title": "x", "tags": ["a"]}, "nothing": None}.items():
        response = await http.put(f"/v1/rooms/r/variables/{name}", json={"value": value}, headers=NATIVE)
        assert response.status_code == 200, response.text
    contents = {"count": 3, "doc": {"title": "x", "tags": ["a"]}, "nothing": None}
    assert ok(await http.get(f"{BASE}/rooms/contents", params={"roomID": "r"})) == {"contents": contents}
    ok(await post(http, "rooms:close", "r"))  # a closed room keeps its data
    assert ok(await http.get(f"{BASE}/rooms/contents", params={"roomID": "r"})) == {"contents": contents}


async def test_invalidate_connections(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    assert ok(await http.post(f"{BASE}/connections/all:invalidate")) == {}
    assert ok(await post(http, "connections/rooms:invalidate", "r")) == {}


# -- listing ------------------------------------------------------------------------------------------------


@pytest.fixture
async def five_rooms(http: httpx.AsyncClient) -> list[str]:
    ids = ["b", "a", "e", "c", "d"]
    for room_id in ids:
        ok(await create(http, room_id))
    return sorted(ids)


def ids(result: object) -> list[str]:
    assert isinstance(result, dict)
    assert result["numResults"] == len(result["results"])
    return [room["roomID"] for room in result["results"]]


async def test_list_is_in_room_id_order_with_pagination(
    http: httpx.AsyncClient, five_rooms: list[str]
) -> None:
    assert ids(ok(await http.get(f"{BASE}/rooms"))) == five_rooms
    page = ok(await http.get(f"{BASE}/rooms", params={"maxResults": 2}))
    assert ids(page) == ["a", "b"] and page["more"] is True
    page = ok(await http.get(f"{BASE}/rooms", params={"maxResults": 2, "startAfterKey": "b"}))
    assert ids(page) == ["c", "d"] and page["more"] is True
    page = ok(await http.get(f"{BASE}/rooms", params={"maxResults": 2, "startAfterKey": "d"}))
    assert ids(page) == ["e"] and page["more"] is False
    page = ok(await http.get(f"{BASE}/rooms", params={"startKey": "c"}))
    assert ids(page) == ["c", "d", "e"] and page["more"] is False
    page = ok(await http.get(f"{BASE}/rooms", params={"startKey": "bb", "maxResults": 1}))
    assert ids(page) == ["c"] and page["more"] is True


async def test_list_by_room_ids(http: httpx.AsyncClient, five_rooms: list[str]) -> None:
    page = ok(
        await http.get(f"{BASE}/rooms", params=[("roomID", "d"), ("roomID", "missing"), ("roomID", "a")])
    )
    assert ids(page) == ["a", "d"] and page["more"] is False


async def test_max_results_zero_says_only_whether_there_are_more(
    http: httpx.AsyncClient, five_rooms: list[str]
) -> None:
    assert ok(await http.get(f"{BASE}/rooms", params={"maxResults": 0})) == {
        "results": [],
        "numResults": 0,
        "more": True,
    }


@pytest.mark.parametrize(
    "params",
    [
        [("startKey", "a"), ("startAfterKey", "b")],
        [("startKey", "a"), ("roomID", "b")],
        [("startAfterKey", "a"), ("roomID", "b")],
        [("maxResults", "ten")],
        [("maxResults", "-1")],
        [("startKey", "a"), ("startKey", "b")],
        [("roomID", "x" * 513)],
        [("limit", "1")],
    ],
)
async def test_bad_list_queries_are_400(http: httpx.AsyncClient, params: list[tuple[str, str]]) -> None:
    error(await http.get(f"{BASE}/rooms", params=params), 400, "request")


# -- strict parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/rooms/contents?roomID=r&extra=1"),
        ("POST", "/rooms:close?roomID=r&force=true"),
        ("POST", "/rooms:delete?roomID=r&roomID=s"),
        ("POST", "/connections/all:invalidate?roomID=r"),
        ("POST", "/rooms:close"),
        ("POST", "/rooms:close?roomID="),
        ("GET", "/rooms/contents"),
    ],
)
async def test_unexpected_or_missing_query_parameters_are_400(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    ok(await create(http, "r"))
    error(await http.request(method, BASE + path), 400, "request")


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'"eu"', b'{"jurisdiction":"us"}', b'{"jurisdiction":1}', b'{"name":"x"}'],
)
async def test_create_needs_its_json_body(http: httpx.AsyncClient, body: bytes) -> None:
    error(await create(http, "r", body), 400, "request")
    assert ok(await http.get(f"{BASE}/rooms"))["results"] == []


async def test_create_takes_the_body_whatever_its_content_type(http: httpx.AsyncClient) -> None:
    # Reflect's example is `curl -d '{"jurisdiction":"eu"}'`: application/x-www-form-urlencoded.
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await http.post(
        f"{BASE}/rooms:create", params={"roomID": "r"}, content=b'{"jurisdiction":"eu"}', headers=headers
    )
    assert ok(response) == {}
    ok(await create(http, "s", b'{"jurisdiction":""}'))
    assert [room["jurisdiction"] for room in ok(await http.get(f"{BASE}/rooms"))["results"]] == ["eu", ""]


async def test_a_body_where_none_is_taken_is_400(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    response = await http.post(f"{BASE}/rooms:close", params={"roomID": "r"}, content=b"{}")
    error(response, 400, "request")


async def test_room_ids_are_taken_percent_encoded(http: httpx.AsyncClient) -> None:
    room_id = "https://play.example.com/_/global/map.json?a=b&c"
    ok(await create(http, room_id))
    assert ids(ok(await http.get(f"{BASE}/rooms"))) == [room_id]
    assert ok(await http.get(f"{BASE}/rooms/contents", params={"roomID": room_id})) == {"contents": {}}


# -- routing ------------------------------------------------------------------------------------------------


async def test_an_unknown_app_is_404(http: httpx.AsyncClient) -> None:
    error(await http.get("/v1/apps/other-app/rooms"), 404, "apps")


@pytest.mark.parametrize(
    "path", ["", "/", "/room", "/rooms/r", "/rooms:open", "/connections/users:invalidate"]
)
async def test_an_unknown_command_is_404(http: httpx.AsyncClient, path: str) -> None:
    error(await http.post(BASE + path), 404, "request")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", "/rooms", "GET"), ("GET", "/rooms:create", "POST"), ("DELETE", "/rooms:delete", "POST")],
)
async def test_a_wrong_method_is_405(http: httpx.AsyncClient, method: str, path: str, allowed: str) -> None:
    response = await http.request(method, BASE + path)
    error(response, 405, "request")
    assert response.headers["allow"] == allowed


# -- credentials and permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, basic("wrong-key-0123456789abcdef"), {"Authorization": "Basic"}, {"Authorization": "Token x"}],
)
async def test_bad_credentials_are_401(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    http.headers.pop("Authorization")
    response = await http.get(f"{BASE}/rooms", headers=headers)
    error(response, 401, "request")
    assert "Basic" in response.headers["www-authenticate"]


async def test_credentials_come_before_the_app(http: httpx.AsyncClient) -> None:
    http.headers.pop("Authorization")
    error(await http.get("/v1/apps/other-app/rooms"), 401, "request")


async def test_reflect_permission_names_are_ours(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    reader, creator = basic(READER_KEY), basic(CREATOR_KEY)
    ok(await http.get(f"{BASE}/rooms", headers=reader))  # rooms:read
    response = await http.post(f"{BASE}/rooms:create", params={"roomID": "s"}, content=b"{}", headers=reader)
    error(response, 403, "request")  # rooms:create
    ok(await http.post(f"{BASE}/rooms:create", params={"roomID": "s"}, content=b"{}", headers=creator))
    error(await http.post(f"{BASE}/rooms:close", params={"roomID": "s"}, headers=creator), 403, "request")
    error(await http.post(f"{BASE}/rooms:delete", params={"roomID": "s"}, headers=creator), 403, "request")
    error(await http.post(f"{BASE}/connections/all:invalidate", headers=creator), 403, "request")
    # A room's contents is its variables: variables:read.
    error(await http.get(f"{BASE}/rooms/contents", params={"roomID": "r"}, headers=reader), 403, "request")


async def test_a_key_limited_to_some_rooms(http: httpx.AsyncClient) -> None:
    for room_id in ("public-1", "private-1", "public-2"):
        ok(await create(http, room_id))
    limited = basic(PUBLIC_KEY)
    assert ids(ok(await http.get(f"{BASE}/rooms", headers=limited))) == ["public-1", "public-2"]
    ok(await http.post(f"{BASE}/rooms:close", params={"roomID": "public-1"}, headers=limited))
    error(
        await http.post(f"{BASE}/rooms:close", params={"roomID": "private-1"}, headers=limited),
        403,
        "request",
    )
    error(await http.post(f"{BASE}/connections/all:invalidate", headers=limited), 403, "request")


async def test_other_accepted_credentials_work_too(http: httpx.AsyncClient) -> None:
    http.headers.pop("Authorization")
    ok(await http.get(f"{BASE}/rooms", headers={"X-API-Key": ADMIN_KEY}))
    ok(await http.get(f"{BASE}/rooms", headers={"Authorization": f"Bearer {ADMIN_KEY}"}))


# -- one set of rooms ---------------------------------------------------------------------------------------


async def test_a_room_closed_through_reflect_refuses_new_native_streams(http: httpx.AsyncClient) -> None:
    ok(await create(http, "r"))
    ok(await post(http, "rooms:close", "r"))
    for path in ("/v1/rooms/r/variables/x:listen", "/v1/rooms/r/events/e:listen"):
        response = await http.get(path, headers=NATIVE)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["status"] == "FAILED_PRECONDITION"
    native = await http.get("/v1/rooms/r", headers=NATIVE)
    assert native.json()["status"] == "CLOSED"


async def test_rooms_made_natively_are_listed_by_reflect(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/rooms", json={"roomId": "n", "jurisdiction": "eu"}, headers=NATIVE)
    assert response.status_code == 200, response.text
    assert ok(await http.get(f"{BASE}/rooms"))["results"] == [
        {"roomID": "n", "jurisdiction": "eu", "status": "open"}
    ]
    assert (await http.post("/v1/rooms/n:close", json={}, headers=NATIVE)).status_code == 200
    ok(await post(http, "rooms:delete", "n"))
    response = await http.get("/v1/rooms/n/contents", headers=NATIVE)
    assert response.status_code == 404


# -- failures -----------------------------------------------------------------------------------------------


async def test_a_bug_is_a_500_in_reflects_shape(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(room_id: str = "") -> None:
        raise RuntimeError("secret detail")

    transport = http._transport
    assert isinstance(transport, httpx.ASGITransport)
    route = next(r for r in transport.app.routes if isinstance(r, ReflectRoute))  # type: ignore[attr-defined]
    monkeypatch.setitem(route.context.dispatcher._handlers, "CloseRoom", broken)
    ok(await create(http, "r"))
    with caplog.at_level(logging.ERROR):
        response = await post(http, "rooms:close", "r")
    message = error(response, 500, "request")
    assert "secret" not in message
    assert "secret detail" in caplog.text


async def test_a_body_over_the_limit_is_413(http: httpx.AsyncClient) -> None:
    error(await create(http, "r", b'{"jurisdiction":"' + b"x" * (2 * 1024 * 1024) + b'"}'), 413, "request")


# -- configuration ------------------------------------------------------------------------------------------


async def test_switched_off_the_prefix_is_the_native_404() -> None:
    config = reflect_config().model_copy(update={"surfaces": GatewayConfig().surfaces})
    gateway = create_gateway(config)
    transport = httpx.ASGITransport(app=gateway.http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get(f"{BASE}/rooms", headers=NATIVE)
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize("apps", [[], ["a/b"], ["x", "x"], [""]])
def test_the_apps_are_checked(apps: list[str]) -> None:
    with pytest.raises(ValidationError, match="apps"):
        reflect_config(apps=apps)
