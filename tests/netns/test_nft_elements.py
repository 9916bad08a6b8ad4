"""netns/nft_elements.py: learned-set elements added by raw nf_tables netlink behave exactly
like libnftables' ``add element`` (privileged: a namespace of the test's own, no packets)."""

from __future__ import annotations

import time

import pytest

from netns import ruleset as R
from netns.nft_elements import NftElementsError, SetElements, encode_add
from tests.netns.test_nft_apply import A1, _learned, _setup, _until, netns, nft  # noqa: F401 - fixtures


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
