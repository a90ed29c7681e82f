"""Instructions per delivery and per PUT with webhooks (issue 14), counted by valgrind:

    .venv/bin/python bench/webhooks_instructions.py drain [--messages 500] [--no-http] [--dilate 50]
                                                    [--backend sqlite|postgresql|redis] [--uvloop]
    .venv/bin/python bench/webhooks_instructions.py put [--calls 200] [--writers 32]
                                                    [--backend sqlite|postgresql] [--dilate 50]
                                                    [--delivery inline|process]
    .venv/bin/python bench/webhooks_instructions.py parts [--calls 500]

``drain``: ``--messages`` changes written with the deliverers stopped, then counted while the deliverers (64
in flight) send them all to ``bench/webhooks.py``'s receiver (its own process, not counted): instructions per
delivery. ``--no-http`` makes every post an instant 204 without a request, so that the HTTP client's share is
the difference. ``put``: ``--calls`` in-process REST PUTs by ``--writers`` callers (1: one after another;
``bench/webhooks.py``'s gateway and ASGI client) without an endpoint, with one configured but its deliverers
not started (the write path alone), and with them running (counted until every PUT is delivered): instructions
per PUT — with ``--delivery process``, those of the serving process while the worker process delivers beside
it, natively (valgrind does not follow children). ``parts``: a message's body and its Standard Webhooks
signature alone, per message. The backend's claims and settles while counted (calls, messages) go to stderr.
``--uvloop`` runs the counted process on uvloop, as the worker process (``python -m gateway webhooks-worker``)
and ``serve`` do; without it, asyncio's own loop (the figures of sessions 5 to 7).

Each runs under ``valgrind --tool=callgrind`` with instrumentation on only around what is counted
(``bench/instructions.py``'s ``per_call``). ``--dilate`` stretches the deliverers' timers (lanes, lingers)
to valgrind's pace, so that batches are as large as natively. ``--root DIR`` imports the gateway from
another tree (a ``git archive`` of an older commit), with this venv.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

POSTGRES = os.environ.get("ROOM_GATEWAY_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _delivered(gw: Any) -> float:
    # The gateway's own counter: the loops' (inline), or what the worker's snapshots added (process).
    counter = gw.metrics.webhook_deliveries.labels(endpoint="bench", outcome="delivered")
    return float(counter._value.get())


async def _until_delivered(gw: Any, count: float) -> None:
    while _delivered(gw) < count:  # noqa: ASYNC110 - a counter, polled: nothing to wait on
        await asyncio.sleep(0.02)


_PROFILE: list[Any] = []


#: (calls, messages) of the backend's outbox_claim and outbox_settle while counted: printed to stderr.
_ROUNDS: dict[str, list[int]] = {"outbox_claim": [0, 0], "outbox_settle": [0, 0]}


def _count_rounds(backend: Any) -> None:
    for name, tally in _ROUNDS.items():
        method = getattr(backend, name)

        async def counted(*args: Any, _method: Any = method, _tally: list[int] = tally, **kwargs: Any) -> Any:
            result = await _method(*args, **kwargs)
            _tally[0] += 1
            _tally[1] += len(result)
            return result

        setattr(backend, name, counted)


def _go() -> None:
    # What was built before counting is out of the cyclic GC's full collections, as in `serve` and the
    # worker process (both gc.freeze() once started): else one full collection of it falls in the count
    # now and then (~55k instructions a delivery in a 1,000-message drain, bench/RESULTS.md session 19).
    gc.freeze()
    print("ready", flush=True)
    sys.stdin.readline()
    if _PROFILE:
        _PROFILE[0].enable()


def _done() -> None:
    if _PROFILE:
        _PROFILE[0].disable()
        _PROFILE[0].dump_stats(_PROFILE[1])
    print("done", flush=True)
    print(", ".join(f"{name}: {n} calls, {m} messages" for name, (n, m) in _ROUNDS.items()), file=sys.stderr)


async def child(args: argparse.Namespace) -> None:
    from webhooks import client, gateway

    from gateway.config import Webhooks
    from gateway.webhooks import deliverer

    # --delivery inline (the default here): the deliverers in the counted process, a delivery costs what it
    # costs wherever it runs; process: the worker runs natively beside it (valgrind does not follow
    # children), so a PUT counts what the serving process pays with its deliveries elsewhere. An older tree
    # (--root) has no such setting and delivers in its process.
    inline = {"delivery": args.delivery} if "delivery" in Webhooks.model_fields else {}
    if args.no_http:

        async def instant(self: Any, *_: Any, **__: Any) -> int:
            return 204

        deliverer.EndpointLoop._post = instant  # type: ignore[method-assign]
    if args.dilate is not None:
        deliverer.WIDEN_SECONDS *= args.dilate  # type: ignore[misc]
        deliverer.LINGER_SECONDS *= args.dilate  # type: ignore[misc]
        if hasattr(deliverer, "BURST_SECONDS"):  # not in an older tree (--root)
            deliverer.BURST_SECONDS *= args.dilate  # type: ignore[misc]
    url = args.url
    if args.mode == "drain":
        async with gateway(url, args.receiver, start_deliverers=False, **inline) as gw, client(gw) as http:
            room = "drain-" + uuid.uuid4().hex[:8]
            for i in range(args.count):
                await http.put(f"/v1/rooms/{room}/variables/v", json={"value": {"i": i, "text": "x" * 200}})
            _count_rounds(gw.backend)
            _go()
            await gw.webhooks.start()
            await _until_delivered(gw, args.count + 1)  # and room.created
            _done()
        return
    receiver = None if args.variant == "none" else args.receiver
    async with (
        gateway(url, receiver, start_deliverers=args.variant == "running", **inline) as gw,
        client(gw) as http,
    ):
        room = "put-" + uuid.uuid4().hex[:8]
        for i in range(50):  # warm-up, and the room's creation
            await http.put(f"/v1/rooms/{room}/variables/v{i % 8}", json={"value": {"i": i}})
        if args.variant == "running":
            await _until_delivered(gw, 51)
        _count_rounds(gw.backend)
        _go()
        order = iter(range(args.count))

        async def writer() -> None:
            for i in order:
                response = await http.put(f"/v1/rooms/{room}/variables/v{i % 8}", json={"value": {"i": i}})
                assert response.status_code == 200, response.text

        await asyncio.gather(*(writer() for _ in range(args.writers)))
        if args.variant == "running":
            await _until_delivered(gw, 51 + args.count)
        _done()


def parts_child(count: int) -> None:
    from datetime import UTC, datetime

    from webhooks import SECRET

    from gateway.core.models import Change, ChangeKind, Variable
    from gateway.core.outbox import OutboxMessage
    from gateway.webhooks.payload import Signer, body

    now = datetime.now(UTC)
    change = Change(
        seq=12345,
        epoch="e0f1",
        kind=ChangeKind.VARIABLE_SET,
        time=now,
        variable=Variable(name="v", value={"i": 42, "text": "x" * 200}, version=7),
    )
    message = OutboxMessage("msg_" + "0" * 32, "bench", "room", change, Variable("v", {"i": 41}, 6))
    signer = Signer(SECRET)
    for _ in range(50):
        signer.headers(message.id, body(message), now)
    _go()
    for _ in range(count):
        signer.headers(message.id, body(message), now)
    print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("drain", "put", "parts"))
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql", "redis"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--uvloop", action="store_true", help="run the counted process on uvloop, as the worker does"
    )
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument(
        "--writers", type=int, default=1, help="put: concurrent callers (bench/webhooks.py 32)"
    )
    parser.add_argument(
        "--dilate",
        type=float,
        help="multiply the deliverers' WIDEN_SECONDS, LINGER_SECONDS and BURST_SECONDS: under valgrind "
        "everything runs some 50 times slower, so a request outlasts the 10 ms that opens another lane and "
        "a 5 ms linger gathers one attempt where it gathers many natively; 50 keeps the lanes and batches "
        "near the native ones",
    )
    parser.add_argument(
        "--delivery",
        default="inline",
        choices=("inline", "process"),
        help="webhooks.delivery: inline counts the deliveries in the counted process; process leaves them "
        "to the worker process (not counted: valgrind does not follow children)",
    )
    parser.add_argument("--root", help="import the gateway from this tree")
    parser.add_argument("--keep", help="keep each run's callgrind output in this folder (callgrind_annotate)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--receiver", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="the child: cProfile what is counted into this file")
    args = parser.parse_args()
    if args.profile:
        import cProfile

        _PROFILE.extend([cProfile.Profile(), args.profile])
    if args.child:
        if args.mode == "parts":
            parts_child(args.count)
        elif args.uvloop:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(child(args))
        else:
            asyncio.run(child(args))
        return
    import instructions
    from instructions import _handshake, per_call
    from webhooks import receiver_process

    if args.keep:
        instructions.KEEP = Path(args.keep)

    env = dict(os.environ)
    if args.root:
        root = Path(args.root).resolve()
        env["PYTHONPATH"] = f"{root}{os.pathsep}{root / 'plugins'}"
    env["PYTHONHASHSEED"] = "0"
    base = [sys.executable, __file__, args.mode, "--child", *(["--no-http"] if args.no_http else [])]
    if args.dilate is not None:
        base += ["--dilate", str(args.dilate)]
    base += ["--writers", str(args.writers), "--delivery", args.delivery]
    if args.uvloop:
        base.append("--uvloop")
    if args.profile:  # the counted child profiles itself (under valgrind: counts include cProfile's)
        base += ["--profile", str(Path(args.profile).resolve())]
    if args.mode == "parts":
        count = per_call([*base, "--count", str(args.calls)], args.calls, _handshake, env=env)
        print(f"body and signature: {count / 1000:,.1f}k instructions a message", flush=True)
        return
    prefixes: list[str] = []
    try:
        with receiver_process() as receiver, tempfile.TemporaryDirectory() as tmp:
            variants = ["drain"] if args.mode == "drain" else ["none", "paused", "running"]
            for variant in variants:
                if args.backend == "sqlite":
                    url = f"sqlite:///{Path(tmp) / f'{variant}.db'}"
                elif args.backend == "redis":  # a fresh key prefix, its keys deleted at the end
                    prefixes.append(f"bench-wi-{uuid.uuid4().hex[:8]}:")
                    url = f"{args.redis_url}?prefix={prefixes[-1]}"
                else:
                    url = f"{POSTGRES}?schema=bench_wi_{uuid.uuid4().hex[:8]}"
                count = args.messages if args.mode == "drain" else args.calls
                argv = [*base, "--url", url, "--receiver", receiver, "--variant", variant]
                per = per_call([*argv, "--count", str(count)], count, _handshake, env=env)
                what = "a delivery" if args.mode == "drain" else "a PUT"
                label = f"{args.mode} {args.backend} {variant}"
                print(f"{label}: {per / 1000:,.1f}k instructions {what}", flush=True)
    finally:  # a run cut short too: its Redis keys are deleted
        if prefixes:
            from webhooks_served import _drop_keys

            asyncio.run(_drop_keys(args.redis_url, prefixes))


if __name__ == "__main__":
    main()
