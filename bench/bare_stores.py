"""Bare Starlette peers over a real store: what a user would write by hand instead of running the gateway.

One process (uvicorn, as deployed), two routes on the gateway's paths, each doing **one query** with the
same driver the gateway's backend uses, on the rows the gateway wrote (same tables, same key layout):

- ``GET /v1/rooms/{room_id}/variables/{name}``: SQLAlchemy async (aiosqlite / asyncpg)
  ``SELECT value, version, update_time FROM variables WHERE room_id=:r AND name=:n``, or redis-py asyncio
  ``HGET {prefix}vars:{room_id} name``; answers the gateway's JSON (``name``, ``value``, ``version`` as a
  string, ``updateTime`` in RFC 3339 UTC).
- ``PUT …``: one upsert that bumps the version (SQL ``INSERT … ON CONFLICT … RETURNING version``; Redis one
  Lua script: ``HINCRBY`` the version and ``HSET`` the record). No room check, no notification, no auth,
  no validation: it is the floor the gateway is compared with, not a replacement for it.

The engine and client are built the way a user would (library defaults): ``create_async_engine(url)``,
``Redis.from_url(url)``. Tables (``plugins/…/sql/tables.py``) and keys (``plugins/…/redis/keys.py``) are
read from the gateway's schema, so the rows must be seeded through the gateway first.

SQLite has a second, stricter peer, chosen by the scheme ``sqlite+rawaiosqlite://``: the best a user would
write by hand with aiosqlite, without SQLAlchemy. Each query is one ``execute_fetchall`` (one trip through
the connection's thread, where SQLAlchemy's adaptation takes about five): reads on a pool of
``RAW_READERS`` connections handed out through an asyncio queue (as many as the gateway's readers), writes
on one autocommit connection, as the gateway writes through one connection too.

Usage: python bench/bare_stores.py BACKEND_URL PORT     (the gateway's URL: sqlite:///…, postgresql://…
?schema=…, redis://…?prefix=…; or sqlite+rawaiosqlite:///… for the hand-written aiosqlite peer)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from room_gateway_plugins.sql.sqlite import READERS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

VAR_ROUTE = "/v1/rooms/{room_id}/variables/{name}"

Read = Callable[[str, str], Awaitable[dict[str, Any] | None]]
Write = Callable[[str, str, Any], Awaitable[dict[str, Any]]]
#: Opens the store's connections at start-up and closes them at shutdown (Starlette's lifespan).
Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]

#: Read connections of the hand-written aiosqlite peer: as many as the gateway's SQLite readers.
RAW_READERS = READERS

SQL_GET = "SELECT value, version, update_time FROM variables WHERE room_id = :r AND name = :n"
SQL_PUT = (
    "INSERT INTO variables (room_id, name, value, version, update_time) VALUES (:r, :n, :v, 1, :t) "
    "ON CONFLICT (room_id, name) DO UPDATE SET value = excluded.value, "
    "version = variables.version + 1, update_time = excluded.update_time RETURNING version"
)
REDIS_PUT = """
local version = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1], '{"version":' .. string.format('%d', version) .. ',' .. ARGV[2])
return version
"""


def rfc3339(moment: datetime | str) -> str:
    """``2026-01-02T03:04:05.123456Z`` from a datetime or from SQLite's ``2026-01-02 03:04:05.123456``."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def variable_json(name: str, value: Any, version: int, update_time: datetime | str) -> dict[str, Any]:
    return {"name": name, "value": value, "version": str(version), "updateTime": rfc3339(update_time)}


def split_query(url: str, parameter: str) -> tuple[str, str | None]:
    """``url`` without the query parameter ``parameter`` (ours, not the driver's), and its value."""
    if "?" not in url:  # urlunsplit would also drop the empty host of sqlite:////abs/path
        return url, None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    value = next((v for k, v in query if k == parameter), None)
    kept = [(k, v) for k, v in query if k != parameter]
    return urlunsplit(parts._replace(query=urlencode(kept))), value


def sql_store(url: str) -> tuple[Read, Write]:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    url, schema = split_query(url, "schema")
    scheme, rest = url.split("://", 1)
    if scheme.startswith("sqlite"):
        engine = create_async_engine("sqlite+aiosqlite://" + rest)
    else:
        settings = {"search_path": schema} if schema else {}
        engine = create_async_engine(
            "postgresql+asyncpg://" + rest, connect_args={"server_settings": settings}
        )
    get, put = sa.text(SQL_GET), sa.text(SQL_PUT)

    async def read(room_id: str, name: str) -> dict[str, Any] | None:
        async with engine.connect() as conn:
            row = (await conn.execute(get, {"r": room_id, "n": name})).first()
        if row is None or row.value is None:
            return None
        return variable_json(name, orjson.loads(row.value), row.version, row.update_time)

    async def write(room_id: str, name: str, value: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        # SQLite stores naive UTC text, as the gateway's UTCDateTime does; PostgreSQL takes timestamptz.
        stamp = now.replace(tzinfo=None) if engine.dialect.name == "sqlite" else now
        async with engine.begin() as conn:
            version = (
                await conn.execute(
                    put, {"r": room_id, "n": name, "v": orjson.dumps(value).decode(), "t": stamp}
                )
            ).scalar_one()
        return variable_json(name, value, version, now)

    return read, write


def raw_sqlite_store(url: str) -> tuple[Read, Write, Lifespan]:
    """``sqlite+rawaiosqlite:///path``: aiosqlite by hand, one ``execute_fetchall`` per query."""
    import aiosqlite

    path = url.split("://", 1)[1][1:]  # sqlite:///rooms.db → rooms.db, sqlite:////abs/rooms.db → /abs/…
    idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
    writer: list[aiosqlite.Connection] = []  # set at start-up
    write_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # isolation_level=None: autocommit, so a query is one trip (no BEGIN, no separate commit).
        conns = [await aiosqlite.connect(path, isolation_level=None) for _ in range(RAW_READERS + 1)]
        writer.append(conns.pop())
        for conn in conns:
            idle.put_nowait(conn)
        try:
            yield
        finally:
            for conn in [*conns, *writer]:
                await conn.close()

    async def read(room_id: str, name: str) -> dict[str, Any] | None:
        conn = await idle.get()
        try:
            rows = await conn.execute_fetchall(SQL_GET, {"r": room_id, "n": name})
        finally:
            idle.put_nowait(conn)
        row = next(iter(rows), None)
        if row is None or row[0] is None:
            return None
        value, version, update_time = row
        return variable_json(name, orjson.loads(value), version, update_time)

    async def write(room_id: str, name: str, value: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        # Naive UTC text with microseconds, as SQLAlchemy's SQLite DateTime stores the gateway's times.
        stamp = now.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        async with write_lock:  # one statement at a time on the one connection, as in the gateway
            rows = await writer[0].execute_fetchall(
                SQL_PUT, {"r": room_id, "n": name, "v": orjson.dumps(value).decode(), "t": stamp}
            )
        (version,) = next(iter(rows))
        return variable_json(name, value, version, now)

    return read, write, lifespan


def redis_store(url: str) -> tuple[Read, Write]:
    import redis.asyncio

    url, prefix = split_query(url, "prefix")
    prefix = "rg:" if prefix is None else prefix
    client = redis.asyncio.Redis.from_url(url)
    script = client.register_script(REDIS_PUT)

    async def read(room_id: str, name: str) -> dict[str, Any] | None:
        record = await client.hget(f"{prefix}vars:{room_id}", name)
        if record is None:
            return None
        fields = orjson.loads(record)
        return variable_json(name, fields["value"], fields["version"], fields["update_time"])

    async def write(room_id: str, name: str, value: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        tail = orjson.dumps({"update_time": now.isoformat(timespec="microseconds"), "value": value})[1:]
        version = await script(
            keys=[f"{prefix}vars:{room_id}", f"{prefix}versions:{room_id}"], args=[name, tail]
        )
        return variable_json(name, value, int(version), now)

    return read, write


def create_app(url: str) -> Starlette:
    lifespan: Lifespan | None = None
    if url.startswith("sqlite+rawaiosqlite://"):
        read, write, lifespan = raw_sqlite_store(url)
    elif url.startswith(("redis://", "rediss://")):
        read, write = redis_store(url)
    else:
        read, write = sql_store(url)

    async def get_variable(request: Request) -> JSONResponse:
        found = await read(request.path_params["room_id"], request.path_params["name"])
        if found is None:
            return JSONResponse({"error": {"code": 404, "message": "not set"}}, status_code=404)
        return JSONResponse(found)

    async def set_variable(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(
            await write(request.path_params["room_id"], request.path_params["name"], body["value"])
        )

    return Starlette(
        routes=[
            Route(VAR_ROUTE, get_variable, methods=["GET"]),
            Route(VAR_ROUTE, set_variable, methods=["PUT"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    import uvicorn

    url, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(create_app(url), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
