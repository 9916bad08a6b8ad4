"""Pure translations of a stored policy for the data plane.

- ``egress_for``: NetworkPolicy -> ``netns.ruleset.Egress`` (what nftables enforces).
- ``flow_allowed``: would the new rules still accept this established flow? Used after a
  policy update to cut (conntrack-delete) exactly the flows the update revoked; it mirrors
  the devbox + policy chains in ``netns.ruleset`` for traffic leaving the devbox subnet.
- ``revokes_nothing``: does an update only widen a policy? Then no learned address and no
  established flow can have lost its permission, and the data plane skips the learned-set
  and conntrack work (the conntrack dump is the costly part of an update).
"""

from __future__ import annotations

import ipaddress

from netns import ruleset
from simulator.policy_model import Egress, NetworkPolicy

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
    private: tuple[str, ...] = ruleset.PRIVATE_NETWORKS,
) -> bool:
    """Whether a flow to ``dst`` (outside the devbox subnet) is allowed by these rules; a
    ``private`` network only through a CIDR, as in the ruleset."""
    address = ipaddress.ip_address(dst)
    for cidr in () if egress is None else egress.cidrs:
        if address not in ipaddress.ip_network(cidr.cidr, strict=False):
            continue
        if not cidr.ports:
            return True
        for port in cidr.ports:
            if port.protocol not in (None, proto) or proto not in ("tcp", "udp") or dport is None:
                continue
            if port.port <= dport <= (port.end_port or port.port):
                return True
    if any(address in ipaddress.ip_network(net) for net in private):
        return False
    return egress is None or egress.allow_all or dst in learned


def accepts_peers(policy: NetworkPolicy | None) -> bool:
    """Does a devbox under ``policy`` take part in devbox-to-devbox traffic (both ways)?"""
    return policy is None or policy.egress.allow_all or policy.egress.allow_devbox_to_devbox


def revokes_nothing(before: Egress | None, after: Egress | None) -> bool:
    """True when ``after`` allows everything ``before`` allowed, judged conservatively on
    the policy's terms (a False can be a false alarm, a True is never wrong):

    - no policy (None) and allow_all allow everything but private networks, which only a
      CIDR opens: after them, nothing is revoked unless ``before`` had a CIDR entry reaching
      into a private network that ``after`` lacks;
      leaving them is a revocation (unless to another of them);
    - otherwise allow_devbox_to_devbox must not be turned off, every hostname pattern of
      ``before`` must still be there (the same string), and every CIDR entry of ``before``
      (address and ports) must still be there.
    """
    if after is None or after.allow_all:
        opened = set() if before is None else {e for e in _cidr_entries(before) if _touches_private(e[0])}
        return opened <= (set() if after is None else set(_cidr_entries(after)))
    if before is None or before.allow_all:
        return False
    if before.allow_devbox_to_devbox and not after.allow_devbox_to_devbox:
        return False
    if not set(before.allowed_hostnames) <= set(after.allowed_hostnames):
        return False
    return set(_cidr_entries(before)) <= set(_cidr_entries(after))


def _touches_private(cidr: str) -> bool:
    """Does ``cidr`` reach into a network only a CIDR opens (``ruleset.PRIVATE_NETWORKS``;
    when a simulator opens them, a True is a false alarm, never a miss)?"""
    network = ipaddress.ip_network(cidr, strict=False)
    return network.version == 4 and any(network.overlaps(ipaddress.ip_network(p)) for p in ruleset.PRIVATE_NETWORKS)


def _cidr_entries(egress: Egress):
    """CIDR entries in a comparable form: ports None and () both mean every port."""
    for cidr in egress.allowed_cidrs:
        yield cidr.cidr, tuple(cidr.ports or ())
