"""Whether an upstream can serve: its ``grpc.health.v1`` answer, else whether it answers at all.

One probe does both: ``Health/Check`` (service ``""``, the server's overall status) through the upstream's
own connection. SERVING is up; NOT_SERVING is down; UNIMPLEMENTED means the upstream serves no health service
but did answer over a working connection, which is up (grpclib 0.4.9 answers an unknown method without a
``content-type``, which the connection reports as UNKNOWN "Missing content-type header", as grpclib's client
does: the same answer). A
connection that cannot be made, or no answer within :data:`CHECK_TIMEOUT`, is down. Results are reused
for :data:`CHECK_TTL` so that probes of ``/readyz`` and the gateway's own health service stay cheap for
the upstream. Nothing else is needed for recovery: the connection is made again by itself on the next call
or probe.
"""

from __future__ import annotations

import time

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from gateway.errors import Unavailable
from gateway.upstream.connection import UpstreamConnection

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: Seconds a probe may take.
CHECK_TIMEOUT = 2.0
#: Seconds a probe's result is reused.
CHECK_TTL = 1.0


class UpstreamHealth:
    """Probes one upstream (:meth:`check`).

    :param name: the upstream's name, in the message when it is down.
    :param channel: its pooled connection.
    """

    def __init__(self, name: str, channel: UpstreamConnection) -> None:
        self.name = name
        self._channel = channel
        self._checked_at = -CHECK_TTL
        self._down: str | None = None

    async def check(self) -> None:
        """Return when the upstream can serve.

        :raises Unavailable: it cannot, saying why.
        """
        now = time.monotonic()
        if now - self._checked_at >= CHECK_TTL:
            self._down = await self._probe()
            self._checked_at = time.monotonic()
        if self._down is not None:
            raise Unavailable(f"upstream {self.name!r} is down: {self._down}")

    async def _probe(self) -> str | None:
        request = HealthCheckRequest(service="").SerializeToString()
        try:
            async with await self._channel.call(
                HEALTH_CHECK, b"", seconds=CHECK_TIMEOUT, message=request
            ) as stream:
                reply = await stream.recv_message()
        except GRPCError as err:
            return None if _no_health_service(err) else f"health check answered {err.status.name}"
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT:g}s"
        except (OSError, StreamTerminatedError) as exc:
            return "connection refused" if isinstance(exc, ConnectionRefusedError) else "cannot connect"
        status = HealthCheckResponse.FromString(reply or b"").status
        return None if status == HealthCheckResponse.SERVING else "its health service says NOT_SERVING"


def _no_health_service(err: GRPCError) -> bool:
    """Whether an error answering ``Health/Check`` says the method is not served (module docstring)."""
    if err.status is Status.UNIMPLEMENTED:
        return True
    return err.status is Status.UNKNOWN and "content-type" in (err.message or "")
