"""The change log over REST: ListenRoom and ListenEvents as resumable SSE (ids, ``retry:``, Last-Event-ID),
ListChanges, the snapshot-then-resume pattern, and the 400s of a bad position or kind."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.core.backend import History
from tests.edge.test_streams import ndjson_lines, sse_events


async def test_snapshot_then_resume_over_sse(
    client: httpx.AsyncClient, asgi_call: Any, backend: MemoryBackend
) -> None:
    await client.put("/v1/rooms/r/variables/a", json={"value": 1})
    snapshot = (await client.get("/v1/rooms/r/contents")).json()
    epoch, seq = snapshot["epoch"], snapshot["seq"]
    assert (epoch, seq) == (backend.epoch, "2")
    await client.put("/v1/rooms/r/variables/b", json={"value": 2})  # missed by the snapshot
    call = asgi_call(f"/v1/rooms/r:listen?afterSeq={seq}&epoch={epoch}")
    assert await call.start() == 200 and call.headers["content-type"] == "text/event-stream"
    assert await call.chunk() == b"retry: 1000\n\n"
    [missed] = await sse_events(call, 1)
    assert missed["id"] == f"{epoch}:3"
    assert missed["data"]["kind"] == "VARIABLE_SET" and missed["data"]["seq"] == "3"
    assert missed["data"]["variable"]["name"] == "b"
    await client.post("/v1/rooms/r/events/chat", json={"data": "hi"})
    [live] = await sse_events(call, 1)
    assert live["id"] == f"{epoch}:4" and live["data"]["event"] == {
        "name": "chat",
        "data": "hi",
        "time": "2026-01-02T03:04:05Z",
    }
    await call.disconnect()
    assert len(backend.hub) == 0


async def test_last_event_id_resumes_and_wins_over_the_url(
    client: httpx.AsyncClient, asgi_call: Any, backend: MemoryBackend
) -> None:
    for n in range(5):
        await client.put("/v1/rooms/r/variables/x", json={"value": n})  # seqs 2..6
    # EventSource repeats the URL it was opened with, and adds the last id it saw.
    call = asgi_call("/v1/rooms/r:listen?afterSeq=1", headers={"last-event-id": f"{backend.epoch}:4"})
    assert await call.start() == 200
    got = await sse_events(call, 2)
    assert [e["id"] for e in got] == [f"{backend.epoch}:5", f"{backend.epoch}:6"]
    assert [e["data"]["variable"]["value"] for e in got] == [3, 4]
    await call.disconnect()


async def test_listen_events_resumes_by_last_event_id(
    client: httpx.AsyncClient, asgi_call: Any, backend: MemoryBackend
) -> None:
    await client.post("/v1/rooms/r/events/chat", json={"data": 1})  # seq 2
    await client.post("/v1/rooms/r/events/chat", json={"data": 2})  # seq 3
    await client.post("/v1/rooms/r/events/other", json={"data": 0})
    await client.post("/v1/rooms/r/events/chat", json={"data": 3})  # seq 5
    call = asgi_call("/v1/rooms/r/events/chat:listen", headers={"last-event-id": f"{backend.epoch}:2"})
    assert await call.start() == 200
    assert await call.chunk() == b"retry: 1000\n\n"
    got = await sse_events(call, 2)
    assert [(e["id"], e["data"]["data"]) for e in got] == [
        (f"{backend.epoch}:3", 2),
        (f"{backend.epoch}:5", 3),
    ]
    await call.disconnect()


async def test_a_position_that_cannot_be_served_starts_with_reset(
    client: httpx.AsyncClient, asgi_call: Any, backend: MemoryBackend
) -> None:
    await client.put("/v1/rooms/r/variables/x", json={"value": 1})
    call = asgi_call("/v1/rooms/r:listen", headers={"last-event-id": "an-older-epoch:1"})
    assert await call.start() == 200
    [reset] = await sse_events(call, 1)
    assert reset["id"] == f"{backend.epoch}:2"
    assert (reset["data"]["kind"], reset["data"]["seq"], reset["data"]["epoch"]) == (
        "RESET",
        "2",
        backend.epoch,
    )
    await call.disconnect()


async def test_listen_room_filters_and_ndjson(client: httpx.AsyncClient, asgi_call: Any) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    call = asgi_call(
        "/v1/rooms/r:listen?kinds=VARIABLE_SET&kinds=ROOM_CLOSED&namePrefix=door",
        headers={"accept": "application/x-ndjson"},
    )
    assert await call.start() == 200
    await client.put("/v1/rooms/r/variables/window", json={"value": 0})
    await client.post("/v1/rooms/r/events/door", json={"data": 0})
    await client.put("/v1/rooms/r/variables/door1", json={"value": 1})
    await client.post("/v1/rooms/r:close")
    lines = await ndjson_lines(call, 2)
    assert [line["result"]["kind"] for line in lines] == ["VARIABLE_SET", "ROOM_CLOSED"]
    assert lines[0]["result"]["variable"]["name"] == "door1" and lines[0]["result"]["seq"] == "4"
    await call.disconnect()


async def test_list_changes(client: httpx.AsyncClient, backend: MemoryBackend) -> None:
    for n in range(4):
        await client.put("/v1/rooms/r/variables/x", json={"value": n})
    page = (await client.get("/v1/rooms/r/changes?afterSeq=1&maxResults=2")).json()
    assert [c["seq"] for c in page["changes"]] == ["2", "3"]
    assert (page["more"], page["headSeq"], page["epoch"]) == (True, "5", backend.epoch)
    rest = (await client.get("/v1/rooms/r/changes?afterSeq=3&kinds=VARIABLE_SET")).json()
    assert [c["variable"]["value"] for c in rest["changes"]] == [2, 3] and not rest["more"]
    assert (await client.get("/v1/rooms/r/changes")).json()["changes"][0]["kind"] == "ROOM_CREATED"


def error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "status", "message"}
    return response.status_code, body["error"]["status"]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/rooms/r:listen", {"last-event-id": "no-colon"}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r:listen", {"last-event-id": "epoch:12x"}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r:listen", {"last-event-id": ":5"}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r:listen", {"last-event-id": "epoch:-1"}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r/events/e:listen", {"last-event-id": "epoch:99999999999999999999"}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r:listen", {"last-event-id": "epoch:9223372036854775808"}, "INVALID_ARGUMENT"),  # > int64
        ("/v1/rooms/r:listen?afterSeq=abc", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r:listen?afterSeq=-1", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r/events/e:listen?afterSeq=1.5", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r:listen?kinds=NOPE", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r:listen?kinds=KIND_UNSPECIFIED", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r/changes?kinds=nope", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r/changes?afterSeq=x", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r/changes?maxResults=-1", {}, "INVALID_ARGUMENT"),
        ("/v1/rooms/r/changes?afterSeq=99", {}, "OUT_OF_RANGE"),
        ("/v1/rooms/r/changes?afterSeq=0&epoch=another", {}, "OUT_OF_RANGE"),
    ],
)
async def test_bad_positions_and_kinds_are_400s(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], status: str
) -> None:
    await client.post("/v1/rooms", json={"roomId": "r"})
    assert error(await client.get(path, headers=headers)) == (400, status)


KIND_NAMES = [
    "CONNECTIONS_INVALIDATED", "EVENT", "MEMBER_JOINED", "MEMBER_LEFT", "RESET", "ROOM_CLOSED",
    "ROOM_CREATED", "ROOM_DELETED", "ROOM_UPDATED", "VARIABLE_DELETED", "VARIABLE_SET",
]  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [
        "/v1/rooms/r:listen?kinds=NOPE",  # refused by the JSON codec (not a name of the enum)
        "/v1/rooms/r/changes?kinds=EVENT&kinds=nope",
        "/v1/rooms/r:listen?kinds=KIND_UNSPECIFIED",  # a name of the enum, refused by the service
    ],
)
async def test_a_bad_kind_s_message_lists_the_kinds_to_filter(client: httpx.AsyncClient, path: str) -> None:
    """KIND_UNSPECIFIED is the proto's "not set", never a kind to filter by: the message does not offer it."""
    await client.post("/v1/rooms", json={"roomId": "r"})
    message = (await client.get(path)).json()["error"]["message"]
    assert message.startswith(f"kinds must be one of {KIND_NAMES}"), message
    assert "KIND_UNSPECIFIED" not in message.removesuffix(", not 'KIND_UNSPECIFIED'")


async def test_list_changes_refuses_a_trimmed_position(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    """OUT_OF_RANGE when afterSeq is older than what is retained (here: the start of the log is gone)."""
    backend.history = History(max_changes=2)
    for n in range(5):
        await client.put("/v1/rooms/r/variables/x", json={"value": n})
    assert error(await client.get("/v1/rooms/r/changes?afterSeq=1")) == (400, "OUT_OF_RANGE")
    kept = (await client.get("/v1/rooms/r/changes?afterSeq=4")).json()
    assert [c["seq"] for c in kept["changes"]] == ["5", "6"]
