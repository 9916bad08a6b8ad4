"""Process isolation for devboxes on the netns runtime.

A :class:`Sandbox` is the "machine" of one devbox: a long-lived *holder* process that is PID 1
of its own PID namespace, lives in its own mount, IPC and UTS namespaces and is joined to the
devbox's network namespace (``/run/netns/<netns>``, created elsewhere). Executions enter the
holder's namespaces and drop to an unprivileged uid with no capabilities.

How the holder is built (``start()``)
    The small zygote process (netns/zygote.py) forks a child (never the simulator itself:
    ``setns(CLONE_NEWNS)`` and ``unshare(CLONE_NEWPID)`` are per-thread and refused in
    multithreaded processes, and forking the simulator's heap cost 6-10 ms). The child runs
    ``netns.sandbox_setup.prepare``: it joins the network namespace, unshares
    mount/PID/IPC/UTS, makes every mount private (nothing propagates back to the host) and
    mounts the devbox's view with plain ``mount(2)`` calls through ctypes:

    * every path in ``hidden_paths`` (and ``root`` itself) is covered with an empty read-only
      tmpfs (a hidden regular file is covered with ``/dev/null``);
    * ``/home`` becomes a read-only tmpfs holding only ``user``, onto which ``root/home`` is
      bind-mounted; ``root/tmp`` is bind-mounted on ``/tmp`` and ``/var/tmp``;
    * ``/run`` becomes an empty tmpfs owned by root: the host's ``/run`` holds UNIX sockets
      (D-Bus, systemd, dockerd, ...) that a read-only view would still let a devbox connect
      to (connect(2) ignores read-only mounts). If ``/etc/resolv.conf`` is a symlink into
      ``/run`` (systemd-resolved), its target is recreated as an empty file there for the
      resolv.conf bind below;
    * ``/dev/shm`` and ``/run/lock`` get private tmpfs (they are world-writable on the host);
    * ``/dev/pts`` is a private devpts instance (``/dev/ptmx`` bound to its ``ptmx``) of at most
      ``sandbox_setup.PTY_MAX`` terminals: the machine's pseudo-terminal pool is shared;
    * generated ``resolv.conf`` (only ``nameserver <nameserver>``) and ``hosts`` are bind-mounted
      read-only over ``/etc/resolv.conf`` and ``/etc/hosts``, and generated ``passwd`` and
      ``group`` (root, nobody and ``user`` with the devbox's uid and gid) over ``/etc/passwd`` and
      ``/etc/group``: ``whoami``, ``git commit`` and ``getpwuid()`` find the devbox's user (the
      host's entries had no line for its uid, and named the host's accounts);
    * ``/sys`` is a fresh read-only sysfs of the devbox's network namespace.

    Bind sources are opened (``O_PATH``) after the unshare but before any mount, and mounted
    through ``/proc/self/fd/N``, so the order of mounts never hides a source (``root`` may well
    live under ``/tmp`` or under a hidden path). The child then execs ``unshare --fork
    --kill-child --mount-proc`` (util-linux, C), whose child is PID 1 of the new PID namespace
    (and dies with that parent: killing either process ends the sandbox), mounts ``/proc`` for
    it and execs the init: ``/bin/sh`` (dash) running ``while :; do sleep infinity & wait;
    done``. dash's ``wait`` reaps *every* child (wait3(-1)), including orphans re-parented to
    PID 1, so no zombie piles up, and no Python interpreter stays resident. The child holds
    no descriptor but its stdin (/dev/null) and output pipe. Readiness is a line the init
    prints once ``/proc`` is mounted; a setup error is printed by the child and raised as
    :class:`SandboxError`.

How an execution runs (``exec()``)
    ``/bin/sh -c '<echo $$ into each cgroup.procs>; exec "$@"'`` (with a cgroup freezer and/or
    caps, netns/cgroup_limits.py: everything the execution forks is frozen with the devbox and
    counted against ``pids_max``, ``memory_max`` and ``cpus``) -> ``nsenter -t <holder>
    --net=/run/netns/<netns> -m -p -i -u`` -> ``seccomp-exec`` (a seccomp filter: no vsock,
    which ignores network namespaces, no kernel keyrings, which are kept per uid, no user
    namespaces, io_uring, bpf...; netns/seccomp_exec.c; put on while still root, so that no
    process of the devbox uid is ever unfiltered) -> ``setpriv --reuid --regid --clear-groups
    --inh-caps=-all --bounding-set=-all --no-new-privs`` -> ``env -i
    --chdir=<cwd> <env>`` -> the command. Only small C programs, no Python. (nsenter 2.38's ``--wd`` would open the
    directory in the *host's* mount namespace; ``env --chdir`` runs inside, as the devbox
    user.) The privileged part of the chain runs with a fixed minimal environment: the
    caller's ``env`` (untrusted: think ``LD_PRELOAD``) is applied by ``env -i`` *after*
    privileges are gone. The Popen is started in a new session, so its pid is the process
    group of the whole execution (``kill(popen)`` signals that group). Processes of the
    execution live in the holder's PID namespace: killing the holder kills them.

Suspend / resume
    cgroup v2 ``cgroup.freeze`` if a writable cgroup2 hierarchy exists, else the cgroup v1
    ``freezer`` controller, else SIGSTOP/SIGCONT of every process of the PID namespace
    (see :attr:`Sandbox.freezer`). Each sandbox has its own cgroup ``dbxsim/<name>``.

Restart of the simulator
    The holder's pid (and start time, against pid reuse) is kept in ``root/.sandbox/state.json``
    (``root/.sandbox`` is root-only and, like all of ``root``, hidden from the devbox).
    :meth:`Sandbox.adopt` re-attaches to it (without a usable state file it scans ``/proc`` for
    the holder's marker), :meth:`Sandbox.alive` checks pid, start time,
    command-line marker and network namespace. :func:`find_orphans` lists holders (by their
    command-line marker ``dbxsim-holder <name>``) whose name is not known any more.

Files (``resolve_path``/``read_file``/``write_file``)
    A devbox path is relative to the home, ``~``/``~/...``, or absolute under ``/home/user`` or
    ``/tmp``. Any other absolute path raises ``ValueError``: the rest of the devbox's file
    system is the host's, read-only to the devbox user, and not the simulator's to hand out.
    Symlinks are resolved as the devbox sees them (an absolute link target is a devbox path),
    and a result outside home and /tmp raises ``ValueError``. The actual open walks the
    resolved host path component by component with ``O_NOFOLLOW`` from a directory fd, so a
    devbox process swapping a directory for a symlink concurrently cannot redirect the
    simulator (which is root) outside ``root``.

This module must never import ``simulator``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import re
import select
import shutil
import signal
import stat
import subprocess
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from netns import zygote
from netns.cgroup_limits import PARENT as _CGROUP_PARENT
from netns.cgroup_limits import SandboxLimits, cpu_quota, remove_cgroup
from netns.sandbox_setup import DEVBOX_HOME, DEVBOX_TMP

__all__ = [
    "HOLDER_TAG",
    "DEVBOX_HOME",
    "DEVBOX_TMP",
    "ExecProcess",
    "Sandbox",
    "SandboxError",
    "find_orphans",
    "kill_orphans",
]

log = logging.getLogger(__name__)

HOLDER_TAG = "dbxsim-holder"  # $0 of the holder's init; its $1 is the sandbox name
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHAIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0

# How long an interrupt may wait for the sandbox to freeze (ExecProcess.signal_command).
FREEZE_FOR_SIGNAL_SECONDS = 2.0

# dash as PID 1: `wait` reaps any child (wait3(-1)), orphans included.
_INIT_SCRIPT = (
    'echo ready; exec </dev/null >/dev/null 2>&1; while :; do sleep infinity & wait; done'
)

class SandboxError(RuntimeError):
    """The sandbox could not be started or used."""


class ExecProcess(subprocess.Popen):
    """A command run in a sandbox (``Sandbox.exec``). It leads its own process group, but the
    leader is the ``nsenter`` that entered the sandbox's PID namespace: it forks the command,
    waits for it and exits as it did (with its status, or by re-raising the signal that
    killed it). The command and everything it starts are the rest of the group."""

    freezer: _Freezer | None = None  # the sandbox's cgroup freezer (Sandbox.exec sets it)

    def signal_command(self, sig: int) -> bool:
        """Send ``sig`` to the group's processes but the ``nsenter`` leader (to the whole
        group while the command has not started); False if there was none. A leader that got, say, SIGINT would die of it: the execution would end
        with 130 while a command that traps SIGINT went on (and was killed later). Without
        it the command decides, and the leader reports the outcome. SIGKILL goes to the whole
        group (``os.killpg``)."""
        # killpg reaches a whole group at once; a scan of /proc does not: a child may fork or
        # exit meanwhile, and a shell whose child then exits normally takes the interrupt as
        # handled by it and goes on. So the sandbox is frozen (its cgroup freezer, nothing
        # runs or forks; a few ms) while its processes are signalled, then thawed: each then
        # finds the signal pending, as with killpg. The caller must keep a suspend out of this
        # (the execution service holds the devbox's lifecycle lock). Without a cgroup
        # freezer, the sweep below repeats until no new process shows up.
        freezer = self.freezer
        if freezer is not None and freezer.is_frozen():
            freezer = None  # suspended: nothing runs anyway; it stays frozen
        if freezer is not None:
            try:
                freezer.freeze(FREEZE_FOR_SIGNAL_SECONDS)
            except (OSError, SandboxError):
                pass  # signalled unfrozen; thawed below all the same
        try:
            return self._signal_members(sig)
        finally:
            if freezer is not None:
                try:
                    freezer.thaw()
                except OSError:
                    pass  # the sandbox is gone

    def _signal_members(self, sig: int) -> bool:
        signalled: set[int] = set()
        for _ in range(100):
            new = [p for p in group_members(self.pid) if p != self.pid and p not in signalled]
            if not new:
                break
            for pid in new:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass  # ended meanwhile
            signalled.update(new)
        if signalled:
            return True
        # The command has not started yet (nsenter has not forked it): the whole group, as a
        # terminal would; the execution ends as the leader does.
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (from /proc; a racing fork may be missed)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(entry))
    return members


# netns/seccomp_exec.c, built by scripts/bootstrap.sh: the seccomp filter every devbox
# command runs under (no vsock, no keyrings, no user namespaces, ...; see the source).
SECCOMP_EXEC = "/usr/local/libexec/devbox-sim/seccomp-exec"


def seccomp_exec() -> str:
    """The helper's path; SandboxError if it is missing (no command runs unfiltered)."""
    if not os.access(SECCOMP_EXEC, os.X_OK):
        raise SandboxError(f"{SECCOMP_EXEC} is missing: scripts/bootstrap.sh builds it (as root) from netns/seccomp_exec.c")
    return SECCOMP_EXEC


def _tool(name: str) -> str:
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    found = shutil.which(name)
    if found is None:
        raise SandboxError(f"`{name}` not found")
    return found


def _shell() -> str:
    """The devbox user's shell (commands given as text run in it): bash where the host has it."""
    return "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write a small root-only-writable file, mode 0644.

    Never truncate-and-rewrite nor rename over an existing file: ext4's auto_da_alloc turns
    both into a synchronous flush (milliseconds); unlink + create costs microseconds.
    """
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _proc_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces/parens: fields resume after the last ')'
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[19])


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()[0].decode()


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def _nspid(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _holder_name(pid: int) -> str | None:
    """The sandbox name if ``pid`` is a holder init (PID 1 of its namespace), else None."""
    argv = _cmdline(pid)
    if len(argv) != 5 or argv[1] != "-c" or argv[2] != _INIT_SCRIPT or argv[3] != HOLDER_TAG:
        return None
    ns = _nspid(pid)
    if len(ns) < 2 or ns[-1] != 1:
        return None
    return argv[4]


def _wait_gone(pid: int, deadline: float) -> bool:
    """Poll until ``pid`` has exited (gone or zombie). True if it did before ``deadline``."""
    delay = 0.0005
    while True:
        st = _proc_state(pid)
        if st is None or st in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


# ---------------------------------------------------------------------------------------------
# cgroups


def _mountinfo_fs(fstype: str, option: str | None = None) -> str | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fields = pre.split()
                pfields = post.split()
                if pfields and pfields[0] == fstype:
                    if option is None or option in pfields[2].split(","):
                        return fields[4].replace("\\040", " ")
    except OSError:
        pass
    return None


_hierarchies: list[tuple[str, str]] | None = None


class _Freezer:
    """One sandbox's freezer. kind: 'cgroup2' | 'cgroup1' | 'signal'."""

    def __init__(self, kind: str, path: str | None):
        self.kind = kind
        self.path = path

    @property
    def procs_file(self) -> str | None:
        return os.path.join(self.path, "cgroup.procs") if self.path else None

    @staticmethod
    def candidates(name: str) -> list[tuple[str, str]]:
        """(kind, cgroup dir) for each freezer hierarchy mounted, preferred first."""
        global _hierarchies
        if _hierarchies is None:
            found = []
            v2 = _mountinfo_fs("cgroup2")
            if v2:
                found.append(("cgroup2", v2))
            v1 = _mountinfo_fs("cgroup", "freezer")
            if v1:
                found.append(("cgroup1", v1))
            _hierarchies = found
        return [(kind, os.path.join(mnt, _CGROUP_PARENT, name)) for kind, mnt in _hierarchies]

    @classmethod
    def create(cls, name: str, prefer: str = "auto") -> _Freezer:
        if prefer == "signal":
            return cls("signal", None)
        for kind, path in cls.candidates(name):
            if prefer not in ("auto", kind):
                continue
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    os.mkdir(path)
                except FileExistsError:
                    pass
                state = "cgroup.freeze" if kind == "cgroup2" else "freezer.state"
                if not os.access(os.path.join(path, state), os.W_OK):
                    raise OSError(errno.EACCES, "freezer not writable")
                f = cls(kind, path)
                f.thaw()  # a leftover cgroup of the same name may still be frozen
                return f
            except OSError:
                continue
        if prefer not in ("auto", "signal"):
            raise SandboxError(f"freezer {prefer!r} not available")
        return cls("signal", None)

    def _write(self, fname: str, value: str) -> None:
        with open(os.path.join(self.path, fname), "w") as f:
            f.write(value)

    def _read(self, fname: str) -> str:
        with open(os.path.join(self.path, fname)) as f:
            return f.read()

    def freeze(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self.kind == "cgroup2":
            self._write("cgroup.freeze", "1")
            done = lambda: "frozen 1" in self._read("cgroup.events")  # noqa: E731
        else:
            self._write("freezer.state", "FROZEN")
            done = lambda: self._read("freezer.state").strip() == "FROZEN"  # noqa: E731
        delay = 0.0002
        while not done():
            if time.monotonic() >= deadline:
                raise SandboxError("freezing the sandbox timed out")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def is_frozen(self) -> bool:
        try:
            if self.kind == "cgroup2":
                return self._read("cgroup.freeze").strip() == "1"
            if self.kind == "cgroup1":
                return self._read("freezer.state").strip() != "THAWED"
        except OSError:
            pass
        return False

    def thaw(self) -> None:
        if self.kind == "cgroup2":
            self._write("cgroup.freeze", "0")
        elif self.kind == "cgroup1":
            self._write("freezer.state", "THAWED")

    def remove(self, deadline: float) -> bool:
        return remove_cgroup(self.path, deadline) if self.path else True


# ---------------------------------------------------------------------------------------------


class Sandbox:
    """Process isolation of one devbox. See the module docstring."""

    def __init__(
        self,
        name: str,
        netns: str,
        root: Path,
        uid: int,
        gid: int,
        nameserver: str,
        hidden_paths: Sequence[Path] = (),
        *,
        freezer: str = "auto",
        pids_max: int | None = None,
        memory_max: int | None = None,
        cpus: float | None = None,
    ):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name):
            raise ValueError(f"bad sandbox name {name!r}")
        if "/" in netns or netns in ("", ".", ".."):
            raise ValueError(f"bad netns name {netns!r}")
        if uid <= 0 or gid <= 0:
            raise ValueError("the devbox user must not be root")
        if any(c in nameserver for c in "\n\r \t"):
            raise ValueError(f"bad nameserver {nameserver!r}")
        if freezer not in ("auto", "cgroup2", "cgroup1", "signal"):
            raise ValueError(f"bad freezer {freezer!r}")
        self.name = name
        self.netns = netns
        self.root = Path(os.path.abspath(root))
        self.uid = uid
        self.gid = gid
        self.nameserver = nameserver
        self.hidden_paths = [Path(p) for p in hidden_paths]
        self._freezer_pref = freezer
        self._freezer: _Freezer | None = None
        if pids_max is not None and pids_max < 1:
            raise ValueError("pids_max must be >= 1")
        if memory_max is not None and memory_max < 1:
            raise ValueError("memory_max must be >= 1")
        if cpus is not None:
            cpu_quota(cpus)  # raises for a bad count
        self.pids_max = pids_max
        self.memory_max = memory_max  # bytes
        self.cpus = cpus  # CPU time per wall time, e.g. 0.5
        self._limits: SandboxLimits | None = None
        self._holder_pid: int | None = None
        self._starting: tuple[int, int] | None = None  # (pid, output fd) between the two halves of start()
        self._holder_start: int | None = None
        self._suspended = False

    # -- layout ------------------------------------------------------------------------------

    @property
    def home_dir(self) -> Path:
        return self.root / "home"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def _private_dir(self) -> Path:
        return self.root / ".sandbox"

    @property
    def _state_file(self) -> Path:
        return self._private_dir / "state.json"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def holder_pid(self) -> int | None:
        return self._holder_pid

    @property
    def freezer(self) -> str | None:
        """'cgroup2', 'cgroup1' or 'signal' once started."""
        return self._freezer.kind if self._freezer else None

    @property
    def suspended(self) -> bool:
        return self._suspended

    def _prepare_root(self) -> tuple[str, str]:
        self.root.mkdir(parents=True, exist_ok=True)
        priv = self._private_dir
        priv.mkdir(mode=0o700, exist_ok=True)
        os.chmod(priv, 0o700)
        home = self.home_dir
        if not home.exists():
            home.mkdir(mode=0o755)
            os.chown(home, self.uid, self.gid)
        tmp = self.tmp_dir
        if not tmp.exists():
            tmp.mkdir()
        os.chmod(tmp, 0o1777)
        resolv = priv / "resolv.conf"
        _write_if_changed(resolv, f"nameserver {self.nameserver}\n".encode())
        hosts = priv / "hosts"
        _write_if_changed(
            hosts,
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{self.name}\n".encode(),
        )
        passwd, group = priv / "passwd", priv / "group"
        _write_if_changed(passwd, (
            "root:x:0:0:root:/root:/bin/sh\n"
            f"user:x:{self.uid}:{self.gid}:user:{DEVBOX_HOME}:{_shell()}\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").encode())
        _write_if_changed(group, f"root:x:0:\nuser:x:{self.gid}:\nnogroup:x:65534:\n".encode())
        return str(resolv), str(hosts), str(passwd), str(group)

    def _hide_targets(self) -> list[tuple[str, bool]]:
        """(path, is_dir) to cover, outermost first; paths covered by another one dropped."""
        paths = []
        for p in [*self.hidden_paths, self.root]:
            rp = os.path.realpath(p)
            if rp == "/" or not os.path.lexists(rp):
                continue
            paths.append(rp)
        paths = sorted(set(paths), key=len)
        out: list[tuple[str, bool]] = []
        for p in paths:
            if any(p == q or p.startswith(q.rstrip("/") + "/") for q, d in out if d):
                continue
            out.append((p, os.path.isdir(p)))
        return out

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the holder. Raises SandboxError (and leaves nothing running) on failure."""
        self.begin_start()
        self.finish_start()

    def begin_start(self) -> None:
        """The first half of ``start()``: the holder is forked and sets itself up while the
        caller does other work (the runtime plugs the network in meanwhile); ``finish_start``
        waits for it. A failure here leaves nothing running; after a successful
        ``begin_start`` the caller must call ``finish_start`` (or ``abort_start``)."""
        if self._holder_pid is not None and self.alive():
            raise SandboxError(f"sandbox {self.name} already running")
        resolv, hosts, passwd, group = self._prepare_root()
        # /run is replaced whole (below): hiding anything under it is moot, and would fail.
        hides = [(p, d) for p, d in self._hide_targets() if not _under(p, "/run")]
        resolv_target = os.path.realpath("/etc/resolv.conf")
        resolv_in_run = resolv_target if _under(resolv_target, "/run") else None
        self._freezer = _Freezer.create(self.name, self._freezer_pref)
        caps = {"pids": self.pids_max, "memory": self.memory_max,
                "cpu": None if self.cpus is None else cpu_quota(self.cpus)}
        caps = {controller: value for controller, value in caps.items() if value is not None}
        if caps:
            self._limits, missing = SandboxLimits.create(self.name, caps)
            if missing:
                log.warning("sandbox %s: no writable cgroup %s controller; not capped", self.name, " or ".join(missing))

        try:  # a clear error for a missing namespace (the child opens it again)
            os.close(os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as e:
            self._remove_cgroups(time.monotonic())
            raise SandboxError(f"network namespace {self.netns}: {e.strerror}") from None
        plan = {
            "net": self.netns_path,
            "hostname": self.name,
            "sources": [str(self.home_dir), str(self.tmp_dir), resolv, hosts, "/dev/null", passwd, group],
            "hides": hides,
            "resolv_in_run": resolv_in_run,
        }
        argv = [
            _tool("unshare"), "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--",
            "/bin/sh", "-c", _INIT_SCRIPT, HOLDER_TAG, self.name,
        ]  # fmt: skip
        try:
            self._starting = zygote.default().spawn(argv, dict(_CHAIN_ENV), plan)
        except OSError as e:
            self._remove_cgroups(time.monotonic())
            raise SandboxError(f"sandbox {self.name} could not be started: {e}") from None

    def finish_start(self) -> None:
        """Wait until the holder begun by ``begin_start`` is ready (or raise SandboxError,
        leaving nothing running)."""
        if self._starting is None:
            raise SandboxError(f"sandbox {self.name}: finish_start without begin_start")
        (child, out_fd), self._starting = self._starting, None
        try:
            out = self._read_ready(out_fd)
            if out is not None:
                raise SandboxError(f"sandbox {self.name} failed to start: {out.strip() or 'no output'}")
            pid = self._find_init(child)
        except BaseException:
            try:
                os.killpg(child, signal.SIGKILL)  # its own session: the whole chain
            except ProcessLookupError:
                pass
            self._remove_cgroups(time.monotonic() + 1)
            raise
        finally:
            os.close(out_fd)
        self._holder_pid = pid
        self._holder_start = _proc_starttime(pid)
        self._suspended = False
        self._save_state()

    def abort_start(self) -> None:
        """Undo a ``begin_start`` whose ``finish_start`` will not come (the caller failed)."""
        if self._starting is None:
            return
        (child, out_fd), self._starting = self._starting, None
        # The child leads its own process group only once it has called setsid(), which may
        # not have happened yet: killpg alone then found no group, and the child went on to
        # start a holder nobody tracked. The child itself, then the group it may have made.
        for kill, target in ((os.kill, child), (os.killpg, child)):
            try:
                kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(out_fd)
        self._remove_cgroups(time.monotonic() + 1)

    @staticmethod
    def _read_ready(fd: int) -> str | None:
        """None when the init said ready, else whatever the chain printed before dying."""
        buf = b""
        deadline = time.monotonic() + _START_TIMEOUT
        # poll, not select: with the open-file limit raised (simulator.fd_limit) the pipe may
        # be descriptor 1024 or more, which select cannot watch (ValueError).
        readable = select.poll()
        readable.register(fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return buf.decode(errors="replace") + " (timed out)"
            if not readable.poll(left * 1000):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return buf.decode(errors="replace")
            buf += chunk
            if buf.endswith(b"ready\n") and (buf == b"ready\n" or buf.endswith(b"\nready\n")):
                return None

    @staticmethod
    def _find_init(parent: int) -> int:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            kids = f.read().split()
        if len(kids) != 1:
            raise SandboxError(f"holder has {len(kids)} init processes")
        return int(kids[0])

    def _save_state(self) -> None:
        state = {
            "name": self.name,
            "holder_pid": self._holder_pid,
            "holder_start": self._holder_start,
            "freezer": self._freezer.kind if self._freezer else None,
            "cgroup": self._freezer.path if self._freezer else None,
            "pids_max": self.pids_max,
            "memory_max": self.memory_max,
            "cpus": self.cpus,
            "suspended": self._suspended,
        }
        _write_if_changed(self._state_file, json.dumps(state).encode())

    @classmethod
    def adopt(
        cls,
        name: str,
        netns: str,
        root: Path,
        uid: int,
        gid: int,
        nameserver: str,
        hidden_paths: Sequence[Path] = (),
        *,
        freezer: str = "auto",
        pids_max: int | None = None,
        memory_max: int | None = None,
        cpus: float | None = None,
    ) -> Sandbox:
        """A Sandbox object for a holder started by an earlier simulator process.

        ``pids_max``/``memory_max``/``cpus``: the caps for a later ``start()`` when the state file does
        not name them (no state file, or one older than the caps).

        Never raises for a dead holder: check :meth:`alive` (and ``start()`` it again, or
        ``destroy()`` it).
        """
        sb = cls(name, netns, root, uid, gid, nameserver, hidden_paths, freezer=freezer)
        try:
            state = json.loads(sb._state_file.read_text())
            if state.get("name") != name:
                state = {}
        except (OSError, ValueError):
            state = {}
        sb._holder_pid = state.get("holder_pid")
        sb._holder_start = state.get("holder_start")
        # The cap survives the restart (a later start() sets it again), and a dead holder's
        # cgroup is still found, so that stop() removes it.
        sb.pids_max = state.get("pids_max", pids_max)
        sb.memory_max = state.get("memory_max", memory_max)
        sb.cpus = state.get("cpus", cpus)
        sb._limits = SandboxLimits.find(name)
        if not sb.alive():  # no (valid) state file: look for the marker
            pids = find_orphans(name)
            pids = [p for p in pids if _holder_name(p) == name]
            sb._holder_pid = pids[0] if len(pids) == 1 else None
            sb._holder_start = _proc_starttime(pids[0]) if len(pids) == 1 else None
            if not sb.alive():
                sb._holder_pid = sb._holder_start = None
                return sb
        if sb._holder_start is None:
            sb._holder_start = _proc_starttime(sb._holder_pid)
        kind = state.get("freezer")
        if kind:
            sb._freezer = _Freezer(kind, state.get("cgroup"))
        else:  # find the cgroup by name
            sb._freezer = _Freezer("signal", None)
            for kind, path in _Freezer.candidates(name):
                if os.path.isdir(path):
                    sb._freezer = _Freezer(kind, path)
                    break
        sb._suspended = sb._freezer.is_frozen() if sb._freezer.kind != "signal" else bool(state.get("suspended"))
        return sb

    def alive(self) -> bool:
        """True if the holder runs: same pid and start time, our marker, the devbox's netns."""
        pid = self._holder_pid
        if pid is None:
            return False
        st = _proc_state(pid)
        if st is None or st in ("Z", "X"):
            return False
        if self._holder_start is not None and _proc_starttime(pid) != self._holder_start:
            return False
        if _holder_name(pid) != self.name:
            return False
        net = _ns_id(self.netns_path)
        return net is not None and _ns_id(f"/proc/{pid}/ns/net") == net

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Kill the holder, hence every process of the devbox. Idempotent, bounded."""
        self.abort_start()  # a start begun but never finished
        deadline = time.monotonic() + timeout
        pid = self._holder_pid
        if pid is not None and (
            _proc_starttime(pid) != self._holder_start if self._holder_start is not None else not self.alive()
        ):
            pid = None  # gone long ago (the pid may belong to someone else now)
        if pid is not None:
            # Executions' nsenter processes live outside the namespace, as parents of its
            # processes, and the namespace's init cannot finish exiting before each of those
            # is reaped. Killing the init kills them; each nsenter reaps its own and exits.
            # An nsenter that stopped itself (its child got SIGSTOP: suspend by signals, or a
            # devbox user's `kill -STOP $$`) is continued so that it does. Killing the
            # nsenters instead handed their dying children to the host's PID 1 (an nsenter is
            # in the host's PID namespace): the stop then lasted until PID 1 reaped them,
            # 2 s under an init that reaps on a timer, for good under one that never does.
            members = self._ns_members(pid)
            wrappers = self._outside_parents(pid, members)
            # The members are killed here too, not only by the init's death: the kernel does
            # that as the init exits, and a continued nsenter would first wake its stopped
            # child, which would run on for a moment. Once kill() returns, a process never
            # runs its own code again.
            for p in (pid, *members):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._freezer is not None:
            try:
                # After the SIGKILLs: a thawed task dies before it runs user code again (thawed
                # first, a suspended devbox ran on during its stop). v1-frozen tasks die only now.
                self._freezer.thaw()
            except OSError:
                pass
        if pid is not None:
            for p in wrappers:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            if not self._wait_holder(pid, min(deadline, time.monotonic() + 0.5)):
                for p in wrappers:  # an nsenter that would not reap: its child goes to PID 1
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                # slow path: wrappers we could not see through the namespace (e.g. its
                # processes were already dying), found by their command line
                for p in _wrappers_of(pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if not self._wait_holder(pid, deadline):
                    raise SandboxError(f"sandbox {self.name}: holder {pid} did not exit")
        self._holder_pid = None
        self._holder_start = None
        self._suspended = False
        # Executions' nsenter wrappers sit in the cgroups until their child is gone.
        self._remove_cgroups(min(deadline, time.monotonic() + 2.0))
        if self._private_dir.exists():
            try:
                self._state_file.unlink(missing_ok=True)
            except OSError:
                pass

    def _remove_cgroups(self, deadline: float) -> None:
        if self._freezer is not None and not self._freezer.remove(deadline):
            log.warning("sandbox %s: cgroup %s still busy, left behind", self.name, self._freezer.path)
        # Its own short grace: the freezer's retries may have used up the deadline.
        if self._limits is not None and not self._limits.remove(max(deadline, time.monotonic() + 0.5)):
            log.warning("sandbox %s: cgroups %s still busy, left behind", self.name, self._limits.paths)

    def _wait_holder(self, pid: int, deadline: float) -> bool:
        return _wait_gone(pid, deadline)

    def destroy(self) -> None:
        """stop() and remove ``root``."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- executions --------------------------------------------------------------------------

    def devbox_cwd(self, cwd: str | None) -> str:
        if cwd is None or cwd == "" or cwd == "~":
            return DEVBOX_HOME
        if cwd.startswith("~/"):
            cwd = DEVBOX_HOME + cwd[1:]
        return posixpath.normpath(posixpath.join(DEVBOX_HOME, cwd))

    def exec(
        self,
        command: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        *,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) -> subprocess.Popen:
        """Run ``command`` (argv list, or a string for ``bash -c``) inside the devbox.

        The command runs as uid/gid with no capabilities and no_new_privs, in the holder's
        net/mount/pid/ipc/uts namespaces, cwd ``cwd`` (relative to /home/user; default home),
        environment = HOME/USER/LOGNAME/SHELL/PATH/LANG defaults overlaid by ``env``. The
        returned Popen's pid leads a new session and process group holding the execution.
        A missing cwd makes the command fail (exit 1, message on stderr).
        """
        pid = self._holder_pid
        if (
            pid is None
            or _proc_starttime(pid) != self._holder_start  # gone, or pid reused
        ):
            raise SandboxError(f"sandbox {self.name} is not running")
        if isinstance(command, str):
            argv = [_shell(), "-c", command]
        else:
            argv = [str(a) for a in command]
            if not argv:
                raise ValueError("empty command")
        if "=" in argv[0]:
            raise ValueError("argv[0] must not contain '='")  # `env` would take it as a variable
        full_env = {
            "PATH": DEFAULT_PATH,
            "HOME": DEVBOX_HOME,
            "USER": "user",
            "LOGNAME": "user",
            "SHELL": _shell(),
            "LANG": "C.UTF-8",
        }
        if env:
            full_env.update({str(k): str(v) for k, v in env.items()})
        for k, v in full_env.items():
            if not k or "=" in k or "\0" in k or "\0" in v:
                raise ValueError(f"bad environment variable {k!r}")
        wd = self.devbox_cwd(cwd)
        chain = [
            _tool("nsenter"), "-t", str(pid), f"--net={self.netns_path}", "-m", "-p", "-i", "-u", "--",
            # The filter goes on while the process is still root: as the devbox's uid it is
            # never unfiltered, so no process of the devbox can ptrace it (or write its
            # /proc/PID/mem) in the instant before the filter and take its syscalls.
            seccomp_exec(), "--",
            _tool("setpriv"), f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
            _tool("env"), "-i", f"--chdir={wd}", *(f"{k}={v}" for k, v in full_env.items()), *argv,
        ]  # fmt: skip
        # Join the sandbox's cgroups (freezer, pids cap) before anything else runs, so that
        # all the execution forks is frozen with it and counted against its cap.
        procs = [self._freezer.procs_file] if self._freezer is not None and self._freezer.procs_file else []
        if self._limits is not None:
            procs += self._limits.procs_files
        procs = list(dict.fromkeys(procs))  # v2: one directory serves them all
        if procs:
            # $0 is how many cgroup.procs files follow; then the command.
            join = 'n=$0; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 126; shift; n=$((n - 1)); done; exec "$@"'
            chain = ["/bin/sh", "-c", join, str(len(procs)), *procs, *chain]
        proc = ExecProcess(
            chain,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            cwd="/",
            env=dict(_CHAIN_ENV),
            start_new_session=True,
        )
        if self._freezer is not None and self._freezer.kind != "signal":
            proc.freezer = self._freezer
        return proc

    @staticmethod
    def kill(popen: subprocess.Popen, group: bool = True, sig: int = signal.SIGKILL) -> None:
        """Signal an execution: its whole process group (default) or only its leader."""
        if popen.poll() is not None and not group:
            return
        try:
            if group:
                os.killpg(popen.pid, sig)
            else:
                popen.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- suspend / resume --------------------------------------------------------------------

    def _ns_members(self, holder: int) -> list[int]:
        ns = _ns_id(f"/proc/{holder}/ns/pid")
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            p = int(entry)
            if p != holder and _ns_id(f"/proc/{p}/ns/pid") == ns:
                out.append(p)
        return out

    def _outside_parents(self, holder: int, members: Collection[int]) -> set[int]:
        """Parents of ``members`` outside the namespace: executions' nsenter processes."""
        parents = set()
        for p in members:
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("PPid:"):
                            parents.add(int(line.split()[1]))
                            break
            except OSError:
                pass
        # Only executions' nsenters: a member orphaned meanwhile has PID 1 or a subreaper
        # (this process, say) as its parent, and those must never be signalled.
        return {p for p in parents - set(members) - {holder, 0, 1, os.getpid()} if _comm(p) == "nsenter"}

    def _signal_ns(self, sig: int, holder: int) -> set[int]:
        seen: set[int] = set()
        for _ in range(100):  # repeat until no new process shows up (forks during the sweep)
            new = [p for p in self._ns_members(holder) if p not in seen]
            if not new:
                break
            for p in new:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            seen.update(new)
        return seen

    def suspend(self, timeout: float = 5.0) -> None:
        """Freeze every process of the devbox (the holder's init excepted)."""
        pid = self._holder_pid
        if pid is None or not self.alive():
            raise SandboxError(f"sandbox {self.name} is not running")
        if self._freezer.kind == "signal":
            self._signal_ns(signal.SIGSTOP, pid)
        else:
            self._freezer.freeze(timeout)
        self._suspended = True
        self._save_state()

    def resume(self) -> None:
        pid = self._holder_pid
        if pid is None or not self.alive():
            raise SandboxError(f"sandbox {self.name} is not running")
        if self._freezer.kind == "signal":
            members = self._signal_ns(signal.SIGCONT, pid)
            # nsenter (outside the namespace) stops itself when its child stops: wake it too,
            # and again if it stopped itself only after our first SIGCONT.
            parents = self._outside_parents(pid, members)
            deadline = time.monotonic() + 0.05
            while True:
                stopped = [p for p in parents if _proc_state(p) == "T"]
                for p in stopped:
                    os.kill(p, signal.SIGCONT)
                if not stopped or time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
        else:
            self._freezer.thaw()
        self._suspended = False
        self._save_state()

    # -- files -------------------------------------------------------------------------------

    def _area(self, devbox_abs: str) -> tuple[str, Path, str] | None:
        """(area prefix, host base, remainder) for a normalised absolute devbox path."""
        for prefix, base in ((DEVBOX_HOME, self.home_dir), (DEVBOX_TMP, self.tmp_dir)):
            if devbox_abs == prefix:
                return prefix, base, ""
            if devbox_abs.startswith(prefix + "/"):
                return prefix, base, devbox_abs[len(prefix) + 1 :]
        return None

    @staticmethod
    def _devbox_abs(path: str) -> str:
        if "\0" in path:
            raise ValueError("NUL in path")
        if path in ("", "~"):
            return DEVBOX_HOME
        if path.startswith("~/"):
            return DEVBOX_HOME + path[1:]
        if not path.startswith("/"):
            return DEVBOX_HOME + "/" + path
        return path

    def resolve_path(self, path: str) -> Path:
        """Host path (under ``root``) of a devbox path.

        Accepted: relative (to /home/user), ``~``, ``~/...``, ``/home/user[/...]``,
        ``/tmp[/...]``. The path is walked as the devbox would walk it: symlinks are followed
        (an absolute target is a devbox path) before a following ``..`` applies, which needs
        a directory there (else FileNotFoundError or NotADirectoryError, as the kernel says);
        the last component need not exist. Raises ValueError for any other absolute path, for a walk
        that passes outside home and /tmp (other than through ``/`` and ``/home``), whether by
        ``..`` or by a symlink, and for symlink loops.
        """
        devbox = self._devbox_abs(path)
        todo = deque(devbox.split("/"))
        cur: list[str] = []  # devbox path walked so far, symlinks resolved
        links = 0
        while todo:
            part = todo.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if cur:
                    # As the kernel: ".." of something that is not there, or not a directory,
                    # is an error (as on the docker runtime), not a textual step back.
                    here = self._area("/" + "/".join(cur))
                    if here is not None and here[2]:
                        where = here[1] / here[2]
                        if not where.exists():
                            raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
                        if not where.is_dir():
                            raise NotADirectoryError(errno.ENOTDIR, "a parent is not a directory", path)
                    cur.pop()
                continue
            cur.append(part)
            area = self._area("/" + "/".join(cur))
            if area is None:
                if cur == ["home"]:  # on the way to /home/user
                    continue
                raise ValueError(
                    f"{path!r}: only paths under {DEVBOX_HOME} and {DEVBOX_TMP} are accessible"
                )
            _, base, rest = area
            if rest and (base / rest).is_symlink():
                links += 1
                if links > 40:
                    raise ValueError(f"{path!r}: too many levels of symbolic links")
                target = os.readlink(base / rest)
                cur.pop()
                if target.startswith("/"):
                    cur = []
                todo.extendleft(reversed(target.split("/")))
        area = self._area("/" + "/".join(cur))
        if area is None:
            raise ValueError(f"{path!r}: only paths under {DEVBOX_HOME} and {DEVBOX_TMP} are accessible")
        _, base, rest = area
        result = base / rest if rest else base
        real_base = os.path.realpath(base)
        real = os.path.realpath(result)
        if real != real_base and not real.startswith(real_base + "/"):
            raise ValueError(f"{path!r} escapes the devbox")  # raced with a new symlink
        return result

    def _open_beneath(self, host: Path, flags: int, mode: int = 0o644, make_parents: bool = False) -> tuple[int, bool]:
        """Open ``host`` (a resolve_path result) walking from its area base without following
        any symlink. Returns (fd, created)."""
        for base in (self.home_dir, self.tmp_dir):
            try:
                rel = host.relative_to(base)
            except ValueError:
                continue
            break
        else:
            raise ValueError("the path is not under the devbox areas")
        parts = rel.parts
        shown = posixpath.join(DEVBOX_HOME if base == self.home_dir else DEVBOX_TMP, *parts)  # never a host path
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a directory", shown)
        dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                except FileNotFoundError:
                    if not make_parents:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=dfd)
                        os.chown(part, self.uid, self.gid, dir_fd=dfd, follow_symlinks=False)
                    except FileExistsError:
                        pass
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                os.close(dfd)
                dfd = nfd
            flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            created = False
            if flags & os.O_CREAT:
                try:
                    fd = os.open(parts[-1], flags | os.O_EXCL, mode, dir_fd=dfd)
                    created = True
                except FileExistsError:
                    fd = os.open(parts[-1], flags & ~os.O_CREAT, mode, dir_fd=dfd)
            else:
                fd = os.open(parts[-1], flags, dir_fd=dfd)
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):  # opening one for reading succeeds: say what it is
                raise IsADirectoryError(errno.EISDIR, "is a directory", shown)
            raise ValueError(f"{shown}: not a regular file")
        os.set_blocking(fd, True)
        return fd, created

    def read_file(self, path: str, max_bytes: int | None = None) -> bytes:
        """Contents of a devbox file (see resolve_path for accepted paths). A file larger than
        ``max_bytes`` raises OSError(EFBIG): a devbox can make a sparse 100 GB file for free,
        and reading it whole would take the simulator's memory with it."""
        fd, _ = self._open_beneath(self.resolve_path(path), os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            # We read as root: a hard link the devbox made to a file it cannot read itself
            # (possible where fs.protected_hardlinks is 0) must not leak that file.
            if st.st_nlink > 1:
                raise ValueError(f"{path!r}: refusing to read a file with several hard links")
            if max_bytes is None:
                return f.read()
            data = f.read(max_bytes + 1)  # the file may grow while we read
            if st.st_size > max_bytes or len(data) > max_bytes:
                raise OSError(errno.EFBIG, f"larger than the {max_bytes} bytes a read may return", path)
            return data

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> Path:
        """Write a devbox file, creating parent directories; new files/dirs belong to uid."""
        host = self.resolve_path(path)
        fd, created = self._open_beneath(host, os.O_WRONLY | os.O_CREAT, mode, make_parents=True)
        try:
            if created:
                os.fchown(fd, self.uid, self.gid)
            elif os.fstat(fd).st_nlink > 1:
                raise ValueError(f"{path!r}: refusing to write a file with several hard links")
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
        return host


# ---------------------------------------------------------------------------------------------


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _wrappers_of(holder: int) -> list[int]:
    """nsenter processes of executions into ``holder`` (found by command line)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = _cmdline(int(entry))
            if len(argv) > 3 and os.path.basename(argv[0]) == "nsenter" and argv[1:3] == ["-t", str(holder)]:
                out.append(int(entry))
    return out


def _scan_holders() -> dict[int, str]:
    """pid -> sandbox name of every holder init, including one already exiting (no command
    line any more), found through its `unshare` parent."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        name = _holder_name(pid)
        if name is not None:
            out[pid] = name
            continue
        argv = _cmdline(pid)
        if (
            len(argv) >= 6
            and os.path.basename(argv[0]) == "unshare"
            and argv[-5:-2] == ["/bin/sh", "-c", _INIT_SCRIPT]
            and argv[-2] == HOLDER_TAG
        ):
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for k in kids:
                out.setdefault(k, argv[-1])
    return out


def find_orphans(marker_prefix: str, known: Collection[str] = ()) -> list[int]:
    """Pids of holder inits whose sandbox name starts with ``marker_prefix`` and is not in
    ``known`` (e.g. left over by a simulator that died)."""
    known = set(known)
    return sorted(
        pid for pid, name in _scan_holders().items() if name.startswith(marker_prefix) and name not in known
    )


def kill_orphans(marker_prefix: str, known: Collection[str] = (), timeout: float = 5.0) -> list[int]:
    """SIGKILL the holders find_orphans() returns (thawing their cgroup first, killing their
    executions' nsenter processes), wait bounded, and remove their cgroups. Returns the pids."""
    known = set(known)
    names = {
        pid: name
        for pid, name in _scan_holders().items()
        if name.startswith(marker_prefix) and name not in known
    }
    deadline = time.monotonic() + timeout
    for pid, name in names.items():
        for kind, path in _Freezer.candidates(name):
            if os.path.isdir(path):
                try:
                    _Freezer(kind, path).thaw()
                except OSError:
                    pass
        for p in (pid, *_wrappers_of(pid)):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid, name in names.items():
        _wait_gone(pid, deadline)
        for kind, path in _Freezer.candidates(name):
            if os.path.isdir(path):
                _Freezer(kind, path).remove(min(deadline, time.monotonic() + 1))
        limits = SandboxLimits.find(name)
        if limits is not None:
            limits.remove(min(deadline, time.monotonic() + 1))
    _remove_dead_cgroups(marker_prefix, known)
    return sorted(names)


def _remove_dead_cgroups(marker_prefix: str, known: Collection[str]) -> None:
    """Remove the cgroups of sandboxes that are not known and whose holder died with a crash
    (kill_orphans only sees live holders). A live holder's sandbox keeps them even when they
    are empty (the holder itself is in none of them); rmdir refuses one that has tasks."""
    alive = set(_scan_holders().values())
    names = set(SandboxLimits.names())
    for _kind, parent in _Freezer.candidates(""):
        try:
            names.update(e.name for e in os.scandir(parent) if e.is_dir())
        except OSError:
            pass
    for name in sorted(names):
        if not name.startswith(marker_prefix) or name in known or name in alive:
            continue
        for _kind, path in _Freezer.candidates(name):
            if os.path.isdir(path):
                remove_cgroup(path, time.monotonic())
        limits = SandboxLimits.find(name)
        if limits is not None:
            limits.remove(time.monotonic())
