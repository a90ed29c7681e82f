"""docs/browsers.md's example page, in Chromium, on another loopback origin than the gateway's:

1. allowed in ``http.cors``: it reads a variable with ``fetch`` and a guest room token, lists the members,
   and receives changes through ``EventSource`` with ``access_token`` — including one made while the
   gateway was down, after its restart (the browser resumes by ``Last-Event-ID``);
2. from an origin not allowed: the browser refuses the page's requests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gateway.config import GatewayConfig
from tests.browsers.conftest import ROOT, GatewayProcess, StaticSite, playwright_expect

expect = playwright_expect()


def doc_block(language: str) -> str:
    """The one block of ``language`` in docs/browsers.md."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs" / "browsers.md").read_text(), re.DOTALL)
    assert len(blocks) == 1, language
    return str(blocks[0])


def example_page() -> str:
    return doc_block("html")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StaticSite, StaticSite]]:
    folder = tmp_path_factory.mktemp("site")
    (folder / "index.html").write_text(example_page())
    allowed, other = StaticSite(folder), StaticSite(folder)
    yield allowed, other
    allowed.close()
    other.close()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, sites: tuple[StaticSite, StaticSite]
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("gateway"), allow_origins=[sites[0].origin])
    process.start()
    yield process
    process.stop()


def page_url(site: StaticSite, gateway: GatewayProcess, room: str, token: str) -> str:
    return f"{site.origin}/#gateway={gateway.url}&room={room}&token={token}"


def set_topic(gateway: GatewayProcess, room: str, value: Any) -> None:
    with gateway.client() as client:
        client.put(f"/v1/rooms/{room}/variables/topic", json={"value": value}).raise_for_status()


def test_allowed_origin_reads_listens_and_resumes_after_a_restart(
    page: Any, gateway: GatewayProcess, sites: tuple[StaticSite, StaticSite]
) -> None:
    set_topic(gateway, "lobby", "hello")
    token = gateway.guest_token("lobby", "page-user")
    page.goto(page_url(sites[0], gateway, "lobby", token))
    expect(page.locator("#topic")).to_have_text('"hello"')
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#members")).to_contain_text("page-user")  # its own EventSource is a presence

    set_topic(gateway, "lobby", "live change")
    expect(page.locator("#topic")).to_have_text('"live change"')

    # The gateway goes away: SIGTERM ends its streams, and the browser keeps reconnecting.
    gateway.stop()
    expect(page.locator("#status")).to_have_text("reconnecting")
    # A change it cannot receive live, made on the same database meanwhile.
    gateway.put_while_stopped("/v1/rooms/lobby/variables/topic", {"value": "while away"})
    gateway.start()  # same port: the browser's next attempt resumes from its Last-Event-ID
    expect(page.locator("#topic")).to_have_text('"while away"', timeout=20_000)
    expect(page.locator("#status")).to_have_text("live")
    seqs = [int(text.split()[0]) for text in page.locator("#changes li").all_text_contents()]
    assert seqs == sorted(set(seqs)), seqs  # in order, none twice


def test_other_origin_is_refused_by_the_browser(
    page: Any, gateway: GatewayProcess, sites: tuple[StaticSite, StaticSite]
) -> None:
    set_topic(gateway, "private", "secret")
    token = gateway.guest_token("private", "intruder")
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if "CORS" in message.text else None)
    page.goto(page_url(sites[1], gateway, "private", token))
    expect(page.locator("#status")).to_contain_text("refused: TypeError")
    expect(page.locator("#topic")).to_have_text("…")  # nothing was read
    assert any("has been blocked by CORS policy" in text for text in refused), refused


def test_the_docs_configuration_loads() -> None:
    cors = GatewayConfig.model_validate(yaml.safe_load(doc_block("yaml"))).http.cors
    assert cors.allow_origins == ["https://app.example.com", "http://localhost:3000"]


def test_the_docs_preflight_with_curl(gateway: GatewayProcess, sites: tuple[StaticSite, StaticSite]) -> None:
    """The doc's curl line, against this gateway and the allowed origin, answers what the doc shows."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    block = doc_block("sh")
    command = "\n".join(line for line in block.splitlines() if not line.startswith("#"))
    shown = [line[2:].removesuffix(" …") for line in block.splitlines() if line.startswith("# ")]
    command = command.replace("http://localhost:8080", gateway.url).replace(
        "https://app.example.com", sites[0].origin
    )
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10, check=True)
    output = run.stdout
    received = [line.strip().lower() for line in output.splitlines()]
    for line in shown:
        expected = line.replace("https://app.example.com", sites[0].origin).lower()
        assert expected in received, (expected, output)
