"""The disk-snapshot domain model (a plain frozen dataclass) and its statuses."""

from __future__ import annotations

from dataclasses import dataclass, field

IN_PROGRESS = "in_progress"
COMPLETE = "complete"
ERROR = "error"
DELETED = "deleted"


@dataclass(frozen=True)
class DiskSnapshot:
    id: str
    account: str
    source_devbox_id: str
    status: str  # in_progress | complete | error | deleted
    create_time_ms: int
    metadata: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    commit_message: str | None = None
    source_blueprint_id: str | None = None
    # The source devbox's policy when the snapshot was taken: the default for devboxes
    # created from the snapshot.
    network_policy_id: str | None = None
    disk: str | None = None  # the runtime's reference, once complete
    size_bytes: int | None = None  # the disk's size once complete (DevboxRuntime.disk_size)
    error_message: str | None = None
