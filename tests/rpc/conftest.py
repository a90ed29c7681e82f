"""Fixtures of the gRPC tests: a real grpclib server on a loopback port, and grpcio stubs made from protos/.

grpcio is an independent implementation (C core, its own HTTP/2 and codegen), so what passes here is what a
client built from ``protos/`` with standard tooling sees.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpclib.server import Server

from gateway.dispatch import Dispatcher
from gateway.rpc.server import create_grpc_server
from tests.grpcio_stubs import Stubs, generated


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    """grpcio modules generated from ``protos/roomgateway/v1/rooms.proto``."""
    with generated(tmp_path_factory.mktemp("grpcio_stubs"), "roomgateway/v1/rooms.proto") as modules:
        yield modules


class Readiness:
    """The ``ready()`` callable handed to the server; ``failing`` makes it raise."""

    def __init__(self) -> None:
        self.failing = False

    async def __call__(self) -> None:
        if self.failing:
            raise ConnectionError("backend unreachable")


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@dataclass
class Loopback:
    server: Server
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def loopback(dispatcher: Dispatcher, readiness: Readiness) -> AsyncIterator[Loopback]:
    server = create_grpc_server(dispatcher, ready=readiness)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await server.start(sock=sock)
    try:
        yield Loopback(server, sock.getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
        # grpclib's close() leaves accepted connections open (asyncio.Server.close_clients is 3.12+): wait
        # for the clients' FIN, so that no server transport is garbage-collected unclosed (ResourceWarning).
        async with asyncio.timeout(5):
            while getattr(server._server, "_active_count", 0):
                await asyncio.sleep(0.01)


@pytest.fixture
async def channel(loopback: Loopback) -> AsyncIterator[grpc.aio.Channel]:
    # A subchannel of its own: closing the channel then closes its connection (the global pool may keep it).
    async with grpc.aio.insecure_channel(
        loopback.target, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as chan:
        yield chan
    # A grpcio call caught in a reference cycle (an exception's traceback) keeps its connection open after
    # the channel closes, until a collection: collect now, while the server still waits for its clients.
    gc.collect()


@pytest.fixture
def stub(stubs: Stubs, channel: grpc.aio.Channel) -> object:
    return stubs.grpc.RoomServiceStub(channel)
