"""Netns devbox uids are never handed out twice for a data dir, across restarts too."""

from __future__ import annotations

from simulator.runtime.devbox_uids import BLOCK_SIZE, UID_BASE, DevboxUids


def test_uids_are_unique_and_survive_a_restart(tmp_path):
    counter = tmp_path / "devbox-uids"
    uids = DevboxUids(counter, "abc123")
    first = [uids.allocate() for _ in range(5)]
    assert len(set(first)) == 5 and all(uids.first <= u < uids.first + BLOCK_SIZE for u in first)
    restarted = DevboxUids(counter, "abc123")  # the same data dir after a restart or crash
    later = [restarted.allocate() for _ in range(5)]
    assert not set(first) & set(later)
    assert min(later) > max(first)


def test_instances_get_their_own_blocks_below_2_31(tmp_path):
    a = DevboxUids(tmp_path / "a", "instance-a")
    b = DevboxUids(tmp_path / "b", "instance-b")
    assert a.first != b.first and a.first >= UID_BASE
    assert a.first + BLOCK_SIZE <= 2**31 - 1 and b.first + BLOCK_SIZE <= 2**31 - 1


def test_a_damaged_counter_starts_over_rather_than_failing(tmp_path):
    counter = tmp_path / "devbox-uids"
    counter.write_text("garbage")
    assert DevboxUids(counter, "x").allocate() == DevboxUids(tmp_path / "fresh", "x").first
