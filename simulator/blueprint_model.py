"""The blueprint domain model (a plain frozen dataclass), its build statuses and log lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

QUEUED = "queued"
BUILDING = "building"
BUILD_COMPLETE = "build_complete"
FAILED = "failed"
ALL_STATUSES = (QUEUED, "provisioning", BUILDING, "awaiting_upload", FAILED, BUILD_COMPLETE)
IN_BUILD = (QUEUED, BUILDING)

CREATED = "created"
DELETED = "deleted"


@dataclass(frozen=True)
class Blueprint:
    id: str
    account: str
    name: str
    status: str
    create_time_ms: int
    parameters: dict[str, Any] = field(default_factory=dict)  # the create body, echoed
    state: str = CREATED  # created | deleted
    base_blueprint_id: str | None = None
    disk: str | None = None  # the runtime's reference, once built
    failure_reason: str | None = None  # build_failed | out_of_memory | out_of_disk
    build_finish_time_ms: int | None = None

    @property
    def build_policy_id(self) -> str | None:
        """Applies while the blueprint builds, never to its devboxes."""
        return self.parameters.get("network_policy_id")

    @property
    def launch_parameters(self) -> dict[str, Any]:
        return dict(self.parameters.get("launch_parameters") or {})

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.parameters.get("metadata") or {})


@dataclass(frozen=True)
class BuildLog:
    level: str  # info | error
    message: str
    timestamp_ms: int
