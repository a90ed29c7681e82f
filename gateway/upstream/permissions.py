"""Keys' permissions on upstreams (``<upstream>:<Method>``, ``<upstream>:*``), checked against
``upstreams:`` when the configuration is validated, and asked per call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from gateway.auth.permissions import upstream_permission
from gateway.auth.policy import Principal
from gateway.upstream.descriptors import located

if TYPE_CHECKING:
    from gateway.config import UpstreamConfig


def check_key_permissions(
    index: int, name: str, permissions: Iterable[str], limited: bool, upstreams: Mapping[str, UpstreamConfig]
) -> None:
    """Refuse a key (``auth.keys[index]``) naming an upstream or a method that does not exist, or limited to
    room patterns (``limited``) on an upstream that has no ``room_field`` to check them against.

    :raises ValidationError: located at the key's ``permissions`` or ``rooms``.
    """
    for position, permission in enumerate(permissions):
        parsed = upstream_permission(permission)
        if parsed is None:
            continue
        loc = ("auth", "keys", index, "permissions", position)
        upstream_name, method = parsed
        upstream = upstreams.get(upstream_name)
        if upstream is None:
            known = ", ".join(sorted(upstreams)) or "none configured"
            raise located(loc, f"{permission!r}: no upstream named {upstream_name!r} (upstreams: {known})")
        methods = upstream.schema.method_names()
        if method != "*" and method not in methods:
            raise located(
                loc,
                f"{permission!r}: the upstream has no method {method!r} "
                f"(known: {', '.join(sorted(methods))})",
            )
        if limited and not upstream.room_field:
            raise located(
                ("auth", "keys", index, "rooms"),
                f"key {name!r} is limited to rooms, but upstream {upstream_name!r} has no room_field to "
                "check them against: set room_field on the upstream, or use a key without rooms",
            )


def may_call(principal: Principal, upstream: str, method: str) -> bool:
    """Whether ``principal`` holds ``<upstream>:<method>``, ``<upstream>:*`` or ``*``."""
    granted = principal.permissions
    return "*" in granted or f"{upstream}:{method}" in granted or f"{upstream}:*" in granted
