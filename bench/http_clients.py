"""Instructions per webhook POST of each candidate HTTP client, on one kept-alive HTTP/1.1 connection:

    .venv/bin/python bench/http_clients.py [--calls 1000] [--clients httpx,aiohttp,...] [--uvloop]

Each client posts the same request as a deliverer (a ~600-byte JSON body, the Standard Webhooks headers, a
timeout, no redirects), reads the answer to its end and goes on, ``--calls`` times one after another, to
``bench/webhooks.py``'s receiver (its own process, not counted). Counted by ``valgrind --tool=callgrind``
with instrumentation on only around the calls (after a warm-up of 50), as ``bench/instructions.py`` does.
``raw`` is the floor: an asyncio protocol writing the bytes itself and reading the status line; ``gateway``
the deliverers' own client (``gateway/webhooks/http.py``).
A client whose package is not installed is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BODY = (
    b'{"type":"variable.set","timestamp":"2026-12-02T07:00:00.000Z","data":{"roomId":"bench-room",'
    b'"seq":"12345","epoch":"e0f1","change":{"seq":"12345","kind":"VARIABLE_SET","time":'
    b'"2026-12-02T07:00:00.000Z","variable":{"name":"v1","value":{"i":42,"text":"' + b"x" * 300 + b'"},'
    b'"version":"7"}},"previous":{"value":{"i":41},"version":"6"},"patch":{"i":42}}}'
)
HEADERS = {
    "content-type": "application/json",
    "user-agent": "room-gateway-webhooks",
    "webhook-id": "msg_0123456789abcdef0123456789abcdef",
    "webhook-timestamp": "1796194800",
    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
}
TIMEOUT = 10.0

Post = Callable[[], Awaitable[int]]


async def _httpx(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """As gateway/webhooks/deliverer.py did up to session 5: a client of one connection, streamed."""
    import httpx

    client = httpx.AsyncClient(
        verify=ssl.create_default_context(),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        follow_redirects=False,
    )

    async def post() -> int:
        request = client.build_request("POST", url, content=BODY, headers=HEADERS, timeout=TIMEOUT)
        response = await client.send(request, stream=True)
        async for _ in response.aiter_raw():
            pass
        await response.aclose()
        return response.status_code

    return post, client.aclose


async def _httpx_post(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """httpx's plain ``client.post`` (the answer read whole), the same client."""
    import httpx

    client = httpx.AsyncClient(
        verify=ssl.create_default_context(),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        follow_redirects=False,
        timeout=TIMEOUT,
    )

    async def post() -> int:
        return (await client.post(url, content=BODY, headers=HEADERS)).status_code

    return post, client.aclose


async def _httpcore(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """httpx's transport layer alone (httpcore's pool of one connection): what httpx's own models add."""
    import httpcore

    pool = httpcore.AsyncConnectionPool(ssl_context=ssl.create_default_context(), max_connections=1)
    headers = list(HEADERS.items())
    extensions = {"timeout": {"connect": TIMEOUT, "read": TIMEOUT, "write": TIMEOUT, "pool": TIMEOUT}}

    async def post() -> int:
        response = await pool.request("POST", url, headers=headers, content=BODY, extensions=extensions)
        return response.status

    return post, pool.aclose


async def _aiohttp(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """aiohttp's ClientSession (its C response parser), as gateway/webhooks/deliverer.py posts with it."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1, ssl=ssl.create_default_context()),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)

    async def post() -> int:
        async with session.post(
            url, data=BODY, headers=HEADERS, allow_redirects=False, timeout=timeout, proxy=None
        ) as response:
            while await response.content.readany():
                pass
            return response.status

    return post, session.close


async def _aiohttp_bare(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """aiohttp with no per-request options and no automatic headers: what those cost."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        auto_decompress=False,
    )

    async def post() -> int:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            await response.read()
            return response.status

    return post, session.close


async def _gateway(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """The deliverers' own client (gateway/webhooks/http.py): a pool of one connection, as a lane posts."""
    from gateway.webhooks.http import Pool

    pool = Pool(url, ssl_context=None, proxy=None, max_connections=1, timeout=TIMEOUT, max_answer_bytes=65536)

    async def post() -> int:
        return await pool.post(HEADERS, BODY)

    async def close() -> None:
        pool.close()

    return post, close


async def _curl_cffi(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from curl_cffi.requests import AsyncSession

    session = AsyncSession(max_clients=1, timeout=TIMEOUT, allow_redirects=False)

    async def post() -> int:
        return (await session.post(url, data=BODY, headers=HEADERS)).status_code

    return post, session.close


async def _pyreqwest(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(1).timeout(timedelta(seconds=TIMEOUT)).build()
    await client.__aenter__()

    async def post() -> int:
        response = await client.post(url).body_bytes(BODY).headers(HEADERS).build().send()
        await response.bytes()
        return response.status

    async def close() -> None:
        await client.__aexit__(None, None, None)

    return post, close


async def _aiosonic(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import aiosonic

    client = aiosonic.HTTPClient(aiosonic.TCPConnector(pool_configs={":default": {"size": 1}}))

    async def post() -> int:
        response = await client.post(url, data=BODY, headers=HEADERS, follow=False)
        await response.content()
        return response.status_code

    async def close() -> None:
        await client.connector.cleanup()

    return post, close


async def _raw(url: str) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """The floor: the request's bytes written by hand, the status line and a content-length read back."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = b"POST /hooks HTTP/1.1\r\nhost: %s\r\ncontent-length: %d\r\n" % (host.encode(), len(BODY))
    head += b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in HEADERS.items()) + b"\r\n"

    async def post() -> int:
        writer.write(head + BODY)
        answer = await reader.readuntil(b"\r\n\r\n")
        return int(answer[9:12])

    async def close() -> None:
        writer.close()

    return post, close


CLIENTS = {
    "raw": _raw,
    "gateway": _gateway,
    "httpx": _httpx,
    "httpx-post": _httpx_post,
    "httpcore": _httpcore,
    "aiohttp": _aiohttp,
    "aiohttp-bare": _aiohttp_bare,
    "curl_cffi": _curl_cffi,
    "pyreqwest": _pyreqwest,
    "aiosonic": _aiosonic,
}


async def child(name: str, url: str, calls: int) -> None:
    post, close = await CLIENTS[name](url)
    for _ in range(50):
        assert await post() == 204
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(calls):
        await post()
    print("done", flush=True)
    await close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.uvloop:
            import uvloop

            uvloop.run(child(args.child[0], args.child[1], args.calls))
        else:
            asyncio.run(child(args.child[0], args.child[1], args.calls))
        return
    from instructions import _handshake, per_call
    from webhooks import receiver_process

    loop = ["--uvloop"] if args.uvloop else []
    with receiver_process() as receiver:
        for name in args.clients.split(","):
            try:
                subprocess.run(
                    [sys.executable, __file__, "--child", name, receiver + "/hooks", "--calls", "3", *loop],
                    input="go\n",
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=60,
                )
            except subprocess.CalledProcessError as exc:
                print(f"{name}: skipped ({exc.stderr.strip().splitlines()[-1]})", flush=True)
                continue
            count = per_call(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    receiver + "/hooks",
                    "--calls",
                    str(args.calls),
                    *loop,
                ],
                args.calls,
                _handshake,
            )
            print(f"{name}: {count / 1000:,.1f}k instructions a request", flush=True)


if __name__ == "__main__":
    main()
