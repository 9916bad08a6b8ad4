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

__all__ = ["DataDirInUse", "LOCK_NAME", "lock_data_dir"]

LOCK_NAME = "lock"


class DataDirInUse(RuntimeError):
    """Another process holds the data dir."""


def lock_data_dir(data_dir: Path) -> int:
    """Create ``data_dir`` (mode 0700) if needed and lock it; the lock's descriptor (keep it
    open for as long as the data dir is used; closing it releases the lock). Raises
    DataDirInUse, naming the holder's pid, when another process has it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # devboxes run untrusted code: the store is root's alone
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"data dir {data_dir} is in use by another devbox-sim (pid {holder}); "
            "stop it first, or give this one another --data-dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
