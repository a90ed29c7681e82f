"""The console's serving (API.md "Browsers"): its files at /console/ without a key, with a strict CSP and no
external asset; ``/`` sends a browser there and keeps API clients' JSON answers. (The console working in
a real browser: tests/browsers/test_console.py.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from gateway.app import create_gateway
from gateway.config import GatewayConfig
from gateway.edge.console import CONSOLE_DIR

KEY = "console-admin-key-0123456789abcdef"
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@asynccontextmanager
async def client_of(**http: Any) -> AsyncIterator[httpx.AsyncClient]:
    config = GatewayConfig.model_validate(
        {"auth": {"keys": [{"name": "admin", "key": KEY, "permissions": ["*"]}]}, "http": http}
    )
    gateway = create_gateway(config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(gateway.http_app), base_url="http://gateway.test"
    ) as client:
        yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_of() as c:
        yield c


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/console/", "text/html"),
        ("/console/index.html", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/api.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ],
)
async def test_files_are_served_without_a_key(client: httpx.AsyncClient, path: str, media_type: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "ratelimit-limit" in response.headers  # public, but rate limited like any call


async def test_console_without_slash_and_unknown_files(client: httpx.AsyncClient) -> None:
    redirect = await client.get("/console")
    assert redirect.status_code in (301, 302, 307, 308)
    assert redirect.headers["location"].endswith("/console/")
    assert (await client.get("/console/nothing.js")).status_code == 404


async def test_root_sends_a_browser_to_the_console(client: httpx.AsyncClient) -> None:
    response = await client.get("/", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/"


async def test_root_keeps_api_clients_json(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["status"] == "UNAUTHENTICATED"
    keyed = await client.get("/", headers={"X-API-Key": KEY})
    assert keyed.status_code == 404
    assert keyed.json()["error"]["status"] == "NOT_FOUND"


async def test_switched_off() -> None:
    async with client_of(console=False) as client:
        assert (await client.get("/console/")).status_code == 401
        assert (await client.get("/", headers=HTML)).status_code == 401
        assert (await client.get("/console/", headers={"X-API-Key": KEY})).status_code == 404


def test_no_external_asset_and_no_build_step() -> None:
    """Every script and style the page loads, and every module a script imports, is one of its own files."""
    files = {path.name for path in CONSOLE_DIR.iterdir()}
    assert {"index.html", "app.js", "api.js", "console.css"} <= files
    html = (CONSOLE_DIR / "index.html").read_text()
    for reference in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert reference.startswith("#") or reference in files, reference
    for script in CONSOLE_DIR.glob("*.js"):
        text = script.read_text()
        assert text.startswith("// @ts-check"), script  # type-checked by `make lint` (tsc --checkJs)
        for specifier in re.findall(r'^import .* from "([^"]+)";', text, re.MULTILINE):
            assert specifier.startswith("./") and specifier[2:] in files, specifier
        assert "innerHTML" not in text  # values from rooms are shown as text, never parsed as HTML
    css = (CONSOLE_DIR / "console.css").read_text()
    assert "url(" not in css and "@import" not in css
    assert ":focus-visible" in css  # a visible focus ring
