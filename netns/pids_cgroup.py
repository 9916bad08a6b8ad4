"""A cap on the number of processes (and threads) of one sandbox: the cgroup ``pids`` controller.

Untrusted code in a devbox can fork without end; without a cap a fork bomb takes every pid of
the host, and with them the simulator. Docker devboxes get ``--pids-limit``; netns sandboxes
get this: a cgroup ``dbxsim/<sandbox name>`` with ``pids.max`` set, which every execution
joins before it execs (``Sandbox.exec``), so all it forks is counted and a fork past the cap
fails with EAGAIN inside the devbox only.

Where the controller lives:
  cgroup v2   the unified hierarchy, when its root lists ``pids`` in cgroup.controllers. The
              controller is switched on for ``dbxsim``'s children (``+pids`` in the root's and
              in ``dbxsim``'s cgroup.subtree_control; ``dbxsim`` itself never holds a
              process, as v2 requires). The directory is the same one the sandbox's v2
              freezer uses.
  cgroup v1   a hierarchy mounted with the ``pids`` option (hybrid hosts; e.g. this CI VM,
              whose v2 mount has no controllers at all).
No writable controller: ``create`` returns None and the caller decides (the sandbox logs it).
"""

from __future__ import annotations

import errno
import os
import time

__all__ = ["PidsCgroup", "PARENT", "remove_cgroup"]

PARENT = "dbxsim"


def _mounts() -> list[tuple[str, str, str]]:
    """(fstype, mount point, super options) of every cgroup mount."""
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fields, pfields = pre.split(), post.split()
                if pfields and pfields[0] in ("cgroup", "cgroup2"):
                    found.append((pfields[0], fields[4].replace("\\040", " "), pfields[2]))
    except OSError:
        pass
    return found


_found: list[tuple[str, str] | None] = []  # _hierarchy's answer, once looked up


def _hierarchy() -> tuple[str, str] | None:
    """('cgroup2' | 'cgroup1', mount point) of the pids controller, v2 preferred.

    Looked up once: /proc/self/mountinfo grows with every devbox (its netns bind mount), and
    cgroup mounts do not change under a running simulator."""
    if not _found:
        _found.append(_lookup_hierarchy())
    return _found[0]


def _lookup_hierarchy() -> tuple[str, str] | None:
    mounts = _mounts()
    for fstype, mnt, _opts in mounts:
        if fstype == "cgroup2":
            try:
                with open(os.path.join(mnt, "cgroup.controllers")) as f:
                    if "pids" in f.read().split():
                        return "cgroup2", mnt
            except OSError:
                pass
    for fstype, mnt, opts in mounts:
        if fstype == "cgroup" and "pids" in opts.split(","):
            return "cgroup1", mnt
    return None


def _enable_v2(mnt: str) -> None:
    """``+pids`` for the children of the root and of ``dbxsim`` (no-op when already on)."""
    for directory in (mnt, os.path.join(mnt, PARENT)):
        control = os.path.join(directory, "cgroup.subtree_control")
        with open(control) as f:
            if "pids" in f.read().split():
                continue
        with open(control, "w") as f:
            f.write("+pids")


class PidsCgroup:
    """One sandbox's pids cgroup: ``procs_file`` to join it, ``remove`` when it is empty."""

    def __init__(self, kind: str, path: str):
        self.kind = kind
        self.path = path

    @property
    def procs_file(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    @property
    def limit(self) -> int | None:
        with open(os.path.join(self.path, "pids.max")) as f:
            value = f.read().strip()
        return None if value == "max" else int(value)

    @classmethod
    def create(cls, name: str, limit: int) -> PidsCgroup | None:
        """The cgroup for sandbox ``name`` with ``pids.max = limit``; None without a usable
        pids controller. A leftover cgroup of the same name is reused (its limit reset)."""
        if limit < 1:
            raise ValueError("the pids limit must be >= 1")
        found = _hierarchy()
        if found is None:
            return None
        kind, mnt = found
        path = os.path.join(mnt, PARENT, name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if kind == "cgroup2":
                _enable_v2(mnt)
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
        except OSError:
            return None
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(limit))
        except OSError:
            remove_cgroup(path, time.monotonic())  # unusable: do not leave it behind
            return None
        return cls(kind, path)

    @classmethod
    def find(cls, name: str) -> PidsCgroup | None:
        """The existing cgroup of sandbox ``name`` (after a restart), if any."""
        found = _hierarchy()
        if found is None:
            return None
        path = os.path.join(found[1], PARENT, name)
        return cls(found[0], path) if os.path.isdir(path) else None

    @staticmethod
    def names() -> list[str]:
        """Names of the sandboxes that have a pids cgroup (live or left by a crash)."""
        found = _hierarchy()
        if found is None:
            return []
        try:
            return sorted(e.name for e in os.scandir(os.path.join(found[1], PARENT)) if e.is_dir())
        except OSError:
            return []

    def remove(self, deadline: float) -> bool:
        return remove_cgroup(self.path, deadline)


def remove_cgroup(path: str, deadline: float) -> bool:
    """rmdir ``path``, retried while the kernel still counts exiting tasks (EBUSY) until
    ``deadline``. True when it is gone."""
    delay = 0.0005
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
