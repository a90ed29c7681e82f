"""The descriptor set built from ``protos/`` (by ``make proto``), loaded once.

``protoc`` is not needed at run time: the descriptor set is checked in next to the generated code
(``gateway/_gen/descriptors.binpb``) and a test proves it fresh. Everything that reads descriptors starts
here: the schema pool (:func:`pool`) and gRPC server reflection, which builds its own pool from the same
:func:`descriptor_set`.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

# Imported for their side effect: they register the google.api.http and google.api.field_behavior
# extensions, so the options of the descriptors below carry them.
from google.api import annotations_pb2, field_behavior_pb2  # noqa: F401
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

NATIVE_SERVICE = "roomgateway.v1.RoomService"
#: The file name of the descriptor set inside the ``gateway._gen`` package.
DESCRIPTOR_SET = "descriptors.binpb"


@functools.cache
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The checked-in descriptor set: every file of ``protos/`` and what they import, dependencies first.

    Read once; treat it as read-only (it is shared).
    """
    data = resources.files("gateway._gen").joinpath(DESCRIPTOR_SET).read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def new_pool() -> descriptor_pool.DescriptorPool:
    """A new descriptor pool holding every file of :func:`descriptor_set`, for a caller that adds more."""
    result = descriptor_pool.DescriptorPool()
    for file in descriptor_set().file:
        result.Add(file)
    return result


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """The descriptor pool of the gateway's protos (one for the process; add nothing to it)."""
    return new_pool()


def service(full_name: str = NATIVE_SERVICE) -> descriptor.ServiceDescriptor:
    """A service of the descriptor set by full name; the native ``roomgateway.v1.RoomService`` by default."""
    return pool().FindServiceByName(full_name)


def message(full_name: str) -> descriptor.Descriptor:
    """A message type of the descriptor set by full name (``roomgateway.v1.Room``)."""
    return pool().FindMessageTypeByName(full_name)


def python_name(method_name: str) -> str:
    """``CreateRoom`` → ``create_room``: the name of the RoomService coroutine and the betterproto method."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method_name).lower()
