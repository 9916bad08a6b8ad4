"""Disk snapshots: ``/v1/devboxes/{id}/snapshot_disk[_async]`` and
``/v1/devboxes/disk_snapshots/...``. Parse, call the service action of the same name, serialise.

Included before the devbox router, so ``/v1/devboxes/disk_snapshots`` is never taken for a
devbox id.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Body, Depends, Query, Request

from simulator.api import deps
from simulator.api.devbox_schemas import NO_RUNTIME
from simulator.api.devboxes import runtime_ready
from simulator.api.schemas import ERROR_RESPONSES, NOT_FOUND, ErrorBody, page_json
from simulator.api.snapshot_schemas import SnapshotListView, SnapshotParams, SnapshotStatusView, SnapshotView
from simulator.errors import InvalidRequest
from simulator.snapshot_model import DiskSnapshot

router = APIRouter(
    prefix="/v1/devboxes",
    tags=["disk snapshots"],
    responses={**ERROR_RESPONSES, **NO_RUNTIME},
    dependencies=[Depends(runtime_ready)],
)
CONFLICT = {409: {"model": ErrorBody, "description": "The snapshot is still in progress, or a devbox is being made"
                                                   " from it (x-should-retry: false)"}}
_METADATA_FILTER = re.compile(r"metadata\[([^\[\]]+)\](\[in\])?")


def view(snapshot: DiskSnapshot) -> dict:
    return {
        "id": snapshot.id,
        "create_time_ms": snapshot.create_time_ms,
        "metadata": snapshot.metadata,
        "source_devbox_id": snapshot.source_devbox_id,
        "name": snapshot.name,
        "commit_message": snapshot.commit_message,
        "size_bytes": snapshot.size_bytes,
        "source_blueprint_id": snapshot.source_blueprint_id,
    }


def _params(params: SnapshotParams | None) -> dict:
    return params.model_dump(exclude_none=True) if params is not None else {}


def metadata_filters(request: Request) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``metadata[KEY]=value`` (exact) and ``metadata[KEY][in]=a,b`` (any of), for any KEY."""
    equal: dict[str, str] = {}
    any_of: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith("metadata"):
            continue
        match = _METADATA_FILTER.fullmatch(name)
        if match is None:
            raise InvalidRequest(f"bad query parameter {name!r}: use metadata[KEY]=value or metadata[KEY][in]=a,b")
        key = match.group(1)
        if match.group(2):
            values = [v for v in value.split(",") if v]
            if not values:
                raise InvalidRequest(f"{name} needs at least one value")
            any_of[key] = values
        else:
            equal[key] = value
    return equal, any_of


@router.post(
    "/{id}/snapshot_disk",
    response_model=SnapshotView,
    responses=NOT_FOUND,
    summary="Snapshot the devbox's disk and hold until the snapshot is complete",
)
async def snapshot_disk(
    id: str,
    params: SnapshotParams | None = Body(None),
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    return view(await services.snapshots.snapshot_disk(account, id, _params(params), request_id))


@router.post(
    "/{id}/snapshot_disk_async",
    response_model=SnapshotView,
    responses=NOT_FOUND,
    summary="Start a disk snapshot (in progress; poll its status)",
)
def snapshot_disk_async(
    id: str,
    params: SnapshotParams | None = Body(None),
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    return view(services.snapshots.snapshot_disk_async(account, id, _params(params), request_id))


@router.get("/disk_snapshots", response_model=SnapshotListView, summary="List disk snapshots, newest first")
def list_disk_snapshots(
    request: Request,
    devbox_id: str | None = Query(None, description="Only snapshots of this devbox"),
    source_blueprint_id: str | None = Query(None, description="Only snapshots of devboxes from this blueprint"),
    metadata_key: str | None = Query(None, alias="metadata[key]", description="metadata[KEY]=value, for any KEY"),
    metadata_key_in: str | None = Query(None, alias="metadata[key][in]", description="metadata[KEY][in]=a,b (any of)"),
    limit: int | None = Query(None, description="Page size, 1 to 5000 (default 20)"),
    starting_after: str | None = Query(None, description="Id of the last item of the previous page"),
    include_total_count: bool = Query(True),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    metadata, metadata_in = metadata_filters(request)  # every metadata[...] form, the declared ones included
    page = services.snapshots.list_disk_snapshots(
        account,
        devbox_id=devbox_id,
        source_blueprint_id=source_blueprint_id,
        metadata=metadata,
        metadata_in=metadata_in,
        starting_after=starting_after,
        limit=limit,
        include_total_count=include_total_count,
    )
    return page_json("snapshots", page, view)


@router.get(
    "/disk_snapshots/{id}/status",
    response_model=SnapshotStatusView,
    responses=NOT_FOUND,
    summary="A snapshot's status: in_progress, complete, error, or deleted (still 200)",
)
def query_status(id: str, account: str = Depends(deps.account), services=Depends(deps.services)):
    snapshot = services.snapshots.query_status(account, id)
    return {"status": snapshot.status, "error_message": snapshot.error_message, "snapshot": view(snapshot)}


@router.post(
    "/disk_snapshots/{id}",
    response_model=SnapshotView,
    responses=NOT_FOUND,
    summary="Update a snapshot's name, commit message and metadata (metadata given replaces all)",
)
def update_disk_snapshot(
    id: str,
    params: SnapshotParams | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return view(services.snapshots.update_disk_snapshot(account, id, _params(params)))


@router.post(
    "/disk_snapshots/{id}/delete",
    response_model=dict,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a disk snapshot (409 while in progress or while a devbox is being made from it)",
)
def delete_disk_snapshot(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    services.snapshots.delete_disk_snapshot(account, id)
    return {}
