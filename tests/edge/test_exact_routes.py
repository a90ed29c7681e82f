"""The exact-path route table (:class:`gateway.edge.routing.ExactRoutes`): whatever it finds is what
Starlette's scan of the routes in order would serve — precedence, methods (405s, HEAD), paths only a
parameterised route or a route of unknown matching reaches first, percent-encoded paths — on small route
lists and on a whole gateway's (native routes, an upstream's auto-mapped ones, the console)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

from gateway.app import create_gateway
from gateway.config_loader import load_config
from gateway.edge.routing import ExactRouter, ExactRoutes, raw_route_path
from tests.upstream.conftest import ADMIN_KEY, ECHO_UPSTREAM_KEY, echo_upstream, front_config

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def answer(text: str) -> Any:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(text)

    return endpoint


def scan(routes: list[BaseRoute], scope: Scope) -> tuple[BaseRoute | None, Match]:
    """Starlette's ``Router.app``: the first full match, else the first partial one."""
    partial = None
    for route in routes:
        match = route.matches(dict(scope))[0]
        if match is Match.FULL:
            return route, match
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial, Match.PARTIAL if partial is not None else Match.NONE


def request(method: str, path: str, raw: bytes | None = None) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode() if raw is None else raw,
        "root_path": "",
        "query_string": b"",
        "headers": [],
    }


def client(routes: list[BaseRoute]) -> httpx.AsyncClient:
    app = Starlette()
    app.router = ExactRouter(routes, redirect_slashes=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_a_fixed_path_a_parameterised_route_reaches_first_is_left_to_the_scan() -> None:
    routes: list[BaseRoute] = [
        Route("/items/{item}", answer("param"), methods=["GET"]),
        Route("/items/fixed", answer("fixed"), methods=["GET", "POST"]),
        Route("/other", answer("other"), methods=["GET"]),
    ]
    exact = ExactRoutes(routes)
    assert exact.shadowed == {"/items/fixed"}
    assert "/items/fixed" not in exact and "/other" in exact
    async with client(routes) as http:
        assert (await http.get("/items/fixed")).text == "param"  # the earlier route wins, as before
        assert (await http.post("/items/fixed")).text == "fixed"  # its partial match does not stop the scan
        assert (await http.get("/other")).text == "other"


async def test_a_later_route_taking_another_method_of_the_path_keeps_its_turn() -> None:
    routes: list[BaseRoute] = [
        Route("/a", answer("post a"), methods=["POST"]),
        Route("/{name}", answer("param"), methods=["GET"]),
        Route("/a", answer("put a"), methods=["PUT"]),
    ]
    exact = ExactRoutes(routes)
    assert exact.find(request("PUT", "/a")) is None  # behind the parameterised route: only the scan knows
    found = exact.find(request("POST", "/a"))
    assert found is not None and found[0] is routes[0]
    async with client(routes) as http:
        assert (await http.post("/a")).text == "post a"
        assert (await http.get("/a")).text == "param"
        assert (await http.put("/a")).text == "put a"
        wrong = await http.delete("/a")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"  # the first partial, as before


class Sniffer(BaseRoute):
    """A route that may match anything (here: by a header): the table cannot know which paths."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return (Match.FULL if (b"x-sniff", b"1") in scope["headers"] else Match.NONE), {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("sniffed")(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)


async def test_routes_after_one_of_unknown_matching_are_left_to_the_scan() -> None:
    routes: list[BaseRoute] = [
        Route("/first", answer("first"), methods=["GET"]),
        Sniffer(),
        Route("/b", answer("b"), methods=["GET"]),
    ]
    exact = ExactRoutes(routes)
    assert "/first" in exact and exact.shadowed == {"/b"}
    async with client(routes) as http:
        assert (await http.get("/b", headers={"x-sniff": "1"})).text == "sniffed"
        assert (await http.get("/b")).text == "b"
        assert (await http.get("/first", headers={"x-sniff": "1"})).text == "first"


async def test_head_and_a_wrong_method_get_the_scans_answers() -> None:
    routes: list[BaseRoute] = [
        Route("/x", answer("x"), methods=["GET"]),
        Route("/y", answer("y"), methods=["POST"]),
    ]
    async with client(routes) as http:
        head = await http.head("/x")
        assert head.status_code == 200 and head.content == b""
        assert (await http.get("/y")).status_code == 405
        assert (await http.get("/y")).headers["allow"] == "POST"
        assert (await http.get("/z")).status_code == 404


async def test_the_gateways_routes_find_what_the_scan_finds(tmp_path: Path) -> None:
    config_text = front_config(echo_upstream(1)).replace(
        "shutdown_grace_seconds: 2", "shutdown_grace_seconds: 2\nhttp: {console: true}"
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text, encoding="utf-8")
    gateway = create_gateway(
        load_config(path, {"ROOM_API_SECRET_KEY": ADMIN_KEY, "ECHO_UPSTREAM_KEY": ECHO_UPSTREAM_KEY})
    )
    router = gateway.http_app.router.router
    assert isinstance(router, ExactRouter)
    routes = router.routes
    exact = router.exact
    fixed = ["/echo.v1.Echo/Whoami", "/echo.v1.Echo/Repeat", "/v1/rooms", "/v1/connections:invalidate",
             "/healthz", "/readyz", "/openapi.json", "/metrics", "/console", "/"]  # fmt: skip
    for one in fixed:
        assert one in exact, one
    assert not exact.shadowed
    paths = [
        *fixed, "/v1/webhooks", "/v1/rooms/r1", "/v1/rooms/r1/variables/x", "/console/",
        "/console/index.html", "/echo.v1.Echo/Whoami/", "/echo.v1.Echo/Nope", "/v1/rooms/public-1/say",
        "/nowhere", "/v1/info",
    ]  # fmt: skip
    for one, method in itertools.product(paths, METHODS):
        scope = request(method, one)
        found = exact.find(scope)
        expected, match = scan(routes, scope)
        if found is not None:  # what the table finds is the scan's full match, with the same child scope
            assert expected is found[0] and match is Match.FULL, (method, one)
            assert found[1].keys() == expected.matches(dict(scope))[1].keys()
        elif one in exact:  # left to the scan: no full match among the path's routes before another kind
            assert match is not Match.FULL or expected not in exact.paths[one], (method, one)
    # A path sent percent-encoded is never looked up (raw-path routes see it encoded, Starlette's decoded).
    encoded = request("POST", "/echo.v1.Echo/Whoami", raw=b"/echo.v1.Echo/Who%61mi")
    assert raw_route_path(encoded) == "/echo.v1.Echo/Who%61mi" and exact.find(encoded) is None
