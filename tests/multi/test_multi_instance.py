"""Two gateway processes on one PostgreSQL, and on one Redis, behave as one gateway (DESIGN.md, "Realtime is
part of the backend contract"): a write through one reaches listeners on the other, over REST (SSE) and gRPC
alike; both list the same rooms and contents; the room lifecycle holds across them."""

from __future__ import annotations

import asyncio

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import (
    CreateRoomRequest,
    ListenEventsRequest,
    ListenVariableRequest,
    PublishEventRequest,
    Room,
)
from tests.multi.conftest import (
    StartGateway,
    assert_unavailable_body,
    eventually,
    grpc,
    grpc_listen,
    rest,
    sse_listen,
    start_gateways,
)


async def test_two_instances_on_one_store_behave_as_one(
    shared_store: str, start_gateway: StartGateway
) -> None:
    one, two = await start_gateways(start_gateway, shared_store, 2)
    async with rest(one) as http1, rest(two) as http2, grpc(one) as rpc1, grpc(two) as rpc2:
        # -- a variable written through 1 reaches listeners on 2 (SSE and gRPC) ----------------------------
        first = await http1.put("/v1/rooms/lobby/variables/v", json={"value": {"n": 1}})
        assert first.status_code == 200, first.text
        async with (
            sse_listen(http2, "/v1/rooms/lobby/variables/v:listen") as sse,
            grpc_listen(rpc2.listen_variable(ListenVariableRequest(room_id="lobby", name="v"))) as stream,
        ):
            # The current value first: both streams are subscribed from here on.
            assert [m["value"] for m in await sse.wait_for(1)] == [{"n": 1}]
            assert [m.value.to_dict() for m in await stream.wait_for(1)] == [{"n": 1}]
            for n in (2, 3):
                written = await http1.put("/v1/rooms/lobby/variables/v", json={"value": {"n": n}})
                assert written.status_code == 200, written.text
            assert [(m["version"], m["value"]) for m in await sse.wait_for(3)] == [
                ("1", {"n": 1}),
                ("2", {"n": 2}),
                ("3", {"n": 3}),
            ]
            assert [(m.version, m.value.to_dict()) for m in await stream.wait_for(3)] == [
                (1, {"n": 1}),
                (2, {"n": 2}),
                (3, {"n": 3}),
            ]

        # -- events published through 1 (REST and gRPC) reach listeners on 2 -------------------------------
        async with (
            sse_listen(http2, "/v1/rooms/lobby/events/wave:listen") as sse,
            grpc_listen(rpc2.listen_events(ListenEventsRequest(room_id="lobby", name="wave"))) as stream,
        ):
            # An event is not stored: a listener only gets those published once it is subscribed, and a gRPC
            # client cannot tell when that is. Publish until both have one (bounded), then one of each kind.
            for _ in range(50):
                ping = await http1.post("/v1/rooms/lobby/events/wave", json={"data": "ping"})
                assert ping.status_code == 200, ping.text
                if sse.items and stream.items:
                    break
                await asyncio.sleep(0.1)
            assert sse.items and stream.items, "no event reached the listeners on instance 2"
            await http1.post("/v1/rooms/lobby/events/wave", json={"data": {"via": "rest"}})
            await rpc1.publish_event(
                PublishEventRequest(room_id="lobby", name="wave", data=Value.from_dict({"via": "grpc"}))
            )
            await eventually(lambda: sse.items[-1]["data"] == {"via": "grpc"}, what="the last event (SSE)")
            await eventually(
                lambda: stream.items[-1].data.to_dict() == {"via": "grpc"}, what="the last event"
            )
            assert [m["data"] for m in sse.items][-2:] == [{"via": "rest"}, {"via": "grpc"}]
            assert [m.data.to_dict() for m in stream.items][-2:] == [{"via": "rest"}, {"via": "grpc"}]
            assert all(m["name"] == "wave" for m in sse.items)

        # -- listing and contents agree ---------------------------------------------------------------------
        for room_id in ("b-room", "a-room"):
            created = await http1.post("/v1/rooms", json={"roomId": room_id, "displayName": room_id.upper()})
            assert created.status_code == 200, created.text
        await rpc2.create_room(CreateRoomRequest(room=Room(room_id="c-room", display_name="C-ROOM")))
        duplicate = await http1.post("/v1/rooms", json={"roomId": "c-room"})
        assert duplicate.status_code == 409, duplicate.text  # an id made on 2 is taken on 1 too
        await http2.put("/v1/rooms/lobby/variables/w", json={"value": [1, 2]})
        listed1, listed2 = (await http1.get("/v1/rooms")).json(), (await http2.get("/v1/rooms")).json()
        assert listed1 == listed2
        assert [room["roomId"] for room in listed1["results"]] == ["a-room", "b-room", "c-room", "lobby"]
        paged = (await http2.get("/v1/rooms", params={"startAfterKey": "a-room", "maxResults": 2})).json()
        assert [room["roomId"] for room in paged["results"]] == ["b-room", "c-room"]
        assert paged["more"] is True
        contents1 = (await http1.get("/v1/rooms/lobby/contents")).json()
        assert contents1 == (await http2.get("/v1/rooms/lobby/contents")).json()
        # One log on the shared store: the same position on both instances.
        assert contents1.pop("epoch") and int(contents1.pop("seq")) > 0
        assert contents1 == {"contents": {"v": {"n": 3}, "w": [1, 2]}}

        # -- a room closed on 1 refuses new streams on 2; deleted on 1, its streams on 2 end ---------------
        async with sse_listen(http2, "/v1/rooms/lobby/variables/v:listen") as kept:
            await kept.wait_for(1)
            closed = await http1.post("/v1/rooms/lobby:close")
            assert closed.status_code == 200, closed.text
            refused = await http2.get("/v1/rooms/lobby/variables/v:listen")
            assert refused.status_code == 400
            assert refused.json()["error"]["status"] == "FAILED_PRECONDITION"
            async with grpc_listen(
                rpc2.listen_variable(ListenVariableRequest(room_id="lobby", name="v"))
            ) as late:
                error = await late.wait_end()
            assert isinstance(error, GRPCError) and error.status is Status.FAILED_PRECONDITION, error
            assert late.items == []
            written = await http2.put("/v1/rooms/lobby/variables/v", json={"value": 4})
            assert written.status_code == 400, written.text  # writes are refused on 2 as well
            assert not kept.ended  # a closed room keeps the streams it has
            deleted = await http1.delete("/v1/rooms/lobby")
            assert deleted.status_code == 200, deleted.text
            ended = await kept.wait_end()
            assert ended["error"]["status"] == "NOT_FOUND", ended
        tombstone = (await http2.get("/v1/rooms/lobby")).json()
        assert tombstone["status"] == "DELETED"

        # -- InvalidateConnections on 1 ends the streams on 2 with UNAVAILABLE, so clients reconnect --------
        await http1.put("/v1/rooms/stage/variables/v", json={"value": 1})
        async with (
            sse_listen(http2, "/v1/rooms/stage/variables/v:listen") as sse,
            grpc_listen(rpc2.listen_variable(ListenVariableRequest(room_id="stage", name="v"))) as stream,
        ):
            await sse.wait_for(1)
            await stream.wait_for(1)
            invalidated = await http1.post("/v1/rooms/stage:invalidateConnections")
            assert invalidated.status_code == 200, invalidated.text
            assert_unavailable_body(await sse.wait_end())
            error = await stream.wait_end()
            assert isinstance(error, GRPCError) and error.status is Status.UNAVAILABLE, error
        # … and a client that reconnects, to either instance, is served again.
        async with sse_listen(http1, "/v1/rooms/stage/variables/v:listen") as again:
            await http2.put("/v1/rooms/stage/variables/v", json={"value": 2})
            assert [m["value"] for m in await again.wait_for(2)] == [1, 2]
