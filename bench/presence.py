"""Presence at idle: what 10,000 open room-token streams cost one core while nothing happens.

Opens ``--listeners`` ListenEvents streams through the dispatcher (the one place presence joins, for REST
and gRPC alike) in one process, once with room tokens (present: joined, heartbeaten) and once with an API
key (no presence), then measures the process's CPU time over an idle window of ``--idle`` seconds. The
difference is presence's share of one core; the target (issue 11) is < 5%.

    .venv/bin/python bench/presence.py                        # memory, the default 30 s timeout
    .venv/bin/python bench/presence.py --timeout 3            # heartbeats every second
    .venv/bin/python bench/presence.py --backend redis://127.0.0.1:6379/0   # a shared store
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

from gateway.auth.policy import ApiKey, AuthPolicy, Principal, digest
from gateway.auth.tokens import RoomTokenIssuer
from gateway.core.presence import PresenceRegistry
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.plugins import Plugins, create_plugin_manager

SECRET = "bench-presence-room-token-secret-0123456789"
KEY = "bench-presence-key-0123456789abcdef"


async def idle_cpu(args: argparse.Namespace, *, present: bool) -> tuple[float, int]:
    """CPU seconds per wall second over the idle window, and the users present meanwhile."""
    backend = Plugins(create_plugin_manager()).create_backend(args.backend)
    await backend.open()
    issuer = RoomTokenIssuer(SECRET, roles={"guest": ["events:listen"]}, max_ttl_seconds=86400)
    service = RoomService(backend, tokens=issuer)
    policy = AuthPolicy([ApiKey("admin", digest(KEY), frozenset({"*"}))], tokens=issuer)
    presence = PresenceRegistry(backend, timeout_seconds=args.timeout, instance=f"bench-{time.time_ns()}")
    dispatcher = Dispatcher(service, policy, presence=presence)
    admin = policy.authenticate(api_key=KEY)
    rooms = [f"bench-presence-{time.time_ns()}-{n}" for n in range(args.rooms)]
    for room_id in rooms:
        await service.create_room({"room_id": room_id})
    await presence.start()
    streams: list[Any] = []
    try:
        for n in range(args.listeners):
            room_id = rooms[n % len(rooms)]
            principal: Principal = admin
            if present:
                made = await service.create_room_token(
                    room_id, f"user-{n}", "guest", ttl_seconds=86400, caller=admin
                )
                principal = policy.authenticate(authorization=f"Bearer {made.token}")
            request = {"room_id": room_id, "name": "e"}
            streams.append(await dispatcher.call("ListenEvents", principal, request))
        users = sum((await backend.count_users(rooms)).values())
        gc.collect()
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(args.idle)
        share = (time.process_time() - cpu) / (time.monotonic() - wall)
        return share, users
    finally:
        for stream in streams:
            await stream.aclose()
        await presence.stop()
        await backend.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--backend", default="memory://")
    parser.add_argument("--listeners", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0, help="presence.timeout_seconds")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    args = parser.parse_args()
    without, _ = await idle_cpu(args, present=False)
    with_presence, users = await idle_cpu(args, present=True)
    print(f"backend {args.backend}, {args.listeners} listeners in {args.rooms} rooms,", end=" ")
    print(f"presence timeout {args.timeout}s, {args.idle}s idle measured")
    print(f"  API-key streams (no presence): {without:.2%} of one core at idle")
    print(f"  room-token streams ({users} users present): {with_presence:.2%} of one core at idle")
    print(f"  presence costs {with_presence - without:+.2%} of one core (target < 5%)")


if __name__ == "__main__":
    asyncio.run(main())
