"""``surfaces.signalwire`` in gateway.yaml: the project id SignalWire's clients send."""

from __future__ import annotations

from pydantic import Field, model_validator

from gateway.surfaces import SurfaceSettings


class SignalWireSettings(SurfaceSettings):
    """``surfaces.signalwire: {enabled: true, project_id: …}``: SignalWire's Video REST API under
    ``/api/video``."""

    #: The only Basic user accepted (``project_id:api_token``, the token being an API key of ``auth.keys``).
    project_id: str = Field(default="", max_length=256)

    @model_validator(mode="after")
    def _project_when_enabled(self) -> SignalWireSettings:
        if self.enabled and not self.project_id:
            raise ValueError("project_id is required when enabled: the Basic user clients send")
        return self
