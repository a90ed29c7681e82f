"""REST through a front gateway to the grpclib upstream, with curl: an HttpRule route, the auto-mapped
``POST /{package}.{Service}/{Method}``, a server stream as SSE and NDJSON (and ``GET`` with query
parameters), errors in the native shape, and the routes in ``/openapi.json``."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import httpx
import pytest

from tests.server.conftest import GatewayProcess
from tests.upstream.conftest import (
    ADMIN_KEY,
    PUBLIC_KEY,
    SAY_KEY,
    EchoUpstream,
    StartEcho,
    StartFront,
    echo_upstream,
    front_config,
)


@pytest.fixture(scope="module")
def started(
    tmp_path_factory: pytest.TempPathFactory, echo_pb2: Any
) -> Any:  # module-scoped: one upstream and one front gateway for the read-only checks below
    from tests.server.conftest import gateway_env
    from tests.upstream.conftest import ECHO_UPSTREAM_KEY, free_port

    echo = EchoUpstream(echo_pb2[0], free_port())
    config = tmp_path_factory.mktemp("front") / "front.yaml"
    config.write_text(front_config(echo_upstream(echo.port)), encoding="utf-8")
    front = GatewayProcess(
        config, gateway_env(ROOM_API_SECRET_KEY=ADMIN_KEY, ECHO_UPSTREAM_KEY=ECHO_UPSTREAM_KEY)
    )
    yield echo, front
    front.stop()
    echo.stop()


@pytest.fixture
def front(started: Any) -> GatewayProcess:
    return started[1]  # type: ignore[no-any-return]


def curl(*args: str) -> tuple[int, str]:
    """Run curl; the HTTP status and the body."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def test_an_http_rule_route(front: GatewayProcess) -> None:
    status, body = curl(
        "-X", "POST", f"{front.http_url}/v1/rooms/public-1/say",
        "-H", f"X-API-Key: {ADMIN_KEY}", "-H", "Content-Type: application/json",
        "-d", '{"text": "hello", "shout": true}',
    )  # fmt: skip
    assert status == 200, body
    # proto3 JSON: lowerCamel names, fields without presence written too.
    assert json.loads(body) == {"text": "HELLO", "index": 0, "room": "public-1"}


def test_an_auto_mapped_route(front: GatewayProcess) -> None:
    status, body = curl(
        "-X", "POST", f"{front.http_url}/echo.v1.Echo/Whoami",
        "-H", f"Authorization: Bearer {ADMIN_KEY}", "-H", "Content-Type: application/json", "-d", "{}",
    )  # fmt: skip
    assert status == 200, body
    seen = json.loads(body)["metadata"]
    assert not any(ADMIN_KEY in line for line in seen)  # the client's key did not go upstream
    keys = dict(line.split("=", 1) for line in seen)
    assert "x-request-id" in keys and "x-client-tag" not in keys and "traceparent" not in keys


def test_a_rest_call_forwards_the_configured_headers(front: GatewayProcess) -> None:
    """``forward_metadata`` and the trace context reach the upstream from a REST call as from a gRPC one,
    with the request id; other headers do not."""
    status, body = curl(
        "-X", "POST", f"{front.http_url}/echo.v1.Echo/Whoami",
        "-H", f"X-API-Key: {ADMIN_KEY}", "-H", "Content-Type: application/json", "-d", "{}",
        "-H", "X-Client-Tag: tag-1", "-H", "X-Client-Tag: tag-2", "-H", "X-Other: not-forwarded",
        "-H", "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )  # fmt: skip
    assert status == 200, body
    seen = json.loads(body)["metadata"]
    assert [line for line in seen if line.startswith("x-client-tag=")] == [
        "x-client-tag=tag-1",
        "x-client-tag=tag-2",
    ]
    keys = dict(line.split("=", 1) for line in seen)
    assert keys["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert "x-request-id" in keys and "x-other" not in keys
    status, body = curl(
        "-X", "POST", f"{front.http_url}/echo.v1.Echo/Whoami",
        "-H", f"X-API-Key: {ADMIN_KEY}", "-H", "Content-Type: application/json", "-d", "{}",
        "-H", "X-Client-Tag: caf\xc3\xa9",
    )  # fmt: skip
    assert status == 400 and "not printable ASCII" in body, body  # HTTP/2 cannot carry it upstream


def test_a_server_stream_as_sse_and_ndjson(front: GatewayProcess) -> None:
    url = f"{front.http_url}/echo.v1.Echo/Repeat?text=tick&count=3&room=public-1"
    status, body = curl("-N", url, "-H", f"X-API-Key: {PUBLIC_KEY}")
    assert status == 200, body
    frames = [
        json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: ")
    ]
    assert frames == [{"text": "tick", "index": i, "room": "public-1"} for i in range(3)]

    status, body = curl(
        "-N", "-X", "POST", f"{front.http_url}/echo.v1.Echo/Repeat", "-H", f"X-API-Key: {ADMIN_KEY}",
        "-H", "Accept: application/x-ndjson", "-H", "Content-Type: application/json",
        "-d", '{"text": "t", "count": 2}',
    )  # fmt: skip
    assert status == 200, body
    assert [json.loads(line)["result"]["index"] for line in body.splitlines() if line] == [0, 1]


def test_errors_are_in_the_native_shape(front: GatewayProcess) -> None:
    def call(path: str, body: str = "{}", key: str = ADMIN_KEY, **kw: Any) -> httpx.Response:
        return httpx.post(
            front.http_url + path,
            content=body,
            headers={"x-api-key": key, "content-type": kw.get("content_type", "application/json")},
        )

    failed = call("/echo.v1.Echo/Fail")
    assert failed.status_code == 400
    assert failed.json() == {
        "error": {"code": 400, "status": "FAILED_PRECONDITION", "message": "the echo is tired"}
    }
    say = "/v1/rooms/r/say"
    assert call(say, '{"nope": 1}').json()["error"]["status"] == "INVALID_ARGUMENT"
    assert call(say, "{not json").status_code == 400
    assert call(say, "text", content_type="text/plain").status_code == 415
    assert call(say, '{"count": "many"}').status_code == 400
    assert call(say, '{"room": "other"}').status_code == 400  # the path says r
    # A method with an HttpRule has only its rule's route (as Envoy's auto mapping).
    assert call("/echo.v1.Echo/Say").status_code == 404
    denied = call("/echo.v1.Echo/Fail", key=SAY_KEY)
    assert denied.status_code == 403 and "echo:Fail" in denied.json()["error"]["message"]
    assert call("/v1/rooms/private-1/say", key=PUBLIC_KEY).status_code == 403
    assert call("/v1/rooms/public-1/say", key=PUBLIC_KEY).status_code == 200
    assert call(say, key="wrong-key-wrong-key").status_code == 401
    assert (
        httpx.get(front.http_url + "/echo.v1.Echo/Whoami", headers={"x-api-key": ADMIN_KEY}).status_code
        == 405
    )


def test_the_routes_are_in_openapi(front: GatewayProcess) -> None:
    document = httpx.get(front.http_url + "/openapi.json", headers={"x-api-key": ADMIN_KEY}).json()
    paths = document["paths"]
    assert set(paths["/v1/rooms/{room}/say"]) == {"post"}
    assert set(paths["/echo.v1.Echo/Repeat"]) == {"post", "get"}
    assert "text/event-stream" in paths["/echo.v1.Echo/Repeat"]["get"]["responses"]["200"]["content"]
    assert paths["/echo.v1.Echo/Whoami"]["post"]["tags"] == ["echo.v1.Echo"]
    assert "echo.v1.EchoReply" in document["components"]["schemas"]
    # Client- and bidi-streaming methods have no REST route (a JSON body is one message).
    assert "/echo.v1.Echo/Collect" not in paths and "/echo.v1.Echo/Chat" not in paths


def test_an_unreachable_upstream_is_503(start_echo: StartEcho, start_front: StartFront) -> None:
    echo = start_echo()
    front = start_front(front_config(echo_upstream(echo.port)))
    echo.stop()
    status, body = curl(
        "-X", "POST", f"{front.http_url}/v1/rooms/r/say", "-H", f"X-API-Key: {ADMIN_KEY}",
        "-H", "Content-Type: application/json", "-d", "{}",
    )  # fmt: skip
    assert status == 503
    assert json.loads(body)["error"]["status"] == "UNAVAILABLE"
    status, _ = curl("-N", f"{front.http_url}/echo.v1.Echo/Repeat?count=1", "-H", f"X-API-Key: {ADMIN_KEY}")
    assert status == 503


_ = EchoUpstream  # re-exported fixture type


def test_metrics_name_the_method_and_count_open_streams(front: GatewayProcess) -> None:
    """As the native API's (API.md, "Operability"): ``method`` is the proto method for every binding, and
    an SSE stream is counted in ``room_gateway_streams_open`` while it runs, its messages as they go."""
    status, _ = curl(
        "-X", "POST", f"{front.http_url}/v1/rooms/public-1/say", "-H", f"X-API-Key: {ADMIN_KEY}",
        "-H", "Content-Type: application/json", "-d", '{"text": "m"}',
    )  # fmt: skip
    assert status == 200
    with httpx.Client(base_url=front.http_url, timeout=10) as http:

        def metric(name: str, method: str, **more: str) -> float:
            wanted = {"transport": "rest", "surface": "upstream:echo", "method": method, **more}
            text = http.get("/metrics", headers={"x-api-key": ADMIN_KEY}).text
            for line in text.splitlines():
                family, _, rest = line.partition("{")
                if family == name and dict(re.findall(r'(\w+)="([^"]*)"', rest)) == wanted:
                    return float(line.rpartition(" ")[2])
            return 0.0

        assert metric("room_gateway_requests_total", "Say", code="OK") >= 1.0
        url = "/echo.v1.Echo/Repeat?text=t&count=50&delay_ms=100"
        with http.stream("GET", url, headers={"x-api-key": ADMIN_KEY}) as stream:
            lines = (
                stream.iter_lines()
            )  # held: a generator dropped would close the response (the client leaves)
            assert next(line for line in lines if line.startswith("data: "))
            assert metric("room_gateway_streams_open", "Repeat") == 1.0
            assert metric("room_gateway_stream_messages_total", "Repeat") >= 1.0
        deadline = time.monotonic() + 5
        while metric("room_gateway_streams_open", "Repeat") != 0.0:
            assert time.monotonic() < deadline, "the stream is still counted open after the client left"
            time.sleep(0.05)


def test_a_rest_deadline_and_an_upstream_that_comes_back(
    start_echo: StartEcho, start_front: StartFront
) -> None:
    """A REST call past the upstream's ``timeout_seconds`` is 504 DEADLINE_EXCEEDED (its stream reset, the
    connection serving on); the upstream stopped, calls are 503; back on the same port, they succeed again
    without a restart."""
    echo = start_echo()
    front = start_front(front_config(echo_upstream(echo.port, timeout=0.5)))

    def say(body: str) -> tuple[int, Any]:
        status, text = curl(
            "-X", "POST", f"{front.http_url}/v1/rooms/r/say", "-H", f"X-API-Key: {ADMIN_KEY}",
            "-H", "Content-Type: application/json", "-d", body,
        )  # fmt: skip
        return status, json.loads(text)

    assert say('{"text": "one"}') == (200, {"text": "one", "room": "r", "index": 0})
    started = time.monotonic()
    status, late = say('{"text": "late", "delayMs": 3000}')
    assert (status, late["error"]["status"]) == (504, "DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 2.5
    assert say('{"text": "two"}') == (200, {"text": "two", "room": "r", "index": 0})
    echo.stop()
    status, down = say('{"text": "down"}')
    assert (status, down["error"]["status"]) == (503, "UNAVAILABLE")
    start_echo(echo.port)  # back, on the same port
    deadline = time.monotonic() + 10
    while (status := say('{"text": "back"}')[0]) != 200:
        assert status == 503 and time.monotonic() < deadline
        time.sleep(0.1)
