"""The console end to end in Chromium, through its labels and roles (as a keyboard or screen-reader user
finds them): sign in, create a room, set a variable (and be told when the JSON is wrong), see a change made
by another client and a guest's presence without reloading, mint a token, close and delete the room. A
screenshot of the room page is kept in test-artifacts/."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browsers.conftest import ADMIN_KEY, ARTIFACTS, READER_KEY, GatewayProcess, playwright_expect

expect = playwright_expect()

JWT = re.compile(r"^[\w-]+\.[\w-]+\.[\w-]+$")  # three base64url parts


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("console"), allow_origins=[])
    process.start()
    yield process
    process.stop()


class GuestStream:
    """A guest's open ListenRoom stream (another client, in a thread): it makes the guest present."""

    def __init__(self, gateway: GatewayProcess, room: str, token: str) -> None:
        self._client = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"})
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(f"/v1/rooms/{room}:listen",), daemon=True)
        self._thread.start()
        assert self.opened.wait(10)

    def _run(self, path: str) -> None:
        with self._client.stream("GET", path, timeout=None) as response:
            response.raise_for_status()
            self.opened.set()
            for _ in response.iter_bytes():  # keep-alives every second: the stop is seen soon
                if self._stop.is_set():
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()


def test_console_end_to_end(page: Any, gateway: GatewayProcess) -> None:
    page.goto(gateway.url + "/")  # a browser is sent to the console
    expect(page).to_have_url(gateway.url + "/console/")

    key = page.get_by_label("API key")
    key.fill("not-the-key-0123456789")
    key.press("Enter")  # the keyboard submits
    expect(page.get_by_role("alert")).to_contain_text("401")
    key.fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Rooms", exact=True)).to_be_visible()
    assert ADMIN_KEY not in page.url
    assert page.evaluate("sessionStorage.getItem('room-gateway.key')") == ADMIN_KEY

    page.get_by_label("Room id").fill("e2e-room")
    page.get_by_label("Display name").fill("End to end")
    page.get_by_role("button", name="Create room").click()
    expect(page.get_by_role("heading", name="End to end (e2e-room)")).to_be_visible()
    expect(page.locator("#live")).to_have_text("● live")

    # A variable: invalid JSON is explained, then a valid value is set and shown.
    page.get_by_label("Variable name").fill("greeting")
    value = page.get_by_label("Value (JSON)")
    value.fill("{oops")
    page.get_by_role("button", name="Set variable").click()
    expect(page.locator("#var-value-error")).to_contain_text("Not valid JSON")
    expect(value).to_have_attribute("aria-invalid", "true")
    value.fill('{"text": "hi"}')
    page.get_by_role("button", name="Set variable").click()
    variables = page.locator("#variables")
    expect(variables).to_contain_text('{"text":"hi"}')
    expect(page.locator("#var-value-error")).to_have_text("")

    # Another client's change, and a guest's presence, arrive without a reload.
    with gateway.client() as client:
        client.put("/v1/rooms/e2e-room/variables/score", json={"value": 42}).raise_for_status()
    expect(variables.locator("tr", has_text="score")).to_contain_text("42")
    guest_token = gateway.guest_token("e2e-room", "guest-ann", info={"name": "Ann"})
    guest = GuestStream(gateway, "e2e-room", guest_token)
    try:
        expect(page.locator("#members")).to_contain_text("guest-ann")
        expect(page.locator("#counts")).to_have_text("Users: 1, connections: 1")
        expect(page.locator("#changes")).to_contain_text("MEMBER_JOINED guest-ann")

        page.get_by_label("Event name").fill("ping")
        page.get_by_label("Data (JSON)").fill('{"n": 1}')
        page.get_by_role("button", name="Publish event").click()
        expect(page.locator("#changes")).to_contain_text("EVENT ping")

        # Mint a token (role, lifetime, info) and check that it works.
        page.get_by_label("User name").fill("bob")
        page.get_by_label("Role").select_option("guest")
        page.get_by_label("Lifetime (seconds)").fill("600")
        page.get_by_label("Info shown in presence (JSON object)").fill('{"avatar": "b.png"}')
        page.get_by_role("button", name="Mint token").click()
        token_field = page.get_by_label("Token", exact=True)
        expect(token_field).to_have_value(JWT)
        token = token_field.input_value()
        readable = httpx.get(
            f"{gateway.url}/v1/rooms/e2e-room/variables/score", headers={"Authorization": f"Bearer {token}"}
        )
        assert readable.status_code == 200 and readable.json()["value"] == 42

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console-room.png"), full_page=True)
    finally:
        guest.close()

    # Close and delete, each confirmed.
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("button", name="Close room").click()
    expect(page.locator(".badge").first).to_have_text("CLOSED")
    page.get_by_role("button", name="Delete room").click()
    expect(page.get_by_role("heading", name="Rooms", exact=True)).to_be_visible()
    assert [d.split()[0] for d in dialogs] == ["Close", "Delete"]
    with gateway.client() as client:
        assert client.get("/v1/rooms/e2e-room").json()["status"] == "DELETED"
    expect(page.locator("tbody")).to_contain_text("DELETED")  # the list shows the tombstone


def test_refusals_are_explained(page: Any, gateway: GatewayProcess) -> None:
    """A 403 from the gateway names what is missing; 401, 429 and 503 each say what to do."""
    page.goto(gateway.url + "/console/")
    page.get_by_label("API key").fill(READER_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Room id").fill("not-mine")
    page.get_by_role("button", name="Create room").click()
    expect(page.get_by_role("alert")).to_contain_text("not allowed to do that (403)")
    expect(page.get_by_role("alert")).to_contain_text("rooms:create")
    described = page.evaluate(
        """async () => {
            const { ApiError } = await import("/console/api.js");
            return [0, 401, 429, 503].map((code) => new ApiError(code, "X", "why", 7).describe());
        }"""
    )
    assert described[0].startswith("The gateway cannot be reached")
    assert "sign in again" in described[1]
    assert "try again in 7 s" in described[2]
    assert "unavailable (503)" in described[3]


def test_the_room_page_resumes_after_a_restart(page: Any, gateway: GatewayProcess) -> None:
    """The console reads ListenRoom with fetch(); when the gateway drops it, the page reconnects with
    Last-Event-ID and shows what changed meanwhile, once."""
    with gateway.client() as client:
        client.put("/v1/rooms/resumed/variables/a", json={"value": 1}).raise_for_status()
    page.goto(gateway.url + "/console/")
    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="resumed").click()
    expect(page.locator("#live")).to_have_text("● live")
    expect(page.locator("#variables")).to_contain_text("a")

    gateway.stop()
    expect(page.locator("#live")).to_contain_text("reconnecting")
    gateway.put_while_stopped("/v1/rooms/resumed/variables/b", {"value": "while away"})
    gateway.start()
    expect(page.locator("#variables tr", has_text="while away")).to_contain_text("b", timeout=20_000)
    expect(page.locator("#live")).to_have_text("● live")
    values = page.locator("#changes li").evaluate_all("items => items.map((item) => item.value)")
    seqs = [int(value) for value in values]
    assert seqs == sorted(set(seqs), reverse=True), seqs  # newest first, none twice


def test_keyboard_only_paging_and_status_filter(page: Any, gateway: GatewayProcess) -> None:
    """Signed in with the keyboard alone (the focused control shows its focus ring); rooms paged, filtered."""
    with gateway.client() as client:
        for n in range(12):
            client.post("/v1/rooms", json={"roomId": f"page-{n:02}"}).raise_for_status()
        client.post("/v1/rooms/page-03:close").raise_for_status()
    page.goto(gateway.url + "/console/")
    key = page.get_by_label("API key")
    for _ in range(5):  # the header's link first, then the form
        page.keyboard.press("Tab")
        if key.evaluate("element => element === document.activeElement"):
            break
    else:
        pytest.fail("the key field cannot be reached with Tab")
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Tab")
    sign_in = page.get_by_role("button", name="Sign in")
    assert sign_in.evaluate("element => element === document.activeElement")
    assert sign_in.evaluate("element => getComputedStyle(element).outlineStyle") == "solid"  # :focus-visible
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Rooms", exact=True)).to_be_visible()

    rows = page.locator("tbody tr")
    room_ids = page.locator("tbody tr td:first-child")
    page.get_by_label("Rooms per page").select_option("10")
    expect(rows).to_have_count(10)
    first_page = room_ids.all_text_contents()
    expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
    page.get_by_role("button", name="Next page").click()
    expect(room_ids.first).not_to_have_text(first_page[0])
    second_page = room_ids.all_text_contents()
    ids = first_page + second_page
    assert ids == sorted(set(ids)), ids  # in order, no room twice
    assert {f"page-{n:02}" for n in range(12)} <= set(ids)
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(room_ids).to_have_text(first_page)

    page.get_by_label("Status (this page)").select_option("CLOSED")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("page-03")
