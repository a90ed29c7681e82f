"""Every native REST binding of API.md, driven through the real app (httpx.ASGITransport)."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from tests.conftest import FrozenClock

WA_ROOM = "https://play.example.com/_/global/x"
T0 = "2026-01-02T03:04:05Z"


def enc(room_id: str) -> str:
    """A path segment as a client library encodes it (http.proto: all but [-_.~0-9a-zA-Z])."""
    return quote(room_id, safe="")


async def create(client: httpx.AsyncClient, room_id: str, **fields: object) -> dict[str, object]:
    response = await client.post("/v1/rooms", json={"roomId": room_id, **fields})
    assert response.status_code == 200, response.text
    return dict(response.json())


def error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "status", "message"}
    assert body["error"]["code"] == response.status_code
    assert response.headers["content-type"] == "application/json"
    return response.status_code, body["error"]["status"]


def snapshot(response: httpx.Response) -> tuple[dict[str, object], int]:
    """A room's contents and the log position they were read at (its epoch checked, not returned)."""
    body = response.json()
    assert set(body) == {"contents", "seq", "epoch"} and body["epoch"], body
    return body["contents"], int(body["seq"])


async def test_create_room_returns_it(client: httpx.AsyncClient) -> None:
    room = await create(client, "lobby", displayName="Lobby", settings={"size": "large", "enable_chat": True})
    assert room == {
        "roomId": "lobby",
        "displayName": "Lobby",
        "description": "",
        "status": "OPEN",
        "jurisdiction": "",
        "settings": {"size": "large", "enable_chat": True},
        "createTime": T0,
        "updateTime": T0,
        "numUsers": 0,
    }


async def test_get_room(client: httpx.AsyncClient) -> None:
    await create(client, "lobby")
    response = await client.get("/v1/rooms/lobby")
    assert response.status_code == 200
    assert response.json()["roomId"] == "lobby"
    assert error(await client.get("/v1/rooms/never")) == (404, "NOT_FOUND")


async def test_lifecycle_close_delete_and_ids_never_reused(
    client: httpx.AsyncClient, clock: FrozenClock
) -> None:
    await create(client, "r")
    await client.put("/v1/rooms/r/variables/v", json={"value": 1})
    assert error(await client.delete("/v1/rooms/r")) == (400, "FAILED_PRECONDITION")
    clock.advance(1)
    closed = await client.post("/v1/rooms/r:close")
    assert closed.status_code == 200 and closed.json()["status"] == "CLOSED"
    assert closed.json()["updateTime"] == "2026-01-02T03:04:06Z"
    assert error(await client.post("/v1/rooms/r:close")) == (400, "FAILED_PRECONDITION")
    # A closed room keeps its data and refuses writes.
    assert snapshot(await client.get("/v1/rooms/r/contents")) == ({"v": 1}, 3)
    assert error(await client.put("/v1/rooms/r/variables/v", json={"value": 2})) == (
        400,
        "FAILED_PRECONDITION",
    )
    deleted = await client.delete("/v1/rooms/r")
    assert deleted.status_code == 200 and deleted.json()["status"] == "DELETED"
    # The tombstone shows in GetRoom and ListRooms, NOT_FOUND elsewhere; the id is never reused.
    assert (await client.get("/v1/rooms/r")).json()["status"] == "DELETED"
    assert [r["status"] for r in (await client.get("/v1/rooms")).json()["results"]] == ["DELETED"]
    assert error(await client.get("/v1/rooms/r/contents")) == (404, "NOT_FOUND")
    assert error(await client.get("/v1/rooms/r/variables/v")) == (404, "NOT_FOUND")
    assert error(await client.put("/v1/rooms/r/variables/v", json={"value": 1})) == (404, "NOT_FOUND")
    assert error(await client.post("/v1/rooms/r/events/e", json={"data": 1})) == (404, "NOT_FOUND")
    assert error(await client.post("/v1/rooms", json={"roomId": "r"})) == (409, "ALREADY_EXISTS")


async def test_create_existing_room_is_already_exists(client: httpx.AsyncClient) -> None:
    await create(client, "r")
    assert error(await client.post("/v1/rooms", json={"roomId": "r"})) == (409, "ALREADY_EXISTS")


async def test_update_room_patch_is_partial_and_infers_the_mask(client: httpx.AsyncClient) -> None:
    await create(client, "r", displayName="Old", description="keep", settings={"a": 1})
    response = await client.patch("/v1/rooms/r", json={"displayName": "New"})
    assert response.status_code == 200
    room = response.json()
    assert (room["displayName"], room["description"], room["settings"]) == ("New", "keep", {"a": 1})
    # A key present in the body is in the inferred mask even when empty: it clears the field.
    room = (await client.patch("/v1/rooms/r", json={"description": ""})).json()
    assert (room["displayName"], room["description"]) == ("New", "")


async def test_update_room_put_binding_and_explicit_mask(client: httpx.AsyncClient) -> None:
    await create(client, "r", displayName="Old", description="d")
    response = await client.put(
        "/v1/rooms/r",
        params={"updateMask": "description"},
        json={"displayName": "ignored", "description": "x"},
    )
    assert response.status_code == 200
    assert (response.json()["displayName"], response.json()["description"]) == ("Old", "x")


async def test_update_room_refuses_a_bad_value_outside_the_mask(client: httpx.AsyncClient) -> None:
    """Not applied, but still input: an invalid jurisdiction outside ``updateMask`` is a 400, not a 200."""
    await create(client, "r", description="d")
    response = await client.patch(
        "/v1/rooms/r", params={"updateMask": "description"}, json={"description": "x", "jurisdiction": "mars"}
    )
    assert error(response) == (400, "INVALID_ARGUMENT")
    assert (await client.get("/v1/rooms/r")).json()["description"] == "d"


async def test_update_room_output_only_fields_are_ignored(client: httpx.AsyncClient) -> None:
    await create(client, "r")
    response = await client.patch("/v1/rooms/r", json={"status": "CLOSED", "displayName": "n"})
    assert response.status_code == 200 and response.json()["status"] == "OPEN"


async def test_update_room_path_body_conflict(client: httpx.AsyncClient) -> None:
    await create(client, "r")
    assert error(await client.patch("/v1/rooms/r", json={"roomId": "other"})) == (400, "INVALID_ARGUMENT")
    assert (await client.patch("/v1/rooms/r", json={"roomId": "r"})).status_code == 200


async def test_room_contents(client: httpx.AsyncClient) -> None:
    await client.put("/v1/rooms/r/variables/a", json={"value": {"x": [1, 2]}})
    await client.put("/v1/rooms/r/variables/b", json={"value": None})
    assert snapshot(await client.get("/v1/rooms/r/contents")) == ({"a": {"x": [1, 2]}, "b": None}, 3)


async def test_variables_versions_and_expected_version(client: httpx.AsyncClient) -> None:
    first = await client.put("/v1/rooms/r/variables/v", json={"value": "a"})
    assert first.json() == {"name": "v", "value": "a", "version": "1", "updateTime": T0}
    second = await client.put("/v1/rooms/r/variables/v", json={"value": "b", "expectedVersion": "1"})
    assert second.json()["version"] == "2"
    stale = await client.put("/v1/rooms/r/variables/v", json={"value": "c", "expectedVersion": 1})
    assert error(stale) == (409, "ABORTED")
    assert (await client.get("/v1/rooms/r/variables/v")).json()["value"] == "b"
    # Absent expectedVersion is an unconditional write; 0 means "unset".
    assert error(await client.put("/v1/rooms/r/variables/w", json={"value": 1, "expectedVersion": "1"})) == (
        409,
        "ABORTED",
    )
    assert (
        await client.put("/v1/rooms/r/variables/w", json={"value": 1, "expected_version": 0})
    ).status_code == 200


async def test_delete_variable_then_not_found_and_version_keeps_growing(client: httpx.AsyncClient) -> None:
    await client.put("/v1/rooms/r/variables/v", json={"value": 1})
    deleted = await client.delete("/v1/rooms/r/variables/v")
    assert deleted.status_code == 200 and deleted.json() == {}
    assert error(await client.get("/v1/rooms/r/variables/v")) == (404, "NOT_FOUND")
    again = await client.put("/v1/rooms/r/variables/v", json={"value": 2})
    assert again.json()["version"] == "3"
    assert (await client.delete("/v1/rooms/r/variables/never")).status_code == 200


async def test_set_variable_requires_a_value(client: httpx.AsyncClient) -> None:
    assert error(await client.put("/v1/rooms/r/variables/v", json={})) == (400, "INVALID_ARGUMENT")
    assert error(await client.put("/v1/rooms/r/variables/v")) == (400, "INVALID_ARGUMENT")


async def test_publish_event(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/rooms/r/events/ping", json={"data": {"n": 1}})
    assert response.json() == {"name": "ping", "data": {"n": 1}, "time": T0}
    # The first event created the room (auto_create_rooms).
    assert (await client.get("/v1/rooms/r")).status_code == 200


async def test_invalidate_connections_both_bindings(client: httpx.AsyncClient) -> None:
    await create(client, "r")
    one = await client.post("/v1/rooms/r:invalidateConnections")
    assert one.json() == {"invalidateTime": T0}
    every = await client.post("/v1/connections:invalidate", json={})
    assert every.json() == {"invalidateTime": T0}
    assert error(await client.post("/v1/rooms/never:invalidateConnections")) == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    "room_id",
    [WA_ROOM, "a:b", "a/b:close", "with space", "ünïcödé", "50%", "a?b#c"],
)
async def test_percent_encoded_room_ids(client: httpx.AsyncClient, room_id: str) -> None:
    await create(client, room_id)
    path = f"/v1/rooms/{enc(room_id)}"
    assert (await client.get(path)).json()["roomId"] == room_id
    put = await client.put(f"{path}/variables/v", json={"value": 1})
    assert put.status_code == 200, put.text
    assert snapshot(await client.get(f"{path}/contents")) == ({"v": 1}, 2)
    closed = await client.post(f"{path}:close")
    assert closed.json()["roomId"] == room_id and closed.json()["status"] == "CLOSED"


async def test_unencoded_colon_in_room_id_is_still_a_room(client: httpx.AsyncClient) -> None:
    await create(client, "a:b")
    assert (await client.get("/v1/rooms/a:b")).json()["roomId"] == "a:b"
    # The verb is what follows the last colon: a:b:close closes room "a:b".
    assert (await client.post("/v1/rooms/a:b:close")).json()["status"] == "CLOSED"


async def test_encoded_slash_is_not_a_separator(client: httpx.AsyncClient) -> None:
    await create(client, "a/contents")
    assert (await client.get("/v1/rooms/a%2Fcontents")).json()["roomId"] == "a/contents"
    assert error(await client.get("/v1/rooms/a/contents")) == (404, "NOT_FOUND")  # room "a"


async def test_variable_named_like_a_verb(client: httpx.AsyncClient) -> None:
    put = await client.put("/v1/rooms/r/variables/x%3Alisten", json={"value": 1})
    assert put.json()["name"] == "x:listen"
    assert (await client.get("/v1/rooms/r/variables/x%3Alisten")).json()["value"] == 1


# -- ListRooms ---------------------------------------------------------------------------------------------


async def _rooms(client: httpx.AsyncClient, **params: object) -> httpx.Response:
    return await client.get("/v1/rooms", params=params)


async def test_list_rooms_empty(client: httpx.AsyncClient) -> None:
    assert (await _rooms(client)).json() == {"results": [], "numResults": 0, "more": False}


async def test_list_rooms_pagination(client: httpx.AsyncClient) -> None:
    for room_id in ["b", "a", "d", "c", "B"]:
        await create(client, room_id)

    def ids(response: httpx.Response) -> list[str]:
        return [room["roomId"] for room in response.json()["results"]]

    everything = await _rooms(client)
    assert ids(everything) == ["B", "a", "b", "c", "d"]  # code-point order
    assert everything.json()["numResults"] == 5 and everything.json()["more"] is False
    page = await _rooms(client, maxResults=2)
    assert ids(page) == ["B", "a"] and page.json()["more"] is True and page.json()["numResults"] == 2
    assert ids(await _rooms(client, startKey="b", maxResults=2)) == ["b", "c"]
    assert ids(await _rooms(client, startAfterKey="b", maxResults=2)) == ["c", "d"]
    last = await _rooms(client, startAfterKey="c", maxResults="2")
    assert ids(last) == ["d"] and last.json()["more"] is False
    assert ids(await client.get("/v1/rooms?roomId=d&roomId=a&roomId=zz")) == ["a", "d"]
    assert ids(await client.get("/v1/rooms?room_id=c&max_results=1")) == ["c"]


@pytest.mark.parametrize(
    "query",
    ["startKey=a&startAfterKey=b", "startKey=a&roomId=b", "startAfterKey=a&roomId=b", "maxResults=-1"],
)
async def test_list_rooms_bad_combinations(client: httpx.AsyncClient, query: str) -> None:
    assert error(await client.get(f"/v1/rooms?{query}")) == (400, "INVALID_ARGUMENT")


async def test_list_rooms_caps_max_results(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, f"r{i}")
    assert (await _rooms(client, maxResults=100000)).json()["numResults"] == 3


# -- routing -----------------------------------------------------------------------------------------------


async def test_unknown_path_is_404_in_the_error_shape(client: httpx.AsyncClient) -> None:
    for path in ["/nope", "/v1", "/v1/rooms/", "/v1/rooms/r/unknown", "/v1/rooms/r:unknownVerb/x"]:
        assert error(await client.get(path)) == (404, "NOT_FOUND"), path


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/rooms/r")
    assert error(response) == (405, "UNIMPLEMENTED")
    assert response.headers["allow"] == "DELETE, GET, PATCH, PUT"
    response = await client.delete("/v1/rooms")
    assert error(response) == (405, "UNIMPLEMENTED") and response.headers["allow"] == "GET, POST"
    response = await client.get("/v1/connections:invalidate")
    assert error(response) == (405, "UNIMPLEMENTED") and response.headers["allow"] == "POST"


async def test_health_and_readiness_need_no_credentials(anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
    assert (await anonymous.get("/readyz")).json() == {"status": "ok"}
