"""The SignalWire surface in-process: rooms, conferences, paging, tokens, the vendor's error shapes, and the
same rooms and tokens seen through the native API."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest
from pydantic import ValidationError
from room_gateway_plugins.signalwire import endpoints

from gateway.app import create_gateway
from gateway.config import GatewayConfig
from tests.compat.signalwire.conftest import ADMIN_KEY, PROJECT, PUBLIC_KEY, READER_KEY, signalwire_config

NATIVE = {"X-API-Key": ADMIN_KEY}
CONFERENCE = {
    "name": "my_room",
    "display_name": "My Conference Room",
    "size": "medium",
    "quality": "1080p",
    "layout": "grid-responsive",
    "enable_room_previews": True,
    "enable_chat": True,
}
ROOM_FIELDS = {
    "id", "name", "display_name", "description", "max_members", "quality", "fps", "join_from", "join_until",
    "remove_at", "remove_after_seconds_elapsed", "layout", "record_on_start", "tone_on_entry_and_exit",
    "room_join_video_off", "user_join_video_off", "enable_room_previews", "sync_audio_video", "meta",
    "prioritize_handraise", "created_at", "updated_at",
}  # fmt: skip


def validation_error(
    response: httpx.Response, attribute: str | None, code: str = "invalid_parameter"
) -> None:
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert set(error) == {"type", "code", "message", "attribute"}
    assert (error["type"], error["code"], error["attribute"]) == ("validation_error", code, attribute)


async def create(http: httpx.AsyncClient, kind: str = "conferences", **body: object) -> dict[str, object]:
    response = await http.post(f"/api/video/{kind}", json={**CONFERENCE, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


# -- rooms and conferences -----------------------------------------------------------------------------------


async def test_a_conference_keeps_its_settings_and_is_a_native_room(http: httpx.AsyncClient) -> None:
    conference = await create(http)
    assert uuid.UUID(str(conference["id"]))
    assert {k: conference[k] for k in CONFERENCE} == CONFERENCE
    assert conference["dark_primary"] is None and conference["tone_on_entry_and_exit"] is True
    assert (
        str(conference["created_at"]).endswith("Z") and conference["created_at"] == conference["updated_at"]
    )

    native = (await http.get("/v1/rooms/my_room", headers=NATIVE)).json()
    assert native["displayName"] == "My Conference Room" and native["status"] == "OPEN"
    assert native["settings"] == {k: v for k, v in CONFERENCE.items() if k not in ("name", "display_name")}

    fetched = await http.get(f"/api/video/conferences/{conference['id']}")
    assert fetched.json() == conference


async def test_a_room_without_ui_shows_the_vendors_room_fields(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/video/rooms", json={"name": "plain", "max_members": 5, "meta": {"a": 1}})
    assert response.status_code == 201
    room = response.json()
    assert set(room) == ROOM_FIELDS
    assert (room["display_name"], room["max_members"], room["meta"], room["quality"]) == (
        "plain",
        5,
        {"a": 1},
        "720p",
    )
    # One room, two views: the same id under /rooms and /conferences.
    as_conference = await http.get(f"/api/video/conferences/{room['id']}")
    assert as_conference.status_code == 200 and as_conference.json()["size"] == "medium"


async def test_put_is_partial_and_may_rename(http: httpx.AsyncClient) -> None:
    conference = await create(http)
    update = {
        "name": "our_room",
        "display_name": "Our Room's Name",
        "enable_chat": False,
        "dark_background": "#5BB9A9",
        "dark_negative": "#2E26A1",
    }
    response = await http.put(f"/api/video/conferences/{conference['id']}", json=update)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert {k: updated[k] for k in update} == update
    assert updated["id"] == conference["id"]
    assert (updated["quality"], updated["size"], updated["enable_room_previews"]) == ("1080p", "medium", True)
    # The native id stays; the new name is kept in the settings.
    native = (await http.get("/v1/rooms/my_room", headers=NATIVE)).json()
    assert native["settings"]["name"] == "our_room" and native["settings"]["enable_chat"] is False
    # null unsets a nullable setting; the name is now taken, the old one free of vendor names but not of ids.
    cleared = await http.put(f"/api/video/conferences/{conference['id']}", json={"dark_negative": None})
    assert cleared.json()["dark_negative"] is None and cleared.json()["dark_background"] == "#5BB9A9"
    validation_error(
        await http.post("/api/video/rooms", json={"name": "our_room"}), "name", "value_not_unique"
    )
    validation_error(
        await http.post("/api/video/rooms", json={"name": "my_room"}), "name", "value_not_unique"
    )


async def test_delete_closes_and_deletes_the_native_room(http: httpx.AsyncClient) -> None:
    conference = await create(http)
    response = await http.delete(f"/api/video/conferences/{conference['id']}")
    assert (response.status_code, response.content) == (204, b"")
    assert (await http.get("/v1/rooms/my_room", headers=NATIVE)).json()["status"] == "DELETED"
    for path in (f"/api/video/conferences/{conference['id']}", f"/api/video/rooms/{conference['id']}"):
        gone = await http.get(path)
        assert (gone.status_code, gone.json()) == (404, {"error": "Not Found"})
    again = await http.delete(f"/api/video/rooms/{conference['id']}")
    assert again.status_code == 404
    listed = (await http.get("/api/video/conferences")).json()
    assert listed["data"] == []


async def test_a_room_made_natively_is_found_by_its_uuid(http: httpx.AsyncClient, gateway: object) -> None:
    created = await http.post("/v1/rooms", json={"roomId": "native-room"}, headers=NATIVE)
    assert created.status_code == 200, created.text
    room_uuid = str(uuid.uuid5(uuid.UUID("fda7882e-d2b5-4ea7-be2a-f635993e9d2e"), "native-room"))
    response = await http.get(f"/api/video/rooms/{room_uuid}")
    assert response.status_code == 200 and response.json()["name"] == "native-room"


# -- paging --------------------------------------------------------------------------------------------------


async def test_lists_page_forward_and_back_with_links(http: httpx.AsyncClient) -> None:
    names = [f"room_{i}" for i in range(5)]
    for name in names:
        await create(http, "rooms", name=name)
    seen, url, pages = [], "/api/video/rooms?page_size=2", []
    while url:
        page = (await http.get(url)).json()
        assert set(page) == {"links", "data"} and {"self", "first"} <= set(page["links"])
        pages.append(page)
        seen += [room["name"] for room in page["data"]]
        url = page["links"].get("next")
    assert seen == names and [len(p["data"]) for p in pages] == [2, 2, 1]
    assert "prev" not in pages[0]["links"] and "prev" in pages[2]["links"]
    assert pages[2]["links"]["first"] == "http://space.test/api/video/rooms?page_size=2"
    back = (await http.get(pages[2]["links"]["prev"])).json()
    assert [room["name"] for room in back["data"]] == names[2:4]
    first = (await http.get(back["links"]["prev"])).json()
    assert [room["name"] for room in first["data"]] == names[:2] and "prev" not in first["links"]
    default = (await http.get("/api/video/conferences")).json()
    assert len(default["data"]) == 5 and "next" not in default["links"]


@pytest.mark.parametrize("query", ["page_size=0", "page_size=1001", "page_size=x", "page_token=%21%21"])
async def test_bad_paging_is_a_422(http: httpx.AsyncClient, query: str) -> None:
    response = await http.get(f"/api/video/rooms?{query}")
    validation_error(response, query.partition("=")[0])


async def test_a_key_limited_to_rooms_lists_only_those(gateway: object, http: httpx.AsyncClient) -> None:
    await create(http, "rooms", name="public-a")
    await create(http, "rooms", name="private-b")
    listed = await http.get("/api/video/rooms", auth=(PROJECT, PUBLIC_KEY))
    assert [room["name"] for room in listed.json()["data"]] == ["public-a"]


# -- tokens --------------------------------------------------------------------------------------------------


async def test_conference_tokens_are_a_moderator_and_a_guest_that_work_natively(
    http: httpx.AsyncClient,
) -> None:
    conference = await create(http)
    response = await http.get(f"/api/video/conferences/{conference['id']}/conference_tokens")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"links", "data"}
    tokens = {entry["name"]: entry for entry in body["data"]}
    assert set(tokens) == {"moderator", "guest"}
    for entry in tokens.values():
        assert {"id", "name", "token", "scopes"} <= set(entry) and uuid.UUID(entry["id"])
    assert "room.self.audio_mute" in tokens["guest"]["scopes"]
    assert "room.member.remove" in tokens["moderator"]["scopes"]
    assert "room.member.remove" not in tokens["guest"]["scopes"]

    await http.put("/v1/rooms/my_room/variables/topic", json={"value": "hi"}, headers=NATIVE)
    guest = {"Authorization": f"Bearer {tokens['guest']['token']}"}
    moderator = {"Authorization": f"Bearer {tokens['moderator']['token']}"}
    assert (await http.get("/v1/rooms/my_room/variables/topic", headers=guest, auth=None)).status_code == 200
    write = await http.put("/v1/rooms/my_room/variables/topic", json={"value": "x"}, headers=guest, auth=None)
    assert write.status_code == 403
    write = await http.put(
        "/v1/rooms/my_room/variables/topic", json={"value": "x"}, headers=moderator, auth=None
    )
    assert write.status_code == 200
    other = await http.get("/v1/rooms/other/variables/topic", headers=moderator, auth=None)
    assert other.status_code == 403


async def test_a_room_token_is_a_native_guest_token(http: httpx.AsyncClient) -> None:
    await create(http, "rooms", name="lobby")
    body = {"room_name": "lobby", "user_name": "alice", "permissions": ["room.self.audio_mute"]}
    response = await http.post("/api/video/room_tokens", json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"token"}
    bearer = {"Authorization": f"Bearer {response.json()['token']}"}
    await http.put("/v1/rooms/lobby/variables/v", json={"value": 1}, headers=NATIVE)
    assert (await http.get("/v1/rooms/lobby/variables/v", headers=bearer, auth=None)).json()["value"] == 1
    assert (
        await http.put("/v1/rooms/lobby/variables/v", json={"value": 2}, headers=bearer, auth=None)
    ).status_code == 403


async def test_a_room_token_follows_a_rename_and_creates_a_missing_room(http: httpx.AsyncClient) -> None:
    conference = await create(http)
    await http.put(f"/api/video/conferences/{conference['id']}", json={"name": "our_room"})
    token = (await http.post("/api/video/room_tokens", json={"room_name": "our_room"})).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    await http.put("/v1/rooms/my_room/variables/v", json={"value": 1}, headers=NATIVE)
    assert (await http.get("/v1/rooms/my_room/variables/v", headers=bearer, auth=None)).status_code == 200
    made = await http.post(
        "/api/video/room_tokens", json={"room_name": "fresh", "room_display_name": "Fresh"}
    )
    assert made.status_code == 200
    assert (await http.get("/v1/rooms/fresh", headers=NATIVE)).json()["displayName"] == "Fresh"


@pytest.mark.parametrize(
    ("body", "attribute", "code"),
    [
        ({}, "room_name", "missing_required_parameter"),
        ({"room_name": "no spaces"}, "room_name", "invalid_parameter"),
        ({"room_name": "r", "user_name": ""}, "user_name", "invalid_parameter"),
        ({"room_name": "r", "permissions": "room.self.audio_mute"}, "permissions", "invalid_parameter"),
        ({"room_name": "r", "permissions": ["variables:wirte"]}, "permissions", "invalid_parameter"),
    ],
)
async def test_room_token_validation(
    http: httpx.AsyncClient, body: dict[str, object], attribute: str, code: str
) -> None:
    validation_error(await http.post("/api/video/room_tokens", json=body), attribute, code)


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "attribute", "code"),
    [
        ({"display_name": "x"}, "name", "missing_required_parameter"),
        ({"name": "a b"}, "name", "invalid_parameter"),
        ({"name": "x" * 101}, "name", "invalid_parameter"),
        ({"name": "r", "quality": "4k"}, "quality", "invalid_parameter"),
        ({"name": "r", "size": "huge"}, "size", "invalid_parameter"),
        ({"name": "r", "enable_chat": "yes"}, "enable_chat", "invalid_parameter"),
        ({"name": "r", "dark_primary": "blue"}, "dark_primary", "invalid_parameter"),
        ({"name": "r", "join_from": "tomorrow"}, "join_from", "invalid_parameter"),
        ({"name": "r", "display_name": "x" * 201}, "display_name", "invalid_parameter"),
        ({"name": "r", "enable_chat": None}, "enable_chat", "invalid_parameter"),
    ],
)
async def test_create_validation(
    http: httpx.AsyncClient, body: dict[str, object], attribute: str, code: str
) -> None:
    validation_error(await http.post("/api/video/conferences", json=body), attribute, code)


async def test_a_date_is_read_as_midnight_utc(http: httpx.AsyncClient) -> None:
    conference = await create(http, join_from="2022-01-01", join_until="2022-12-31T23:59:59+02:00")
    assert (conference["join_from"], conference["join_until"]) == (
        "2022-01-01T00:00:00Z",
        "2022-12-31T21:59:59Z",
    )


@pytest.mark.parametrize(
    "auth",
    [
        None,
        ("other-project", ADMIN_KEY),
        (PROJECT, "wrong-key-0123456789abcdef"),
        "Bearer " + ADMIN_KEY,
        "Basic !!!",
        "Basic " + "c2lnbmFsd2lyZQ==",  # no colon
    ],
)
async def test_credentials_other_than_the_project_and_a_key_are_a_401(
    http: httpx.AsyncClient, auth: object
) -> None:
    headers = {"Authorization": auth} if isinstance(auth, str) else {}
    client_auth = auth if isinstance(auth, tuple) else None
    http.auth = client_auth  # type: ignore[assignment]
    response = await http.get("/api/video/rooms", headers=headers)
    assert (response.status_code, response.json()) == (401, {"error": "Unauthorized"})
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_a_key_without_the_permission_is_a_403(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/video/rooms", json={"name": "r"}, auth=(PROJECT, READER_KEY))
    assert (response.status_code, response.json()) == (403, {"error": "Forbidden"})
    assert (await http.get("/api/video/rooms", auth=(PROJECT, READER_KEY))).status_code == 200
    response = await http.post("/api/video/rooms", json={"name": "private"}, auth=(PROJECT, PUBLIC_KEY))
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/video/rooms/not-a-uuid", 404),
        ("GET", f"/api/video/rooms/{uuid.uuid4()}", 404),
        ("PUT", f"/api/video/conferences/{uuid.uuid4()}", 404),
        ("DELETE", f"/api/video/rooms/{uuid.uuid4()}", 404),
        ("GET", f"/api/video/conferences/{uuid.uuid4()}/conference_tokens", 404),
        ("GET", "/api/video/room_sessions", 404),
        ("PATCH", "/api/video/rooms", 405),
        ("GET", "/api/video/room_tokens", 405),
    ],
)
async def test_unknown_ids_paths_and_methods(
    http: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await http.request(method, path, json={} if method in ("PUT", "PATCH") else None)
    assert response.status_code == status
    assert response.json() == {"error": {404: "Not Found", 405: "Method Not Allowed"}[status]}


async def test_bodies_that_are_not_json_objects(http: httpx.AsyncClient) -> None:
    malformed = await http.post(
        "/api/video/rooms", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert (malformed.status_code, malformed.json()) == (400, {"error": "Bad Request"})
    form = await http.post("/api/video/rooms", content=b"name=x", headers={"Content-Type": "text/plain"})
    assert (form.status_code, form.json()) == (415, {"error": "Unsupported Media Type"})
    validation_error(await http.post("/api/video/rooms", json=[1]), None)
    huge = await http.post("/api/video/rooms", json={"name": "r", "meta": {"x": "y" * 2_000_000}})
    assert (huge.status_code, huge.json()) == (413, {"error": "Payload Too Large"})


async def test_an_unexpected_error_is_logged_and_a_500_in_the_vendors_shape(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(endpoints, "create", broken)
    with caplog.at_level(logging.ERROR):
        response = await http.post("/api/video/rooms", json={"name": "r"})
    assert (response.status_code, response.json()) == (500, {"error": "Internal Server Error"})
    assert "boom" not in response.text and "boom" in caplog.text


async def test_tokens_without_a_token_secret_are_a_422(monkeypatch: pytest.MonkeyPatch) -> None:
    config = signalwire_config().model_dump(mode="python")
    config["auth"]["room_tokens"]["secret"] = None
    config["auth"]["keys"] = [{"name": "admin", "key": ADMIN_KEY, "permissions": ["*"]}]
    gateway = create_gateway(GatewayConfig.model_validate(config))
    await gateway.backend.open()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway.http_app),
            base_url="http://t",
            auth=(PROJECT, ADMIN_KEY),
        ) as http:
            response = await http.post("/api/video/room_tokens", json={"room_name": "r"})
        validation_error(response, None, "cannot_process")
    finally:
        await gateway.backend.close()


def test_enabling_it_needs_a_project_id() -> None:
    with pytest.raises(ValidationError, match="project_id is required"):
        signalwire_config(project_id="")
