"""Meta-tests that keep the contracts honest: generated code fresh, one permission per method, domain
values mirroring the proto, every hook documented and implemented."""

from __future__ import annotations

import dataclasses
import filecmp
import inspect
import subprocess
import sys
from pathlib import Path

import pluggy

from gateway import hookspecs, schema
from gateway.auth.permissions import PERMISSIONS, REQUIRED
from gateway.core import models
from gateway.plugins import Plugins, create_plugin_manager

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "genproto.py"), str(out)], check=True)
    checked_in = ROOT / "gateway" / "_gen"

    def differences(cmp: filecmp.dircmp[str]) -> list[str]:
        found = [f"{cmp.left}/{name}" for name in cmp.left_only + cmp.right_only + cmp.diff_files]
        found = [f for f in found if "__pycache__" not in f]
        for sub in cmp.subdirs.values():
            found += differences(sub)
        return found

    comparison = filecmp.dircmp(str(out), str(checked_in), ignore=["__pycache__"])
    # dircmp compares shallowly by stat; compare contents for files present on both sides
    stale = differences(comparison)
    for left in out.rglob("*"):
        if left.is_file():
            right = checked_in / left.relative_to(out)
            if right.exists() and left.read_bytes() != right.read_bytes():
                stale.append(str(right))
    assert not stale, f"gateway/_gen is stale, run `make proto`: {sorted(set(stale))}"


def test_every_method_declares_one_known_permission() -> None:
    methods = {m.name for m in schema.service().methods}
    assert set(REQUIRED) == methods
    assert set(REQUIRED.values()) <= PERMISSIONS


def test_domain_values_mirror_the_proto_messages() -> None:
    pairs = {
        models.Room: "Room",
        models.Variable: "Variable",
        models.Event: "Event",
        models.ListRoomsResponse: "ListRoomsResponse",
        models.RoomContents: "RoomContents",
        models.InvalidateConnectionsResponse: "InvalidateConnectionsResponse",
        models.RoomToken: "RoomToken",
    }
    for cls, message in pairs.items():
        descriptor = schema.pool().FindMessageTypeByName(f"roomgateway.v1.{message}")
        assert [f.name for f in dataclasses.fields(cls)] == [f.name for f in descriptor.fields], cls
    status = schema.pool().FindEnumTypeByName("roomgateway.v1.Room.Status")
    assert {s.value for s in models.RoomStatus} == {v.name for v in status.values} - {"STATUS_UNSPECIFIED"}


def test_service_methods_take_the_request_fields() -> None:
    from gateway.core.service import RoomService

    for method in schema.service().methods:
        signature = inspect.signature(getattr(RoomService, schema.python_name(method.name)))
        # Keyword-only parameters are the call's context (the caller), given by the dispatcher, not a request.
        params = [p.name for p in signature.parameters.values() if p.kind is not p.KEYWORD_ONLY]
        assert params[1:] == [f.name for f in method.input_type.fields], method.name


def _hookspecs() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items() if name.startswith("gateway_") and callable(fn)}


def test_hooks_are_documented() -> None:
    for name, fn in _hookspecs().items():
        doc = inspect.getdoc(fn) or ""
        assert ":return:" in doc and len(doc) > 80, f"hook {name} needs a full docstring"


def test_every_hook_has_a_builtin_implementation() -> None:
    pm = create_plugin_manager()
    for name in _hookspecs():
        impls = getattr(pm.hook, name).get_hookimpls()
        assert impls, f"no built-in plugin implements {name}"


def test_builtin_backends_come_through_entry_points() -> None:
    pm = create_plugin_manager()
    dists = {dist.project_name for _, dist in pm.list_plugin_distinfo()}
    assert "room-gateway" in dists
    assert "memory" in Plugins(pm).backend_classes()


def test_autoload_can_be_turned_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ROOM_GATEWAY_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm: pluggy.PluginManager = create_plugin_manager()
    assert Plugins(pm).backend_classes() == {}
