"""/v1/network-policies: parse, call the service action of the same name, serialise.

Every action runs in a worker thread, not on the event loop: a write that reaches running
devboxes applies nftables and cuts flows inside its store transaction, and a read waits for
that transaction - on the loop, that wait would hold up every other request (tunnels, streams,
other accounts) meanwhile."""

from __future__ import annotations

import json
from functools import partial

import anyio.to_thread
from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response

from simulator.api import deps
from simulator.api.schemas import (
    ERROR_RESPONSES,
    NOT_FOUND,
    NetworkPolicyCreateParams,
    NetworkPolicyListView,
    NetworkPolicyUpdateParams,
    NetworkPolicyView,
)
from simulator.policy_model import NetworkPolicy

router = APIRouter(prefix="/v1/network-policies", tags=["network-policies"], responses=ERROR_RESPONSES)


def _json(text: str) -> Response:
    # Already the wire shape: skip FastAPI's re-validation of the response model (which still
    # documents it in OpenAPI); the schemathesis test checks responses against the schema.
    return Response(text, media_type="application/json")


# One encoder for all: json.dumps with non-default arguments builds a new one per call.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def view_json(policy: NetworkPolicy) -> str:
    """The NetworkPolicyView as JSON text; the egress object is spliced in from its cached
    text (see Egress.json_text) rather than rebuilt and re-encoded per request."""
    return (
        f'{{"id":{_dumps(policy.id)},"name":{_dumps(policy.name)},"description":{_dumps(policy.description)},'
        f'"create_time_ms":{int(policy.create_time_ms)},"update_time_ms":{int(policy.update_time_ms)},'
        f'"egress":{policy.egress.json_text}}}'
    )


@router.post("", response_model=NetworkPolicyView, summary="Create a network policy")
async def create_network_policy(
    params: NetworkPolicyCreateParams,
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    policy = await _in_thread(services.network_policies.create_network_policy,
                              account, params.model_dump(exclude_unset=True), request_id)
    return _json(view_json(policy))


@router.get("", response_model=NetworkPolicyListView, summary="List network policies, newest first")
async def list_network_policies(
    id: str | None = Query(None, description="Exact id"),
    name: str | None = Query(None, description="Part of the name (case-insensitive)"),
    search: str | None = Query(None, description="Part of the id or the name"),
    limit: int | None = Query(None, description="Page size, 1 to 5000 (default 20)"),
    starting_after: str | None = Query(None, description="Id of the last item of the previous page"),
    include_total_count: bool = Query(True),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    page = await anyio.to_thread.run_sync(partial(
        services.network_policies.list_network_policies,
        account,
        id=id,
        name=name,
        search=search,
        starting_after=starting_after,
        limit=limit,
        include_total_count=include_total_count,
    ))
    return _json(
        '{"network_policies":[' + ",".join(view_json(p) for p in page.items) + "],"
        f'"has_more":{_dumps(page.has_more)},"total_count":{_dumps(page.total_count)}}}'
    )


@router.get("/{id}", response_model=NetworkPolicyView, responses=NOT_FOUND, summary="Get a network policy")
async def retrieve_network_policy(id: str, account: str = Depends(deps.account), services=Depends(deps.services)):
    return _json(view_json(await _in_thread(services.network_policies.retrieve_network_policy, account, id)))


@router.post("/{id}", response_model=NetworkPolicyView, responses=NOT_FOUND, summary="Update a network policy (partial)")
async def update_network_policy(
    id: str,
    params: NetworkPolicyUpdateParams | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    changes = params.model_dump(exclude_unset=True) if params is not None else {}
    return _json(view_json(await _in_thread(services.network_policies.update_network_policy, account, id, changes)))


@router.post(
    "/{id}/delete",
    response_model=NetworkPolicyView,
    responses=NOT_FOUND,
    summary="Delete a network policy (400 while devboxes or blueprints use it)",
)
async def delete_network_policy(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return _json(view_json(await _in_thread(services.network_policies.delete_network_policy, account, id)))


async def _in_thread(action, *args):
    return await anyio.to_thread.run_sync(partial(action, *args))
