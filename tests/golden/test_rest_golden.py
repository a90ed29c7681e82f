"""The golden-case corpus of the REST ↔ proto translation: one YAML file per case under ``rest/``.

A case is ``request`` (method, path as sent on the wire, optional headers, and ``body`` as JSON or
``raw_body`` as text), an optional ``setup`` list of requests that must succeed first, and ``expected``
(``status``, the whole ``json`` body, optional ``headers`` that must be present). Requests carry the admin
key unless ``auth`` says ``reader`` or ``none``. Times come from the frozen clock (2026-01-02T03:04:05Z).
A known gap is listed with ``xfail: <reason>`` and runs strict (``xfail_strict``): when it starts passing,
the test fails until the entry is removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from tests.conftest import ADMIN_KEY, READER_KEY

CASES = sorted((Path(__file__).parent / "rest").glob("*.yaml"))
_KEYS = {"admin": {"X-API-Key": ADMIN_KEY}, "reader": {"X-API-Key": READER_KEY}, "none": {}}
_CASE_KEYS = {"description", "setup", "request", "expected", "xfail"}


def _load(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text(encoding="utf-8"))
    unknown = set(case) - _CASE_KEYS
    if unknown:
        raise ValueError(f"{path.name}: unknown keys {sorted(unknown)}")
    return dict(case)


def _params() -> list[Any]:
    params = []
    for path in CASES:
        case = _load(path)
        marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if "xfail" in case else []
        params.append(pytest.param(case, id=path.stem, marks=marks))
    return params


async def _send(client: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    headers = dict(_KEYS[request.get("auth", "admin")])
    content: bytes | None = None
    if "body" in request:
        content = orjson.dumps(request["body"])
        headers["Content-Type"] = "application/json"
    elif "raw_body" in request:
        content = str(request["raw_body"]).encode("utf-8")
    headers.update(request.get("headers", {}))
    # The path goes on the wire exactly as written: percent-encoding is part of what is tested.
    url = httpx.URL("http://gateway.test").copy_with(raw_path=str(request["path"]).encode("ascii"))
    return await client.request(request["method"], url, content=content, headers=headers)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", _params())
async def test_golden(case: dict[str, Any], dispatcher: Dispatcher) -> None:
    app = create_http_app(dispatcher)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app)) as client:
        for step in case.get("setup", []):
            response = await _send(client, step)
            assert response.status_code == 200, f"setup {step}: {response.text}"
        response = await _send(client, case["request"])
    expected = case["expected"]
    assert (response.status_code, response.json()) == (expected["status"], expected["json"])
    for name, value in expected.get("headers", {}).items():
        assert response.headers.get(name) == str(value), name
