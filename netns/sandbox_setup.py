"""The child side of a sandbox start: join the devbox's network namespace, unshare the others
and mount the devbox's view of the filesystem (see netns/sandbox.py for what and why).

``prepare(plan)`` runs in a freshly forked child just before it execs ``unshare``; ``plan`` is
plain JSON (built by ``Sandbox.start``) because the fork happens in the small zygote process
(netns/zygote.py), not in the simulator. Kept free of imports beyond the standard library so
the zygote stays small (its size is what every fork copies).
"""

from __future__ import annotations

import ctypes
import os

DEVBOX_HOME = "/home/user"
DEVBOX_TMP = "/tmp"
PTY_MAX = 64  # pseudo-terminals per devbox

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
try:
    _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _libc.unshare.argtypes = [ctypes.c_int]
    _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    _libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
except AttributeError:  # not Linux: the path/file helpers of netns.sandbox still import
    pass


def check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check(
        _libc.mount(
            src.encode() if src is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            flags,
            data.encode() if data is not None else None,
        ),
        f"mount {fstype or 'bind'} on {target}",
    )


def bind(src_fd: int, target: str, extra: int) -> None:
    mount(f"/proc/self/fd/{src_fd}", target, None, MS_BIND)
    mount(None, target, None, MS_REMOUNT | MS_BIND | extra)


def prepare(plan: dict) -> None:
    """Set up the calling (forked, single-threaded) process. ``plan`` keys: ``net`` (netns
    path), ``hostname``, ``sources`` ([home, tmp, resolv.conf, hosts, /dev/null, passwd, group]
    on the host),
    ``hides`` ([[path, is_dir]], outermost first, none under /run), ``resolv_in_run`` (the
    realpath of /etc/resolv.conf when it lies under /run, else None)."""
    net_fd = os.open(plan["net"], os.O_RDONLY | os.O_CLOEXEC)
    check(_libc.setns(net_fd, CLONE_NEWNET), "setns net")
    os.close(net_fd)
    check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    hostname = plan["hostname"].encode()[:64]
    check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Bind sources must be mounts of *this* namespace: open them now, before any mount can
    # hide them (root may live under /tmp or a hidden path).
    home_fd, tmp_fd, resolv_fd, hosts_fd, null_fd, passwd_fd, group_fd = (
        os.open(p, os.O_PATH | os.O_CLOEXEC) for p in plan["sources"])
    # The host's /run holds UNIX sockets (D-Bus, dockerd, ...): replaced, not merely hidden.
    mount("dbxsim-run", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=0755")
    resolv_in_run = plan.get("resolv_in_run")
    if resolv_in_run:
        os.makedirs(os.path.dirname(resolv_in_run), 0o755, exist_ok=True)
        os.close(os.open(resolv_in_run, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    ro_hide = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    for path, is_dir in plan["hides"]:
        if is_dir:
            mount("dbxsim-hidden", path, "tmpfs", ro_hide, "size=4k,nr_inodes=1,mode=0555")
        else:
            bind(null_fd, path, MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    mount("dbxsim-home", "/home", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,nr_inodes=16,mode=0755")
    os.mkdir(DEVBOX_HOME, 0o755)
    mount(None, "/home", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    bind(home_fd, DEVBOX_HOME, MS_NOSUID | MS_NODEV)
    bind(tmp_fd, DEVBOX_TMP, MS_NOSUID | MS_NODEV)
    # optional targets: absent on the host, or under a hidden path
    if os.path.isdir("/var/tmp"):
        bind(tmp_fd, "/var/tmp", MS_NOSUID | MS_NODEV)
    os.mkdir("/run/lock", 0o1777)
    for p, size in (("/dev/shm", "64m"), ("/run/lock", "1m")):
        if os.path.isdir(p):
            mount("dbxsim-" + os.path.basename(p), p, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    # A private devpts instance: the host's pseudo-terminals are not the devbox's, and a devbox
    # gets at most PTY_MAX of them (the kernel's pool is shared by the whole machine).
    if os.path.isdir("/dev/pts") and os.path.exists("/dev/ptmx"):
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, f"newinstance,ptmxmode=0666,mode=0620,max={PTY_MAX}")
        mount("/dev/pts/ptmx", "/dev/ptmx", None, MS_BIND)
    if os.path.exists("/etc/resolv.conf"):
        bind(resolv_fd, "/etc/resolv.conf", MS_RDONLY | MS_NOSUID | MS_NODEV)
    if os.path.exists("/etc/hosts"):
        bind(hosts_fd, "/etc/hosts", MS_RDONLY | MS_NOSUID | MS_NODEV)
    for fd, path in ((passwd_fd, "/etc/passwd"), (group_fd, "/etc/group")):
        if os.path.exists(path):
            bind(fd, path, MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in ("/etc/passwd-", "/etc/group-"):  # the backups list the host's accounts too
        if os.path.exists(path):
            bind(null_fd, path, MS_RDONLY | MS_NOSUID | MS_NOEXEC)  # as hidden files: reads empty
    # sysfs of this network namespace (also hides the host's cgroup tree)
    mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
