"""In-process CPU per REST call through the gateway's ASGI app, no sockets: the steadiest measure here.

    .venv/bin/python bench/inproc.py [--log] [--no-limit] [--profile] [--backend URL]

Run it from any checkout with that checkout's venv to compare trees
(``cd ../before && .venv/bin/python ../main/bench/inproc.py``): memory backend (or ``--backend``'s URL),
an API key, a counted never-refusing per-IP limit; PUT and GET of one variable, 5 x 4,000 calls each, the
best run's CPU time per call. ``--profile`` adds a cProfile of PUTs (``--get``: GETs; ``--bare``: of the
bare app), by own time (``--cumulative``: by time with callees, 80 rows; ``--calls``: by calls).
"""

import asyncio
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

from gateway.app import create_gateway
from gateway.config import GatewayConfig
from gateway.logs import configure_logging

KEY = "bench-key-0123456789abcdef"
LOG = "--log" in sys.argv
NO_LIMIT = "--no-limit" in sys.argv
BACKEND = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "memory://"
cfg = GatewayConfig.model_validate(
    {
        "backend": BACKEND,
        "auth": {"keys": [{"name": "admin", "key": KEY, "permissions": ["*"]}]},
        "rate_limits": {"limits": [] if NO_LIMIT else [{"by": "ip", "limit": "1000000000/second"}]},
        "access_log": LOG and not os.environ.get("INPROC_NO_ACCESS"),
    }
)


sys.path.insert(0, str(Path(__file__).resolve().parent))


if LOG:  # the gateway's own writer, as `serve` sets it up, writing to /dev/null (or $INPROC_LOG)
    sys.stderr = open(os.environ.get("INPROC_LOG", os.devnull), "w")  # for the whole run
    writer = configure_logging("info")


async def main():
    gw = create_gateway(cfg)
    await gw.backend.open()
    from peers import starlette_app

    bare = starlette_app()
    body = b'{"value": {"points": 42, "players": ["ada", "linus"]}}'

    async def call(method, path, data=b"", app=gw.http_app):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"x-api-key", KEY.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
            "client": ("127.0.0.1", 5555),
            "server": ("127.0.0.1", 8080),
        }
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            await asyncio.sleep(3600)

        status = [0]

        async def send(m):
            if m["type"] == "http.response.start":
                status[0] = m["status"]

        await app(scope, receive, send)
        return status[0]

    path = "/v1/rooms/bench-room/variables/score"
    assert await call("PUT", path, body) == 200
    if "--child" in sys.argv:  # bench/instructions.py: counted calls of one app, between two handshakes
        at = sys.argv.index("--child")
        name, method, calls = sys.argv[at + 1], sys.argv[at + 2], int(sys.argv[at + 3])
        app = bare if name == "bare" else gw.http_app
        data = body if method == "PUT" else b""
        await call("PUT", path, body, app)
        for _ in range(200):  # warm-up: caches, first-time bindings
            await call(method, path, data, app)
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(calls):
            await call(method, path, data, app)
        print("done", flush=True)
        sys.stdin.readline()
        return
    assert await call("PUT", path, body, bare) == 200
    for method, b in (("PUT", body), ("GET", b"")):
        costs = {}
        for name, app in (("bare Starlette", bare), ("gateway", gw.http_app)):
            best = 1e9
            for _round in range(5):
                t = time.process_time()
                for _ in range(4000):
                    await call(method, path, b, app)
                best = min(best, (time.process_time() - t) / 4000 * 1e6)
            costs[name] = best
        print(
            f"{method}: gateway {costs['gateway']:.1f} us, bare Starlette {costs['bare Starlette']:.1f} us, "
            f"+{costs['gateway'] - costs['bare Starlette']:.1f} us"
        )
    if "--profile" in sys.argv:
        pr = cProfile.Profile()
        pr.enable()
        method, data = ("GET", b"") if "--get" in sys.argv else ("PUT", body)
        app = bare if "--bare" in sys.argv else gw.http_app
        for _ in range(4000):
            await call(method, path, data, app)
        pr.disable()
        if "--calls" in sys.argv:
            order, shown = "ncalls", 80
        elif "--cumulative" in sys.argv:
            order, shown = "cumulative", 80
        else:
            order, shown = "tottime", 25
        pstats.Stats(pr, stream=sys.__stdout__).sort_stats(order).print_stats(shown)
    if LOG:
        writer.stop()


asyncio.run(main())
