"""The proto contract at run time: one home for what the descriptors say.

Both transports read the service's methods, their messages, their ``google.api.http`` rules and their
fields' ``google.api.field_behavior`` from here, so nothing about a method or a field is written twice.

- :mod:`~gateway.schema.descriptors`: the checked-in descriptor set, loaded once, and its pool.
- :mod:`~gateway.schema.paths`: field paths (``room.room_id``) and their lowerCamel JSON spelling.
- :mod:`~gateway.schema.behavior`: ``OUTPUT_ONLY``, ``REQUIRED``, ``IMMUTABLE`` (AIP-203).
- :mod:`~gateway.schema.fields`: the per-field rules both codecs follow (presence, lists and maps,
  well-known types, enums, "not set").
"""

from __future__ import annotations

from gateway.schema.behavior import ignored_on_update, is_output_only, is_required
from gateway.schema.descriptors import (
    DESCRIPTOR_SET,
    NATIVE_SERVICE,
    descriptor_set,
    message,
    new_pool,
    pool,
    python_name,
    service,
)
from gateway.schema.paths import camel_case, field_at, json_path, snake_case

__all__ = [
    "DESCRIPTOR_SET",
    "NATIVE_SERVICE",
    "camel_case",
    "descriptor_set",
    "field_at",
    "ignored_on_update",
    "is_output_only",
    "is_required",
    "json_path",
    "message",
    "new_pool",
    "pool",
    "python_name",
    "service",
    "snake_case",
]
