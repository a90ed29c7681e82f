"""Each limit of the gRPC port, one at a time, on a real ``room-gateway serve`` (docs/security.md, "gRPC").

A client that follows the protocol but breaks a limit (:class:`tests.security.h2raw.H2Client`, h2's client
state machine with streams written by hand) sees the documented answer: a status on its stream, a refused
stream, or GOAWAY on its connection; the gateway logs one line and no traceback, and keeps serving.
The gateway of this module has low limits, set in ``grpc:``, so that each is reached in a few frames and the
configuration keys are shown to reach the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from gateway._gen.google.protobuf import Value
from gateway._gen.roomgateway.v1 import GetVariableRequest, ListenVariableRequest, SetVariableRequest
from tests.multi.conftest import eventually
from tests.security.h2raw import (
    CONTINUATION,
    ENHANCE_YOUR_CALM,
    HEADERS,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Client,
    Reply,
    frame,
    grpc_message,
    request_headers,
)
from tests.server.conftest import KEY, GatewayProcess, gateway_env, write_config

GET = "/roomgateway.v1.RoomService/GetVariable"
LISTEN = "/roomgateway.v1.RoomService/ListenVariable"
AUTH = {"x-api-key": KEY}
LIMITS = """
rate_limits: {limits: []}
grpc:
  max_message_bytes: 1000
  max_concurrent_streams: 20
  max_header_list_bytes: 4096
  reset_streams_per_connection: "30/10 seconds"
  control_frames_per_connection: "30/10 seconds"
"""
OK, DEADLINE_EXCEEDED, INVALID_ARGUMENT, UNIMPLEMENTED, RESOURCE_EXHAUSTED = 0, 4, 3, 12, 8
MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE = 0x3, 0x6


def get_request() -> bytes:
    return grpc_message(bytes(GetVariableRequest(room_id="limits", name="v")))


def set_request(n: int) -> bytes:
    return grpc_message(
        bytes(SetVariableRequest(room_id="limits", name="pinged", value=Value(number_value=n)))
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        write_config(tmp_path_factory.mktemp("limits"), extra=LIMITS), gateway_env(ROOM_API_SECRET_KEY=KEY)
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def client(gateway: GatewayProcess) -> AsyncIterator[H2Client]:
    connection = await H2Client.connect(*gateway.grpc_address)
    try:
        yield connection
    finally:
        await connection.close()


def new_lines(gateway: GatewayProcess, before: int) -> list[str]:
    return gateway.lines[before:]


def assert_no_traceback(gateway: GatewayProcess, before: int = 0) -> None:
    lines = new_lines(gateway, before)
    assert not [line for line in lines if "Traceback" in line or "ERROR" in line], "\n".join(lines[-20:])


async def still_serving(gateway: GatewayProcess) -> None:
    client = await H2Client.connect(*gateway.grpc_address)
    try:
        stream = client.request(GET, AUTH)
        client.send(stream, get_request(), end=True)
        reply = await client.reply(stream)
        assert reply.status in (OK, 5), reply  # 5: NOT_FOUND, the variable was never set
    finally:
        await client.close()


# -- SETTINGS -------------------------------------------------------------------------------------------


async def test_the_limits_are_advertised_in_the_first_settings(client: H2Client) -> None:
    await client.until(lambda: bool(client.server_settings))
    assert client.server_settings[MAX_CONCURRENT_STREAMS] == 20
    assert client.server_settings[MAX_HEADER_LIST_SIZE] == 4096


# -- messages --------------------------------------------------------------------------------------------


async def test_a_message_over_the_size_limit_is_refused_before_it_is_read(
    gateway: GatewayProcess, client: H2Client
) -> None:
    before = len(gateway.lines)
    stream = client.request(GET, AUTH)
    client.send(stream, grpc_message(b"x" * 100, length=10_000_000))  # announces 10 MB, sends 100 bytes
    reply = await client.reply(stream)
    assert reply.status == RESOURCE_EXHAUSTED, reply
    assert "larger than the limit of 1000" in reply.headers["grpc-message"]
    await asyncio.sleep(0.1)
    assert any("RESOURCE_EXHAUSTED" in line for line in new_lines(gateway, before))
    assert_no_traceback(gateway, before)


@pytest.mark.parametrize(
    ("encoding", "flag", "status"),
    [
        ("gzip", 1, UNIMPLEMENTED),  # an encoding the server does not support
        (None, 1, INVALID_ARGUMENT),  # compressed, but no encoding declared
        ("identity", 1, INVALID_ARGUMENT),
        (None, 2, INVALID_ARGUMENT),  # not a flag
        ("gzip", 0, OK),  # declared but not used: a plain message is fine
    ],
)
async def test_compressed_messages(
    gateway: GatewayProcess, client: H2Client, encoding: str | None, flag: int, status: int
) -> None:
    before = len(gateway.lines)
    metadata = {**AUTH, **({"grpc-encoding": encoding} if encoding else {})}
    stream = client.request(GET, metadata)
    client.send(
        stream, grpc_message(bytes(GetVariableRequest(room_id="limits", name="v")), flag=flag), end=True
    )
    reply = await client.reply(stream)
    assert reply.status in ((OK, 5) if status == OK else (status,)), reply
    if status == UNIMPLEMENTED:
        assert reply.headers["grpc-accept-encoding"] == "identity"
    assert_no_traceback(gateway, before)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "carries no request message"),  # a unary call that ends with no message
        (grpc_message(b"\x0a\x03abc", length=100), "ended inside a message"),
        (grpc_message(b"\x0a\xff\xff\xff\xff\x0f"), "not a valid GetVariableRequest"),  # a huge length
        (grpc_message(b"\x0a\x02\xff\xfe"), "not a valid GetVariableRequest"),  # not UTF-8
        # room_id sent as a varint: protobuf sets a field of the wrong wire type aside, as unknown
        (grpc_message(b"\x08\x05"), "room_id is required"),
    ],
)
async def test_malformed_requests_are_invalid_arguments(
    gateway: GatewayProcess, client: H2Client, data: bytes, words: str
) -> None:
    before = len(gateway.lines)
    stream = client.request(GET, AUTH, end=not data)
    if data:
        client.send(stream, data, end=True)
    reply = await client.reply(stream)
    assert reply.status == INVALID_ARGUMENT, reply
    assert words in reply.headers["grpc-message"].replace("%20", " ")
    await asyncio.sleep(0.1)
    # This call's refusal (a line of the call before may still arrive: the writer lingers, gateway.logs).
    refused = [
        line
        for line in new_lines(gateway, before)
        if "request refused (INVALID_ARGUMENT)" in line and words in line
    ]
    assert len(refused) == (words != "room_id is required"), new_lines(gateway, before)  # one line at most
    assert_no_traceback(gateway, before)


async def test_the_deadline_a_client_sends_is_kept_by_the_server(client: H2Client) -> None:
    stream = client.request(LISTEN, {**AUTH, "grpc-timeout": "300m"})
    client.send(stream, grpc_message(bytes(ListenVariableRequest(room_id="limits", name="v"))), end=True)
    start = time.monotonic()
    reply = await client.reply(stream, timeout=5)
    assert reply.status == DEADLINE_EXCEEDED, reply  # the server ended the stream: the client did nothing
    assert 0.25 <= time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    "timeout",
    [
        "abc",
        "99999999999S",  # more than the 8 digits gRPC allows (grpclib took it: a deadline in 3170 years)
        "1X",  # not a unit
        "",
        "1s",  # units are case-sensitive: s is not S
        "S",
        "-1S",
        "1.5S",
        "1S1S",
    ],
)
async def test_a_malformed_grpc_timeout_is_an_invalid_argument(
    gateway: GatewayProcess, client: H2Client, timeout: str
) -> None:
    before = len(gateway.lines)
    stream = client.request(GET, {**AUTH, "grpc-timeout": timeout})
    client.send(stream, get_request(), end=True)
    reply = await client.reply(stream)
    assert reply.status == INVALID_ARGUMENT, reply  # grpclib's own answer was UNKNOWN
    assert "is not a timeout: at most 8 digits and a unit" in unquote(reply.headers["grpc-message"])
    await still_serving(gateway)

    def refusals() -> list[str]:  # the log is read from the process's output, a little later
        return [line for line in new_lines(gateway, before) if "(INVALID_ARGUMENT): grpc-timeout" in line]

    await eventually(refusals, within=5, what="the refusal's log line")
    assert len(refusals()) == 1
    assert_no_traceback(gateway, before)


@pytest.mark.parametrize("timeouts", [["99999999S"], ["1H"], ["20S", "5000m"]])
async def test_a_valid_grpc_timeout_is_served(client: H2Client, timeouts: list[str]) -> None:
    stream = client.h2.get_next_available_stream_id()
    headers = request_headers(GET, AUTH) + [("grpc-timeout", t) for t in timeouts]
    client.h2.send_headers(stream, headers)
    client.replies[stream] = Reply()
    client.send(stream, get_request(), end=True)
    reply = await client.reply(stream)
    assert reply.status in (OK, 5), reply  # 5: NOT_FOUND, the variable was never set


# -- streams ---------------------------------------------------------------------------------------------


async def test_streams_over_the_concurrent_limit_are_refused(
    gateway: GatewayProcess, client: H2Client
) -> None:
    await client.until(lambda: bool(client.server_settings))
    client.h2.remote_settings.max_concurrent_streams = 100  # this client ignores what the server advertised
    client.h2.remote_settings.acknowledge()
    waiting = [client.request(LISTEN, AUTH) for _ in range(20)]  # open, no message: their handlers wait
    over = client.request(LISTEN, AUTH)
    reply = await client.reply(over)
    assert reply.reset == REFUSED_STREAM, reply
    assert client.goaway is None
    client.reset(waiting[0])  # one less running: the next stream is served
    await asyncio.sleep(0.2)
    stream = client.request(GET, AUTH)
    client.send(stream, get_request(), end=True)
    assert (await client.reply(stream)).status in (OK, 5)


async def test_resets_before_an_answer_spend_the_budget(gateway: GatewayProcess, client: H2Client) -> None:
    before = len(gateway.lines)
    for _ in range(40):  # more than the 30 of reset_streams_per_connection
        client.reset(client.request(LISTEN, AUTH))
    await client.until(lambda: client.goaway is not None)
    assert client.goaway == (ENHANCE_YOUR_CALM, b"too many reset or refused streams")
    await client.until(lambda: client.closed)  # the server half-closes after its GOAWAY
    assert client.closed
    await asyncio.sleep(0.1)
    assert any("too many reset or refused streams" in line for line in new_lines(gateway, before))
    assert_no_traceback(gateway, before)
    await still_serving(gateway)


async def test_answered_calls_give_the_budget_back(client: H2Client) -> None:
    for _ in range(60):  # twice the budget of resets, each after an answered call
        stream = client.request(GET, AUTH)
        client.send(stream, get_request(), end=True)
        await client.reply(stream)
        client.reset(client.request(LISTEN, AUTH))
    stream = client.request(GET, AUTH)
    client.send(stream, get_request(), end=True)
    assert (await client.reply(stream)).status in (OK, 5)
    assert client.goaway is None and not client.closed


# -- control frames and headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_a_control_frame_flood_is_calmed(gateway: GatewayProcess, client: H2Client, kind: str) -> None:
    for i in range(40):  # the budget is 30
        if kind == "ping":
            client.h2.ping(struct.pack(">Q", i))
        else:
            client.h2.update_settings({0x4: 65535 + i})  # INITIAL_WINDOW_SIZE
        client.flush()
    await client.until(lambda: client.goaway is not None)
    assert client.goaway == (ENHANCE_YOUR_CALM, b"too many PING and SETTINGS frames")
    await still_serving(gateway)


async def test_a_ping_after_data_is_free(client: H2Client) -> None:
    # A client measuring the bandwidth-delay product (grpc-core, grpc-go) pings as responses arrive.
    for i in range(60):  # twice the budget of 30
        stream = client.request("/roomgateway.v1.RoomService/SetVariable", AUTH)
        client.send(stream, set_request(i), end=True)
        reply = await client.reply(stream)
        assert reply.status == OK and reply.data, reply
        client.h2.ping(struct.pack(">Q", i))
        client.flush()
    with contextlib.suppress(TimeoutError):
        await client.until(lambda: client.goaway is not None, timeout=0.3)
    assert client.goaway is None


async def test_a_huge_header_block_is_refused_before_it_is_decoded(
    gateway: GatewayProcess, client: H2Client
) -> None:
    before = len(gateway.lines)
    await client.until(lambda: bool(client.server_settings))
    # 1 MiB of header block in HEADERS + CONTINUATION frames, never ended: h2 alone would buffer it all
    # (64 CONTINUATION frames) and then decode it.
    block = b"\x00" + b"\x7f\x81\x80\x3f" + b"\xff" * 16000
    client.writer.write(frame(HEADERS, 0, 1, block[:16000]))
    for _ in range(64):
        client.writer.write(frame(CONTINUATION, 0, 1, b"\xff" * 16000))
    start = time.monotonic()
    await client.until(lambda: client.goaway is not None)
    assert client.goaway == (ENHANCE_YOUR_CALM, b"too many header bytes in one block")
    assert time.monotonic() - start < 1.0
    assert_no_traceback(gateway, before)


async def test_a_header_list_over_the_limit_ends_the_connection(
    gateway: GatewayProcess, client: H2Client
) -> None:
    before = len(gateway.lines)
    await client.until(lambda: bool(client.server_settings))  # h2 takes the advertised 4096 from here
    client.request(GET, {**AUTH, "x-big": "v" * 5000})
    await client.until(lambda: client.goaway is not None)
    assert client.goaway is not None and client.goaway[0] == ENHANCE_YOUR_CALM
    assert_no_traceback(gateway, before)


async def test_headers_that_are_not_ascii_are_a_protocol_error(
    gateway: GatewayProcess, client: H2Client
) -> None:
    before = len(gateway.lines)
    client.request(GET, {**AUTH, "x-name": "é"})
    await client.until(lambda: client.goaway is not None)
    assert client.goaway is not None and client.goaway[0] == PROTOCOL_ERROR
    await asyncio.sleep(0.1)
    assert_no_traceback(gateway, before)
    await still_serving(gateway)


# -- new connections per client IP ------------------------------------------------------------------------

CAPPED = """
rate_limits:
  limits: [{by: ip, limit: "1000/second"}]
  trusted_proxies: ["127.0.0.4"]
grpc:
  new_connections_per_ip: "3/second"
  control_frames_per_connection: "5/10 seconds"
"""


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(write_config(tmp_path, extra=CAPPED), gateway_env(ROOM_API_SECRET_KEY=KEY))
    try:
        yield process
    finally:
        process.stop()


async def connect(gateway: GatewayProcess, source: str) -> H2Client:
    """A connection from ``source``, once the server said what it had to say (SETTINGS, maybe GOAWAY)."""
    client = await H2Client.connect(*gateway.grpc_address, source=source)
    with contextlib.suppress(TimeoutError):  # an admitted connection stays open
        await client.until(lambda: client.goaway is not None, timeout=0.3)
    return client


async def test_a_large_message_is_read_a_slice_per_turn_of_the_loop(capped: GatewayProcess) -> None:
    client = await connect(capped, "127.0.0.7")
    try:
        value = "x" * 60_000  # under input.max_value_bytes; some eight feeds of h2, reading paused between
        stream = client.request("/roomgateway.v1.RoomService/SetVariable", AUTH)
        message = bytes(SetVariableRequest(room_id="big", name="v", value=Value(string_value=value)))
        client.send(stream, grpc_message(message), end=True)
        reply = await client.reply(stream)
        assert reply.status == OK, reply
        assert value.encode() in reply.data
    finally:
        await client.close()


async def test_new_connections_per_ip_are_capped(capped: GatewayProcess) -> None:
    clients = [await connect(capped, "127.0.0.3") for _ in range(4)]
    try:
        assert [c.goaway for c in clients[:3]] == [None, None, None]
        assert clients[3].goaway == (ENHANCE_YOUR_CALM, b"too many new connections from this address")
        others = [await connect(capped, "127.0.0.5"), *[await connect(capped, "127.0.0.4") for _ in range(5)]]
        assert all(c.goaway is None for c in others)  # another client, and a trusted proxy
        clients += others
    finally:
        for client in clients:
            await client.close()
    assert sum("refused a connection from 127.0.0.3" in line for line in capped.lines) == 1
    assert_no_traceback(capped)


async def test_a_connection_closed_for_abuse_uses_up_its_address_allowance(capped: GatewayProcess) -> None:
    abuser = await connect(capped, "127.0.0.6")
    for i in range(10):  # over the 5 control frames
        abuser.h2.ping(struct.pack(">Q", i))
    abuser.flush()
    await abuser.until(lambda: abuser.goaway is not None)
    assert abuser.goaway is not None and abuser.goaway[0] == ENHANCE_YOUR_CALM
    again = await connect(capped, "127.0.0.6")
    assert again.goaway == (ENHANCE_YOUR_CALM, b"too many new connections from this address")
    for client in (abuser, again):
        await client.close()
