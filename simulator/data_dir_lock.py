"""One simulator per data directory.

A data dir is more than a SQLite file: its path names the instance's kernel objects
(``dataplane.instance_id``), and a starting simulator removes whatever namespaces, links, nft
tables, sandboxes and containers of that instance it finds, as leftovers of a crash. A second
``serve`` on a data dir in use would therefore tear down the running simulator's devboxes and
network while the first one kept answering. So ``serve`` first takes an exclusive ``flock``
on ``<data dir>/lock`` and holds it for the life of the process: the kernel drops it when the
process ends however it ends (kill -9 included), so a crash never leaves a stale lock. The
descriptor is close-on-exec: the processes the simulator starts do not inherit the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["DataDirInUse", "INSTANCE_LOCK_DIR", "InstanceInUse", "LOCK_NAME", "lock_data_dir", "lock_instance",
           "release_instance"]

LOCK_NAME = "lock"
# Instance ids are 24 bits of a hash of the data dir's path (they must fit interface names), so
# two data dirs can share one: a lock per instance id, machine-wide, keeps such a pair apart.
INSTANCE_LOCK_DIR = Path("/run/devbox-sim")


class DataDirInUse(RuntimeError):
    """Another process holds the data dir."""


class DataDirUnusable(RuntimeError):
    """The data dir cannot be created or written."""


class InstanceInUse(DataDirInUse):
    """Another live data plane has the same instance id (its kernel objects' names)."""


def lock_data_dir(data_dir: Path) -> int:
    """Create ``data_dir`` (mode 0700) if needed and lock it; the lock's descriptor (keep it
    open for as long as the data dir is used; closing it releases the lock). Raises
    DataDirInUse, naming the holder's pid, when another process has it, and DataDirUnusable
    when it cannot be made or written (a read-only file system, say)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)  # devboxes run untrusted code: the store is root's alone
        (data_dir / LOCK_NAME).touch()
    except OSError as exc:
        raise DataDirUnusable(f"data dir {data_dir}: {exc.strerror or exc}") from exc
    return _lock(data_dir / LOCK_NAME, lambda holder: DataDirInUse(
        f"data dir {data_dir} is in use by another devbox-sim (pid {holder}); "
        "stop it first, or give this one another --data-dir"
    ))


def lock_instance(instance: str, lock_dir: Path = INSTANCE_LOCK_DIR) -> int:
    """Lock instance id ``instance`` on this machine for as long as the returned descriptor is
    open, before its kernel objects are touched: a starting data plane removes every
    namespace, link and container named by its id as a crash's leftovers, so a second one
    with the same id (another data dir whose hash collides) would tear down the first.
    Raises InstanceInUse, naming the holder's pid, when a live process has it."""
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _lock(lock_dir / f"{instance}.lock", lambda holder: InstanceInUse(
        f"instance id {instance} (named after the data dir's path) is in use by another devbox-sim"
        f" (pid {holder}): two data dirs whose names hash alike; give this one another --data-dir"
    ))


def release_instance(fd: int, instance: str, lock_dir: Path = INSTANCE_LOCK_DIR) -> None:
    """Give up ``lock_instance``'s lock, and its file: one was left per data dir ever used
    (tests make thousands). Unlinked while still locked; a process that opened the file just
    before finds it gone once it has the lock, and makes a new one (``_lock``)."""
    try:
        os.unlink(lock_dir / f"{instance}.lock")
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _lock(path: Path, in_use) -> int:
    """An exclusive flock on ``path`` (created 0600), which then holds this process's pid; the
    descriptor (close-on-exec). ``in_use(holder pid)`` is raised when another process has it."""
    for _attempt in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise in_use(holder) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # released (and unlinked) by its holder meanwhile: lock the path's new file
    raise in_use("unknown")


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
