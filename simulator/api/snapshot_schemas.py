"""Wire models for disk snapshots, as the Runloop SDK (3.0.0) sends and reads them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictStr


class SnapshotParams(BaseModel):
    """Body of snapshot_disk, snapshot_disk_async and the snapshot update (all optional)."""

    model_config = ConfigDict(extra="ignore")

    name: StrictStr | None = None
    commit_message: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None


class SnapshotView(BaseModel):
    id: str
    create_time_ms: int
    metadata: dict[str, str]
    source_devbox_id: str
    name: str | None = None
    commit_message: str | None = None
    size_bytes: int | None = None
    source_blueprint_id: str | None = None


class SnapshotListView(BaseModel):
    snapshots: list[SnapshotView]
    has_more: bool
    total_count: int | None = None


class SnapshotStatusView(BaseModel):
    status: Literal["in_progress", "error", "complete", "deleted"]
    error_message: str | None = None
    snapshot: SnapshotView | None = None
