"""The deliverers' HTTP client (``gateway/webhooks/http.py``) against real loopback servers that answer raw
bytes: chunked and oversized answers, ``Connection: close``, a receiver closing idle connections (and one
closing as a request arrives), a 3xx not followed, a timeout mid-answer, the pool's limit, TLS with a test CA
(trust, SNI, the hostname check) directly and through a ``CONNECT`` proxy; and the error names the attempt log
records, through a gateway."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.webhooks import deliverer
from gateway.webhooks.http import CertificateError, ConnectError, Pool, ProxyError, ReadError
from tests.webhooks.conftest import running, webhook_config
from tests.webhooks.test_delivery import _no_proxy_env, put

HEADERS = {"content-type": "application/json", "webhook-id": "msg_1"}
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

#: Answers request ``number`` (counted over the server's life) on ``writer``; ``False`` closes the connection.
Answer = Callable[[int, asyncio.StreamWriter], Awaitable[bool]]


async def ok(_number: int, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    return True


@dataclass
class Server:
    """A loopback HTTP/1.1 server in the test's loop: reads each request whole, then lets ``answer`` write."""

    answer: Answer = ok
    tls: ssl.SSLContext | None = None
    connections: int = 0
    #: Each request's head, in arrival order.
    heads: list[bytes] = field(default_factory=list)
    #: Connections the client closed (an EOF or a reset while the server waited for a request).
    closed_by_client: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening, close the connections still open (Python 3.11's ``Server.close`` does not) and
        wait for their handlers: one still running when the test's loop closes is logged as an error."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._handlers, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.heads.append(head)
                if not await self.answer(len(self.heads), writer):
                    return
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.close()


@contextlib.asynccontextmanager
async def serving(answer: Answer = ok, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = await Server(answer, tls).start()
    try:
        yield server
    finally:
        await server.stop()


def pool(
    url: str,
    *,
    timeout: float = 2.0,
    max_connections: int = 4,
    ssl_context: ssl.SSLContext | None = None,
    proxy: str | None = None,
) -> Pool:
    return Pool(
        url,
        ssl_context=ssl_context,
        proxy=proxy,
        max_connections=max_connections,
        timeout=timeout,
        max_answer_bytes=deliverer.MAX_ANSWER_BYTES,
    )


async def test_a_chunked_answer_is_read_to_its_end_and_its_connection_reused() -> None:
    async def chunked(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        for piece in (b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        return True

    async with serving(chunked) as server:
        client = pool(server.url)
        assert [await client.post(HEADERS, b"{}") for _ in range(3)] == [202, 202, 202]
        assert server.connections == 1 and client.connections == 1
        client.close()


async def test_the_request_carries_host_length_and_the_given_headers() -> None:
    async with serving() as server:
        client = pool(f"http://app:pa%20ss@127.0.0.1:{server.port}/in?x=1#frag")
        assert await client.post({**HEADERS, "webhook-signature": "v1,abc"}, b'{"a":1}') == 200
        client.close()
    head = server.heads[0].decode()
    assert head.startswith("POST /in?x=1 HTTP/1.1\r\n")
    lines = [f"Host: 127.0.0.1:{server.port}", "Content-Length: 7", "webhook-signature: v1,abc"]
    for line in [*lines, "Authorization: Basic YXBwOnBhIHNz"]:  # app:pa ss, from the URL
        assert f"\r\n{line}\r\n" in head


async def test_an_answer_past_max_answer_bytes_gives_its_status_and_loses_its_connection() -> None:
    size = deliverer.MAX_ANSWER_BYTES * 1024  # far more than the socket buffers hold
    sent = [0]

    async def huge(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        while sent[0] < size:
            writer.write(b"x" * 16384)
            sent[0] += 16384
            await writer.drain()  # raises once the client has closed
        return True

    async with serving(huge) as server:
        client = pool(server.url)
        assert await client.post(HEADERS, b"{}") == 200
        assert client.connections == 0  # dropped, not downloaded to the end
        await asyncio.sleep(0.1)
        assert sent[0] < size
        assert await client.post(HEADERS, b"{}") == 200
        assert server.connections == 2
        client.close()


async def test_connection_close_is_honoured() -> None:
    async def closing(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the server keeps it open: the client must not reuse it
        return True

    async with serving(closing) as server:
        client = pool(server.url)
        assert await client.post(HEADERS, b"{}") == 204
        assert await client.post(HEADERS, b"{}") == 204
        assert server.connections == 2 and len(server.heads) == 2
        client.close()


async def test_a_body_ended_by_the_close_counts_and_a_cut_one_does_not() -> None:
    async def until_close(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nthe body ends with the connection")
        return False

    async with serving(until_close) as server:
        client = pool(server.url)
        assert await client.post(HEADERS, b"{}") == 200
        client.close()

    async def cut(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        return False

    async with serving(cut) as server:
        client = pool(server.url)
        with pytest.raises(ReadError):
            await client.post(HEADERS, b"{}")
        client.close()


async def test_a_connection_the_receiver_closed_while_idle_is_not_reused() -> None:
    async def short_keep_alive(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)  # the receiver's idle timeout
        return False

    async with serving(short_keep_alive) as server:
        client = pool(server.url)
        for _ in range(3):
            assert await client.post(HEADERS, b"{}") == 200
            await asyncio.sleep(0.2)
            assert client.connections == 0  # seen closed while idle
        assert server.connections == 3 and len(server.heads) == 3  # no request lost, none sent twice
        client.close()


async def test_a_reused_connection_closed_as_the_request_arrives_is_retried_once_on_a_new_one() -> None:
    async def closes_the_second(number: int, writer: asyncio.StreamWriter) -> bool:
        if number == 2:  # the idle timeout fired just as the request came: no answer
            return False
        writer.write(OK)
        return True

    async with serving(closes_the_second) as server:
        client = pool(server.url)
        assert await client.post(HEADERS, b"{}") == 200
        assert await client.post(HEADERS, b"{}") == 200
        assert len(server.heads) == 3 and server.connections == 2
        client.close()

    async def never_answers(_n: int, _writer: asyncio.StreamWriter) -> bool:
        return False

    async with serving(never_answers) as server:
        client = pool(server.url)
        with pytest.raises(ReadError):  # a new connection: not retried
            await client.post(HEADERS, b"{}")
        assert len(server.heads) == 1
        client.close()


async def test_a_redirect_is_an_answer_not_followed() -> None:
    async def moved(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n"
        )
        return True

    async with serving(moved) as server:
        client = pool(server.url)
        assert await client.post(HEADERS, b"{}") == 302
        assert len(server.heads) == 1
        client.close()


async def test_interim_answers_are_skipped() -> None:
    async def early_hints(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK)
        return True

    async with serving(early_hints) as server:
        client = pool(server.url)
        assert await client.post(HEADERS, b"{}") == 200
        assert await client.post(HEADERS, b"{}") == 200
        assert server.connections == 1
        client.close()


async def test_a_timeout_mid_answer_fails_the_attempt_and_drops_the_connection() -> None:
    async def stalls(number: int, writer: asyncio.StreamWriter) -> bool:
        if number == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            await writer.drain()
            await asyncio.sleep(1.0)
            return False
        writer.write(OK)
        return True

    async with serving(stalls) as server:
        client = pool(server.url, timeout=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.post(HEADERS, b"{}")
        assert 0.25 < loop.time() - started < 0.9
        assert client.connections == 0
        assert await client.post(HEADERS, b"{}") == 200
        client.close()


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        return True

    async with serving(garbage) as server:
        client = pool(server.url)
        with pytest.raises(Exception) as caught:
            await client.post(HEADERS, b"{}")
        assert type(caught.value).__name__ == "ProtocolError"
        client.close()


async def test_at_most_max_connections_are_open_and_close_ends_them() -> None:
    async def slow(_n: int, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(OK)
        return True

    async with serving(slow) as server:
        client = pool(server.url, max_connections=2)
        assert await asyncio.gather(*(client.post(HEADERS, b"{}") for _ in range(6))) == [200] * 6
        assert server.connections == 2 and client.connections == 2
        client.close()
        for _ in range(50):
            if server.closed_by_client == 2:
                break
            await asyncio.sleep(0.01)
        assert server.closed_by_client == 2
        with pytest.raises(ConnectError):
            await client.post(HEADERS, b"{}")


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with serving() as server:
        port = server.port
    client = pool(f"http://127.0.0.1:{port}/hooks")
    with pytest.raises(ConnectError):
        await client.post(HEADERS, b"{}")


# -- TLS --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    ca_file: Path
    #: The server's context: a certificate for ``localhost`` only, signed by the CA; SNI names recorded.
    server: ssl.SSLContext
    server_names: list[str | None]


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed: it makes the test CA")
    folder = tmp_path_factory.mktemp("ca")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *curve, "-days", "1", "-subj", "/CN=room-gateway test CA", "-keyout", "ca.key",
        "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *curve, "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr")
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "server.ext", "-out", "cert.pem")  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    names: list[str | None] = []
    server.sni_callback = lambda _sock, name, _context: names.append(name)  # type: ignore[assignment,func-returns-value]
    return Authority(folder / "ca.pem", server, names)


def trusting(ca: Authority, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    return deliverer.ssl_context()


async def test_tls_to_a_receiver_of_a_trusted_ca_with_sni_and_the_hostname_checked(
    test_ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = trusting(test_ca, monkeypatch)
    async with serving(tls=test_ca.server) as server:
        client = pool(f"https://localhost:{server.port}/hooks", ssl_context=context)
        assert await client.post(HEADERS, b"{}") == 200
        assert await client.post(HEADERS, b"{}") == 200
        assert server.connections == 1 and test_ca.server_names[-1] == "localhost"
        client.close()
        wrong_host = pool(f"https://127.0.0.1:{server.port}/hooks", ssl_context=context)
        with pytest.raises(CertificateError):  # the certificate is for localhost only
            await wrong_host.post(HEADERS, b"{}")
        monkeypatch.delenv("SSL_CERT_FILE")
        untrusted = pool(f"https://localhost:{server.port}/hooks", ssl_context=deliverer.ssl_context())
        with pytest.raises(CertificateError):  # certifi's bundle does not hold the test CA
            await untrusted.post(HEADERS, b"{}")


@dataclass
class ConnectProxy:
    """A tunnelling proxy on loopback: answers ``CONNECT host:port`` by opening it and relaying both ways."""

    refuse: bool = False
    heads: list[bytes] = field(default_factory=list)
    port: int = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        target = head.split(b" ")[1].decode()
        if self.refuse or not head.startswith(b"CONNECT "):
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1" if host == "localhost" else host, port
        )
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))


async def test_https_through_a_connect_proxy_keeps_tls_to_the_receiver(
    test_ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = trusting(test_ca, monkeypatch)
    proxy = ConnectProxy()
    listening = await proxy.start()
    async with serving(tls=test_ca.server) as server:
        url = f"https://localhost:{server.port}/hooks"
        client = pool(url, ssl_context=context, proxy=f"http://user:s%40cret@127.0.0.1:{proxy.port}")
        assert await client.post(HEADERS, b"{}") == 200
        assert await client.post(HEADERS, b"{}") == 200  # the tunnel kept alive
        client.close()
        assert len(proxy.heads) == 1 and test_ca.server_names[-1] == "localhost"
        assert proxy.heads[0].startswith(f"CONNECT localhost:{server.port} HTTP/1.1\r\n".encode())
        assert b"\r\nProxy-Authorization: Basic dXNlcjpzQGNyZXQ=\r\n" in proxy.heads[0]  # user:s@cret
        assert server.heads[0].startswith(b"POST /hooks HTTP/1.1\r\n")  # origin-form inside the tunnel
        proxy.refuse = True
        refused = pool(url, ssl_context=context, proxy=f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(ProxyError):
            await refused.post(HEADERS, b"{}")
    listening.close()


async def test_the_deliverer_posts_https_through_the_connect_proxy_of_the_environment(
    test_ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_proxy_env(monkeypatch)
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.ca_file))
    proxy = ConnectProxy()
    listening = await proxy.start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with serving(tls=test_ca.server) as server:
        config = webhook_config("memory://", {"app": f"https://localhost:{server.port}/hooks"})
        async with running(config) as (_, client):
            await put(client, "lobby", "v", 1)
            for _ in range(200):
                if len(server.heads) == 2:  # room.created and variable.set
                    break
                await asyncio.sleep(0.02)
        assert len(server.heads) == 2 and len(proxy.heads) >= 1
        assert all(head.startswith(b"CONNECT localhost:") for head in proxy.heads)
    listening.close()


async def test_the_attempt_log_names_what_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_proxy_env(monkeypatch)

    async def moved(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 301 Moved Permanently\r\nlocation: /new\r\ncontent-length: 0\r\n\r\n")
        return True

    async with serving(moved) as redirecting, serving() as gone:
        refused = f"http://127.0.0.1:{gone.port}/hooks"
    async with serving(moved) as redirecting:
        urls = {"app": redirecting.url, "down": refused}
        async with running(webhook_config("memory://", urls)) as (_, client):
            assert (await client.post("/v1/rooms", json={"roomId": "lobby"})).status_code == 200
            for _ in range(200):
                logs = {}
                for name in urls:
                    found = (await client.get(f"/v1/webhooks/{name}/messages")).json().get("messages", [])
                    logs[name] = found[0]["attempts"] if found and found[0].get("attempts") else []
                if all(logs.values()):
                    break
                await asyncio.sleep(0.02)
    assert logs["app"][0]["statusCode"] == 301 and not logs["app"][0].get("error")
    assert logs["down"][0]["error"] == "ConnectError" and not logs["down"][0].get("statusCode")
    assert len(redirecting.heads) >= 1 and all(h.startswith(b"POST /hooks ") for h in redirecting.heads)
