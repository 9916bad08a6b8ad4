"""Wire models (pydantic) for requests and responses, as the Runloop SDK sends and reads them.

Requests ignore unknown fields (newer SDKs may send more), except inside a CIDR rule and its
port rules: there a misspelt field (``"prot": "TCP"``) would silently widen the rule, so it
is a 400. Types are strict so that ``"allow_all": "yes"`` is a clear 400 rather than a
silent guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortRuleParam(_Rule):
    port: StrictInt = Field(ge=1, le=65535)
    end_port: StrictInt | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["TCP", "UDP"] | None = None


class AllowedCidrParam(_Rule):
    cidr: StrictStr
    ports: list[PortRuleParam] | None = None


class _EgressFields(_Request):
    description: StrictStr | None = None
    allow_all: StrictBool | None = None
    allow_devbox_to_devbox: StrictBool | None = None
    allow_agent_gateway: StrictBool | None = None
    allow_mcp_gateway: StrictBool | None = None
    allow_runloop_mirrors: StrictBool | None = None
    allowed_hostnames: list[StrictStr] | None = None
    allowed_cidrs: list[AllowedCidrParam] | None = None


class NetworkPolicyCreateParams(_EgressFields):
    name: StrictStr


class NetworkPolicyUpdateParams(_EgressFields):
    name: StrictStr | None = None


class PortRule(BaseModel):
    port: int
    end_port: int | None = None
    protocol: Literal["TCP", "UDP"] | None = None


class AllowedCidr(BaseModel):
    cidr: str
    ports: list[PortRule] | None = None


class Egress(BaseModel):
    allow_all: bool
    allow_devbox_to_devbox: bool
    allow_agent_gateway: bool
    allow_mcp_gateway: bool
    allow_runloop_mirrors: bool
    allowed_hostnames: list[str]
    allowed_cidrs: list[AllowedCidr]


class NetworkPolicyView(BaseModel):
    id: str
    name: str
    description: str | None = None
    create_time_ms: int
    update_time_ms: int
    egress: Egress


class NetworkPolicyListView(BaseModel):
    network_policies: list[NetworkPolicyView]
    has_more: bool
    total_count: int | None = None


class ErrorBody(BaseModel):
    message: str
    error_code: str


ERROR_RESPONSES = {
    400: {"model": ErrorBody, "description": "Invalid request"},
    401: {"model": ErrorBody, "description": "Missing or unknown API key"},
}
NOT_FOUND = {404: {"model": ErrorBody, "description": "Not found"}}


def page_json(key: str, page, view) -> dict:
    """A list response: ``{key: [view(item)...], has_more, total_count}``."""
    return {key: [view(item) for item in page.items], "has_more": page.has_more, "total_count": page.total_count}
