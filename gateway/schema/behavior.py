"""``google.api.field_behavior`` (AIP-203) read from the descriptors: what the proto says of a field.

``protos/roomgateway/v1/rooms.proto`` marks fields ``OUTPUT_ONLY`` (given in responses, ignored in
requests), ``REQUIRED`` (a request must set it) and ``IMMUTABLE`` (set once, at creation). The service and
``/openapi.json`` read those marks here, so a field's behaviour is stated once, next to the field.
"""

from __future__ import annotations

import functools

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

OUTPUT_ONLY: int = field_behavior_pb2.OUTPUT_ONLY
REQUIRED: int = field_behavior_pb2.REQUIRED
IMMUTABLE: int = field_behavior_pb2.IMMUTABLE


@functools.cache
def behaviors(field: FieldDescriptor) -> frozenset[int]:
    """The ``google.api.field_behavior`` values of ``field`` (``google.api.FieldBehavior`` numbers)."""
    return frozenset(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_output_only(field: FieldDescriptor) -> bool:
    """Whether ``field`` is ``OUTPUT_ONLY``: answered, and ignored (never refused) when a request sets it."""
    return OUTPUT_ONLY in behaviors(field)


def is_required(field: FieldDescriptor) -> bool:
    """Whether ``field`` is ``REQUIRED``: a request must set it."""
    return REQUIRED in behaviors(field)


def ignored_on_update(message: Descriptor) -> frozenset[str]:
    """The names of the fields of ``message`` an update leaves as they are: ``OUTPUT_ONLY`` ones and
    ``IMMUTABLE`` ones (set at creation). An update mask may name them; they are then ignored (AIP-203)."""
    return frozenset(field.name for field in message.fields if behaviors(field) & {OUTPUT_ONLY, IMMUTABLE})
