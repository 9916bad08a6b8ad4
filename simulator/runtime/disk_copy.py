"""Copy a devbox's files (its home and /tmp) into a disk snapshot, and a snapshot into a new
devbox, as root, safely against what untrusted code left in them.

The walk goes from directory file descriptors with ``O_NOFOLLOW`` on every component, so no
symlink (and no directory swapped for a symlink while we copy) is ever followed: symlinks are
recreated as symlinks, never read through. Only entries owned by ``only_owner`` (the devbox's
uid) are copied: a hard link the devbox made to a file it does not own (say ``/etc/shadow``,
where ``fs.protected_hardlinks`` is 0) is skipped, never read. Everything copied is owned by
``uid``/``gid`` (root in the snapshot store, the new devbox's user on restore); setuid and
setgid bits are dropped. FIFOs, sockets and device nodes are skipped. Hard links within the
tree stay hard links (else ``ln f l1 ... l100`` made a snapshot 100 times the data, and one
ext4 file takes 65,000 links), and a disk holds at most ``MAX_DISK_BYTES`` of file data.
Modes and modification times are kept.

Entries that vanish or change type while the devbox keeps running are skipped: a snapshot of a
running devbox holds each file as it was when it was copied.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

AREAS = ("home", "tmp")  # under a devbox's root: /home/user and /tmp
MAX_DEPTH = 256  # directories deeper than this fail the copy (one fd per level)
MAX_DISK_BYTES = 10 * 1024**3  # file data (holes excluded) a disk may hold; more fails the copy
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# An entry that is gone, or is not what lstat said any more (the devbox is still running).
_VANISHED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO, errno.EISDIR}


class DiskCopyError(Exception):
    pass


class DiskCopyCancelled(DiskCopyError):
    """The copy was stopped by its caller (``cancelled``)."""


@dataclass
class CopyStats:
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    links: int = 0
    # (st_dev, st_ino) of a source file with several links -> its first copy, relative to
    # dst_fd (only directories this copy made lie on that path: it is safe to resolve)
    first_copies: dict = field(default_factory=dict)
    dst_fd: int = -1
    # Asked between files and chunks: True stops the copy (DiskCopyCancelled)
    cancelled: Callable[[], bool] | None = None

    def check(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise DiskCopyCancelled("the copy was cancelled")


def copy_areas(src_root: Path, dst_root: Path, *, only_owner: int | None, uid: int, gid: int,
               cancelled: Callable[[], bool] | None = None) -> CopyStats:
    """Copy ``src_root/{home,tmp}`` to ``dst_root/{home,tmp}`` (``dst_root`` must not exist).

    ``home`` keeps its own mode and is owned by ``uid``; ``tmp`` is created 0700 by the caller's
    user and left for the sandbox to set up (it makes /tmp 1777). On error nothing is left at ``dst_root``.
    """
    dst_root = Path(dst_root)
    dst_root.mkdir(mode=0o700)
    stats = CopyStats(cancelled=cancelled)
    try:
        for area in AREAS:
            src = Path(src_root) / area
            try:
                src_fd = os.open(src, _DIR_FLAGS)
            except FileNotFoundError:
                continue
            try:
                area_mode = stat.S_IMODE(os.fstat(src_fd).st_mode) & 0o1777 if area == "home" else 0o700
                (dst_root / area).mkdir(mode=0o700)
                dst_fd = os.open(dst_root / area, _DIR_FLAGS)
                try:
                    stats.dst_fd, stats.first_copies = dst_fd, {}
                    _copy_dir(src_fd, dst_fd, 0, only_owner, uid, gid, stats, "")
                    if area == "home":  # /tmp stays the creator's (root's): the sandbox makes it 1777
                        os.fchown(dst_fd, uid, gid)
                    os.fchmod(dst_fd, area_mode)
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
    except BaseException:
        remove_tree(dst_root)
        raise
    return stats


def tree_size(root: Path) -> int:
    """The bytes a copied tree's files take: each regular file counts its allocated bytes
    (``st_blocks`` x 512) but never more than its length, so holes in a sparse file count
    nothing and block rounding does not inflate small files (a 3-byte file is 3 bytes); a
    symlink counts its target's length; directories count nothing. Symlinks are never followed.
    A root that does not exist is 0."""
    total = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            total += tree_size(Path(entry.path))
        elif stat.S_ISREG(st.st_mode):
            total += min(st.st_size, st.st_blocks * 512)
        elif stat.S_ISLNK(st.st_mode):
            total += st.st_size
    return total


def remove_unlisted(directory: Path, keep: set[str]) -> list[str]:
    """Remove every entry of ``directory`` whose name is not in ``keep`` (trees without
    following symlinks); the names removed, sorted."""
    removed = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            remove_tree(Path(entry.path))
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def remove_tree(path: Path) -> None:
    """Remove a tree without following symlinks (``shutil.rmtree`` is fd-based on Linux)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _copy_dir(sfd: int, dfd: int, depth: int, only_owner: int | None, uid: int, gid: int, stats: CopyStats, rel: str) -> None:
    if depth >= MAX_DEPTH:
        raise DiskCopyError(f"directories nested deeper than {MAX_DEPTH} levels cannot be snapshotted")
    for name in os.listdir(sfd):
        stats.check()
        try:
            st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            if only_owner is not None and st.st_uid != only_owner:
                stats.skipped += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                _copy_subdir(sfd, dfd, name, st, depth, only_owner, uid, gid, stats, rel)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                stats.files += 1
            elif stat.S_ISREG(st.st_mode):
                _copy_file(sfd, dfd, name, st, only_owner, uid, gid, stats, rel)
            else:
                stats.skipped += 1  # FIFO, socket, device: not part of a disk image here
        except OSError as exc:
            if exc.errno not in _VANISHED:
                raise
            stats.skipped += 1


def _same(st: os.stat_result, fst: os.stat_result, only_owner: int | None) -> bool:
    """The opened object is the one lstat saw, and still owned as required."""
    return (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino) and (only_owner is None or fst.st_uid == only_owner)


def _copy_subdir(sfd, dfd, name, st, depth, only_owner, uid, gid, stats, rel) -> None:
    child = os.open(name, _DIR_FLAGS, dir_fd=sfd)
    try:
        fst = os.fstat(child)
        if not _same(st, fst, only_owner):
            stats.skipped += 1
            return
        os.mkdir(name, 0o700, dir_fd=dfd)
        out = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            _copy_dir(child, out, depth + 1, only_owner, uid, gid, stats, rel + name + "/")
            os.fchown(out, uid, gid)
            os.fchmod(out, stat.S_IMODE(fst.st_mode) & 0o1777)
            os.utime(out, ns=(fst.st_atime_ns, fst.st_mtime_ns))
        finally:
            os.close(out)
    finally:
        os.close(child)


def _copy_file(sfd, dfd, name, st, only_owner, uid, gid, stats, rel) -> None:
    src = os.open(name, _FILE_FLAGS, dir_fd=sfd)
    try:
        fst = os.fstat(src)
        if not stat.S_ISREG(fst.st_mode) or not _same(st, fst, only_owner):
            stats.skipped += 1
            return
        inode = (fst.st_dev, fst.st_ino)
        first = stats.first_copies.get(inode) if fst.st_nlink > 1 else None
        if first is not None:  # another name of a file already copied: link to that copy
            os.link(first, name, src_dir_fd=stats.dst_fd, dst_dir_fd=dfd, follow_symlinks=False)
            stats.links += 1
            return
        os.set_blocking(src, True)
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            stats.bytes += _copy_data(src, out, fst.st_size, MAX_DISK_BYTES - stats.bytes, stats.check)
            if fst.st_nlink > 1:
                stats.first_copies[inode] = rel + name
            os.fchown(out, uid, gid)
            os.fchmod(out, stat.S_IMODE(fst.st_mode) & 0o1777 & ~stat.S_ISVTX)
            os.utime(out, ns=(fst.st_atime_ns, fst.st_mtime_ns))
        finally:
            os.close(out)
        stats.files += 1
    finally:
        os.close(src)


def _copy_data(src: int, out: int, size: int, budget: int, check: Callable[[], None] = lambda: None) -> int:
    """Copy the first ``size`` bytes (the size when opened: a file that keeps growing does not
    keep the copy going), data segments only: holes stay holes, so a sparse terabyte made
    with ``truncate`` costs no disk. Returns the bytes copied; more than ``budget`` fails."""
    copied, pos = 0, 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        offset = start
        while offset < end:
            check()
            chunk = os.pread(src, min(_CHUNK, end - offset), offset)
            if not chunk:  # truncated meanwhile
                end = offset
                break
            if copied + offset - start + len(chunk) > budget:
                raise DiskCopyError(f"the disk holds more than {MAX_DISK_BYTES} bytes of file data")
            view = memoryview(chunk)
            while view:
                written = os.pwrite(out, view, offset)
                view, offset = view[written:], offset + written
        copied += end - start
        pos = end if end > start else start + 1
    os.ftruncate(out, size)
    return copied
