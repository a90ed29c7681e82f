"""The gRPC port's header blocks (gateway.rpc.headerblocks): what the encoder writes decodes, with hpack's
decoder and with the clients', to the headers given, and leaves no state in the peer's table; the caching
decoder decodes as hpack's does, whatever the peer's table does; answers framed here are what h2 reads."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, TrailersReceived
from h2.exceptions import FlowControlError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError

from gateway.rpc import headerblocks
from gateway.rpc.headerblocks import BlockEncoder, CachingDecoder, ServerConnection, encode_block
from tests.conftest import ADMIN_KEY
from tests.rpc.conftest import Loopback, Stubs
from tests.security.h2raw import H2Client, grpc_message

ANSWERS: list[list[tuple[str, str]]] = [
    [(":status", "200"), ("content-type", "application/grpc")],
    [(":status", "200"), ("content-type", "application/grpc+proto"), ("x-request-id", "0123abcd")],
    [("grpc-status", "0")],
    [("grpc-status", "5"), ("grpc-message", "room%20%27nope%27 does not exist"), ("x-trace", "t" * 300)],
    [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "12"), ("grpc-message", "")],
    [(":status", "404")],  # in the static table whole (index 13)
    [("grpc-status", "0"), ("token-bin", "AAEC/w"), ("x-api-key", "secret"), ("authorization", "Bearer x")],
]


def decoded(block: bytes, decoder: Decoder | None = None) -> list[tuple[str, str]]:
    headers = (decoder or Decoder()).decode(block)
    return [(str(name), str(value)) for name, value in headers]


@pytest.mark.parametrize("headers", ANSWERS)
def test_blocks_decode_to_the_headers_given_and_leave_the_table_alone(headers: list[tuple[str, str]]) -> None:
    decoder = Decoder()
    for _ in range(2):  # the second time from the cache
        assert decoded(encode_block(headers), decoder) == headers
        as_bytes = [(name.encode(), value.encode()) for name, value in headers]
        assert decoded(encode_block(as_bytes), decoder) == headers  # as h2 passes them
    assert len(decoder.header_table.dynamic_entries) == 0


def test_metadata_is_never_indexed_and_protocol_fields_are() -> None:
    headers = Decoder().decode(encode_block(ANSWERS[6]))
    kinds = {name: type(header) for header in headers for name in [header[0]]}
    assert kinds == {
        "grpc-status": HeaderTuple,  # literal without indexing
        "token-bin": NeverIndexedHeaderTuple,
        "x-api-key": NeverIndexedHeaderTuple,
        "authorization": NeverIndexedHeaderTuple,
    }


def test_marks_of_sensitivity_change_nothing() -> None:
    """Metadata is never indexed, marked or not; a protocol field is encoded alike however it is marked (a
    cached block must not depend on marks: hpack's marked tuples compare equal to plain ones)."""
    plain = encode_block([("grpc-status", "0"), ("x-api-key", "secret")])
    assert encode_block([NeverIndexedHeaderTuple("grpc-status", "0"), ("x-api-key", "secret", True)]) == plain
    assert encode_block([HeaderTuple("grpc-status", "0"), HeaderTuple("x-api-key", "secret")]) == plain
    assert [type(header) for header in Decoder().decode(plain)] == [HeaderTuple, NeverIndexedHeaderTuple]


def test_only_blocks_of_protocol_fields_are_cached_and_the_caches_are_bounded() -> None:
    headerblocks._BLOCKS.clear()
    encode_block([("grpc-status", "0"), ("x-request-id", "a")])
    assert headerblocks._BLOCKS == {}  # a block with metadata in it is never kept
    for i in range(3 * headerblocks.ENCODED_ENTRIES):
        block = encode_block([(":status", "200"), ("content-type", f"application/grpc+{i}")])
        assert decoded(block)[1] == ("content-type", f"application/grpc+{i}")
        assert len(headerblocks._BLOCKS) <= headerblocks.ENCODED_ENTRIES
        assert len(headerblocks._FIELDS) <= headerblocks.ENCODED_ENTRIES


def test_a_peer_that_shrinks_its_table_gets_a_table_size_update_first() -> None:
    encoder = BlockEncoder()
    decoder = Decoder()
    assert decoded(encoder.encode(ANSWERS[0]), decoder) == ANSWERS[0]
    # The peer settles on a table of 0 bytes: its decoder now refuses a block that does not shrink the table.
    decoder.max_allowed_table_size = 0
    with pytest.raises(InvalidTableSizeError):  # the same block without the update, to a decoder like it
        strict = Decoder()
        strict.max_allowed_table_size = 0
        strict.decode(encode_block(ANSWERS[0]))
    encoder.header_table_size = 0
    first = encoder.encode(ANSWERS[2])
    assert first[:1] == b"\x20"
    assert decoded(first, decoder) == ANSWERS[2]
    assert encoder.encode(ANSWERS[2])[:1] != b"\x20"  # signalled once
    encoder.header_table_size = 0  # no change: nothing to signal
    assert encoder.encode(ANSWERS[2]) == encode_block(ANSWERS[2])


# -- the caching decoder -----------------------------------------------------------------------------------


def request(i: int) -> list[tuple[str, str]]:
    """Requests that repeat (indexed references), with some that add to the table and evict from it."""
    headers = [(":method", "POST"), (":path", "/roomgateway.v1.RoomService/GetVariable"), ("te", "trailers")]
    if i % 7 == 3:
        headers.append(("grpc-timeout", f"{i}m"))
    if i % 11 == 5:
        headers.append(("x-big", "v" * (200 + i)))
    return headers


@pytest.mark.parametrize("table_size", [4096, 256, 0])
def test_the_caching_decoder_decodes_as_hpack_does(table_size: int) -> None:
    encoder = Encoder()  # a client's encoder, indexing what it sends
    encoder.header_table_size = table_size
    reference, caching = Decoder(), CachingDecoder()
    for i in range(200):
        block = encoder.encode(request(i))
        expected, got = reference.decode(block, raw=True), caching.decode(block, raw=True)
        assert got == expected
        assert [type(header) for header in got] == [type(header) for header in expected]
    block = encoder.encode(request(1))
    assert caching.decode(block, raw=True) == reference.decode(block, raw=True)
    assert (block in caching._caches[True]) == (table_size > 0)  # kept when repeated (no table: no repeats)


def outcome(decoder: Decoder, block: bytes) -> tuple[str, Any]:
    try:
        return "headers", [(type(h), *h) for h in decoder.decode(block, raw=True)]
    except Exception as exc:  # hpack's errors, or what garbage makes of it
        return "error", type(exc)


def test_a_block_that_fails_half_way_after_changing_the_table_empties_the_cache() -> None:
    encoder, reference, caching = Encoder(), Decoder(), CachingDecoder()
    first = encoder.encode(request(0))
    for decoder in (reference, caching):
        decoder.decode(first, raw=True)
    repeated = encoder.encode(request(0))  # indexed references only: kept
    assert outcome(caching, repeated) == outcome(reference, repeated)
    assert repeated in caching._caches[True]
    # A literal that enters the table, then bytes that are no HPACK: the table changed, the block failed.
    broken = Encoder().encode([("x-new", "entry")]) + b"\xff\xff\xff\xff\xff\xff\xff"
    assert outcome(caching, broken) == outcome(reference, broken) == ("error", HPACKDecodingError)
    # The references of ``repeated`` now point one entry further: hpack's answer, not the kept one.
    assert outcome(caching, repeated) == outcome(reference, repeated)


def test_the_caching_decoder_agrees_with_hpack_on_any_input() -> None:
    """Blocks of a client's encoder (repeating, indexing, evicting, resizing its table), some cut short or
    corrupted: the caching decoder answers as hpack's — the same headers or the same error — every time."""
    rng = random.Random(15)
    encoder, reference, caching = Encoder(), Decoder(), CachingDecoder()
    for _ in range(4000):
        if rng.random() < 0.01:  # start again in step (a corrupted block leaves the tables apart)
            encoder, reference, caching = Encoder(), Decoder(), CachingDecoder()
        if rng.random() < 0.03:
            encoder.header_table_size = rng.choice([0, 64, 256, 4096])
        headers = [
            (rng.choice(["x-a", "x-b", ":path"]), rng.choice(["1", "22", "v" * 70]))
            for _ in range(rng.randrange(1, 4))
        ]
        block = encoder.encode(headers)
        roll = rng.random()
        if roll < 0.03:
            block = block[: rng.randrange(len(block) + 1)]
        elif roll < 0.06:
            at = rng.randrange(len(block))
            block = block[:at] + bytes((rng.randrange(256),)) + block[at + 1 :]
        assert outcome(caching, block) == outcome(reference, block)


def test_blocks_decoded_as_text_are_kept_apart() -> None:
    """The upstream client decodes as text, h2 as bytes: one block, two answers, both hpack's."""
    encoder, decoder, reference = Encoder(), CachingDecoder(), Decoder()
    first = encoder.encode(request(0))
    decoder.decode(first)
    reference.decode(first)
    block = encoder.encode(request(0))
    for _ in range(2):
        assert decoder.decode(block) == reference.decode(block) == request(0)
        assert decoder.decode(block, raw=True) == [(n.encode(), v.encode()) for n, v in request(0)]


def test_a_block_that_changes_the_table_is_not_kept() -> None:
    encoder, decoder = Encoder(), CachingDecoder()
    first = encoder.encode(request(0))  # literals with incremental indexing
    decoder.decode(first, raw=True)
    assert first not in decoder._caches[True]
    again = encoder.encode(request(0))  # now indexed references only
    decoder.decode(again, raw=True)
    assert again in decoder._caches[True]
    # Decoding the first block again would add its literals once more: the table changes, the cache is
    # emptied (the references of ``again`` may now mean something else).
    decoder.decode(first, raw=True)
    assert decoder._caches[True] == {}


def test_a_kept_block_is_checked_again_when_the_limits_change() -> None:
    encoder, decoder = Encoder(), CachingDecoder()
    decoder.decode(encoder.encode(request(0)), raw=True)
    block = encoder.encode(request(0))
    decoder.decode(block, raw=True)
    decoder.decode(block, raw=True)
    assert block in decoder._caches[True]
    decoder.max_header_list_size = 10
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(block, raw=True)
    decoder.max_header_list_size = 4096
    decoder.decode(block, raw=True)
    decoder.max_allowed_table_size = 0  # our SETTINGS shrank the table the peer may use
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(block, raw=True)


def test_the_decoders_cache_is_bounded() -> None:
    decoder = CachingDecoder()
    for i in range(3 * headerblocks.DECODED_BLOCKS):
        decoder.decode(encode_block([("x-n", str(i))]), raw=True)
        assert len(decoder._caches[True]) <= headerblocks.DECODED_BLOCKS
    decoder.decode(encode_block([("x-big", "v" * headerblocks.DECODED_BLOCK_BYTES)]), raw=True)
    assert all(len(block) <= headerblocks.DECODED_BLOCK_BYTES for block in decoder._caches[True])


# -- answers framed by ServerConnection -----------------------------------------------------------------


CONFIG = {
    "header_encoding": "ascii",
    "validate_inbound_headers": False,
    "validate_outbound_headers": False,
    "normalize_inbound_headers": False,
    "normalize_outbound_headers": False,
}


def pair(server_class: type[H2Connection] = ServerConnection) -> tuple[H2Connection, Any]:
    """A validating h2 client and our server connection (or h2's), their prefaces exchanged."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding="ascii"))
    server = server_class(config=H2Configuration(client_side=False, **CONFIG))  # type: ignore[arg-type]
    client.initiate_connection()
    server.initiate_connection()
    exchange(client, server)
    return client, server


def exchange(client: H2Connection, server: H2Connection) -> list[Any]:
    events = []
    for _ in range(3):
        server.receive_data(client.data_to_send())
        events += client.receive_data(server.data_to_send())
    return events


def open_stream(client: H2Connection, server: H2Connection) -> int:
    stream_id = client.get_next_available_stream_id()
    client.send_headers(
        stream_id,
        [(":method", "POST"), (":scheme", "http"), (":path", "/p"), (":authority", "a")],
        end_stream=True,
    )
    server.receive_data(client.data_to_send())
    return stream_id


def test_answers_read_by_h2_as_sent() -> None:
    client, server = pair()
    for initial, trailers in [(ANSWERS[0], ANSWERS[2]), (ANSWERS[1], ANSWERS[3]), (ANSWERS[0], ANSWERS[6])]:
        stream_id = open_stream(client, server)
        server.send_headers(stream_id, initial)
        server.send_data(stream_id, b"\0\0\0\0\1x")
        server.send_headers(stream_id, trailers, end_stream=True)
        events = client.receive_data(server.data_to_send())
        heads = [e for e in events if isinstance(e, (ResponseReceived, TrailersReceived))]
        assert [list(e.headers) for e in heads] == [initial, trailers]
        assert client.streams[stream_id].closed


def test_a_trailers_only_answer_and_the_state_rules_h2_keeps() -> None:
    client, server = pair()
    stream_id = open_stream(client, server)
    server.send_headers(stream_id, ANSWERS[4], end_stream=True)
    (event, *_) = client.receive_data(server.data_to_send())
    assert isinstance(event, ResponseReceived) and list(event.headers) == ANSWERS[4]
    with pytest.raises(StreamClosedError):  # answered already: closed
        server.send_headers(stream_id, ANSWERS[2], end_stream=True)
    stream_id = open_stream(client, server)
    server.send_headers(stream_id, ANSWERS[0])
    with pytest.raises(ProtocolError):
        server.send_headers(stream_id, ANSWERS[2])  # trailers without END_STREAM


def test_a_block_longer_than_the_peers_frame_is_continued() -> None:
    client, server = pair()
    stream_id = open_stream(client, server)
    headers = [*ANSWERS[0], ("x-large", "v" * (3 * server.max_outbound_frame_size))]
    server.send_headers(stream_id, headers)
    data = server.data_to_send()
    assert data[3] == 0x1 and data[4] == 0x0  # HEADERS, neither END_STREAM nor END_HEADERS
    (event,) = client.receive_data(data)
    assert isinstance(event, ResponseReceived) and list(event.headers) == headers


def test_data_frames_and_windows_as_h2_keeps_them() -> None:
    sent = []
    for server_class in (ServerConnection, H2Connection):
        client, server = pair(server_class)
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 100})
        exchange(client, server)
        stream_id = open_stream(client, server)
        server.send_headers(stream_id, ANSWERS[0])
        client.receive_data(server.data_to_send())
        server.send_data(stream_id, b"\0\0\0\0\x05hello")
        server.send_data(stream_id, memoryview(b"\0\0\0\0\x01x"))
        with pytest.raises(FlowControlError):  # beyond the stream's window: h2 refuses it
            server.send_data(stream_id, b"x" * 100)
        server.send_data(stream_id, b"", end_stream=True)
        with pytest.raises(StreamClosedError):
            server.send_data(stream_id, b"late")
        data = server.data_to_send()
        sent.append((data, server.outbound_flow_control_window))
        events = client.receive_data(data)
        received = b"".join(e.data for e in events if isinstance(e, DataReceived))
        assert received == b"\0\0\0\0\x05hello\0\0\0\0\x01x"
    assert sent[0] == sent[1]  # h2's own: the same frames, the same window left


def test_the_peers_table_size_setting_is_followed() -> None:
    client, server = pair()
    client.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
    exchange(client, server)  # acknowledged: the client's decoder now insists on a table of 0
    assert client.decoder.max_allowed_table_size == 0
    for _ in range(2):
        stream_id = open_stream(client, server)
        server.send_headers(stream_id, ANSWERS[1])
        (event,) = client.receive_data(server.data_to_send())
        assert list(event.headers) == ANSWERS[1]


# -- served -------------------------------------------------------------------------------------------------

HEALTH = "/grpc.health.v1.Health/Check"


async def test_a_client_with_no_header_table_is_answered(loopback: Loopback) -> None:
    client = await H2Client.connect("127.0.0.1", loopback.port)
    try:
        client.h2.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
        client.flush()
        await client.until(lambda: client.h2.decoder.max_allowed_table_size == 0)
        for _ in range(2):
            stream_id = client.request(HEALTH)
            client.send(stream_id, grpc_message(HealthCheckRequest().SerializeToString()), end=True)
            reply = await client.reply(stream_id)
            assert reply.status == 0 and reply.headers[":status"] == "200"
            assert reply.headers["content-type"].startswith("application/grpc")
    finally:
        await client.close()


async def test_grpcio_reads_the_answers_metadata_and_status(stub: Any, stubs: Stubs) -> None:
    pb = stubs.pb2
    metadata = (("x-api-key", ADMIN_KEY),)
    call = stub.GetRoom(pb.GetRoomRequest(room_id="nope é"), metadata=metadata)
    # Not pytest.raises: its traceback would keep the call and its connection alive (see test_grpcio.py).
    try:
        await call
    except grpc.aio.AioRpcError:
        pass
    assert await call.code() == grpc.StatusCode.NOT_FOUND
    assert await call.details() == "room 'nope é' does not exist"  # percent-encoded in grpc-message
    initial = dict(await call.initial_metadata())
    trailing = dict(await call.trailing_metadata())
    assert len(initial.get("x-request-id", "") or trailing.get("x-request-id", "")) == 16
    await stub.CreateRoom(pb.CreateRoomRequest(room=pb.Room(room_id="r")), metadata=metadata)
    for _ in range(3):  # the same answer's blocks, from the caches
        call = stub.GetRoom(pb.GetRoomRequest(room_id="r"), metadata=metadata)
        assert (await call).room_id == "r"
        assert await call.code() == grpc.StatusCode.OK
