"""The deliverers' HTTP client: POSTs to one endpoint over a pool of keep-alive HTTP/1.1 connections.

Each connection is an :class:`asyncio.Protocol` that writes a request's bytes itself and feeds the answer to
``httptools`` (llhttp, the parser of Node.js); nothing else runs per request. Counted by valgrind
(``bench/http_clients.py``), aiohttp's ``ClientSession`` took some 360-420k instructions a post — half of a
whole delivery in the worker — for machinery a webhook does not use (cookies, redirects, decompression,
its stream reader and timer objects, the URL re-parsed per request).

What a post does (``docs/webhooks.md``, "Retries, disabling"):

- one deadline, ``timeout_seconds`` from the start, covers the wait for a connection, the connect (proxy and
  TLS included) and the whole answer: past it the attempt is a :class:`TimeoutError` and its connection is
  dropped;
- the answer's status is returned once the answer has ended — a ``Content-Length`` or chunked body read to
  its end, at most ``max_answer_bytes`` of it (past that the status is returned and the connection dropped),
  or a body ended by the receiver closing the connection; 1xx interim answers are skipped. Redirects are
  not followed: a 3xx is returned like any status;
- the connection goes back to the pool only when the answer was read to its end and the receiver did not
  say ``Connection: close`` (nor answered HTTP/1.0 without keep-alive);
- ``https://``: TLS with the given context (its trust, and the hostname checked against the certificate,
  SNI sent); through an ``http://`` proxy, ``http://`` requests go to the proxy in absolute form and
  ``https://`` ones through a ``CONNECT`` tunnel, TLS started inside it (``loop.start_tls``).

A connection the receiver closed while it was idle in the pool is seen closed (its ``connection_lost``) and
never taken again. The receiver may also close it just as a request is being written (its idle timeout
firing then): a reused connection that fails before any byte of the answer came back is retried once on a
fresh connection. Seeing the close first cannot cover that race, and a request the receiver never answered
at all is one it may see twice — which Standard Webhooks receivers already allow for (they deduplicate by
``webhook-id``: every retry sends the same id).

An attempt that gets no status raises a subclass of :class:`HTTPError` or :class:`TimeoutError`; the
deliverer records the class's name in the attempt log (``ConnectError``, ``CertificateError``,
``ProxyError``, ``ReadError``, ``ProtocolError``, ``TimeoutError``), never the message (it may quote the URL).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import typing
import urllib.parse
from collections.abc import Mapping

import httptools


class HTTPError(Exception):
    """A post that got no answer (or no usable one)."""


class ConnectError(HTTPError):
    """No connection: refused, unreachable, the name not resolved, or the TLS handshake failed."""


class CertificateError(ConnectError):
    """The receiver's certificate is not trusted by the TLS context, or is not for its host."""


class ProxyError(ConnectError):
    """The proxy refused the ``CONNECT`` tunnel, or is not an ``http://`` proxy."""


class ReadError(HTTPError):
    """The connection was closed or reset before the answer ended."""


class ProtocolError(HTTPError):
    """What came back is not an HTTP/1.1 answer (or asks to switch protocols)."""


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _basic(parts: urllib.parse.SplitResult) -> str | None:
    """The ``Basic`` credentials of a URL's user information, if it has any."""
    if parts.username is None:
        return None
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Pool:
    """Keep-alive connections to one endpoint URL, at most ``max_connections`` open at once.

    :param url: the endpoint's ``http://`` or ``https://`` URL (user information becomes ``Authorization:
        Basic``, as clients do).
    :param ssl_context: the TLS context of an ``https://`` URL (required for one).
    :param proxy: the ``http://`` proxy to go through, or ``None`` (:func:`~.deliverer.env_proxy`).
    :param max_connections: connections open at most; a post beyond waits for one.
    :param timeout: seconds a post may take, from its start to the answer's end.
    :param max_answer_bytes: bytes of an answer's body read at most; past them the connection is dropped.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        proxy: str | None,
        max_connections: int,
        timeout: float,
        max_answer_bytes: int,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        tls = parts.scheme == "https"
        if tls and ssl_context is None:
            raise ValueError("an https:// endpoint needs a TLS context")
        self._ssl = ssl_context if tls else None
        self._hostname = parts.hostname or ""
        self._port = parts.port or (443 if tls else 80)
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self._max = max_connections
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        lines = []
        #: Where the TCP connection goes, and the CONNECT request that opens the tunnel through a proxy.
        self._address = (self._hostname, self._port)
        self._tunnel: bytes | None = None
        self._proxy_error = False
        if proxy is not None:
            through = urllib.parse.urlsplit(proxy)
            self._address = (through.hostname or "", through.port or 80)
            self._proxy_error = through.scheme != "http"  # every attempt a ProxyError: nothing else fits
            credentials = _basic(through)
            if tls:
                authority = _authority(self._hostname, self._port)
                tunnel = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
                if credentials is not None:
                    tunnel.append(f"Proxy-Authorization: {credentials}")
                self._tunnel = ("\r\n".join(tunnel) + "\r\n\r\n").encode("latin-1")
            else:  # the proxy forwards a request whose target is the absolute URL (RFC 9112 §3.2.2)
                target = urllib.parse.urlunsplit(parts._replace(netloc=host, fragment=""))
                if credentials is not None:
                    lines.append(f"Proxy-Authorization: {credentials}")
        if (credentials := _basic(parts)) is not None:
            lines.append(f"Authorization: {credentials}")
        #: Every request's first lines, made once: the request line, Host, and any credentials.
        self._head = "".join(f"{line}\r\n" for line in [f"POST {target} HTTP/1.1", f"Host: {host}", *lines])
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open: set[_Connection] = set()
        self._busy = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed = False

    @property
    def connections(self) -> int:
        """Connections open now, idle or carrying a request."""
        return len(self._open)

    async def post(self, headers: Mapping[str, str], body: bytes) -> int:
        """Post ``body`` with ``headers`` (besides Host and Content-Length); the answer's status code.

        :raises HTTPError: no answer (its subclass says why).
        :raises TimeoutError: no complete answer within :attr:`timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        request = f"{self._head}{fields}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body
        if self._busy >= self._max:
            await self._slot(deadline)
        self._busy += 1
        try:
            connection = self._idle.pop() if self._idle else None
            if connection is not None:
                try:
                    return await connection.exchange(request, deadline)
                except ReadError:
                    if connection.answered:  # part of the answer came: the receiver saw the request
                        raise
                    # closed by the receiver as the request went out: once more on a new connection
                except asyncio.CancelledError:  # a stop: the answer's state is unknown
                    connection.drop()
                    raise
            connection = await self._connect(deadline)
            try:
                return await connection.exchange(request, deadline)
            except asyncio.CancelledError:
                connection.drop()
                raise
        finally:
            self._busy -= 1
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    async def _slot(self, deadline: float) -> None:
        """Wait until fewer than ``max_connections`` posts run (the deliverer's lanes keep within it)."""
        while self._busy >= self._max:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            async with asyncio.timeout_at(deadline):
                await waiter

    async def _connect(self, deadline: float) -> _Connection:
        """A new connection (through the proxy's tunnel, TLS started), before ``deadline``."""
        if self.closed:
            raise ConnectError("the pool is closed")
        if self._proxy_error:
            raise ProxyError("only http:// proxies are supported")
        loop = asyncio.get_running_loop()
        connection = _Connection(self)
        host, port = self._address
        try:
            async with asyncio.timeout_at(deadline):
                if self._tunnel is None:
                    hostname = self._hostname if self._ssl is not None else None
                    await loop.create_connection(
                        lambda: connection, host, port, ssl=self._ssl, server_hostname=hostname
                    )
                else:
                    assert self._ssl is not None  # a tunnel is made for https:// only
                    raw, tunnel = await loop.create_connection(_Tunnel, host, port)
                    try:
                        raw.write(self._tunnel)
                        status = await tunnel.answer
                        if not 200 <= status < 300:
                            raise ProxyError(f"the proxy answered CONNECT with {status}")
                        secured = await loop.start_tls(
                            raw, connection, self._ssl, server_hostname=self._hostname
                        )
                    except BaseException:
                        raw.abort()
                        raise
                    if secured is None:  # the loop closed the transport during the handshake
                        raise ConnectError("the connection closed during the TLS handshake")
                    connection.connection_made(secured)
        except (TimeoutError, HTTPError):
            raise
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(exc.verify_message) from exc
        except OSError as exc:  # refused, unreachable, not resolved, reset, a failed TLS handshake
            raise ConnectError(str(exc)) from exc
        if self.closed:
            connection.drop()
            raise ConnectError("the pool is closed")
        return connection

    def _opened(self, connection: _Connection) -> None:
        self._open.add(connection)

    def _idled(self, connection: _Connection) -> None:
        self._idle.append(connection)

    def _lost(self, connection: _Connection) -> None:
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        """Close every connection (a post under way fails with :class:`ReadError`); none opens again."""
        self.closed = True
        for connection in list(self._open):
            connection.drop()
        self._idle.clear()


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to ``CONNECT``: its status, once its head has arrived."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head and not self.answer.done():
            line = self._head.split(b"\r\n", 1)[0].split()
            if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
                self.answer.set_exception(ProtocolError("the proxy's answer to CONNECT is not HTTP/1.1"))
            else:
                self.answer.set_result(int(line[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ReadError("the proxy closed the connection"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request written, its answer parsed as it comes, then idle again.

    httptools calls the ``on_*`` methods from :meth:`data_received`; only those the answer's end needs are
    defined (httptools skips a callback that is missing).
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        #: The request's future (its status), ``None`` while idle.
        self._waiter: asyncio.Future[int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._status = 0
        self._received = 0
        self._headed = False
        #: The answer's body has a length (Content-Length, or chunked): a close before its end is an error.
        self._delimited = False
        #: Some of the current answer arrived (so a ReadError is not the idle-close race).
        self.answered = False

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it
        self._pool._opened(self)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes while idle (a 408 before a close, say): not reusable
            self.drop()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the receiver asked to switch protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"not an HTTP/1.1 answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool._lost(self)
        self._transport = None
        if self._waiter is not None:
            if self._headed and not self._delimited:  # the close ends a body without a length
                self._finish(keep=False)
            else:
                self._fail(ReadError("the connection closed before the answer ended"))

    # -- httptools callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer behind the first one: not ours
            self.drop()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headed = True

    def on_body(self, body: bytes) -> None:
        self._received += len(body)
        if self._received > self._pool.max_answer_bytes and self._waiter is not None:
            self._finish(keep=False)  # enough: the rest is not downloaded

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._headed = self._delimited = False
            return
        if self._waiter is not None:
            self._finish(keep=self._parser.should_keep_alive())

    # -- the request ------------------------------------------------------------------------------------

    def exchange(self, request: bytes, deadline: float) -> asyncio.Future[int]:
        """Write ``request``; a future of its answer's status (:class:`ReadError`, :class:`ProtocolError`,
        :class:`TimeoutError` past ``deadline``)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._status = self._received = 0
        self._headed = self._delimited = self.answered = False
        if self._transport is None:  # closed since it was taken (cannot happen between two steps)
            self._fail(ReadError("the connection is closed"))
            return waiter
        self._timer = loop.call_at(deadline, self._time_out)
        self._transport.write(request)
        return waiter

    def _time_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError())

    def _end(self) -> asyncio.Future[int] | None:
        """The request's future, taken off the connection (idle again), its timer stopped."""
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return waiter if waiter is not None and not waiter.done() else None

    def _finish(self, keep: bool) -> None:
        if (waiter := self._end()) is not None:
            waiter.set_result(self._status)
        if keep and self._transport is not None and not self._pool.closed:
            self._pool._idled(self)
        else:
            self.drop()

    def _fail(self, exc: BaseException) -> None:
        if (waiter := self._end()) is not None:
            waiter.set_exception(exc)
        self.drop()

    def drop(self) -> None:
        """Close the connection now (its state is unknown, or it is not to be reused): out of the pool at
        once, not a loop turn later when its ``connection_lost`` comes."""
        self._pool._lost(self)
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.abort()
