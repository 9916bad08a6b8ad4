"""netns/nft_elements.py: learned-set elements added by raw nf_tables netlink behave exactly
like libnftables' ``add element`` (privileged: a namespace of the test's own, no packets)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time

import pytest

from netns import ruleset as R
from netns.nft_element_json import set_ops
from netns.nft_elements import NftElementsError, SetElements, encode_add
from netns.ruleset import CidrRule, Egress, PortRange
from tests.netns.test_nft_apply import (  # noqa: F401 - fixtures
    A1,
    CIDRS,
    D2D,
    _learned,
    _setup,
    _until,
    netns,
    nft,
)


def test_encode_is_deterministic_and_dedupes():
    a = encode_add("inet", "devbox_sim", "learned_a1", [("203.0.113.34", 30), ("198.51.100.7", 5), ("203.0.113.34", 60)], seq=7)
    b = encode_add("inet", "devbox_sim", "learned_a1", [("203.0.113.34", 60), ("198.51.100.7", 5)], seq=7)
    assert a == b
    # BEGIN, NEWSETELEM, END; the element message asks for an ACK
    assert a.count(bytes([203, 0, 113, 34])) == 1
    with pytest.raises(ValueError):
        encode_add("inet", "t", "s", [("2001:db8::1", 30)], seq=1)
    with pytest.raises(ValueError):
        encode_add("inet", "t", "s", [("203.0.113.34", 0)], seq=1)


@pytest.mark.privileged
def test_raw_add_matches_libnftables_semantics(netns, nft):  # noqa: F811
    _setup(nft)
    elements = SetElements(netns)
    try:
        name = R.learned_set(A1.key)
        elements.add("inet", R.TABLE, name, [("203.0.113.34", 30), ("198.51.100.111", 600)])
        el = _learned(nft, "a1")
        assert el["203.0.113.34"]["timeout"] == 30 and 28 <= el["203.0.113.34"]["expires"] <= 30
        assert el["198.51.100.111"]["timeout"] == 600
        assert _until(lambda: _learned(nft, "a1")["203.0.113.34"]["expires"] <= 28, seconds=5)
        # the same timeout again re-arms the expiry (explicit expiration), new ones are added
        elements.add("inet", R.TABLE, name, [("203.0.113.34", 30), ("198.51.100.88", 45)])
        el = _learned(nft, "a1")
        assert el["203.0.113.34"]["expires"] >= 29 and el["198.51.100.88"]["timeout"] == 45
        # libnftables removal still works on elements added this way
        nft.apply(R.learned_remove("a1", ["203.0.113.34"]))
        assert set(_learned(nft, "a1")) == {"198.51.100.111", "198.51.100.88"}
        # a set that does not exist: a clear error, nothing added anywhere
        with pytest.raises(NftElementsError) as err:
            elements.add("inet", R.TABLE, "learned_nosuch", [("203.0.113.9", 30)])
        assert "No such file" in str(err.value)
        # the socket stays usable after an error
        elements.add("inet", R.TABLE, name, [("203.0.113.9", 30)])
        assert "203.0.113.9" in _learned(nft, "a1")
    finally:
        elements.close()


@pytest.mark.privileged
def test_raw_add_is_much_cheaper_than_libnftables(netns, nft, capsys):  # noqa: F811
    """Not a timed assertion: prints both medians (the benchmark is bench/resolver.py)."""
    _setup(nft)
    elements = SetElements(netns)
    try:
        def median(fn, n=200):
            times = []
            for i in range(n):
                t = time.perf_counter()
                fn(i)
                times.append(time.perf_counter() - t)
            return sorted(times)[n // 2] * 1000

        raw = median(lambda i: elements.add("inet", R.TABLE, "learned_a1", [(f"198.51.100.{i % 250 + 1}", 60)]))
        lib = median(lambda i: nft.apply(R.learned_add("a1", [(f"203.0.113.{i % 250 + 1}", 60)])))
        with capsys.disabled():
            print(f"\nadd one learned element: raw netlink {raw:.3f} ms, libnftables {lib:.3f} ms")
        assert len(_learned(nft, "a1")) == 400  # 200 distinct addresses each way
    finally:
        elements.close()


OVERLAPPING = Egress(cidrs=(
    CidrRule("10.0.0.0/8", (PortRange(80, 90, "tcp"),)),
    CidrRule("10.1.0.0/16", (PortRange(85, 100, "tcp"), PortRange(53, None, "udp"))),
    CidrRule("192.0.2.7/32"),
    CidrRule("198.51.100.0/25"),
))
# 3,000 separate addresses: more elements than one netlink message holds
MANY = Egress(allow_devbox_to_devbox=True, cidrs=tuple(CidrRule(f"10.{i // 250}.{i % 250}.{2 * (i % 100)}/32")
                                                     for i in range(3000)))


def _policy_sets(nft, pkey):  # noqa: F811 - the fixture, passed on
    names = (R.cidr_set(pkey), R.cidrport_set(pkey), R.peer_flag_set(pkey), R.all_flag_set(pkey))
    return {n: sorted(json.dumps(e, sort_keys=True) for e in nft.list_set("inet", R.TABLE, n)) for n in names}


@pytest.mark.privileged
def test_policy_updates_by_netlink_list_as_by_libnftables(netns, nft):  # noqa: F811
    """The data plane sends policy updates by raw netlink: each, applied that way, leaves
    the same elements as libnftables applying the same document."""
    _setup(nft)
    egresses = [CIDRS, D2D, Egress(allow_all=True), Egress(), OVERLAPPING, MANY,
                Egress(allow_all=True, cidrs=(CidrRule("10.0.0.0/8"),)), CIDRS]
    elements = SetElements(netns)
    try:
        for before, after in itertools.pairwise(egresses):
            doc = R.update_policy("pcidrs", after)
            nft.apply(R.update_policy("pcidrs", before))
            nft.apply(doc)
            expected = _policy_sets(nft, "pcidrs")
            nft.apply(R.update_policy("pcidrs", before))
            elements.apply(set_ops(doc["nftables"], R.element_key))
            assert _policy_sets(nft, "pcidrs") == expected, after
        assert len(_policy_sets(nft, "pcidrs")["pcidr_pcidrs"]) == 1  # the last one, CIDRS
    finally:
        elements.close()


@pytest.mark.privileged
def test_learned_and_peer_changes_by_netlink_list_as_by_libnftables(netns, nft):  # noqa: F811
    _setup(nft)
    learned = [("203.0.113.34", 300), ("198.51.100.7", 60), ("192.0.2.1", 90)]
    docs = [R.learned_add("a1", learned), R.learned_remove("a1", ["198.51.100.7", "192.0.2.200"]),
            R.set_peer(A1, False)]

    def state():
        timeouts = {ip: e["timeout"] for ip, e in _learned(nft, "a1").items()}
        return timeouts, sorted(nft.list_set("inet", R.TABLE, R.account_set("acme")))

    for doc in docs:
        nft.apply(doc)
    expected = state()
    assert expected == ({"203.0.113.34": 300, "192.0.2.1": 90}, ["10.88.0.3"])
    nft.apply(R.learned_remove("a1", [ip for ip, _ in learned]))
    nft.apply(R.set_peer(dataclasses.replace(A1, peer=False), True))
    elements = SetElements(netns)
    try:
        elements.apply([op for doc in docs for op in set_ops(doc["nftables"], R.element_key)])
        assert state() == expected
    finally:
        elements.close()


@pytest.mark.privileged
def test_a_refused_batch_changes_nothing(netns, nft):  # noqa: F811
    _setup(nft)
    before = _policy_sets(nft, "pcidrs")
    ops = set_ops(R.update_policy("pcidrs", Egress(allow_all=True))["nftables"], R.element_key)
    # a delete of an absent element fails the kernel's transaction after the flushes
    ops += set_ops([{"delete": {"element": {"family": "inet", "table": R.TABLE, "name": R.account_set("acme"),
                                            "elem": ["10.88.9.9"]}}}], R.element_key)
    elements = SetElements(netns)
    try:
        with pytest.raises(NftElementsError) as err:
            elements.apply(ops)
        assert err.value.errno == 2 and "acct_acme" in str(err.value)
        assert _policy_sets(nft, "pcidrs") == before
        elements.apply(ops[:-1])  # the socket is still usable
        assert _policy_sets(nft, "pcidrs")[R.all_flag_set("pcidrs")] == ['"ipv4"']
    finally:
        elements.close()


@pytest.mark.privileged
def test_a_batch_of_a_thousand_messages_and_one_larger_than_the_send_buffer(netns, nft):  # noqa: F811
    """A policy update among many devboxes is a message or more per devbox: every one of them
    is applied and acknowledged (an ACK per message overflowed the receive buffer past ~255:
    committed, yet reported as failed). A maximal policy is a batch of several hundred KB."""
    _setup(nft)
    elements = SetElements(netns)
    try:
        ops = [op for i in range(1000) for op in set_ops(
            R.learned_add("a1", [(f"198.51.{100 + i // 250}.{i % 250 + 1}", 60)])["nftables"], R.element_key)]
        elements.apply(ops)
        assert len(_learned(nft, "a1")) == 1000
        # 6,000 CIDR-and-port elements (~330 KB, over the socket's default send buffer)
        big = {"nftables": [{"flush": {"set": {"family": "inet", "table": R.TABLE, "name": "pcidrport_pcidrs"}}},
                            {"add": {"element": {"family": "inet", "table": R.TABLE, "name": "pcidrport_pcidrs", "elem": [
                                {"concat": [f"10.{i // 200}.{i % 200}.1", "tcp", {"range": [1000 + i, 2000 + i]}]}
                                for i in range(6000)]}}}]}
        elements.apply(set_ops(big["nftables"], R.element_key))
        by_netlink = _policy_sets(nft, "pcidrs")
        nft.apply(R.update_policy("pcidrs", CIDRS))
        nft.apply(big)
        assert _policy_sets(nft, "pcidrs") == by_netlink
        assert len(by_netlink["pcidrport_pcidrs"]) == 6000
    finally:
        elements.close()


@pytest.mark.privileged
def test_a_batch_refused_many_times_over_is_refused_and_the_socket_recovers(netns, nft):  # noqa: F811
    """500 deletes of absent elements: 500 error replies, more than the receive buffer holds.
    The batch is refused as a whole, and the next one is applied and acknowledged."""
    _setup(nft)
    elements = SetElements(netns)
    try:
        ops = set_ops(R.learned_add("a1", [("203.0.113.34", 60)])["nftables"], R.element_key)
        ops += [op for i in range(500) for op in set_ops([{"delete": {"element": {
            "family": "inet", "table": R.TABLE, "name": R.learned_set("a1"), "elem": [f"198.51.100.{i % 250 + 1}"]}}}],
            R.element_key)]
        with pytest.raises(NftElementsError):
            elements.apply(ops)
        assert _learned(nft, "a1") == {}
        for attempt in range(3):
            elements.apply(set_ops(R.learned_add("a1", [(f"192.0.2.{attempt + 1}", 60)])["nftables"], R.element_key))
        assert set(_learned(nft, "a1")) == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}
    finally:
        elements.close()
