"""Caps on one sandbox's processes, memory and CPU: the cgroup ``pids``, ``memory`` and ``cpu``
controllers.

Untrusted code in a devbox can fork, allocate or spin without end. Without caps a fork bomb
takes every pid of the host and a memory hog wakes the host's OOM killer, and with either the
simulator may go; busy loops take every CPU from the simulator, its resolver and the other
devboxes. Docker devboxes get ``--pids-limit``, ``--memory`` and ``--cpus``; netns sandboxes
get this: a cgroup ``dbxsim/<sandbox name>`` in each hierarchy that holds a capped controller,
with ``pids.max`` / the memory limit / the CPU quota set. Every execution joins them before it
execs (``Sandbox.exec``), so all it forks is counted: a fork past the cap fails with EAGAIN, an
allocation past it gets a process of the devbox OOM-killed - inside the devbox only - and
together its processes get at most their quota of CPU time in each 100 ms period.

Where a controller lives:
  cgroup v2   the unified hierarchy, when its root lists the controller in cgroup.controllers.
              It is switched on for ``dbxsim``'s children (``+pids``/``+memory``/``+cpu`` in the root's
              and in ``dbxsim``'s cgroup.subtree_control; ``dbxsim`` itself never holds a
              process, as v2 requires). The directory is the one the sandbox's v2 freezer
              uses. Limit files ``pids.max``, ``memory.max``, ``cpu.max`` ("QUOTA PERIOD").
  cgroup v1   a hierarchy mounted with the controller's option (hybrid hosts, e.g. this CI VM,
              whose v2 mount has no controllers at all): one directory per hierarchy. Limit
              files ``pids.max``, ``memory.limit_in_bytes``, ``cpu.cfs_quota_us`` (with
              ``cpu.cfs_period_us``).
The ``cpu`` limit is a quota in microseconds per ``CPU_PERIOD_US`` (0.5 CPU: 50,000).
Swap gets as much again as memory (Docker's default): ``memory.swap.max`` on v2,
``memory.memsw.limit_in_bytes`` (memory plus swap) on v1 where the kernel accounts swap.
A controller without a writable hierarchy is reported by ``create`` as missing; the caller
decides (the sandbox logs it and runs without that cap).
"""

from __future__ import annotations

import errno
import os
import time

__all__ = ["CONTROLLERS", "CPU_PERIOD_US", "PARENT", "SandboxLimits", "cpu_quota", "remove_cgroup"]

PARENT = "dbxsim"
# controller -> (its v2 limit file, its v1 limit file)
CONTROLLERS = {
    "pids": ("pids.max", "pids.max"),
    "memory": ("memory.max", "memory.limit_in_bytes"),
    "cpu": ("cpu.max", "cpu.cfs_quota_us"),
}
CPU_PERIOD_US = 100_000
# The kernel refuses a CFS quota under 1 ms.
_MIN_CPU_QUOTA_US = 1000


def cpu_quota(cpus: float) -> int:
    """The ``cpu`` limit for ``cpus`` CPUs (0.5: half of one)."""
    if not cpus > 0:
        raise ValueError(f"bad CPU count {cpus!r}")
    return max(_MIN_CPU_QUOTA_US, round(cpus * CPU_PERIOD_US))


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


# controller -> ('cgroup2' | 'cgroup1', mount point) or None, looked up once:
# /proc/self/mountinfo grows with every devbox (its netns bind mount), and cgroup mounts do
# not change under a running simulator.
_found: dict[str, tuple[str, str] | None] = {}


def _hierarchy(controller: str) -> tuple[str, str] | None:
    if controller not in _found:
        _found[controller] = _lookup_hierarchy(controller)
    return _found[controller]


def _lookup_hierarchy(controller: str) -> tuple[str, str] | None:
    mounts = _mounts()
    for fstype, mnt, _opts in mounts:
        if fstype == "cgroup2":
            try:
                with open(os.path.join(mnt, "cgroup.controllers")) as f:
                    if controller in f.read().split():
                        return "cgroup2", mnt
            except OSError:
                pass
    for fstype, mnt, opts in mounts:
        if fstype == "cgroup" and controller in opts.split(","):
            return "cgroup1", mnt
    return None


def _enable_v2(mnt: str, controller: str) -> None:
    """``+controller`` for the children of the root and of ``dbxsim`` (no-op when on)."""
    for directory in (mnt, os.path.join(mnt, PARENT)):
        control = os.path.join(directory, "cgroup.subtree_control")
        with open(control) as f:
            if controller in f.read().split():
                continue
        with open(control, "w") as f:
            f.write("+" + controller)


def _limit_file(kind: str, controller: str) -> str:
    v2, v1 = CONTROLLERS[controller]
    return v2 if kind == "cgroup2" else v1


def _write_limit(kind: str, path: str, controller: str, value: int) -> None:
    if controller == "cpu":
        if kind == "cgroup2":
            _write(path, "cpu.max", f"{value} {CPU_PERIOD_US}")
        else:  # the period first: a leftover cgroup may have another one
            _write(path, "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(path, "cpu.cfs_quota_us", str(value))
        return
    _write(path, _limit_file(kind, controller), str(value))
    if controller != "memory":
        return
    # Swap as much again as memory, as Docker's --memory without --memory-swap: on a host
    # with swap, an uncapped one would let a memory hog page out until the host's is gone
    # instead of being OOM-killed. v2 caps swap alone; v1's memsw is memory plus swap (the
    # file is missing when the kernel does not account swap: then there is nothing to cap).
    swap, total = ("memory.swap.max", value) if kind == "cgroup2" else ("memory.memsw.limit_in_bytes", 2 * value)
    try:
        with open(os.path.join(path, swap), "w") as f:
            f.write(str(total))
    except FileNotFoundError:
        pass
    if kind != "cgroup2":
        _cap_v1_tcp(path, value)


# The share of a devbox's memory cap its TCP buffers may take on cgroup v1 (see _cap_v1_tcp).
V1_TCP_SHARE = 8


def _cap_v1_tcp(path: str, memory_cap: int) -> bool:
    """cgroup v1 leaves TCP buffers out of a cgroup's memory unless a limit is set: a devbox
    could then fill the machine's one TCP memory pool (net.ipv4.tcp_mem, about 2 GiB here)
    with unread connections, starving every socket of the host (the API's, the other
    devboxes'). v1 counts them apart from the memory cap, not in it, so the limit is a
    fraction of the cap; and the kernel still charges a little past it per connection (the
    first packet of an empty queue, send buffers), so this bounds, it does not seal. v2
    counts socket memory in the cap itself. False where the kernel has no such file."""
    try:
        _write(path, "memory.kmem.tcp.limit_in_bytes", str(memory_cap // V1_TCP_SHARE))
        return True
    except OSError:
        return False


def cap_tcp_memory_of(pid: int, memory_cap: int) -> bool:
    """Cap the TCP buffers of process ``pid``'s memory cgroup (a container's, made by someone
    else) as _cap_v1_tcp does, on cgroup v1; nothing to do on v2 (True). False if it could not."""
    found = _hierarchy("memory")
    if found is None or found[0] == "cgroup2":
        return True
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _id, controllers, rel = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    return _cap_v1_tcp(found[1] + rel, memory_cap)
    except OSError:
        pass
    return False


def _write(path: str, name: str, text: str) -> None:
    with open(os.path.join(path, name), "w") as f:
        f.write(text)


class SandboxLimits:
    """One sandbox's capped cgroups: ``procs_files`` to join them, ``remove`` when empty."""

    def __init__(self, dirs: dict[str, tuple[str, str]]):
        # controller -> (kind, cgroup directory); controllers of one hierarchy share a directory
        self.dirs = dirs

    @property
    def paths(self) -> list[str]:
        return list(dict.fromkeys(path for _kind, path in self.dirs.values()))

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(path, "cgroup.procs") for path in self.paths]

    def limit(self, controller: str) -> int | None:
        """The cap in force (None: no cap, or no such controller)."""
        if controller not in self.dirs:
            return None
        kind, path = self.dirs[controller]
        with open(os.path.join(path, _limit_file(kind, controller))) as f:
            value = f.read().split()[0]  # cpu.max: "QUOTA PERIOD"
        # v1 reports "no limit" as a huge number (-1 for a CPU quota); anything past 2**62 is that.
        return None if value == "max" or not 0 <= int(value) < 1 << 62 else int(value)

    @classmethod
    def create(cls, name: str, limits: dict[str, int]) -> tuple[SandboxLimits | None, list[str]]:
        """The cgroups for sandbox ``name`` with each ``limits[controller]`` set, and the
        controllers that could not be capped (no writable hierarchy). A leftover cgroup of
        the same name is reused (its limits set again)."""
        dirs: dict[str, tuple[str, str]] = {}
        missing: list[str] = []
        for controller, value in limits.items():
            if controller not in CONTROLLERS:
                raise ValueError(f"unknown cgroup controller {controller!r}")
            if value < 1:
                raise ValueError(f"the {controller} limit must be >= 1")
            found = _hierarchy(controller)
            if found is None:
                missing.append(controller)
                continue
            kind, mnt = found
            path = os.path.join(mnt, PARENT, name)
            created = False
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if kind == "cgroup2":
                    _enable_v2(mnt, controller)
                try:
                    os.mkdir(path)
                    created = True
                except FileExistsError:
                    pass  # a leftover, or shared (v2: the freezer's; co-mounted v1 controllers)
                _write_limit(kind, path, controller, value)
            except OSError:
                missing.append(controller)
                # Unusable: do not leave behind what this call made (and only that).
                if created and path not in (p for _k, p in dirs.values()):
                    remove_cgroup(path, time.monotonic())
                continue
            dirs[controller] = (kind, path)
        return (cls(dirs) if dirs else None), missing

    @classmethod
    def find(cls, name: str) -> SandboxLimits | None:
        """The existing cgroups of sandbox ``name`` (after a restart), if any."""
        dirs = {}
        for controller in CONTROLLERS:
            found = _hierarchy(controller)
            if found is not None:
                path = os.path.join(found[1], PARENT, name)
                if os.path.isdir(path):
                    dirs[controller] = (found[0], path)
        return cls(dirs) if dirs else None

    @staticmethod
    def names() -> list[str]:
        """Names of the sandboxes that have a limits cgroup (live or left by a crash)."""
        names: set[str] = set()
        for controller in CONTROLLERS:
            found = _hierarchy(controller)
            if found is None:
                continue
            try:
                names.update(e.name for e in os.scandir(os.path.join(found[1], PARENT)) if e.is_dir())
            except OSError:
                pass
        return sorted(names)

    def remove(self, deadline: float) -> bool:
        return all([remove_cgroup(path, deadline) for path in self.paths])


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
