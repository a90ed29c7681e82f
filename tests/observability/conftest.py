"""The front proxy's fixtures (an echo upstream, a front gateway process), for tracing through it."""

from tests.upstream.conftest import echo_pb2, start_echo, start_front  # fixtures, by name

__all__ = ["echo_pb2", "start_echo", "start_front"]
