"""The network-policy domain model: plain frozen dataclasses, JSON in and out of the store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class PortRule:
    port: int
    end_port: int | None = None
    protocol: str | None = None  # "TCP", "UDP", or None for both


@dataclass(frozen=True)
class AllowedCidr:
    cidr: str
    ports: tuple[PortRule, ...] | None = None  # None or empty: all ports and protocols


@dataclass(frozen=True)
class Egress:
    allow_all: bool = False
    allow_devbox_to_devbox: bool = False
    allow_agent_gateway: bool = False
    allow_mcp_gateway: bool = False
    allow_runloop_mirrors: bool = False
    allowed_hostnames: tuple[str, ...] = ()
    allowed_cidrs: tuple[AllowedCidr, ...] = ()
    # What the user set allow_devbox_to_devbox to, whatever allow_all implies: turning
    # allow_all off brings it back. Not in the view; stored only when allow_all hides it
    # (None: the view's value when allow_all is off, else False, as stores before it read).
    devbox_to_devbox_requested: bool | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.devbox_to_devbox_requested is None:
            object.__setattr__(self, "devbox_to_devbox_requested", self.allow_devbox_to_devbox and not self.allow_all)
        # allow_all implies devbox-to-devbox (the contract; the view shows it too).
        if self.allow_all and not self.allow_devbox_to_devbox:
            object.__setattr__(self, "allow_devbox_to_devbox", True)

    @cached_property
    def json_text(self) -> str:
        """The view's ``egress`` object as compact JSON: the stored form, spliced into views
        as is (cached: a list of 20 policies would otherwise re-encode 20 of them)."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @cached_property
    def stored_json_text(self) -> str:
        """The stored form: the view's, plus what the user asked for devbox-to-devbox when
        allow_all hides it (from_json reads it back)."""
        if not (self.allow_all and self.devbox_to_devbox_requested):
            return self.json_text
        return json.dumps({**self.to_json(), "devbox_to_devbox_requested": True}, separators=(",", ":"))

    @property
    def deny_all(self) -> bool:
        return not self.allow_all and not self.allowed_hostnames and not self.allowed_cidrs

    def to_json(self) -> dict:
        return {
            "allow_all": self.allow_all,
            "allow_devbox_to_devbox": self.allow_devbox_to_devbox,
            "allow_agent_gateway": self.allow_agent_gateway,
            "allow_mcp_gateway": self.allow_mcp_gateway,
            "allow_runloop_mirrors": self.allow_runloop_mirrors,
            "allowed_hostnames": list(self.allowed_hostnames),
            "allowed_cidrs": [
                {
                    "cidr": c.cidr,
                    "ports": None
                    if c.ports is None
                    else [
                        {"port": p.port, "end_port": p.end_port, "protocol": p.protocol}
                        for p in c.ports
                    ],
                }
                for c in self.allowed_cidrs
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> Egress:
        return cls(
            allow_all=data["allow_all"],
            allow_devbox_to_devbox=data["allow_devbox_to_devbox"],
            allow_agent_gateway=data["allow_agent_gateway"],
            allow_mcp_gateway=data["allow_mcp_gateway"],
            allow_runloop_mirrors=data["allow_runloop_mirrors"],
            devbox_to_devbox_requested=data.get("devbox_to_devbox_requested"),
            allowed_hostnames=tuple(data["allowed_hostnames"]),
            allowed_cidrs=tuple(
                AllowedCidr(
                    c["cidr"],
                    None if c["ports"] is None else tuple(PortRule(**p) for p in c["ports"]),
                )
                for c in data["allowed_cidrs"]
            ),
        )


@dataclass(frozen=True)
class NetworkPolicy:
    id: str
    account: str
    name: str
    description: str | None
    egress: Egress
    create_time_ms: int
    update_time_ms: int

    def egress_json(self) -> str:
        """The stored form of the egress (``Egress.stored_json_text``)."""
        return self.egress.stored_json_text


@dataclass
class Page:
    """One page of a list: ``items`` newest first, ``total_count`` None when not asked for."""

    items: list = field(default_factory=list)
    has_more: bool = False
    total_count: int | None = None
