"""``room-gateway``: serve, check a configuration, make keys.

    room-gateway serve [--config PATH]          start both listeners; SIGTERM drains
    room-gateway check-config [--config PATH]   validate, print a one-line summary
    room-gateway status [--config PATH]         ask the running gateway of that configuration (/v1/info)
    room-gateway keys new [--raw]               a fresh API key and its key_sha256 line

The configuration is ``--config PATH``, else ``$GATEWAY_CONFIG``, else ``gateway.yaml``. Exit status: 0 on
success (and after a clean drain), 2 for a configuration error or bad usage, 1 when serving fails.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import secrets
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.config import GatewayConfig
from gateway.config_loader import CONFIG_ENV, DEFAULT_CONFIG, config_path, load_config
from gateway.logs import configure_logging
from gateway.plugins import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except ConfigError as exc:
        print(f"room-gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="room-gateway",
        description="A self-hosted Room API gateway: rooms, variables and events over REST/JSON and gRPC.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        metavar="PATH",
        help=f"the configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )

    serve = commands.add_parser("serve", parents=[config], help="start the HTTP and gRPC listeners")
    serve.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default: the configuration's logging.level (info)",
    )
    serve.set_defaults(command=_serve)

    check = commands.add_parser("check-config", parents=[config], help="validate the configuration and exit")
    check.set_defaults(command=_check_config)

    status = commands.add_parser(
        "status", parents=[config], help="ask a running gateway for its version, instance, backend, listeners"
    )
    status.set_defaults(command=_status)

    # Internal: the webhook worker that `serve` starts itself (gateway.webhooks.supervisor); not listed.
    worker = commands.add_parser("webhooks-worker")
    worker.add_argument("--fd", type=int, required=True)
    worker.set_defaults(command=_webhooks_worker)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(
        title="commands", required=True, metavar="COMMAND"
    )
    new = keys.add_parser("new", help="print a fresh random key and the key_sha256 line to paste")
    new.add_argument(
        "--raw", action="store_true", help="print only the key (for $(room-gateway keys new --raw))"
    )
    new.set_defaults(command=_keys_new)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_gateway
    from gateway.server import StartupError, serve

    config = load_config(config_path(args.config))
    writer = configure_logging(args.log_level or config.logging.level, config.logging.format)
    try:

        async def run() -> None:
            await serve(create_gateway(config))

        try:
            _run(run)
        except StartupError as exc:
            logging.getLogger("room-gateway").error("%s", exc)
            return EXIT_FAILURE
        return EXIT_OK
    finally:
        writer.stop()


def _webhooks_worker(args: argparse.Namespace) -> int:
    from gateway.webhooks import worker

    status = worker.EXIT_FAILURE

    async def run() -> None:
        nonlocal status
        status = await worker.run(args.fd)

    _run(run)
    return status


def _check_config(args: argparse.Namespace) -> int:
    from gateway.app import create_gateway

    path = config_path(args.config)
    config = load_config(path)

    async def build() -> None:  # the same checks as serve (keys, backend plugin, surfaces), minus I/O
        create_gateway(config)

    _run(build)
    print(f"{path}: OK — {_summary(config)}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    """``GET /v1/info`` of the gateway ``--config`` describes, with its first key allowed to read it."""
    import json
    import urllib.error
    import urllib.request

    from gateway.auth.permissions import ALL, METRICS_READ
    from gateway.config import split_host_port

    config = load_config(config_path(args.config))
    key = next(
        (
            k.key.get_secret_value()
            for k in config.auth.keys
            if k.key is not None and not k.rooms and ({ALL, METRICS_READ} & set(k.permissions))
        ),
        None,
    )
    if key is None:
        raise ConfigError(
            "status: no key in auth.keys has metrics:read (or *), every room, and its secret in the "
            "configuration (a key_sha256 cannot be sent)"
        )
    host, port = split_host_port(config.listen.http)
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: ask on loopback
        host = "127.0.0.1" if host != "::" else "::1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1/info"
    request = urllib.request.Request(url, headers={"X-API-Key": key, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            info = json.load(answer)
    except urllib.error.HTTPError as exc:
        print(f"room-gateway: {url}: HTTP {exc.code}", file=sys.stderr)
        return EXIT_FAILURE
    except (urllib.error.URLError, OSError) as exc:
        print(f"room-gateway: no gateway answers at {url} ({exc})", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(info, indent=2))
    return EXIT_OK


def _keys_new(args: argparse.Namespace) -> int:
    key = secrets.token_urlsafe(32)
    if args.raw:
        print(key)
        return EXIT_OK
    print(f"key: {key}")
    print(f"key_sha256: {hashlib.sha256(key.encode()).hexdigest()}")
    print(
        "# Give the key to the client. gateway.yaml takes it from ROOM_API_SECRET_KEY, or paste the\n"
        "# key_sha256 line in place of its key: line to store only the hash.",
        file=sys.stderr,
    )
    return EXIT_OK


def _summary(config: GatewayConfig) -> str:
    keys = ", ".join(key.name for key in config.auth.keys)
    surfaces = config.served_surfaces()
    return (
        f"http {config.listen.http}, grpc {config.listen.grpc}, backend {_scheme(config.backend)}, "
        f"{len(config.auth.keys)} key(s) ({keys}), surfaces: {', '.join(surfaces)}"
    )


def _scheme(url: str) -> str:
    """The backend URL without what may be a password (``postgresql://user:pw@host/db`` → ``postgresql://…``)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://" + ("…" if rest else "")


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when it is installed (uvicorn[standard] brings it), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


if __name__ == "__main__":
    sys.exit(main())
