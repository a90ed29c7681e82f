"""grpcio stubs generated from ``protos/`` at test time: an independent gRPC implementation to call ours."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PROTOS = Path(__file__).resolve().parents[1] / "protos"


@dataclass
class Stubs:
    """The ``_pb2`` (messages) and ``_pb2_grpc`` (stubs) modules of one proto file."""

    pb2: ModuleType
    grpc: ModuleType


@contextmanager
def generated(out: Path, proto: str) -> Iterator[Stubs]:
    """Run ``grpc_tools.protoc`` on ``proto`` (relative to ``protos/``) into ``out`` and import the result.

    :param proto: e.g. ``"roomgateway/v1/rooms.proto"``; the modules are named after it, as protoc does.
    """
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            proto,
        ],
        check=True,
        capture_output=True,
    )
    module = proto.removesuffix(".proto").replace("/", ".").replace("-", "_")
    sys.path.insert(0, str(out))
    try:
        yield Stubs(
            pb2=importlib.import_module(f"{module}_pb2"),
            grpc=importlib.import_module(f"{module}_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))
