"""Wire models for blueprints, as the Runloop SDK (3.0.0) sends and reads them.

The create body is echoed back as the view's ``parameters``. Fields the simulator does not
act on (``build_context``, ``code_mounts``, ``secrets``, ``services``) are accepted and echoed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictStr, model_validator

from simulator.api.devbox_schemas import (
    LaunchParametersParam,
    looks_like_the_policy_field,
)


class BlueprintCreateParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_build_policy(cls, data: Any) -> Any:
        """A misspelt ``network_policy_id`` would be ignored, and the build run unrestricted."""
        if isinstance(data, dict):
            for key in data:
                if looks_like_the_policy_field(key):
                    raise ValueError(f"{key!r} is not a blueprint field: did you mean 'network_policy_id' (the "
                                     "build's policy) or launch_parameters.network_policy_id (its devboxes')? "
                                     "Ignored, it would leave the build unrestricted")
        return data

    name: StrictStr
    dockerfile: StrictStr | None = None
    system_setup_commands: list[StrictStr] | None = None
    base_blueprint_id: StrictStr | None = None
    base_blueprint_name: StrictStr | None = None
    build_args: dict[str, StrictStr] | None = None
    file_mounts: dict[str, StrictStr] | None = None
    launch_parameters: LaunchParametersParam | None = None
    network_policy_id: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    # Accepted and echoed, not acted on:
    build_context: dict[str, Any] | None = None
    code_mounts: list[dict[str, Any]] | None = None
    secrets: dict[str, StrictStr] | None = None
    services: list[dict[str, Any]] | None = None


class BlueprintView(BaseModel):
    id: str
    name: str
    create_time_ms: int
    status: Literal["queued", "provisioning", "building", "awaiting_upload", "failed", "build_complete"]
    state: Literal["created", "deleted"]
    parameters: dict[str, Any]
    build_finish_time_ms: int | None = None
    failure_reason: Literal["out_of_memory", "out_of_disk", "build_failed"] | None = None
    metadata: dict[str, str] | None = None
    base_blueprint_id: str | None = None
    is_public: bool | None = None
    containerized_services: list[dict[str, Any]] | None = None
    devbox_capabilities: list[str] | None = None


class BlueprintPreviewView(BaseModel):
    dockerfile: str


class BlueprintListView(BaseModel):
    blueprints: list[BlueprintView]
    has_more: bool
    total_count: int | None = None


class BuildLogView(BaseModel):
    level: str
    message: str
    timestamp_ms: int


class BuildLogsView(BaseModel):
    blueprint_id: str
    logs: list[BuildLogView]
