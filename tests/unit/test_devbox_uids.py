"""Netns devbox uids are never handed out twice on a machine: across restarts, data dirs
(removed ones too) and simulators running side by side."""

from __future__ import annotations

import threading

from simulator.runtime.devbox_uids import SPAN, UID_BASE, DevboxUids


def test_uids_are_unique_across_restarts_and_data_dirs(tmp_path):
    counter = tmp_path / "devbox-uids"
    first = [DevboxUids(counter).allocate() for _ in range(3)]  # a fresh simulator each time
    other = DevboxUids(counter)  # another data dir, or the same one wiped: one machine counter
    later = [other.allocate() for _ in range(3)]
    assert len(set(first + later)) == 6
    assert all(UID_BASE <= uid < UID_BASE + SPAN < 2**31 for uid in first + later)


def test_simulators_side_by_side_never_get_the_same_uid(tmp_path):
    counter = tmp_path / "devbox-uids"
    got: list[int] = []

    def take():
        allocator = DevboxUids(counter)
        got.extend(allocator.allocate() for _ in range(50))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 200 and len(set(got)) == 200


def test_a_damaged_counter_continues_from_a_random_point_not_from_zero(tmp_path):
    counter = tmp_path / "devbox-uids"
    counter.write_text("garbage")
    uids = {DevboxUids(counter).allocate() for _ in range(2)}
    assert UID_BASE not in uids and len(uids) == 2


def test_a_failed_write_keeps_the_count(tmp_path, monkeypatch):
    """The count was truncated before the new one was written: a write failing (a full disk),
    or a kill between the two, left an empty file, read as 0, and uids came round again."""
    import errno
    import os

    import pytest

    counter = tmp_path / "devbox-uids"
    counter.write_text("7439\n")

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError):
        DevboxUids(counter).allocate()
    monkeypatch.undo()
    assert DevboxUids(counter).allocate() == UID_BASE + 7439


def test_an_emptied_counter_is_damaged_not_zero_and_a_shorter_count_is_written_whole(tmp_path):
    counter = tmp_path / "devbox-uids"
    counter.write_text("")
    first = DevboxUids(counter).allocate()
    assert first != UID_BASE
    counter.write_text("x" * 40)  # damaged, longer than any count
    restarted = DevboxUids(counter).allocate()
    assert counter.read_text() == f"{restarted - UID_BASE + 1}\n"  # nothing of the old text left
    assert DevboxUids(counter).allocate() == restarted + 1


def test_the_counter_appears_whole_so_a_second_first_user_never_reads_it_empty(tmp_path):
    """Made empty then written, the file could be read empty in between by another simulator
    (damaged: a needless random restart); it now appears with its first count in it."""
    counter = tmp_path / "devbox-uids"
    first = DevboxUids(counter)
    assert first.allocate() == UID_BASE and counter.read_text() == "1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["devbox-uids"]  # nothing staged is left
    counter.unlink()
    first._create_once()
    assert counter.read_text() == "0\n"
