"""The gRPC wire codec: grpclib's protobuf codec, encoding a repeated message once.

One write reaches every listener of a variable as the *same* message object (the stream handlers convert
each notification once, :class:`LastConversion`), so the server encodes the last message it saw once and
sends the same bytes to every stream: with 10,000 listeners, betterproto2 serialization ran 10,000 times per
write before (bench/fanout.py profile), once now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpclib.encoding.proto import ProtoCodec


class LastMessageCodec(ProtoCodec):
    """:class:`ProtoCodec` that reuses the bytes of the last message when it is sent again."""

    def __init__(self) -> None:
        self._last: tuple[object, bytes] | None = None

    def encode(self, message: Any, message_type: Any) -> bytes:
        last = self._last
        if last is not None and last[0] is message:
            return last[1]
        data = super().encode(message, message_type)
        self._last = (message, data)  # the reference keeps the id from being reused while it is the key
        return data


class LastConversion:
    """Converts domain values to messages, returning the same message for the same value twice in a row."""

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        self._convert = convert
        self._last: tuple[object, Any] | None = None

    def __call__(self, value: Any) -> Any:
        last = self._last
        if last is not None and last[0] is value:
            return last[1]
        message = self._convert(value)
        self._last = (value, message)
        return message
