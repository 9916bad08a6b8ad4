"""/v1/blueprints: parse, call the service action of the same name, serialise."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Query

from simulator.api import deps
from simulator.api.blueprint_schemas import (
    BlueprintCreateParams,
    BlueprintListView,
    BlueprintPreviewView,
    BlueprintView,
    BuildLogsView,
)
from simulator.api.devbox_schemas import NO_RUNTIME
from simulator.api.devboxes import runtime_ready
from simulator.api.schemas import ERROR_RESPONSES, NOT_FOUND, ErrorBody, page_json
from simulator.blueprint_model import Blueprint

router = APIRouter(
    prefix="/v1/blueprints",
    tags=["blueprints"],
    responses={**ERROR_RESPONSES, **NO_RUNTIME},
    dependencies=[Depends(runtime_ready)],
)


def view(blueprint: Blueprint) -> dict:
    return {
        "id": blueprint.id,
        "name": blueprint.name,
        "create_time_ms": blueprint.create_time_ms,
        "status": blueprint.status,
        "state": blueprint.state,
        "parameters": blueprint.parameters,
        "build_finish_time_ms": blueprint.build_finish_time_ms,
        "failure_reason": blueprint.failure_reason,
        "metadata": blueprint.metadata,
        "base_blueprint_id": blueprint.base_blueprint_id,
        "is_public": False,
        "containerized_services": [],
        "devbox_capabilities": [],
    }


@router.post("", response_model=BlueprintView, summary="Create a blueprint (returns queued; the build runs on)")
def create_blueprint(
    params: BlueprintCreateParams,
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    body = params.model_dump(exclude_none=True)
    return view(services.blueprints.create_blueprint(account, body, request_id))


@router.post("/preview", response_model=BlueprintPreviewView,
             summary="The Dockerfile a create with this body would build (checked as create; nothing is built)")
def preview_blueprint(
    params: BlueprintCreateParams,
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return {"dockerfile": services.blueprints.preview_blueprint(account, params.model_dump(exclude_none=True))}


@router.get("", response_model=BlueprintListView, summary="List blueprints (not deleted), newest first")
def list_blueprints(
    name: str | None = Query(None, description="Only blueprints with exactly this name"),
    status: str | None = Query(None, description="Only blueprints with this build status"),
    limit: int | None = Query(None, description="Page size, 1 to 5000 (default 20)"),
    starting_after: str | None = Query(None, description="Id of the last item of the previous page"),
    include_total_count: bool = Query(True),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    page = services.blueprints.list_blueprints(
        account, name=name, status=status, starting_after=starting_after, limit=limit,
        include_total_count=include_total_count,
    )
    return page_json("blueprints", page, view)


# Declared before /{id}: "list_public" is not a blueprint id. The simulator has no public ones.
@router.get("/list_public", response_model=BlueprintListView, summary="Public blueprints (none in the simulator)")
def list_public_blueprints(account: str = Depends(deps.account)):
    return {"blueprints": [], "has_more": False, "total_count": 0}


@router.get("/{id}", response_model=BlueprintView, responses=NOT_FOUND, summary="Get a blueprint (also once deleted)")
def retrieve_blueprint(id: str, account: str = Depends(deps.account), services=Depends(deps.services)):
    return view(services.blueprints.retrieve_blueprint(account, id))


@router.post(
    "/{id}/delete",
    response_model=dict,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "A devbox is being made from it (x-should-retry: false)"}},
    summary="Delete a blueprint (400 while disk snapshots taken from its devboxes exist, 409 while a devbox is being made from it)",
)
def delete_blueprint(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    services.blueprints.delete_blueprint(account, id)
    return {}


@router.get("/{id}/logs", response_model=BuildLogsView, responses=NOT_FOUND, summary="The blueprint's build log")
def logs(id: str, account: str = Depends(deps.account), services=Depends(deps.services)):
    entries = services.blueprints.logs(account, id)
    return {
        "blueprint_id": id,
        "logs": [{"level": e.level, "message": e.message, "timestamp_ms": e.timestamp_ms} for e in entries],
    }
