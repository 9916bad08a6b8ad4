"""simulator.runtime.disk_copy: what a snapshot takes from a devbox's files, and what it
refuses (never follows a symlink, never reads what the devbox user does not own)."""

from __future__ import annotations

import os
import stat

import pytest

from simulator.runtime.disk_copy import MAX_DEPTH, DiskCopyError, copy_areas, remove_unlisted, tree_size

ME = os.getuid()


def make_devbox(root):
    home, tmp = root / "home", root / "tmp"
    (home / "dir" / "sub").mkdir(parents=True)
    tmp.mkdir()
    (home / "dir" / "sub" / "f.txt").write_text("deep")
    (home / "exe").write_text("#!/bin/sh\n")
    os.chmod(home / "exe", 0o4755)  # setuid: dropped by the copy
    (home / "private").write_text("mine")
    os.chmod(home / "private", 0o600)
    os.utime(home / "private", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    (home / "escape").symlink_to("/etc/hostname")
    (home / "dir" / "rel").symlink_to("../private")
    os.mkfifo(home / "fifo")
    (tmp / "t.txt").write_text("tmp file")
    os.chmod(home / "dir", 0o1750)
    return home, tmp


def test_copies_files_modes_times_and_symlinks_as_links(tmp_path):
    home, _ = make_devbox(tmp_path / "src")
    stats = copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid())
    dst = tmp_path / "dst"
    assert (dst / "home" / "dir" / "sub" / "f.txt").read_text() == "deep"
    assert (dst / "tmp" / "t.txt").read_text() == "tmp file"
    assert stat.S_IMODE((dst / "home" / "private").stat().st_mode) == 0o600
    assert (dst / "home" / "private").stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert stat.S_IMODE((dst / "home" / "exe").stat().st_mode) == 0o755  # no setuid
    assert stat.S_IMODE((dst / "home" / "dir").lstat().st_mode) == 0o1750
    # Symlinks are copied as symlinks, never read through.
    assert os.readlink(dst / "home" / "escape") == "/etc/hostname"
    assert os.readlink(dst / "home" / "dir" / "rel") == "../private"
    assert not (dst / "home" / "fifo").exists()  # special files are skipped
    assert stat.S_IMODE((dst / "home").stat().st_mode) == stat.S_IMODE(home.stat().st_mode)
    assert stats.files == 6 and stats.skipped == 1 and stats.bytes == len("deep#!/bin/sh\nminetmp file")


def test_a_missing_area_is_fine_and_the_target_must_be_new(tmp_path):
    (tmp_path / "src" / "home").mkdir(parents=True)
    copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid())
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["home"]
    with pytest.raises(FileExistsError):
        copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid())


def test_too_deep_a_tree_fails_and_leaves_nothing(tmp_path):
    deep = tmp_path / "src" / "home"
    deep.mkdir(parents=True)
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(MAX_DEPTH + 1):  # relative to an fd: the path would exceed PATH_MAX
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    with pytest.raises(DiskCopyError, match="deeper"):
        copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid())
    assert not (tmp_path / "dst").exists()


@pytest.mark.privileged
def test_only_the_devbox_users_own_files_are_taken_and_ownership_is_remapped(tmp_path):
    devbox_uid, new_uid = 291_001, 291_002
    src = tmp_path / "src"
    home, tmp = make_devbox(src)
    for path in [home, *home.rglob("*"), *tmp.rglob("*")]:
        os.chown(path, devbox_uid, devbox_uid, follow_symlinks=False)
    # What a devbox could leave where fs.protected_hardlinks is 0: a hard link to root's file.
    secret = tmp_path / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    os.link(secret, home / "stolen")
    (tmp / "by-root").write_text("not the devbox's")
    copy_areas(src, tmp_path / "snap", only_owner=devbox_uid, uid=0, gid=0)
    assert not (tmp_path / "snap" / "home" / "stolen").exists()
    assert not (tmp_path / "snap" / "tmp" / "by-root").exists()
    assert (tmp_path / "snap" / "home" / "private").stat().st_uid == 0
    copy_areas(tmp_path / "snap", tmp_path / "restored", only_owner=0, uid=new_uid, gid=new_uid)
    restored = tmp_path / "restored"
    assert (restored / "tmp").stat().st_uid == 0  # the sandbox's /tmp: root's, 1777
    for path in [restored / "home", *(restored / "home").rglob("*"), *(restored / "tmp").rglob("*")]:
        assert path.lstat().st_uid == new_uid, path
    assert (restored / "home" / "dir" / "sub" / "f.txt").read_text() == "deep"


def test_sparse_files_stay_sparse(tmp_path):
    home = tmp_path / "src" / "home"
    home.mkdir(parents=True)
    with open(home / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(1 << 30)
        f.write(b"tail")
    (home / "dense").write_bytes(b"x" * 3_000_000)
    stats = copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid())
    copied = tmp_path / "dst" / "home" / "sparse"
    assert copied.stat().st_size == (1 << 30) + 4
    assert copied.stat().st_blocks * 512 < 1 << 20  # not a gigabyte of zeros on disk
    with open(copied, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(1 << 30)
        assert f.read() == b"tail"
        f.seek(1 << 20)
        assert f.read(16) == bytes(16)
    assert (tmp_path / "dst" / "home" / "dense").read_bytes() == b"x" * 3_000_000
    assert stats.bytes < 4_000_000 + (1 << 20)


def test_tree_size_counts_file_bytes_never_holes_nor_symlink_targets(tmp_path):
    root = tmp_path / "disk"
    (root / "home" / "sub").mkdir(parents=True)
    (root / "home" / "sub" / "data").write_bytes(os.urandom(100_000))
    with open(root / "home" / "sparse", "wb") as f:
        f.truncate(1 << 30)  # a gigabyte of hole: no bytes on disk
    (root / "home" / "big-link").symlink_to(root / "home" / "sparse")  # its target path's length, never 1 GiB
    assert 100_000 <= tree_size(root) <= 100_000 + len(str(root / "home" / "sparse"))
    assert tree_size(root / "home" / "sub") == 100_000
    assert tree_size(tmp_path / "missing") == 0


def test_remove_unlisted_keeps_the_listed_and_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    disks = tmp_path / "disks"
    for name in ("kept", "stray"):
        (disks / name / "home").mkdir(parents=True)
        (disks / name / "home" / "f").write_text(name)
    (disks / "loose-file").write_text("x")
    (disks / "link").symlink_to(outside)
    assert remove_unlisted(disks, {"kept", "not-there"}) == ["link", "loose-file", "stray"]
    assert sorted(p.name for p in disks.iterdir()) == ["kept"]
    assert (disks / "kept" / "home" / "f").read_text() == "kept"
    assert (outside / "precious").read_text() == "keep"
    assert remove_unlisted(tmp_path / "missing", set()) == []


def test_hard_links_stay_links_so_a_snapshot_is_not_the_data_times_the_links(tmp_path):
    home = tmp_path / "src" / "home"
    (home / "a" / "b").mkdir(parents=True)
    (home / "f").write_bytes(b"x" * 100_000)
    for i in range(50):
        os.link(home / "f", home / ("l%d" % i))
    os.link(home / "f", home / "a" / "b" / "deep")
    stats = copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid())
    copied = tmp_path / "dst" / "home"
    assert stats.bytes == 100_000 and stats.links == 51
    inode = (copied / "f").stat().st_ino
    assert {(copied / ("l%d" % i)).stat().st_ino for i in range(50)} == {inode}
    assert (copied / "a" / "b" / "deep").stat().st_ino == inode
    assert (copied / "l7").read_bytes() == b"x" * 100_000
    # and a restore from the copy keeps them linked again
    stats = copy_areas(tmp_path / "dst", tmp_path / "again", only_owner=ME, uid=ME, gid=os.getgid())
    assert stats.bytes == 100_000 and (tmp_path / "again" / "home" / "l3").stat().st_nlink == 52


def test_more_data_than_a_disk_may_hold_fails_and_leaves_nothing(tmp_path, monkeypatch):
    from simulator.runtime import disk_copy

    monkeypatch.setattr(disk_copy, "MAX_DISK_BYTES", 1_000_000)
    home = tmp_path / "src" / "home"
    home.mkdir(parents=True)
    for i in range(3):
        (home / f"f{i}").write_bytes(os.urandom(400_000))
    with pytest.raises(DiskCopyError, match="more than 1000000 bytes"):
        copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid())
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("checks_before_cancel", [0, 2, 5])
def test_a_cancelled_copy_stops_between_files_and_chunks_and_leaves_nothing(tmp_path, checks_before_cancel):
    """A devbox shut down while its disk is restored: the copy stops (its big file part-way)."""
    from simulator.runtime.disk_copy import DiskCopyCancelled

    home = tmp_path / "src" / "home"
    home.mkdir(parents=True)
    (home / "big").write_bytes(os.urandom(4 << 20))  # four 1 MiB chunks
    (home / "small").write_text("s")
    asked = []

    def cancelled():
        asked.append(1)
        return len(asked) > checks_before_cancel

    with pytest.raises(DiskCopyCancelled):
        copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid(), cancelled=cancelled)
    assert not (tmp_path / "dst").exists()
    # Not cancelled: the whole copy.
    copy_areas(tmp_path / "src", tmp_path / "dst", only_owner=ME, uid=ME, gid=os.getgid(), cancelled=lambda: False)
    assert (tmp_path / "dst" / "home" / "big").read_bytes() == (home / "big").read_bytes()
