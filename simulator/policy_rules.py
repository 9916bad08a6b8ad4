"""Pure translations of a stored policy for the data plane.

- ``egress_for``: NetworkPolicy -> ``netns.ruleset.Egress`` (what nftables enforces).
- ``flow_allowed``: would the new rules still accept this established flow? Used after a
  policy update to cut (conntrack-delete) exactly the flows the update revoked; it mirrors
  the per-devbox chain in ``netns.ruleset`` for traffic leaving the devbox subnet.
"""

from __future__ import annotations

import ipaddress

from netns import ruleset
from simulator.policy_model import NetworkPolicy

_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", None: None}


def egress_for(policy: NetworkPolicy | None) -> ruleset.Egress | None:
    if policy is None:
        return None  # no policy: unrestricted
    egress = policy.egress
    return ruleset.Egress(
        allow_all=egress.allow_all,
        allow_devbox_to_devbox=egress.allow_devbox_to_devbox,
        cidrs=tuple(
            ruleset.CidrRule(
                cidr.cidr,
                tuple(ruleset.PortRange(p.port, p.end_port, _PROTOCOLS[p.protocol]) for p in cidr.ports or ()),
            )
            for cidr in egress.allowed_cidrs
        ),
    )


def flow_allowed(
    egress: ruleset.Egress | None,
    learned: set[str],
    dst: str,
    proto: str,
    dport: int | None,
) -> bool:
    """Whether a flow to ``dst`` (outside the devbox subnet) is allowed by these rules."""
    if egress is None or egress.allow_all:
        return True
    if dst in learned:
        return True
    address = ipaddress.ip_address(dst)
    for cidr in egress.cidrs:
        if address not in ipaddress.ip_network(cidr.cidr, strict=False):
            continue
        if not cidr.ports:
            return True
        for port in cidr.ports:
            if port.protocol not in (None, proto) or proto not in ("tcp", "udp") or dport is None:
                continue
            if port.port <= dport <= (port.end_port or port.port):
                return True
    return False
