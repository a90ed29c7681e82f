"""An upstream's schema: its protos compiled (or its descriptor set read) into a pool of its own, once.

``protos:`` are compiled at start-up by the ``protoc`` of grpcio-tools (``pip install
'room-gateway[protoc]'``), with the file's own folder, the configuration's folder, ``google/api/*.proto``
(googleapis-common-protos) and the well-known types (grpcio-tools) on the import path. A
``descriptor_set:`` (``protoc --include_imports --descriptor_set_out=…``) needs no protoc at all: the
``protobuf`` runtime reads it. Each upstream gets a pool of its own, so two upstreams (or an upstream and
the gateway) may declare files of the same name.

Errors are pydantic errors located at the key that caused them (``upstreams[0].protos[1]``), so the loader
names the line: a missing file, protoc's own message, an unknown service, a ``room_field`` that no method's
request has.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Imported for their side effect: the google.api.http option of the upstream's methods is then readable.
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

if TYPE_CHECKING:
    from gateway.config import UpstreamConfig

#: Seconds protoc gets to compile an upstream's files.
PROTOC_TIMEOUT = 60.0
_Loc = tuple[str | int, ...]


def located(loc: _Loc, message: str, value: Any = None) -> ValidationError:
    """A validation error at ``loc`` (below the model being validated), so the loader names its line."""
    error = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
    return ValidationError.from_exception_data("upstream", [error])


@dataclass(frozen=True, slots=True)
class UpstreamMethod:
    """One method an upstream serves, as the proxy and the REST routes see it."""

    upstream: str
    name: str  # the proto's name, case included: "readVariable"
    path: str  # "/roomApi.RoomApi/readVariable"
    descriptor: MethodDescriptor
    input: Descriptor
    output: Descriptor
    client_streaming: bool
    server_streaming: bool
    #: The request's room field (``room_field``), when this method's request has it.
    room_field: FieldDescriptor | None

    @property
    def permission(self) -> str:
        return f"{self.upstream}:{self.name}"

    def room_of(self, data: bytes) -> str:
        """The room id a request message names (``""`` when it names none), read from its bytes.

        :raises DecodeError: the bytes are not a request of this method.
        """
        if self.room_field is None:
            return ""
        message: Message = message_factory.GetMessageClass(self.input).FromString(data)
        return str(getattr(message, self.room_field.name))


@dataclass(frozen=True)
class UpstreamSchema:
    """The compiled descriptors of one upstream and the methods it serves."""

    pool: descriptor_pool.DescriptorPool
    services: tuple[str, ...]
    methods: dict[str, UpstreamMethod]  # by path
    #: ``tls_ca`` resolved from the configuration's folder.
    tls_ca: str | None = None
    #: The files of the pool, dependencies first (served by the gateway's server reflection).
    files: tuple[descriptor_pb2.FileDescriptorProto, ...] = ()

    @classmethod
    def load(cls, config: UpstreamConfig, base: Path) -> UpstreamSchema:
        """Compile or read ``config``'s files (relative paths from ``base``) and pick its services.

        :raises ValidationError: located at the key at fault.
        """
        if bool(config.protos) == (config.descriptor_set is not None):
            raise located((), "give protos (files to compile) or descriptor_set (a compiled set), not both")
        if config.descriptor_set is not None:
            files, declared = _read_set(_existing(base, config.descriptor_set, ("descriptor_set",)))
        else:
            paths = [_existing(base, p, ("protos", i)) for i, p in enumerate(config.protos)]
            files, declared = _compile(paths, base)
        pool = descriptor_pool.DescriptorPool()
        try:
            for file in files:
                pool.Add(file)
        except (TypeError, ValueError) as exc:
            raise located((), f"the descriptors do not load: {exc}") from None
        services = [s for f in declared for s in (pool.FindFileByName(f).services_by_name.values())]
        by_name = {s.full_name: s for s in services}
        chosen = config.services or list(by_name)
        for index, name in enumerate(config.services):
            if name not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                raise located(("services", index), f"unknown service {name!r} (the files declare: {known})")
        if not chosen:
            raise located((), "the files declare no service")
        methods: dict[str, UpstreamMethod] = {}
        for service_name in chosen:
            for method in by_name[service_name].methods:
                room = method.input_type.fields_by_name.get(config.room_field or "")
                if room is not None and (room.type != FieldDescriptor.TYPE_STRING or room.is_repeated):
                    raise located(
                        ("room_field",), f"{method.input_type.full_name}.{room.name} is not a string"
                    )
                path = f"/{service_name}/{method.name}"
                methods[path] = UpstreamMethod(
                    upstream=config.name,
                    name=method.name,
                    path=path,
                    descriptor=method,
                    input=method.input_type,
                    output=method.output_type,
                    client_streaming=method.client_streaming,
                    server_streaming=method.server_streaming,
                    room_field=room,
                )
        if config.room_field and not any(m.room_field for m in methods.values()):
            raise located(("room_field",), f"no request of the services has a field {config.room_field!r}")
        tls_ca = None
        if config.tls_ca is not None:
            tls_ca = str(_existing(base, config.tls_ca, ("tls_ca",)))
        return cls(pool, tuple(chosen), methods, tls_ca, tuple(files))

    def method_names(self) -> set[str]:
        return {method.name for method in self.methods.values()}


def _existing(base: Path, name: str, loc: _Loc) -> Path:
    path = Path(os.path.expanduser(name))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise located(loc, f"no such file: {path}", name)
    return path


def _read_set(path: Path) -> tuple[Sequence[descriptor_pb2.FileDescriptorProto], list[str]]:
    try:
        data = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    except (DecodeError, OSError) as exc:
        raise located(("descriptor_set",), f"{path} is not a FileDescriptorSet ({exc})") from None
    return list(data.file), [file.name for file in data.file]


def include_paths() -> list[Path]:
    """What ``import`` in an upstream's proto reaches besides its own folders: ``google/api/*.proto`` and
    the well-known types."""
    found = [Path(annotations_pb2.__file__).resolve().parents[2]]  # site-packages holding google/api/
    spec = importlib.util.find_spec("grpc_tools")
    if spec is not None and spec.origin is not None:
        found.append(Path(spec.origin).parent / "_proto")
    return found


def _compile(paths: list[Path], base: Path) -> tuple[Sequence[descriptor_pb2.FileDescriptorProto], list[str]]:
    if importlib.util.find_spec("grpc_tools") is None:
        raise located(
            ("protos",),
            "compiling protos needs grpcio-tools' protoc: pip install 'room-gateway[protoc]', or give "
            "descriptor_set: a file made by protoc --include_imports --descriptor_set_out=…",
        )
    folders: list[Path] = []
    for folder in [*(p.parent for p in paths), base.resolve(), *include_paths()]:
        if folder not in folders:
            folders.append(folder)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        command = [
            sys.executable, "-m", "grpc_tools.protoc", *(f"-I{f}" for f in folders),
            "--include_imports", f"--descriptor_set_out={out}", *(str(p) for p in paths),
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PROTOC_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise located(("protos",), f"protoc did not finish within {PROTOC_TIMEOUT:g}s") from None
        if result.returncode != 0:
            raise located(("protos",), f"protoc failed: {result.stderr.strip()[-1000:]}")
        files, _ = _read_set(out)
    # The files named in protos: (their names in the set are relative to the first folder holding them).
    named = {_virtual_name(p, folders) for p in paths}
    return files, [f.name for f in files if f.name in named]


def _virtual_name(path: Path, folders: list[Path]) -> str:
    for folder in folders:
        if path.is_relative_to(folder):
            return path.relative_to(folder).as_posix()
    return path.name
