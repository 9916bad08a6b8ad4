"""/v1/devboxes: parse, call the service action of the same name, serialise.

Long polls (``wait_for_status``, ``create_and_await_running``) are ``async`` endpoints that
await a wake-up instead of holding a worker thread, so many held requests never starve the
thread pool the other (sync) endpoints run on.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Body, Depends, Query

from simulator.api import deps
from simulator.api.devbox_schemas import (
    LONG_POLL_TIMEOUT,
    NO_RUNTIME,
    DevboxCreateParams,
    DevboxListView,
    DevboxLogsListView,
    DevboxResourceUsageView,
    DevboxUpdateParams,
    DevboxView,
    DevboxWaitForStatusParams,
    TunnelParams,
    TunnelView,
)
from simulator.api.schemas import ERROR_RESPONSES, NOT_FOUND, ErrorBody, page_json
from simulator.api.sse import event_stream
from simulator.devbox_model import Devbox
from simulator.errors import InvalidRequest


EVICTIONS_KEEP_ALIVE_SECONDS = 15.0
EVICTIONS_STOP_CHECK_SECONDS = 0.5
EVICTION_RESPONSES = {
    200: {
        "description": "Server-sent events: `data: {\"devbox_id\", \"eviction_deadline_ms\"}` per pending eviction "
                       "(never, here); keep-alive comments meanwhile",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def runtime_ready(_account: str = Depends(deps.account), services=Depends(deps.services)) -> None:
    """Every devbox endpoint needs a runtime: without one, a clear 503 (after the 401 check)."""
    services.devboxes.require_runtime()


router = APIRouter(
    prefix="/v1/devboxes",
    tags=["devboxes"],
    responses={**ERROR_RESPONSES, **NO_RUNTIME},
    dependencies=[Depends(runtime_ready)],
)


def view(devbox: Devbox) -> dict:
    return {
        "id": devbox.id,
        "status": devbox.status,
        "create_time_ms": devbox.create_time_ms,
        "launch_parameters": devbox.launch_parameters,
        "metadata": devbox.metadata,
        "state_transitions": [t.to_json() for t in devbox.state_transitions],
        "capabilities": [],
        "name": devbox.name,
        "end_time_ms": devbox.end_time_ms,
        "blueprint_id": devbox.blueprint_id,
        "snapshot_id": devbox.snapshot_id,
        "failure_reason": devbox.failure_reason,
        "shutdown_reason": devbox.shutdown_reason,
        "initiator_type": "api",
        "tunnel": devbox.tunnel.to_json() if devbox.tunnel else None,
    }


def _create_params(params: DevboxCreateParams | None) -> dict:
    return params.model_dump(exclude_unset=True) if params is not None else {}


@router.post("", response_model=DevboxView, summary="Create a devbox (returns while it provisions)")
def create_devbox(
    params: DevboxCreateParams | None = Body(None),
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    return view(services.devboxes.create_devbox(account, _create_params(params), request_id))


# Declared before POST /{id}: "create_and_await_running" is not a devbox id.
@router.post(
    "/create_and_await_running",
    response_model=DevboxView,
    summary="Create a devbox and hold (up to ~20 s) until it is running, failed or shut down",
)
async def create_and_await_running(
    params: DevboxCreateParams | None = Body(None),
    account: str = Depends(deps.account),
    request_id: str | None = Depends(deps.request_id),
    services=Depends(deps.services),
):
    return view(await services.devboxes.create_and_await_running(account, _create_params(params), request_id))


@router.get("", response_model=DevboxListView, summary="List devboxes, newest first")
def list_devboxes(
    status: str | None = Query(None, description="Only devboxes with this status"),
    limit: int | None = Query(None, description="Page size, 1 to 5000 (default 20)"),
    starting_after: str | None = Query(None, description="Id of the last item of the previous page"),
    include_total_count: bool = Query(True),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    page = services.devboxes.list_devboxes(
        account, status=status, starting_after=starting_after, limit=limit, include_total_count=include_total_count
    )
    return page_json("devboxes", page, view)


@router.get(
    "/evictions/watch",
    responses=EVICTION_RESPONSES,
    summary="Pending infrastructure evictions (server-sent events): the simulator never evicts a devbox, so the "
            "stream sends only keep-alive comments, until the client leaves or the simulator stops",
)
async def watch_evictions(account: str = Depends(deps.account), services=Depends(deps.services)):
    stopping = services.devboxes.stopping

    async def quiet():
        while not stopping.is_set():
            yield None  # a keep-alive comment now, then every EVICTIONS_KEEP_ALIVE_SECONDS
            for _ in range(int(EVICTIONS_KEEP_ALIVE_SECONDS / EVICTIONS_STOP_CHECK_SECONDS)):
                if stopping.is_set():
                    return
                await asyncio.sleep(EVICTIONS_STOP_CHECK_SECONDS)  # a stop is seen within this

    return event_stream(quiet())


@router.get("/{id}", response_model=DevboxView, responses=NOT_FOUND, summary="Get a devbox")
def retrieve_devbox(id: str, account: str = Depends(deps.account), services=Depends(deps.services)):
    return view(services.devboxes.retrieve_devbox(account, id))


@router.get(
    "/{id}/usage",
    response_model=DevboxResourceUsageView,
    responses=NOT_FOUND,
    summary="CPU, memory and disk use from the devbox's lifecycle and size (suspended time excluded for CPU and memory)",
)
def retrieve_resource_usage(id: str, account: str = Depends(deps.account), services=Depends(deps.services)):
    return services.devboxes.retrieve_resource_usage(account, id)


@router.post("/{id}", response_model=DevboxView, responses=NOT_FOUND, summary="Update a devbox's name and metadata")
def update_devbox(
    id: str,
    params: DevboxUpdateParams | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    changes = params.model_dump(exclude_unset=True) if params is not None else {}
    return view(services.devboxes.update_devbox(account, id, changes))


@router.post(
    "/{id}/wait_for_status",
    response_model=DevboxView,
    responses={**NOT_FOUND, **LONG_POLL_TIMEOUT},
    summary="Hold until the devbox has one of the statuses (408 when the hold runs out)",
)
async def wait_for_status(
    id: str,
    params: DevboxWaitForStatusParams,
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return view(await services.devboxes.wait_for_status(account, id, params.statuses, params.timeout_seconds))


@router.post(
    "/{id}/shutdown",
    response_model=DevboxView,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "A disk snapshot is in progress (without force)"}},
    summary="Shut a devbox down (synchronous)",
)
def shutdown_devbox(
    id: str,
    force: bool | None = Query(None, description="Shut down even while a disk snapshot is in progress (it then fails)"),
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return view(services.devboxes.shutdown_devbox(account, id, force=bool(force)))


@router.post(
    "/{id}/suspend",
    response_model=DevboxView,
    responses=NOT_FOUND,
    summary="Freeze every process of a running devbox (synchronous: the result is suspended)",
)
def suspend_devbox(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return view(services.devboxes.suspend_devbox(account, id))


@router.post(
    "/{id}/resume",
    response_model=DevboxView,
    responses=NOT_FOUND,
    summary="Thaw a suspended devbox (synchronous: the result is running)",
)
def resume_devbox(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    return view(services.devboxes.resume_devbox(account, id))


@router.get(
    "/{id}/logs",
    response_model=DevboxLogsListView,
    responses=NOT_FOUND,
    summary="Commands run in the devbox, their output lines and exit codes, oldest first",
)
def list_logs(
    id: str,
    execution_id: str | None = Query(None, description="Only this execution's entries"),
    shell_name: str | None = Query(None, description="1.29 SDKs; ignored"),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    entries = services.executions.list_logs(account, id, execution_id)
    return {"logs": [entry.to_json() for entry in entries]}


@router.post(
    "/{id}/keep_alive",
    response_model=dict,
    responses=NOT_FOUND,
    summary="Reset the devbox's keep-alive timer (launch_parameters.keep_alive_time_seconds)",
)
def keep_alive(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    services.devboxes.keep_alive(account, id)
    return {}


@router.post(
    "/{id}/enable_tunnel",
    response_model=TunnelView,
    responses=NOT_FOUND,
    summary="Open an HTTP tunnel: {port}-{tunnel_key}.tunnel.<host> on this listener reaches the devbox's port",
)
def enable_tunnel(
    id: str,
    params: TunnelParams | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    body = params.model_dump(exclude_unset=True) if params is not None else {}
    return services.tunnels.enable_tunnel(account, id, body).to_json()


@router.post("/{id}/remove_tunnel", response_model=dict, responses=NOT_FOUND, summary="Close the devbox's tunnel")
def remove_tunnel(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    services.tunnels.remove_tunnel(account, id)
    return {}


@router.post(
    "/{id}/create_ssh_key",
    responses=NOT_FOUND,
    summary="Not simulated: devboxes have no SSH server (400 not_supported)",
)
def create_ssh_key(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    _not_supported(services, account, id, "the simulator's devboxes have no SSH server: run commands with execute / "
                   "execute_async, move files with the file endpoints, and reach a server in the devbox with enable_tunnel")


@router.post(
    "/{id}/create_pty_tunnel",
    responses=NOT_FOUND,
    summary="Not simulated: devboxes have no terminal server (400 not_supported)",
)
def create_pty_tunnel(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    _not_supported(services, account, id, "the simulator's devboxes have no terminal server: run commands with "
                   "execute / execute_async (send_std_in for input), or serve your own and reach it with enable_tunnel")


@router.post(
    "/{id}/create_gateway_token",
    responses=NOT_FOUND,
    summary="Not simulated: there is no agent gateway here (400 not_supported)",
)
def create_gateway_token(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    _not_supported(services, account, id, "the simulator has no agent gateway (nor gateway configs or secrets): give "
                   "the devbox what it needs in environment_variables, and its egress through its network policy")


@router.post(
    "/{id}/create_mcp_token",
    responses=NOT_FOUND,
    summary="Not simulated: there is no MCP gateway here (400 not_supported)",
)
def create_mcp_token(
    id: str,
    _body: dict | None = Body(None),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    _not_supported(services, account, id, "the simulator has no MCP gateway (nor MCP configs or secrets): run the MCP "
                   "server in the devbox, or reach one through its network policy")


def _not_supported(services, account: str, devbox_id: str, message: str) -> None:
    services.devboxes.retrieve_devbox(account, devbox_id)  # 404 first, as for any devbox action
    raise InvalidRequest(message, code="not_supported")
