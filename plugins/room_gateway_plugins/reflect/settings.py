"""``surfaces.reflect`` in gateway.yaml: which Reflect apps are served. See docs/migrating-from-reflect.md."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from gateway.surfaces import SurfaceSettings


class ReflectSettings(SurfaceSettings):
    """``surfaces.reflect: {enabled: true, apps: [my-app]}``: Reflect's REST API under
    ``/v1/apps/{appId}/…``."""

    #: The app ids served; a call naming any other app is a 404, as on Reflect.
    apps: list[str] = Field(default_factory=list)

    @field_validator("apps")
    @classmethod
    def _app_ids(cls, value: list[str]) -> list[str]:
        for app in value:
            if not re.fullmatch(r"[A-Za-z0-9._~-]{1,128}", app):
                raise ValueError(f"an app id is 1-128 letters, digits or . _ ~ - only, got {app!r}")
        if len(set(value)) != len(value):
            raise ValueError("app ids must be unique")
        return value

    @model_validator(mode="after")
    def _apps_when_enabled(self) -> ReflectSettings:
        if self.enabled and not self.apps:
            raise ValueError("list the app ids to serve in apps: (e.g. apps: [my-app])")
        return self
