"""Privileged: apply compiled rulesets into a fresh network namespace through libnftables.

Every test works in namespaces it creates (``ip netns add``) and always deletes them. No
packets are sent; end-to-end traffic tests live elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import threading
import time

import pytest

from netns import ruleset as R
from netns.nft import Nft, NftError
from netns.ruleset import CidrRule, Devbox, Egress, PortRange, Router
from tests.conftest import unique_name

pytestmark = pytest.mark.privileged

ROUTER = Router(
    bridge="dbxbr0",
    gateway="10.88.0.1",
    subnet="10.88.0.0/16",
    uplink="dbxup0",
    protected=("198.18.50.1", "100.64.0.0/12"),
    log_group=7,
)
CIDRS = Egress(
    cidrs=(
        CidrRule("10.0.0.0/8"),
        CidrRule("192.0.2.0/24", (PortRange(443, None, "tcp"), PortRange(8000, 8100))),
        CidrRule("192.0.2.128/25", (PortRange(440, 450, "tcp"),)),
    )
)
D2D = Egress(allow_devbox_to_devbox=True)
POLICIES = {"pcidrs": CIDRS, "pd2d": D2D}
A1 = Devbox("a1", "acme", "10.88.0.2", "02:00:0a:58:00:02", "vda1", "pcidrs")
A2 = Devbox("a2", "acme", "10.88.0.3", "02:00:0a:58:00:03", "vda2", None)
B1 = Devbox("b1", "beta", "10.88.0.4", "02:00:0a:58:00:04", "vdb1", "pd2d")


def _host_tables() -> set[tuple[str, str]]:
    out = subprocess.run(["nft", "-j", "list", "tables"], check=True, capture_output=True, text=True).stdout
    return {(o["table"]["family"], o["table"]["name"]) for o in json.loads(out)["nftables"] if "table" in o}


@pytest.fixture
def netns():
    name = unique_name("nft")
    host_before = _host_tables()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        # exact names: netns/links.py legitimately keeps devbox_sim_uplink_* tables in the host
        leaked = (_host_tables() - host_before) & set(R.OUR_TABLES)
        assert not leaked, f"tables leaked into the host namespace: {leaked}"


@pytest.fixture
def nft(netns):
    n = Nft(netns)
    try:
        yield n
    finally:
        n.close()


def _objects(ruleset, kind):
    return {(o[kind]["family"], o[kind].get("table"), o[kind]["name"]): o[kind] for o in ruleset["nftables"] if kind in o}


def _chain_rules(ruleset, chain, family="inet"):
    return [o["rule"] for o in ruleset["nftables"] if "rule" in o and o["rule"]["chain"] == chain and o["rule"]["family"] == family]


def _no_handles(obj):
    """Ruleset JSON without kernel handles (they change when tables are recreated) and without
    elements' countdowns (``expires``: the heartbeat's element, re-written by each bootstrap,
    may read 10 s or 9 s depending on when it is listed)."""
    if isinstance(obj, dict):
        return {k: _no_handles(v) for k, v in obj.items() if k not in ("handle", "expires")}
    if isinstance(obj, list):
        return [_no_handles(v) for v in obj]
    return obj


def _cli_ruleset(netns) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"], check=True, capture_output=True, text=True).stdout


def _learned(nft, key):
    return {e["elem"]["val"]: e["elem"] for e in nft.list_set("inet", R.TABLE, R.learned_set(key))}


def _cat(*docs):
    return {"nftables": [c for d in docs for c in d["nftables"]]}


def _setup(nft):
    nft.apply(R.bootstrap(ROUTER))
    nft.apply(_cat(R.add_policy(ROUTER, "pcidrs", CIDRS), R.add_devbox(ROUTER, A1, [])))
    nft.apply(R.add_devbox(ROUTER, A2, [A1.ip]))
    nft.apply(_cat(R.add_policy(ROUTER, "pd2d", D2D), R.add_devbox(ROUTER, B1, [])))


def test_context_is_pinned_to_the_namespace(netns, nft):
    nft.apply(R.bootstrap(ROUTER))
    assert ("inet", R.TABLE) in nft.list_tables()
    assert "table inet devbox_sim" in _cli_ruleset(netns)
    assert (("inet", R.TABLE)) not in _host_tables()
    # and from another thread too (the socket, not the thread, carries the namespace)
    errors = []

    def worker():
        try:
            nft.apply(R.learned_add("zz", []))
            assert ("bridge", R.BRIDGE_TABLE) in nft.list_tables()
        except Exception as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors


def test_bootstrap_and_devboxes(netns, nft):
    _setup(nft)
    rs = nft.list_ruleset()
    chains = _objects(rs, "chain")
    for name in ("forward", "input", "output", "postrouting", "unrestricted", "dbx_a1", "dbx_a2", "dbx_b1", "pol_pcidrs", "pol_pd2d"):
        assert ("inet", R.TABLE, name) in chains, name
    assert chains[("inet", R.TABLE, "forward")]["policy"] == "drop"
    assert chains[("inet", R.TABLE, "input")]["hook"] == "input"
    assert chains[("bridge", R.BRIDGE_TABLE, "prerouting")]["prio"] == -300
    sets = _objects(rs, "set")
    for name in ("learned_a1", "learned_a2", "pcidr_pcidrs", "pcidrport_pcidrs", "pcidr_pd2d", "acct_acme", "acct_beta", "protected"):
        assert ("inet", R.TABLE, name) in sets, name
    assert "timeout" in sets[("inet", R.TABLE, "learned_a1")]["flags"]

    assert sorted(nft.list_set("inet", R.TABLE, "acct_acme")) == ["10.88.0.2", "10.88.0.3"]
    assert nft.list_set("inet", R.TABLE, "acct_beta") == ["10.88.0.4"]
    vmap = dict((k, v["jump"]["target"]) for k, v in nft.list_set("inet", R.TABLE, R.VMAP))
    assert vmap == {"10.88.0.2": "dbx_a1", "10.88.0.3": "dbx_a2", "10.88.0.4": "dbx_b1"}
    assert sorted(nft.list_set("bridge", R.BRIDGE_TABLE, R.PORTS_SET)) == ["vda1", "vda2", "vdb1"]
    assert {"concat": ["vda1", "02:00:0a:58:00:02"]} in nft.list_set("bridge", R.BRIDGE_TABLE, R.PORT_MAC_SET)
    assert {"concat": ["vdb1", "10.88.0.4"]} in nft.list_set("bridge", R.BRIDGE_TABLE, R.PORT_IP_SET)

    cidr = nft.list_set("inet", R.TABLE, "pcidr_pcidrs")
    assert cidr == [{"concat": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": [0, 255]}]}]
    cidrport = nft.list_set("inet", R.TABLE, "pcidrport_pcidrs")
    assert {"concat": [{"prefix": {"addr": "192.0.2.128", "len": 25}}, "tcp", {"range": [440, 450]}]} in cidrport
    assert {"concat": [{"prefix": {"addr": "192.0.2.0", "len": 24}}, "udp", {"range": [8000, 8100]}]} in cidrport

    text = _cli_ruleset(netns)
    assert 'log prefix "dbx_a1 " group 7' in text
    assert "ip saddr vmap @dbx_vmap" in text
    assert "ip daddr @acct_acme jump" in text and "ip daddr @acct_beta jump" in text
    assert "ip daddr != 10.88.0.0/16 jump pol_pcidrs" in text
    assert "ip daddr != 10.88.0.0/16 ip daddr != @private ip daddr @learned_a1 accept" in text
    assert "jump pol_pcidrs" in text and "jump pol_pd2d" in text and "jump unrestricted" in text
    assert nft.list_set("inet", R.TABLE, "ppeer_pd2d") == ["ipv4"]  # d2d on
    assert nft.list_set("inet", R.TABLE, "ppeer_pcidrs") == []  # d2d off
    assert nft.list_set("inet", R.TABLE, "pall_pd2d") == nft.list_set("inet", R.TABLE, "pall_pcidrs") == []
    assert "ip daddr 10.88.0.0/16 meta nfproto @ppeer_pd2d accept" in text
    # counts of live rules equal the compiled ones
    for d, members in ((A1, []), (A2, [A1.ip]), (B1, [])):
        compiled = [c for c in R.add_devbox(ROUTER, d, members)["nftables"] if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == d.chain]
        assert len(_chain_rules(rs, d.chain)) == len(compiled)
    for pkey, egress in POLICIES.items():
        chain = R.policy_chain(pkey)
        compiled = [c for c in R.add_policy(ROUTER, pkey, egress)["nftables"] if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain]
        assert len(_chain_rules(rs, chain)) == len(compiled)


def test_adding_a_present_devbox_again_fails_and_changes_nothing(nft):
    _setup(nft)
    nft.apply(R.learned_add("a1", [("203.0.113.34", 300)]))
    def state():  # the ruleset, less the learned element's running-down expiry
        return json.loads(re.sub(r'"expires": \d+', '"expires": 0', json.dumps(nft.list_ruleset())))

    before = state()
    with pytest.raises(NftError):
        nft.apply(R.add_devbox(ROUTER, A1, [A2.ip]))
    assert state() == before
    assert "203.0.113.34" in _learned(nft, "a1")


def test_invalid_doc_raises_and_changes_nothing(nft):
    _setup(nft)
    before = _no_handles(nft.list_ruleset())  # (without countdowns: the heartbeat element ticks)
    bad = R.update_policy("pcidrs", Egress(allow_all=True))
    bad["nftables"].append({"add": {"element": {"family": "inet", "table": R.TABLE, "name": "no_such_set", "elem": ["198.51.100.234"]}}})
    with pytest.raises(NftError) as e:
        nft.apply(bad)
    assert "no_such_set" in str(e.value) or "No such file" in str(e.value)
    assert _no_handles(nft.list_ruleset()) == before
    # a kernel-side failure (deleting an absent element) is atomic too
    bad2 = R.learned_add("a1", [("198.51.100.111", 60)])
    bad2["nftables"].append({"delete": {"element": {"family": "inet", "table": R.TABLE, "name": "acct_acme", "elem": ["10.88.9.9"]}}})
    with pytest.raises(NftError):
        nft.apply(bad2)
    assert _learned(nft, "a1") == {}
    with pytest.raises(NftError):
        nft.apply({"nftables": [{"frobnicate": {}}]})
    with pytest.raises(NftError):
        nft.apply({"not": "a document"})
    assert _no_handles(nft.list_ruleset()) == before


def test_update_policy_swaps_in_one_transaction(netns, nft):
    _setup(nft)
    a3 = Devbox("a3", "acme", "10.88.0.5", "02:00:0a:58:00:05", "vda3", "pcidrs")
    nft.apply(R.add_devbox(ROUTER, a3, [A1.ip, A2.ip]))
    nft.apply(R.learned_add("a1", [("203.0.113.34", 300)]))
    nft.apply(R.update_policy("pcidrs", Egress(cidrs=(CidrRule("198.51.100.0/24", (PortRange(22),)),))))
    assert nft.list_set("inet", R.TABLE, "pcidr_pcidrs") == []
    assert nft.list_set("inet", R.TABLE, "pcidrport_pcidrs") == [
        {"concat": [{"prefix": {"addr": "198.51.100.0", "len": 24}}, "tcp", 22]},
        {"concat": [{"prefix": {"addr": "198.51.100.0", "len": 24}}, "udp", 22]},
    ]
    assert "203.0.113.34" in _learned(nft, "a1")  # learned sets are not the policy's
    rules = _chain_rules(nft.list_ruleset(), "pol_pcidrs")
    # both devboxes still jump to the one policy chain, untouched
    for key in ("a1", "a3"):
        assert {"jump": {"target": "pol_pcidrs"}} in [r["expr"][-1] for r in _chain_rules(nft.list_ruleset(), "dbx_" + key)]
    flags = ("ppeer_pcidrs", "pall_pcidrs")
    assert [nft.list_set("inet", R.TABLE, f) for f in flags] == [[], []]
    # to allow_all: the flags say "same account accepted" and "allow_all"; the chain stays
    nft.apply(R.update_policy("pcidrs", Egress(allow_all=True)))
    assert nft.list_set("inet", R.TABLE, "pcidrport_pcidrs") == []
    assert [nft.list_set("inet", R.TABLE, f) for f in flags] == [["ipv4"], ["ipv4"]]
    assert _no_handles(_chain_rules(nft.list_ruleset(), "pol_pcidrs")) == _no_handles(rules)
    # and back
    nft.apply(R.update_policy("pcidrs", CIDRS))
    assert nft.list_set("inet", R.TABLE, "pcidr_pcidrs") != []
    assert [nft.list_set("inet", R.TABLE, f) for f in flags] == [[], []]


def test_policy_lifecycle_and_move(netns, nft):
    _setup(nft)
    # a policy still jumped to cannot be deleted (atomically refused)
    before = _no_handles(nft.list_ruleset())  # (without countdowns: the heartbeat element ticks)
    with pytest.raises(NftError):
        nft.apply(R.remove_policy("pcidrs"))
    assert _no_handles(nft.list_ruleset()) == before
    # move a1 to pd2d (keeping its learned set), then the unused policy can go
    nft.apply(R.learned_add("a1", [("203.0.113.34", 300)]))
    moved = dataclasses.replace(A1, policy="pd2d")
    nft.apply(_cat(R.move_devbox(ROUTER, moved, flush_learned=False), R.remove_policy("pcidrs")))
    rs = nft.list_ruleset()
    assert ("inet", R.TABLE, "pol_pcidrs") not in _objects(rs, "chain")
    assert ("inet", R.TABLE, "pcidr_pcidrs") not in _objects(rs, "set")
    assert [r["expr"] for r in _chain_rules(rs, "dbx_a1")][3][-1] == {"jump": {"target": "pol_pd2d"}}
    assert "203.0.113.34" in _learned(nft, "a1")
    # to no policy, flushing learned addresses
    nft.apply(R.move_devbox(ROUTER, dataclasses.replace(A1, policy=None)))
    assert [r["expr"] for r in _chain_rules(nft.list_ruleset(), "dbx_a1")][3][-1] == {"jump": {"target": "unrestricted"}}
    assert _learned(nft, "a1") == {}
    # moving to a policy whose chain does not exist fails atomically
    with pytest.raises(NftError):
        nft.apply(R.move_devbox(ROUTER, dataclasses.replace(A1, policy="nosuch")))
    # the last devbox of a policy leaves together with its policy
    nft.apply(_cat(R.remove_devbox(ROUTER, B1, drop_account_set=True), R.remove_devbox(ROUTER, A1), R.remove_policy("pd2d")))
    rs = nft.list_ruleset()
    assert not any(n.startswith(("pol_", "pcidr")) for (_, _, n) in {**_objects(rs, "chain"), **_objects(rs, "set")})


def test_remove_devbox(netns, nft):
    _setup(nft)
    nft.apply(R.learned_add("a1", [("203.0.113.34", 300)]))
    nft.apply(R.remove_devbox(ROUTER, A1))
    rs = nft.list_ruleset()
    assert ("inet", R.TABLE, "dbx_a1") not in _objects(rs, "chain")
    assert ("inet", R.TABLE, "learned_a1") not in _objects(rs, "set")
    assert ("inet", R.TABLE, "pol_pcidrs") in _objects(rs, "chain")  # the caller removes policies
    assert nft.list_set("inet", R.TABLE, "acct_acme") == ["10.88.0.3"]
    assert "10.88.0.2" not in dict(nft.list_set("inet", R.TABLE, R.VMAP))
    assert "vda1" not in nft.list_set("bridge", R.BRIDGE_TABLE, R.PORTS_SET)
    # removing again fails atomically
    with pytest.raises(NftError):
        nft.apply(R.remove_devbox(ROUTER, A1))
    # last devbox of an account: its set goes too
    nft.apply(R.remove_devbox(ROUTER, B1, drop_account_set=True))
    assert ("inet", R.TABLE, "acct_beta") not in _objects(nft.list_ruleset(), "set")
    # and it can come back
    nft.apply(R.add_devbox(ROUTER, A1, [A2.ip]))
    assert sorted(nft.list_set("inet", R.TABLE, "acct_acme")) == ["10.88.0.2", "10.88.0.3"]


def _until(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # polling kernel state with a deadline
    return True


def test_learned_timeouts_and_refresh(nft):
    _setup(nft)
    nft.apply(R.learned_add("a1", [("203.0.113.34", 30), ("198.51.100.111", 600)]))
    el = _learned(nft, "a1")
    assert el["203.0.113.34"]["timeout"] == 30 and 28 <= el["203.0.113.34"]["expires"] <= 30
    assert el["198.51.100.111"]["timeout"] == 600
    # The kernel counts the expiry down: wait (bounded) until it has visibly moved.
    assert _until(lambda: _learned(nft, "a1")["203.0.113.34"]["expires"] <= 28, seconds=5)
    # same timeout again: expiry is re-armed (this is what `expires` in learned_add buys)
    nft.apply(R.learned_add("a1", [("203.0.113.34", 30), ("198.51.100.88", 45)]))
    el = _learned(nft, "a1")
    assert el["203.0.113.34"]["expires"] >= 29
    assert el["198.51.100.88"]["timeout"] == 45
    # a different (shorter) timeout is applied as well
    nft.apply(R.learned_add("a1", [("198.51.100.111", 20)]))
    el = _learned(nft, "a1")
    assert el["198.51.100.111"]["timeout"] == 20 and el["198.51.100.111"]["expires"] <= 20
    # remove: present and absent addresses, idempotent
    nft.apply(R.learned_remove("a1", ["203.0.113.34", "203.0.113.1"]))
    assert set(_learned(nft, "a1")) == {"198.51.100.111", "198.51.100.88"}
    nft.apply(R.learned_remove("a1", ["203.0.113.34"]))
    assert set(_learned(nft, "a1")) == {"198.51.100.111", "198.51.100.88"}


def test_learned_elements_expire(nft):
    nft.apply(R.bootstrap(ROUTER))
    nft.apply(_cat(R.add_policy(ROUTER, "pcidrs", CIDRS), R.add_devbox(ROUTER, A1, [])))
    nft.apply(R.learned_add("a1", [("203.0.113.34", 1)]))
    assert "203.0.113.34" in _learned(nft, "a1")
    assert _until(lambda: _learned(nft, "a1") == {}, seconds=5)  # the kernel expires it


def test_full_reconciles_and_bootstrap_is_idempotent(netns, nft):
    _setup(nft)
    # drift: a stray chain in our table and a foreign table that must survive
    nft.apply({"nftables": [
        {"add": {"chain": {"family": "inet", "table": R.TABLE, "name": "stray"}}},
        {"add": {"table": {"family": "inet", "name": "foreign"}}},
        {"add": {"table": {"family": "inet", "name": "devbox_sim_uplink_x"}}},
    ]})
    nft.apply(R.full(ROUTER, [A1, B1], POLICIES, learned={"a1": [("203.0.113.34", 300)]}))
    rs = nft.list_ruleset()
    chains = _objects(rs, "chain")
    assert ("inet", R.TABLE, "stray") not in chains
    assert ("inet", R.TABLE, "dbx_a2") not in chains
    assert ("inet", R.TABLE, "dbx_a1") in chains
    assert ("inet", R.TABLE, "pol_pcidrs") in chains
    assert nft.list_set("inet", R.TABLE, "acct_acme") == ["10.88.0.2"]
    assert _learned(nft, "a1")["203.0.113.34"]["timeout"] == 300
    assert ("inet", "foreign") in nft.list_tables()
    # full() twice gives the same ruleset (modulo learned expiry countdown)
    nft.apply(R.full(ROUTER, [A1, B1], POLICIES))
    once = _no_handles(nft.list_ruleset())
    nft.apply(R.full(ROUTER, [A1, B1], POLICIES))
    assert _no_handles(nft.list_ruleset()) == once
    nft.apply(R.bootstrap(ROUTER))
    nft.apply(R.bootstrap(ROUTER))
    assert not any(n.startswith(("dbx_", "pol_")) for (_, _, n) in _objects(nft.list_ruleset(), "chain"))
    # delete_our_tables removes ours only
    deleted = nft.delete_our_tables()
    assert sorted(deleted) == [("bridge", R.BRIDGE_TABLE), ("inet", R.TABLE)]
    assert sorted(nft.list_tables()) == [("inet", "devbox_sim_uplink_x"), ("inet", "foreign")]
    assert nft.delete_our_tables() == []


def test_two_contexts_two_namespaces(netns):
    other = unique_name("nft")
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        with Nft(netns) as n1, Nft(other) as n2:
            n1.apply(R.bootstrap(ROUTER))
            assert n2.list_tables() == []
            n2.apply(R.full(ROUTER, [B1], POLICIES))
            assert "dbx_b1" not in _cli_ruleset(netns)
            assert "dbx_b1" in _cli_ruleset(other)
    finally:
        subprocess.run(["ip", "netns", "del", other], check=False)


def test_missing_namespace_raises():
    with pytest.raises(FileNotFoundError):
        Nft(unique_name("nope"))
    with pytest.raises(ValueError):
        Nft("../etc")


def test_closed_context_raises(nft):
    nft.close()
    with pytest.raises(NftError):
        nft.apply(R.bootstrap(ROUTER))


def test_apply_timings(nft, capsys):
    """Not a benchmark gate (loose bounds only); prints the in-process costs."""
    nft.apply(R.full(ROUTER, [A1, A2, B1], POLICIES))
    swap = [R.update_policy("pcidrs", Egress(allow_all=True)), R.update_policy("pcidrs", CIDRS)]
    learn = R.learned_add("a1", [("203.0.113.34", 300)])

    def median(docs, n=200):
        ts = []
        for i in range(n):
            t = time.perf_counter()
            nft.apply(docs[i % len(docs)])
            ts.append(time.perf_counter() - t)
        return sorted(ts)[n // 2]

    s, learned = median(swap), median([learn])
    with capsys.disabled():
        print(f"\n[nft] policy swap {s * 1e3:.3f} ms, learned_add(1) {learned * 1e3:.3f} ms (median, in-process)")
    assert s < 0.05 and learned < 0.05
