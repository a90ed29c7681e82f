"""The proto contract at run time: the descriptor set built from ``protos/`` (by ``make proto``).

Both transports read the service's methods, their messages and their ``google.api.http`` rules from here, so
nothing about a method is written twice. ``protoc`` is not needed at run time: the descriptor set is checked
in next to the generated code (``gateway/_gen/descriptors.binpb``) and a test proves it fresh.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from google.api import annotations_pb2  # registers the google.api.http extension  # noqa: F401
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

NATIVE_SERVICE = "roomgateway.v1.RoomService"
DESCRIPTOR_SET = "descriptors.binpb"


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding every file of the checked-in descriptor set."""
    data = resources.files("gateway._gen").joinpath(DESCRIPTOR_SET).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    result = descriptor_pool.DescriptorPool()
    for file in files.file:
        result.Add(file)
    return result


def service(full_name: str = NATIVE_SERVICE) -> descriptor.ServiceDescriptor:
    return pool().FindServiceByName(full_name)


def python_name(method_name: str) -> str:
    """``CreateRoom`` → ``create_room``: the name of the RoomService coroutine and the betterproto method."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method_name).lower()
