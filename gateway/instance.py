"""This process's identity as a gateway instance: one id and one start time, made once at import.

One home for both readers: presence (:mod:`gateway.core.presence`) and what the gateway reports of itself
(:mod:`gateway.observability`), neither of which should import the other.

The id is a random UUID (version 4), the same for the process's whole life and different in every process:
``GET /v1/info`` and ``room-gateway status`` report it, and presence keys its per-instance heartbeats by it
(several instances share one store).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

#: The instance id of this process (a UUID4 in its canonical text form).
INSTANCE_ID: str = str(uuid.uuid4())
#: When this process started being a gateway (UTC).
START_TIME: datetime = datetime.now(UTC)
