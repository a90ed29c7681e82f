"""The memory backend passes the shipped conformance suite — the same file a third party would write."""

import pytest
from room_gateway_plugins.memory import MemoryBackend

from gateway.testing.conformance import BackendContract


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def backend_factory(self):  # type: ignore[no-untyped-def]
        return MemoryBackend
