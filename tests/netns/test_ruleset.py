"""Golden + property tests for the pure nftables compiler (netns/ruleset.py).

Golden files are pretty-printed JSON in tests/netns/golden/<case>.json; regenerate with
``UPDATE_GOLDEN=1 pytest tests/netns/test_ruleset.py`` and review the diff.
"""

from __future__ import annotations

import ast
import dataclasses
import ipaddress
import json
import os
import random
from pathlib import Path

import pytest

from netns import ruleset as R
from netns.ruleset import CidrRule, Devbox, Egress, PortRange, Router

GOLDEN = Path(__file__).parent / "golden"

ROUTER = Router(bridge="dbxbr0", gateway="10.88.0.1/16", subnet="10.88.0.0/16", uplink="dbxup0")
ROUTER_FULL = Router(
    bridge="dbxbr0",
    gateway="10.88.0.1",
    subnet="10.88.0.0/16",
    uplink="dbxup0",
    protected=("198.18.50.1", "100.64.0.0/12", "100.65.0.0/16", "fd00::/8"),
    dns_port=5353,
    log_group=7,
)

MIXED = Egress(
    cidrs=(
        CidrRule("10.0.0.0/8"),
        CidrRule("10.1.0.0/16"),  # covered by 10.0.0.0/8: collapsed away
        CidrRule("203.0.113.34/32"),
        CidrRule("192.0.2.0/24", (PortRange(443, None, "tcp"),)),
        CidrRule("192.0.2.128/25", (PortRange(8000, 8100, None), PortRange(440, 450, "tcp"))),
        CidrRule("198.51.100.7/32", (PortRange(53, None, "udp"), PortRange(5000, 5010))),
        CidrRule("203.0.113.9/24", (PortRange(22),)),  # host bits dropped
        CidrRule("2001:db8::/32"),  # IPv6: ignored (devboxes are IPv4-only)
    )
)


def box(key: str, account: str, n: int, policy: str | None) -> Devbox:
    """A devbox; it is a peer (in its account set) when its policy allows devbox-to-devbox."""
    egress = POLICIES[policy] if policy is not None else None
    peer = egress is None or egress.allow_all or egress.allow_devbox_to_devbox
    return Devbox(key, account, f"10.88.0.{n}", f"02:00:0a:58:00:{n:02x}", f"vd{key}", policy, peer)


# policy key -> egress
POLICIES = {
    "pdeny": Egress(),  # deny all (or names only: same rules, the learned sets get filled)
    "pall": Egress(allow_all=True),
    "pmixed": MIXED,
    "pd2d": dataclasses.replace(MIXED, allow_devbox_to_devbox=True),
    "pd2donly": Egress(allow_devbox_to_devbox=True),
    # allow_all plus the CIDR that opens one private network (and a public one, redundant)
    "pallcidr": Egress(allow_all=True, cidrs=(CidrRule("192.168.7.0/24", (PortRange(8080, None, "tcp"),)),
                                              CidrRule("203.0.113.0/24"))),
}

DENY = box("d1", "acme", 2, "pdeny")
HOSTNAMES = box("d2", "acme", 3, "pdeny")
ALLOW_ALL = box("d3", "acme", 4, "pall")
NO_POLICY = box("d4", "beta", 5, None)
CIDRS = box("d5", "beta", 6, "pmixed")
D2D = box("d6", "beta", 7, "pd2d")
D2D_ONLY = box("d7", "acme", 8, "pd2donly")

CASES = {
    "bootstrap": lambda: R.bootstrap(ROUTER),
    "bootstrap_protected_log": lambda: R.bootstrap(ROUTER_FULL),
    "policy_deny_all": lambda: R.add_policy(ROUTER, "pdeny", POLICIES["pdeny"]),
    "policy_allow_all": lambda: R.add_policy(ROUTER, "pall", POLICIES["pall"]),
    "policy_allow_all_private_cidr": lambda: R.add_policy(ROUTER, "pallcidr", POLICIES["pallcidr"]),
    "bootstrap_private_open": lambda: R.bootstrap(dataclasses.replace(ROUTER, private=())),
    "policy_cidrs": lambda: R.add_policy(ROUTER, "pmixed", POLICIES["pmixed"]),
    "policy_cidrs_d2d": lambda: R.add_policy(ROUTER, "pd2d", POLICIES["pd2d"]),
    "policy_d2d_only": lambda: R.add_policy(ROUTER, "pd2donly", POLICIES["pd2donly"]),
    "policy_update_deny_to_cidrs": lambda: R.update_policy("pdeny", MIXED),
    "policy_update_to_allow_all": lambda: R.update_policy("pmixed", Egress(allow_all=True)),
    "policy_remove": lambda: R.remove_policy("pmixed"),
    "add_devbox": lambda: R.add_devbox(ROUTER, DENY, []),
    "add_devbox_first_of_account": lambda: R.add_devbox(ROUTER, DENY, [], first_of_account=True),
    "add_devbox_log": lambda: R.add_devbox(ROUTER_FULL, DENY, []),
    "add_devbox_members": lambda: R.add_devbox(ROUTER, HOSTNAMES, ["10.88.0.2"]),
    "add_devbox_no_policy": lambda: R.add_devbox(ROUTER, NO_POLICY, []),
    "move_devbox": lambda: R.move_devbox(ROUTER, dataclasses.replace(DENY, policy="pmixed")),
    "move_devbox_to_no_policy_keep_learned": lambda: R.move_devbox(
        ROUTER_FULL, dataclasses.replace(CIDRS, policy=None), flush_learned=False
    ),
    "remove_devbox": lambda: R.remove_devbox(ROUTER, CIDRS),
    "remove_devbox_peer": lambda: R.remove_devbox(ROUTER, D2D),
    "set_peer_on": lambda: R.set_peer(DENY, True),
    "set_peer_off": lambda: R.set_peer(D2D, False),
    "remove_last_in_account": lambda: R.remove_devbox(ROUTER, NO_POLICY, drop_account_set=True),
    "learned_add": lambda: R.learned_add("d2", [("203.0.113.34", 300), ("198.51.100.111", 60), ("203.0.113.34", 120)]),
    "learned_remove": lambda: R.learned_remove("d2", ["203.0.113.34", "198.51.100.111"]),
    "full_two_accounts": lambda: R.full(
        ROUTER_FULL,
        [D2D, DENY, ALLOW_ALL, NO_POLICY, CIDRS, D2D_ONLY],
        POLICIES,
        learned={"d1": [("203.0.113.34", 300)], "d6": [("198.51.100.111", 30)]},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case):
    doc = CASES[case]()
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    path = GOLDEN / f"{case}.json"
    if os.environ.get("UPDATE_GOLDEN") and os.environ.get("CI"):
        # Regenerating would compare the output with itself: CI checks against the committed files.
        pytest.fail("UPDATE_GOLDEN is set in CI: golden files are regenerated locally and reviewed, never in CI")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == json.loads(text), f"{case} differs from {path} (UPDATE_GOLDEN=1 to accept)"


def test_no_orphan_golden_files():
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)


def test_compile_is_deterministic():
    for fn in CASES.values():
        assert json.dumps(fn()) == json.dumps(fn())


# ----------------------------------------------------------------------------- structure


def _rules(doc, chain, family="inet"):
    return [
        c["add"]["rule"]
        for c in doc["nftables"]
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain and c["add"]["rule"]["family"] == family
    ]


def test_everything_is_in_our_tables():
    for fn in CASES.values():
        for cmd in fn()["nftables"]:
            ((_, obj),) = cmd.items()
            ((kind, body),) = obj.items()
            table = body["name"] if kind == "table" else body["table"]
            assert (body["family"], table) in R.OUR_TABLES, cmd


def test_devbox_sources_are_masqueraded_only_where_the_uplink_needs_it():
    """Host uplink: everything leaving is masqueraded. Offline world (it routes the subnet
    back): only the router's own traffic, so the world's services see each devbox."""
    def masquerade(router):
        [rule] = [r for r in _rules(R.bootstrap(router), "postrouting") if {"masquerade": None} in r["expr"]]
        return rule["expr"]

    assert not any(e.get("match", {}).get("op") == "!=" for e in masquerade(ROUTER))
    offline = masquerade(dataclasses.replace(ROUTER, masquerade_devboxes=False))
    assert {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                      "right": {"prefix": {"addr": "10.88.0.0", "len": 16}}}} in offline


def test_bootstrap_recreates_tables_first():
    cmds = R.bootstrap(ROUTER)["nftables"]
    for family, name in (("inet", R.TABLE), ("bridge", R.BRIDGE_TABLE)):
        t = {"table": {"family": family, "name": name}}
        i = cmds.index({"add": t})
        assert cmds[i : i + 3] == [{"add": t}, {"delete": t}, {"add": t}]


def test_forward_order_dns_and_protected_before_policy():
    doc = R.bootstrap(ROUTER_FULL)
    rules = [json.dumps(r["expr"]) for r in _rules(doc, "forward")]
    dns = next(i for i, r in enumerate(rules) if "853" in r)
    protected = next(i for i, r in enumerate(rules) if "@protected" in r)
    vmap = next(i for i, r in enumerate(rules) if "vmap" in r)
    assert dns < vmap and protected < vmap
    assert rules[-1] == json.dumps([{"drop": None}])
    chains = [c["add"]["chain"] for c in doc["nftables"] if "chain" in c.get("add", {})]
    policies = {(c["family"], c["name"]): c.get("policy") for c in chains}
    assert policies[("inet", "forward")] == "drop"
    assert policies[("inet", "input")] == "drop"


SUBNET = {"prefix": {"addr": "10.88.0.0", "len": 16}}


@pytest.mark.parametrize("devbox", [DENY, ALLOW_ALL, NO_POLICY, CIDRS, D2D, D2D_ONLY], ids=lambda d: d.key)
@pytest.mark.parametrize("router", [ROUTER, ROUTER_FULL], ids=["plain", "log"])
def test_devbox_chain_guards_subnet_first(devbox, router):
    rules = [r["expr"] for r in _rules(R.add_devbox(router, devbox, []), devbox.chain)]
    # 0. a devbox's new connections beyond its share of the router's connection tracking
    over_cap = {"jump": {"target": "logdrop_connection_limit"}} if router.log_group is not None else {"drop": None}
    assert rules.pop(0) == [{"ct count": {"val": router.max_connections_per_devbox, "inv": True}}, over_cap]
    # ... and its account's (that chain counts every devbox of the account)
    assert rules.pop(0) == [{"jump": {"target": "acctconns_" + devbox.account}}]
    outside = {"match": {"op": "!=", "left": R.IP_DADDR, "right": SUBNET}}
    target = R.UNRESTRICTED_CHAIN if devbox.policy is None else "pol_" + devbox.policy
    # 1. learned addresses only open destinations outside the subnet and the private networks
    # (a DNS answer may point into either)
    not_private = {"match": {"op": "!=", "left": R.IP_DADDR, "right": "@private"}}
    learned = {"match": {"op": "==", "left": R.IP_DADDR, "right": "@learned_" + devbox.key}}
    assert rules[0] == [outside, not_private, learned, {"accept": None}]
    # 2. the policy sees only what is outside the subnet or a peer of the same account...
    assert rules[1] == [outside, {"jump": {"target": target}}]
    assert rules[2] == [{"match": {"op": "==", "left": R.IP_DADDR, "right": "@acct_" + devbox.account}}, {"jump": {"target": target}}]
    # 3. ...so another account's devbox, like whatever the policy does not accept, is
    # (logged and) dropped
    if router.log_group is not None:
        assert "log" in rules[3][-1]
    assert rules[-1] == [{"drop": None}]
    assert len(rules) == (5 if router.log_group is not None else 4)
    # nothing in the devbox chain depends on its policy's content
    assert json.dumps(rules).count("@") == 3


def test_an_accounts_connection_count_is_written_once_and_goes_with_its_last_devbox():
    """The account chain's one rule counts in its own list: rewriting it would start the
    account from zero, so only the account's first devbox (or a full rebuild) writes it."""
    chain = R.account_chain(DENY.account)
    count = [{"ct count": {"val": ROUTER.max_connections_per_account, "inv": True}}, {"drop": None}]
    first = R.add_devbox(ROUTER, DENY, [], first_of_account=True)["nftables"]
    assert [r["expr"] for r in _rules({"nftables": first}, chain)] == [count]
    assert {"flush": {"chain": {"family": "inet", "table": R.TABLE, "name": chain}}} in first
    later = R.add_devbox(ROUTER, DENY, [])["nftables"]
    assert {"add": {"chain": {"family": "inet", "table": R.TABLE, "name": chain}}} in later  # exists (a no-op)
    assert not any(chain in json.dumps(c) for c in later if "flush" in c or "rule" in c.get("add", {})
                   and c["add"]["rule"]["chain"] == chain)
    assert [r["expr"] for r in _rules(R.full(ROUTER, [DENY], POLICIES), chain)] == [count]
    gone = R.remove_devbox(ROUTER, DENY, drop_account_set=True)["nftables"]
    assert {"delete": {"chain": {"family": "inet", "table": R.TABLE, "name": chain}}} in gone
    # after the devbox chain that jumps to it
    assert gone.index({"delete": {"chain": {"family": "inet", "table": R.TABLE, "name": DENY.chain}}}) < \
        gone.index({"delete": {"chain": {"family": "inet", "table": R.TABLE, "name": chain}}})
    assert not any(chain in json.dumps(c) for c in R.remove_devbox(ROUTER, DENY)["nftables"])


def _policy_rules_of(pkey):
    rules = [r["expr"] for r in _rules(R.add_policy(ROUTER, pkey, POLICIES[pkey]), R.policy_chain(pkey))]
    # the same rules for every policy, with its own set names
    return json.loads(json.dumps(rules).replace(f"_{pkey}", "_P"))


def test_policy_chain_is_the_same_for_every_policy_and_decides_same_account_first():
    chains = {pkey: _policy_rules_of(pkey) for pkey in POLICIES}
    rules = chains[min(POLICIES)]
    assert all(c == rules for c in chains.values())
    subnet = {"match": {"op": "==", "left": R.IP_DADDR, "right": SUBNET}}

    def flag(name):
        return {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "@" + name}}

    assert rules == [
        # Same-account traffic the policy does not allow returns at once (to be logged and
        # dropped by the devbox chain): no CIDR rule after these may open a devbox.
        [subnet, flag("ppeer_P"), {"accept": None}],
        [subnet, {"return": None}],
        [{"match": {"op": "==", "left": {"concat": [R.IP_DADDR, {"meta": {"key": "l4proto"}}]},
                    "right": "@pcidr_P"}}, {"accept": None}],
        [{"match": {"op": "==", "left": {"concat": [R.IP_DADDR, {"meta": {"key": "l4proto"}},
                                                    {"payload": {"protocol": "th", "field": "dport"}}]},
                    "right": "@pcidrport_P"}}, {"accept": None}],
        # allow_all: the CIDRs first (they are what opens a private network), then private
        # networks return, then the rest is accepted
        [flag("pall_P"), {"match": {"op": "==", "left": R.IP_DADDR, "right": "@private"}}, {"return": None}],
        [flag("pall_P"), {"accept": None}],
    ]
    # the policy chain is the same for every router option (log lives in the devbox chain)
    for pkey, egress in POLICIES.items():
        assert R.add_policy(ROUTER, pkey, egress) == R.add_policy(ROUTER_FULL, pkey, egress)


@pytest.mark.parametrize("pkey", sorted(POLICIES))
def test_what_a_policy_allows_is_in_its_sets(pkey):
    egress = POLICIES[pkey]
    update = R.update_policy(pkey, egress)["nftables"]
    elements = {}
    for cmd in update:
        if "add" in cmd:
            body = cmd["add"]["element"]
            elements[body["name"]] = body["elem"]
    expected = {}
    if egress.allow_all or egress.allow_devbox_to_devbox:
        expected[R.peer_flag_set(pkey)] = ["ipv4"]
    if egress.allow_all:
        expected[R.all_flag_set(pkey)] = ["ipv4"]
    if R._all_port_elements(egress.cidrs):
        expected[R.cidr_set(pkey)] = R._all_port_elements(egress.cidrs)
    if R._port_elements(egress.cidrs):
        expected[R.cidrport_set(pkey)] = R._port_elements(egress.cidrs)
    assert elements == expected
    # add_policy ends with the same flushes and elements, after (re)writing the chain
    assert R.add_policy(ROUTER, pkey, egress)["nftables"][-len(update):] == update


def test_policy_update_changes_only_the_elements_of_the_policys_sets():
    cmds = R.update_policy("pmixed", MIXED)["nftables"]
    names = set()
    for cmd in cmds:
        ((verb, obj),) = cmd.items()
        ((kind, body),) = obj.items()
        assert (verb, kind) in (("flush", "set"), ("add", "element"))
        names.add(body["name"])
        assert R.element_key(body["name"]) is not None  # it can go by raw netlink
    assert names == {"pcidr_pmixed", "pcidrport_pmixed", "ppeer_pmixed", "pall_pmixed"}
    # every set is flushed before any is refilled
    assert [next(iter(c)) for c in cmds[:4]] == ["flush"] * 4


def test_unrestricted_chain_accepts_all_but_private_networks():
    doc = R.bootstrap(ROUTER)
    assert [r["expr"] for r in _rules(doc, R.UNRESTRICTED_CHAIN)] == [
        [{"match": {"op": "==", "left": R.IP_DADDR, "right": SUBNET}}, {"accept": None}],  # peers first
        [{"match": {"op": "==", "left": R.IP_DADDR, "right": "@private"}}, {"return": None}],
        [{"accept": None}],
    ]


def _set_elements(doc, name):
    return [e for c in doc["nftables"] if "element" in c.get("add", {}) and c["add"]["element"]["name"] == name
            for e in c["add"]["element"]["elem"]]


def test_private_set_holds_the_private_networks_unless_opened():
    assert _set_elements(R.bootstrap(ROUTER), "private") == [
        {"prefix": {"addr": "10.0.0.0", "len": 8}},
        {"prefix": {"addr": "100.64.0.0", "len": 10}},
        {"prefix": {"addr": "172.16.0.0", "len": 12}},
        {"prefix": {"addr": "192.168.0.0", "len": 16}},
        {"prefix": {"addr": "198.18.0.0", "len": 15}},
    ]
    opened = R.bootstrap(dataclasses.replace(ROUTER, private=()))
    assert _set_elements(opened, "private") == []
    # the set exists either way: the devbox and policy chains refer to it
    assert any(c.get("add", {}).get("set", {}).get("name") == "private" for c in opened["nftables"])


def test_learned_add_sets_expires_equal_timeout_and_dedupes():
    cmds = R.learned_add("d2", [("198.51.100.234", 10), ("198.51.100.234", 20), ("198.51.100.78", 30)])["nftables"]
    assert cmds == [
        {
            "add": {
                "element": {
                    "family": "inet",
                    "table": R.TABLE,
                    "name": "learned_d2",
                    "elem": [
                        {"elem": {"val": "198.51.100.234", "timeout": 20, "expires": 20}},
                        {"elem": {"val": "198.51.100.78", "timeout": 30, "expires": 30}},
                    ],
                }
            }
        }
    ]
    assert R.learned_add("d2", [])["nftables"] == []
    assert R.learned_remove("d2", [])["nftables"] == []


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make",
    [
        lambda: PortRange(70000),
        lambda: PortRange(90, 80),
        lambda: PortRange(80, None, "icmp"),
        lambda: CidrRule("10.0.0.0/33"),
        lambda: Devbox("D1", "a", "10.88.0.2", "02:00:00:00:00:01", "vd1"),
        lambda: Devbox("d_1", "a", "10.88.0.2", "02:00:00:00:00:01", "vd1"),
        lambda: Devbox("d1", "a-b", "10.88.0.2", "02:00:00:00:00:01", "vd1"),
        lambda: Devbox("d1", "a", "10.88.0.300", "02:00:00:00:00:01", "vd1"),
        lambda: Devbox("d1", "a", "fd00::1", "02:00:00:00:00:01", "vd1"),
        lambda: Devbox("d1", "a", "10.88.0.2", "02:00:00:00:01", "vd1"),
        lambda: Devbox("d1", "a", "10.88.0.2", "02:00:00:00:00:01", "a-very-long-ifname"),
        lambda: Router("br0", "10.88.0.1", "10.88.0.0/16", "up0", dns_port=0),
        lambda: Router("br0", "10.88.0.1", "10.88.0.0/16", "up0", protected=("nope",)),
        lambda: Router("br0", "10.88.0.1", "10.88.0.0/16", "up0", private=("10.0.0.0/33",)),
        lambda: R.learned_add("d1", [("198.51.100.234", 0)]),
        lambda: R.learned_add("D1", [("198.51.100.234", 5)]),
        lambda: R.full(ROUTER, [DENY, dataclasses.replace(DENY, ip="10.88.0.99")], POLICIES),
        lambda: R.full(ROUTER, [DENY, dataclasses.replace(ALLOW_ALL, ip=DENY.ip)], POLICIES),
        lambda: R.full(ROUTER, [DENY], {}),  # its policy is missing
        lambda: Devbox("d1", "a", "10.88.0.2", "02:00:00:00:00:01", "vd1", "P-1"),
        lambda: R.add_policy(ROUTER, "p_1", Egress()),
        lambda: R.update_policy("", Egress()),
        lambda: R.remove_policy("x" * 25),
    ],
)
def test_invalid_input_rejected(make):
    with pytest.raises(ValueError):
        make()


def test_normalization():
    d = Devbox("d1", "a", "10.88.0.2", "02:AB:00:00:00:01", "vd1")
    assert d.mac == "02:ab:00:00:00:01"
    r = Router("br0", "10.88.0.1/16", "10.88.0.5/16", "up0")
    assert (r.gateway, r.subnet) == ("10.88.0.1", "10.88.0.0/16")
    assert CidrRule("10.1.2.3/8").network == ipaddress.ip_network("10.0.0.0/8")


# ----------------------------------------------------------------------------- CIDR math


def _decode_ip(e):
    if isinstance(e, str):
        a = int(ipaddress.IPv4Address(e))
        return a, a
    if "prefix" in e:
        n = ipaddress.IPv4Network(f"{e['prefix']['addr']}/{e['prefix']['len']}")
        return int(n.network_address), int(n.broadcast_address)
    lo, hi = e["range"]
    return int(ipaddress.IPv4Address(lo)), int(ipaddress.IPv4Address(hi))


def _decode_port(e):
    return (e, e) if isinstance(e, int) else tuple(e["range"])


def _boxes(elems):
    out = []
    for e in elems:
        ip, proto, port = e["concat"]
        out.append((*_decode_ip(ip), proto, *_decode_port(port)))
    return out


def _allowed_by_rules(rules, ip, proto, port):
    for r in rules:
        n = r.network
        if n.version != 4 or not r.ports or ip not in n:
            continue
        for p in r.ports:
            if proto in p.protocols and p.port <= port <= p.last:
                return True
    return False


def test_port_elements_are_disjoint_and_exact():
    rng = random.Random(1234)
    for _ in range(200):
        rules = []
        for _ in range(rng.randint(1, 6)):
            base = rng.choice(["10.0.0.0", "10.0.0.128", "10.0.1.0", "10.0.0.64"])
            plen = rng.randint(24, 32)
            net = ipaddress.IPv4Network(f"{base}/{plen}", strict=False)
            ports = []
            for _ in range(rng.randint(0, 3)):
                a = rng.randint(1, 40)
                b = rng.choice([None, a + rng.randint(0, 15)])
                ports.append(PortRange(a, b, rng.choice(["tcp", "udp", None])))
            rules.append(CidrRule(str(net), tuple(ports)))
        boxes = _boxes(R._port_elements(rules))
        # disjoint per protocol
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                if a[2] != b[2]:
                    continue
                ip_overlap = a[0] <= b[1] and b[0] <= a[1]
                port_overlap = a[3] <= b[4] and b[3] <= a[4]
                assert not (ip_overlap and port_overlap), (rules, a, b)
        # exact: sample points
        for _ in range(300):
            ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.0.0.0")) + rng.randint(0, 511))
            proto = rng.choice(["tcp", "udp"])
            port = rng.randint(0, 60)
            expect = _allowed_by_rules(rules, ip, proto, port)
            got = any(b[0] <= int(ip) <= b[1] and b[2] == proto and b[3] <= port <= b[4] for b in boxes)
            assert got == expect, (rules, ip, proto, port)


def test_all_port_cidrs_collapse():
    elems = R._all_port_elements(
        [CidrRule("10.0.0.0/9"), CidrRule("10.128.0.0/9"), CidrRule("10.5.0.0/16"), CidrRule("198.51.100.234/32"), CidrRule("::/0")]
    )
    assert elems == [
        {"concat": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": [0, 255]}]},
        {"concat": ["198.51.100.234", {"range": [0, 255]}]},
    ]


# ----------------------------------------------------------------------------- layering


def test_netns_never_imports_simulator():
    root = Path(__file__).resolve().parents[2] / "netns"
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] != "simulator", f"{path.name} imports {name}"


def test_ruleset_module_is_pure():
    tree = ast.parse((Path(R.__file__)).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "ipaddress", "re", "collections", "dataclasses", "typing"}, imported
