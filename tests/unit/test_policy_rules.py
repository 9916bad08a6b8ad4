"""Pure policy translations for the data plane (simulator/policy_rules.py)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from netns import ruleset
from simulator.policy_model import AllowedCidr, Egress, NetworkPolicy, PortRule
from simulator.policy_rules import egress_for, flow_allowed, revokes_nothing

WEB = AllowedCidr("192.0.2.0/24", (PortRule(443, None, "TCP"),))
ALL_PORTS = AllowedCidr("203.0.113.7/32")
RANGE = AllowedCidr("198.51.100.0/24", (PortRule(8000, 8100, None),))
BASE = Egress(allowed_hostnames=("github.com", "*.npmjs.org"), allowed_cidrs=(WEB, ALL_PORTS))


def widen(egress: Egress, **changes) -> Egress:
    return dataclasses.replace(egress, **changes)


@pytest.mark.parametrize(
    "after",
    [
        BASE,
        widen(BASE, allowed_hostnames=("github.com", "*.npmjs.org", "pypi.org")),
        widen(BASE, allowed_hostnames=("*.npmjs.org", "github.com")),  # order does not matter
        widen(BASE, allowed_cidrs=(ALL_PORTS, WEB, RANGE)),
        widen(BASE, allow_devbox_to_devbox=True),
        widen(BASE, allow_agent_gateway=True),  # not enforced by the data plane
        Egress(allow_all=True),
        None,
    ],
)
def test_widening_revokes_nothing(after):
    assert revokes_nothing(BASE, after)


@pytest.mark.parametrize(
    "after",
    [
        widen(BASE, allowed_hostnames=("github.com",)),
        widen(BASE, allowed_hostnames=("github.com", "registry.npmjs.org")),  # narrower pattern
        widen(BASE, allowed_hostnames=("github.com", "*.NPMJS.org")),  # different spelling: not trusted
        widen(BASE, allowed_cidrs=(WEB,)),
        widen(BASE, allowed_cidrs=(AllowedCidr("192.0.2.0/24", (PortRule(443, None, None),)), ALL_PORTS)),
        Egress(),
    ],
)
def test_narrowing_revokes(after):
    assert not revokes_nothing(BASE, after)


def test_allow_all_and_no_policy():
    d2d = widen(BASE, allow_devbox_to_devbox=True)
    assert not revokes_nothing(d2d, BASE)  # devbox-to-devbox turned off
    assert revokes_nothing(BASE, d2d)
    everything = Egress(allow_all=True)
    for before in (everything, None):
        assert revokes_nothing(before, everything)
        assert revokes_nothing(before, None)
        assert not revokes_nothing(before, BASE)
        assert not revokes_nothing(before, widen(BASE, allowed_hostnames=("*.com",)))
    assert revokes_nothing(Egress(), Egress())


LAN = AllowedCidr("192.168.7.0/24", (PortRule(8080, None, "TCP"),))


def test_allow_all_does_not_open_private_networks_a_cidr_opened():
    """allow_all and no policy reach private networks only through a CIDR: leaving a policy
    whose CIDR opened one for them revokes it, unless allow_all keeps that CIDR."""
    lan = widen(BASE, allowed_cidrs=(WEB, LAN))
    for after in (Egress(allow_all=True), None, Egress(allow_all=True, allowed_cidrs=(WEB,))):
        assert not revokes_nothing(lan, after)
    assert revokes_nothing(lan, Egress(allow_all=True, allowed_cidrs=(LAN,)))
    lan_all = Egress(allow_all=True, allowed_cidrs=(LAN,))
    assert not revokes_nothing(lan_all, Egress(allow_all=True))
    assert not revokes_nothing(lan_all, None)
    # a public CIDR adds nothing to allow_all
    assert revokes_nothing(Egress(allow_all=True, allowed_cidrs=(WEB,)), Egress(allow_all=True))


def test_ports_none_and_empty_are_the_same_entry():
    before = Egress(allowed_cidrs=(AllowedCidr("10.0.0.0/8", None),))
    assert revokes_nothing(before, Egress(allowed_cidrs=(AllowedCidr("10.0.0.0/8", ()),)))


def _flow_ok(egress: Egress | None, dst: str, proto: str, dport: int | None, learned: frozenset = frozenset()) -> bool:
    policy = None if egress is None else NetworkPolicy("npol_x", "a", "x", None, egress, 0, 0)
    return flow_allowed(egress_for(policy), set(learned), dst, proto, dport)


def test_revokes_nothing_is_never_wrong_for_cidr_flows():
    """Property: when revokes_nothing says so, every flow the old policy allowed is still allowed."""
    rng = random.Random(7)
    pool = [WEB, ALL_PORTS, RANGE, AllowedCidr("192.0.2.0/25"), AllowedCidr("198.51.100.0/24", (PortRule(8050, None, "UDP"),)),
            LAN, AllowedCidr("10.0.0.0/8")]
    addresses = ["192.0.2.5", "192.0.2.200", "203.0.113.7", "198.51.100.9", "203.0.113.250", "192.168.7.9", "10.3.0.1"]

    def egress(most: int):
        if rng.random() < 0.1:
            return None  # no policy
        return Egress(allowed_cidrs=tuple(rng.sample(pool, rng.randint(0, most))), allow_all=rng.random() < 0.2)

    for _ in range(600):
        before, after = egress(3), egress(4)
        if not revokes_nothing(before, after):
            continue
        for _ in range(30):
            dst = rng.choice(addresses)
            proto = rng.choice(["tcp", "udp", "icmp"])
            dport = None if proto == "icmp" else rng.choice([443, 8000, 8050, 8080, 8101, 22])
            # An update that revokes nothing leaves the learned sets as they are.
            learned = frozenset(rng.sample(addresses, 2))
            if _flow_ok(before, dst, proto, dport, learned):
                assert _flow_ok(after, dst, proto, dport, learned), (before, after, dst, proto, dport, learned)


def test_egress_for():
    assert egress_for(None) is None
    e = egress_for(NetworkPolicy("npol_x", "a", "x", None, widen(BASE, allowed_cidrs=(WEB, RANGE)), 0, 0))
    assert e == ruleset.Egress(
        cidrs=(
            ruleset.CidrRule("192.0.2.0/24", (ruleset.PortRange(443, None, "tcp"),)),
            ruleset.CidrRule("198.51.100.0/24", (ruleset.PortRange(8000, 8100, None),)),
        )
    )


def test_flow_allowed():
    e = egress_for(NetworkPolicy("npol_x", "a", "x", None, BASE, 0, 0))
    assert flow_allowed(e, set(), "192.0.2.1", "tcp", 443)
    assert not flow_allowed(e, set(), "192.0.2.1", "udp", 443)
    assert not flow_allowed(e, set(), "192.0.2.1", "icmp", None)
    assert flow_allowed(e, set(), "203.0.113.7", "icmp", None)
    assert not flow_allowed(e, set(), "203.0.113.250", "tcp", 53)
    assert flow_allowed(e, {"203.0.113.250"}, "203.0.113.250", "tcp", 53)
    assert flow_allowed(None, set(), "203.0.113.250", "tcp", 53)


def test_flow_allowed_to_private_networks_only_through_a_cidr():
    lan = egress_for(NetworkPolicy("npol_x", "a", "x", None, Egress(allow_all=True, allowed_cidrs=(LAN,)), 0, 0))
    assert flow_allowed(lan, set(), "192.168.7.9", "tcp", 8080)
    assert not flow_allowed(lan, set(), "192.168.7.9", "tcp", 22)
    assert not flow_allowed(lan, set(), "10.1.2.3", "tcp", 80)
    assert flow_allowed(lan, set(), "203.0.113.250", "tcp", 53)
    for private in ("10.1.2.3", "172.20.0.5", "192.168.1.1", "100.100.100.100", "198.19.0.1"):
        assert not flow_allowed(None, set(), private, "tcp", 80)
        assert not flow_allowed(ruleset.Egress(allow_all=True), set(), private, "tcp", 80)
        assert not flow_allowed(ruleset.Egress(), {private}, private, "tcp", 80)  # a DNS answer does not open it
        assert flow_allowed(None, set(), private, "tcp", 80, private=())  # --private-networks open
        assert flow_allowed(ruleset.Egress(), {private}, private, "tcp", 80, private=())
