"""The front proxy in front of a WorkAdventure Room API: the upstream is a second gateway serving the
WorkAdventure surface on its own key (wire-identical to WorkAdventure's service, tested against the
vendor's client stack in tests/compat/workadventure). Through the front gateway: the vendor's Node client
(nice-grpc + ts-proto) with the front gateway's keys, curl REST and an SSE listen, per-method
permissions and room patterns; the upstream's key never leaves the front gateway."""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.workadventure.conftest import PROTOS, ROOM, Certificate, certificate, config_text
from tests.compat.workadventure.test_workadventure_node_client import node_client, run_client
from tests.server.conftest import GatewayProcess, gateway_env
from tests.upstream.conftest import ADMIN_KEY, PUBLIC_KEY, SAY_KEY, StartFront, front_config

__all__ = ["certificate", "node_client"]  # the fixtures, used below

#: The WorkAdventure upstream's own key: only the front gateway holds it.
WA_KEY = "wa-upstream-room-api-key-0123456789"


def wa_upstream(port: int) -> str:
    return textwrap.dedent(
        f"""
        - name: wa
          url: "grpc://127.0.0.1:{port}"
          protos: ["{PROTOS / "roomApi" / "room-api.proto"}"]
          services: ["roomApi.RoomApi"]
          metadata: {{x-api-key: "${{WA_ROOM_API_KEY}}"}}
          room_field: room
        """
    )


@pytest.fixture
def wa(tmp_path: Path) -> Iterator[GatewayProcess]:
    config = tmp_path / "wa.yaml"
    config.write_text(config_text(), encoding="utf-8")
    process = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=WA_KEY))
    yield process
    process.stop()


@pytest.fixture
def front(wa: GatewayProcess, start_front: StartFront) -> GatewayProcess:
    text = front_config(wa_upstream(wa.grpc_address[1]), names=("wa",), only="wa:readVariable")
    return start_front(text, WA_ROOM_API_KEY=WA_KEY)


def test_the_vendor_client_through_the_front_gateway(node_client: Path, front: GatewayProcess) -> None:
    host, port = front.grpc_address
    results = run_client(node_client, host, port, ROOM_API_KEY=ADMIN_KEY, LIMITED_KEY=PUBLIC_KEY)
    assert results.pop("readUnset") == "<undefined>"
    assert results.pop("readSaved") == {
        "open": True,
        "count": 3,
        "tags": ["a", "b"],
        "nothing": None,
        "ratio": 0.5,
    }
    assert results.pop("listenVariable") == {"round": 1}
    assert results.pop("listenToEvent") == {"data": {"round": 1, "who": "api"}, "senderIdPresent": False}
    # The front gateway's own answers (its keys, its messages), with WorkAdventure's codes.
    assert results.pop("wrongKey")["code"] == 16
    assert results.pop("missingKey")["code"] == 16
    assert results.pop("otherRoom")["code"] == 7  # public-* only; the room is a play.example.com URL
    assert results == {}
    assert WA_KEY not in front.log


def curl(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def test_rest_and_sse_through_the_front_gateway(front: GatewayProcess) -> None:
    base = front.http_url
    json_headers = ["-H", f"X-API-Key: {ADMIN_KEY}", "-H", "Content-Type: application/json"]
    status, body = curl(
        "-X", "POST", f"{base}/roomApi.RoomApi/saveVariable", *json_headers,
        "-d", json.dumps({"room": ROOM, "name": "doors", "value": {"open": True}}),
    )  # fmt: skip
    assert (status, json.loads(body)) == (200, {})
    status, body = curl(
        "-X", "POST", f"{base}/roomApi.RoomApi/readVariable", *json_headers,
        "-d", json.dumps({"room": ROOM, "name": "doors"}),
    )  # fmt: skip
    assert (status, json.loads(body)) == (200, {"open": True})  # a google.protobuf.Value is plain JSON

    # An SSE listen (GET, the request as query parameters): WorkAdventure sends only later changes.
    frames: list[str] = []

    def listen() -> None:
        query = f"room={ROOM}&name=doors".replace(":", "%3A").replace("/", "%2F")
        process = subprocess.Popen(
            ["curl", "-sS", "-N", "--max-time", "8", f"{base}/roomApi.RoomApi/listenVariable?{query}",
             "-H", f"X-API-Key: {ADMIN_KEY}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("data: "):
                frames.append(line.removeprefix("data: ").strip())
                process.terminate()
        process.wait()
        process.stdout.close()

    listener = threading.Thread(target=listen)
    listener.start()
    deadline = time.monotonic() + 8
    round_ = 0
    while not frames and time.monotonic() < deadline:
        round_ += 1
        curl(
            "-X", "POST", f"{base}/roomApi.RoomApi/saveVariable", *json_headers,
            "-d", json.dumps({"room": ROOM, "name": "doors", "value": {"round": round_}}),
        )  # fmt: skip
        time.sleep(0.2)
    listener.join(10)
    assert frames and json.loads(frames[0])["round"] >= 1


def test_permissions_through_the_front_gateway(front: GatewayProcess) -> None:
    base = front.http_url

    def call(method: str, key: str, room: str = ROOM) -> tuple[int, str]:
        request = {"room": room, "name": "n", **({"value": 1} if method == "saveVariable" else {})}
        return curl(
            "-X", "POST", f"{base}/roomApi.RoomApi/{method}", "-H", f"X-API-Key: {key}",
            "-H", "Content-Type: application/json", "-d", json.dumps(request),
        )  # fmt: skip

    assert call("readVariable", SAY_KEY)[0] == 200  # wa:readVariable only
    status, body = call("saveVariable", SAY_KEY)
    assert status == 403 and "wa:saveVariable" in body
    assert call("saveVariable", PUBLIC_KEY, "public-lobby")[0] == 200
    status, body = call("saveVariable", PUBLIC_KEY, "private-office")
    assert status == 403 and "private-office" in body
    status, body = call("readVariable", WA_KEY)  # the upstream's key means nothing to the front gateway
    assert status == 401


def test_a_tls_upstream_trusted_through_tls_ca(
    tmp_path: Path, start_front: StartFront, certificate: Certificate
) -> None:
    config = tmp_path / "wa-tls.yaml"
    config.write_text(config_text(tls=certificate), encoding="utf-8")
    wa = GatewayProcess(config, gateway_env(ROOM_API_SECRET_KEY=WA_KEY))
    try:
        upstream = wa_upstream(wa.grpc_address[1]).replace("grpc://", "grpcs://")
        upstream += f'  tls_ca: "{certificate.cert_file}"\n'
        front = start_front(
            front_config(upstream, names=("wa",), only="wa:readVariable"), WA_ROOM_API_KEY=WA_KEY
        )
        status, body = curl(
            "-X", "POST", f"{front.http_url}/roomApi.RoomApi/saveVariable", "-H", f"X-API-Key: {ADMIN_KEY}",
            "-H", "Content-Type: application/json",
            "-d", json.dumps({"room": ROOM, "name": "tls", "value": "on"}),
        )  # fmt: skip
        assert (status, body) == (200, "{}")
        # Without the CA the certificate is not trusted: the upstream is unavailable, and says why.
        untrusted = start_front(
            front_config(
                upstream.replace(f'  tls_ca: "{certificate.cert_file}"\n', ""), names=("wa",), only="wa:*"
            ),
            WA_ROOM_API_KEY=WA_KEY,
        )
        status, body = curl("-s", f"{untrusted.http_url}/readyz")
        assert status == 503 and "upstream 'wa' is down" in body
    finally:
        wa.stop()
