"""Fuzzing the REST edge from its own ``/openapi.json`` with schemathesis (bounded and deterministic).

Every operation of the document but the two streams (which never end on their own) gets generated requests,
valid and invalid, with the admin key. Checks: schemathesis's defaults (no 5xx, responses conform to the
documented schemas, status codes and content types documented, schema-valid requests accepted, schema-invalid
ones rejected, …) and ours: every 4xx/5xx body is exactly the documented error shape
``{"error": {"code", "status", "message"}}`` with ``code`` equal to the HTTP status.

The document states the domain's input rules (``gateway.edge.openapi.FIELD_RULES``) and proto3 JSON's
``null`` ("not set"), so "positive data acceptance" and "negative data rejection" hold in both directions,
with the allowances of :func:`positive_data_acceptance_in_state`: outcomes that depend on state or on
parameters together, which OpenAPI cannot state per parameter (404 and 409 are accepted by default).
``derandomize`` makes each run generate the same cases, so CI is deterministic; the example count
keeps the run to about a thousand cases (about 30 s).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, settings
from room_gateway_plugins.memory import MemoryBackend
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.auth.policy import ApiKey, AuthPolicy, digest
from gateway.core.service import RoomService
from gateway.dispatch import Dispatcher
from gateway.edge.app import create_http_app
from gateway.errors import Code

FUZZ_KEY = "fuzz-admin-key-0123456789abcdef"
HEADERS = {"X-API-Key": FUZZ_KEY}
#: Cases per operation: about 17 operations, so about a thousand cases a run; fewer miss schema gaps
#: (25 did not reach an out-of-range decimal string for maxResults).
EXAMPLES_PER_OPERATION = 60

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


def _state_dependent(response: Any, case: Any) -> bool:
    """Whether ``response`` is a documented refusal of a well-formed request (a 400 that is no schema miss).

    - ``FAILED_PRECONDITION`` (400, as grpc-gateway maps it): the request is well formed but the room's state
      refuses it — deleting an OPEN room, writing to or minting a token for a CLOSED one — or this gateway is
      not configured for it (CreateRoomToken: the fuzz gateway has no ``auth.room_tokens.secret``). Which
      rooms exist and in which state depends on the cases run before (one MemoryBackend for the whole run).
    - ListRooms' ``startKey``, ``startAfterKey`` and ``roomId`` exclude each other (INVALID_ARGUMENT when more
      than one is non-empty): a rule across parameters, which OpenAPI parameters cannot express; only that
      exact combination is excused.
    - A ``date-time`` that OpenAPI accepts but ``google.protobuf.Timestamp`` cannot hold, such as
      ``0001-01-01T00:00:45+01:01`` (before year 1 in UTC): INVALID_ARGUMENT "… is not a valid time".
    - ``OUT_OF_RANGE`` (400): a ListChanges position (``afterSeq``, ``epoch``) the room's log does not hold —
      which it holds depends on the writes before.
    """
    if response.status_code != 400:
        return False
    status, message = response.json()["error"]["status"], response.json()["error"]["message"]
    if status == "INVALID_ARGUMENT" and message.endswith(" is not a valid time"):
        return True  # a schema-valid date-time outside google.protobuf.Timestamp's range
    if status == "FAILED_PRECONDITION":
        return True
    if status == "OUT_OF_RANGE" and case.operation.definition.raw.get("operationId") == "ListChanges":
        return True
    if status == "INVALID_ARGUMENT" and case.operation.definition.raw.get("operationId") == "ListRooms":
        query = case.query or {}
        return sum(1 for key in ("startKey", "startAfterKey", "roomId") if query.get(key)) > 1
    return False


@schemathesis.check
def positive_data_acceptance_in_state(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's ``positive_data_acceptance``, but for the refusals of :func:`_state_dependent`."""
    if _state_dependent(response, case):
        return None
    return positive_data_acceptance(ctx, response, case)


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
    # Every check runs; the built-in positive_data_acceptance gives way to positive_data_acceptance_in_state,
    # the same check but for the documented state-dependent refusals (see _state_dependent).
    case.call_and_validate(headers=HEADERS, excluded_checks=[positive_data_acceptance])
