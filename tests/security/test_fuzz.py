"""Fuzzing the REST edge from its own ``/openapi.json`` with schemathesis (bounded and deterministic).

Every operation of the document but the two streams (which never end on their own) gets generated requests,
valid and invalid, with the admin key. Checks: schemathesis's defaults (no 5xx, responses conform to the
documented schemas, status codes and content types documented, …) and ours: every 4xx/5xx body is exactly
the documented error shape ``{"error": {"code", "status", "message"}}`` with ``code`` equal to the HTTP
status. ``derandomize`` makes each run generate the same cases, so CI is deterministic; the example count
keeps the run to a few hundred cases (well under a minute).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, settings
from room_gateway_plugins.memory import MemoryBackend
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from gateway.auth.policy import ApiKey, AuthPolicy, digest
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.errors import Code

FUZZ_KEY = "fuzz-admin-key-0123456789abcdef"
HEADERS = {"X-API-Key": FUZZ_KEY}
#: Cases per operation: about 15 operations, so a few hundred cases a run.
EXAMPLES_PER_OPERATION = 25

app = create_http_app(
    Dispatcher(RoomService(MemoryBackend()), AuthPolicy([ApiKey("fuzz", digest(FUZZ_KEY), frozenset({"*"}))]))
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=HEADERS).exclude(
    path_regex=r":listen$"  # server streams: an SSE response never ends by itself
)
_CODES = {code.name for code in Code if code is not Code.OK}


@schemathesis.check
def native_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx or 5xx carries exactly ``{"error": {"code": <status>, "status": <GRPC_CODE>, "message"}}``."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "status", "message"}, body
    assert error["code"] == response.status_code, body
    assert error["status"] in _CODES, body
    assert isinstance(error["message"], str) and "Traceback" not in error["message"], body
    return True


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, fast
)
def test_openapi_operations(case: Any) -> None:
    # The document is looser than the API in both directions, knowingly: it does not carry every domain
    # rule (control characters, sizes of values), so a schema-valid request may rightly be a 400; and the
    # proto3 JSON mapping accepts `null` for any field as "not set", which the schema does not spell out.
    # So neither "positive data acceptance" nor "negative data rejection" is checked; the rest is.
    case.call_and_validate(
        headers=HEADERS, excluded_checks=[positive_data_acceptance, negative_data_rejection]
    )
