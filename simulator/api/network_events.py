"""GET /v1/devboxes/{id}/network_events: a simulator extension (not in Runloop's API)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from simulator.api import deps
from simulator.api.schemas import ERROR_RESPONSES, NOT_FOUND


class NetworkEventView(BaseModel):
    seq: int
    time_ms: int
    kind: str
    verdict: str
    reason: str
    name: str | None = None  # blocked: the name the address last resolved to (null: none known)
    qtype: str | None = None  # dns only
    matched_pattern: str | None = None
    addresses: list[str]
    ttl: int | None = None
    error: str | None = None
    protocol: str | None = None
    port: int | None = None
    rcode: str | None = None  # dns: the answer's code (NOERROR, NXDOMAIN, SERVFAIL, ...)
    network_policy_id: str | None = None  # the policy in force when it was decided (None: no policy)
    network_policy_update_time_ms: int | None = None  # ...and its version (its update_time_ms then)


class NetworkEventListView(BaseModel):
    network_events: list[NetworkEventView]
    has_more: bool


router = APIRouter(prefix="/v1/devboxes", tags=["simulator extensions"], responses=ERROR_RESPONSES)


@router.get(
    "/{id}/network_events",
    response_model=NetworkEventListView,
    responses=NOT_FOUND,
    summary="What the devbox tried to reach and what its policy decided (simulator extension)",
    description=(
        "Oldest first: every DNS decision of the devbox's resolver (kind dns: name and type, verdict "
        "allowed/denied/error and why - matched pattern, deny_all, no_matching_pattern, "
        "upstream_error, ... - the addresses and TTL handed out), and every new connection attempt the "
        "firewall dropped (kind blocked: destination address, protocol, port, reason - policy, "
        "private_network when the policy alone would allow it but --private-networks by-cidr kept it "
        "out, resolver_bypass, reserved_address, router or connection_limit - and the name that "
        "address last resolved to, when known; a retried attempt from the same source port is one "
        "event). Bounded per devbox and globally."
    ),
)
async def list_network_events(
    id: str,
    verdict: str | None = Query(None, description="allowed, denied or error"),
    since: int | None = Query(None, description="Only events at or after this time (ms since the epoch)"),
    starting_after: int | None = Query(None, description="The last seq of the previous page"),
    limit: int = Query(100, description="Page size, 1 to 1000"),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    services.devboxes.retrieve_devbox(account, id)  # 404 for unknown or another account's
    events, has_more = services.network_events.list_network_events(
        id, verdict=verdict, since_ms=since, starting_after=starting_after, limit=limit
    )
    return {"network_events": [e.to_json() for e in events], "has_more": has_more}


class AllowedConnectionView(BaseModel):
    destination: str
    protocol: str
    port: int
    name: str | None = None
    connections: int


class AllowedConnectionListView(BaseModel):
    connections: list[AllowedConnectionView]


@router.get(
    "/{id}/network_connections",
    response_model=AllowedConnectionListView,
    responses=NOT_FOUND,
    summary="Allowed new connections, counted per destination (simulator extension)",
    description=(
        "New TCP/UDP connections the firewall let through, counted per destination address, "
        "protocol and port (most used first), with the DNS name that address last resolved to. "
        "A destination drops out an hour after its last connection; a devbox counts at most 4,096 at once. "
        "For a devbox that has ended: its counts when it ended."
    ),
)
def list_network_connections(id: str, account: str = Depends(deps.account), services=Depends(deps.services)):
    # A plain def (a worker thread): listing the router's connection set takes time that grows
    # with every devbox's traffic; it must not hold the event loop, which serves every account.
    services.devboxes.retrieve_devbox(account, id)  # 404 for unknown or another account's
    dataplane = getattr(services.runtime, "dataplane", None)
    counts = dataplane.allowed_connections(id) if dataplane is not None else []
    for count in counts:
        count["name"] = services.network_events.name_for(account, count["destination"])
    return {"connections": counts}
