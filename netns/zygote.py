"""Fork sandbox holders from a small helper process (a "zygote") instead of the simulator.

Why: a sandbox's first process must run Python code between fork and exec (setns, unshare,
mounts: netns/sandbox_setup.py). ``subprocess`` can only do that with ``preexec_fn``, which
makes it ``fork()`` the whole simulator (page tables of its ~60 MB heap and all), measured
at 6-10 ms per devbox, most of a devbox's start. The zygote is a bare Python process (stdlib
plus sandbox_setup) started once: forking it costs a fraction of a millisecond.

Protocol, over a SOCK_SEQPACKET socketpair (one datagram per message):

    simulator -> zygote   {"argv": [...], "env": {...}, "plan": {...}}
    zygote    -> simulator {"pid": N}  + SCM_RIGHTS: the read end of the child's stdout+stderr
                 or        {"error": "..."}

The child is the leader of a new session (killing its process group kills the holder), has
stdin on /dev/null, no other descriptors, and default signal dispositions; it runs
``sandbox_setup.prepare(plan)`` and execs ``argv``; a setup error is printed on its output
and it exits 111. The zygote ignores SIGCHLD, so its finished children are reaped by the
kernel; it exits when the simulator's end of the socket closes (the simulator died or closed
it). Callers watch holders through /proc (``Sandbox`` does), never through wait().
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_TIMEOUT_S = 10.0
_MAX_MSG = 1 << 20


class Spawner:
    """The simulator's handle on one zygote (started on first use, restarted if it died).
    Thread-safe: requests are serialised (each is one fork, well under a millisecond)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        with self._lock:
            self._ensure()

    def spawn(self, argv: list[str], env: dict[str, str], plan: dict | None) -> tuple[int, int]:
        """Fork+exec a sandbox holder; returns (pid, fd of its stdout+stderr, caller closes)."""
        request = json.dumps({"argv": argv, "env": env, "plan": plan}).encode()
        with self._lock:
            self._ensure()
            assert self._sock is not None
            try:
                self._sock.sendall(request)
                msg, fds, _flags, _addr = socket.recv_fds(self._sock, _MAX_MSG, 1)
            except OSError:
                self._close_locked()  # a broken zygote: the next request starts a new one
                raise
            if not msg:
                self._close_locked()
                raise OSError("the sandbox zygote exited")
        reply = json.loads(msg)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise OSError(reply["error"])
        return reply["pid"], fds[0]

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._close_locked()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            boot = f"import sys; sys.path.insert(0, {str(_ROOT)!r}); from netns.zygote import main; main({theirs.fileno()})"
            # -I -S: no environment, no site-packages: the zygote's size is every fork's cost.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", boot],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(_TIMEOUT_S)
        self._sock = ours

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the zygote sees EOF and exits
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


_default: Spawner | None = None
_default_lock = threading.Lock()


def default() -> Spawner:
    """The process-wide spawner."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Spawner()
        return _default


# --------------------------------------------------------------------------- zygote side


def main(fd: int) -> None:
    from netns import sandbox_setup

    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the simulator
    while True:
        try:
            msg = sock.recv(_MAX_MSG)
        except OSError:
            return
        if not msg:
            return  # the simulator closed its end
        r = w = -1
        try:
            request = json.loads(msg)
            r, w = os.pipe()
            pid = os.fork()
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            for fd in (r, w):  # a failed fork must not leak the pipe (EAGAIN under a pids limit)
                if fd >= 0:
                    os.close(fd)
            sock.sendall(json.dumps({"error": f"fork failed: {exc}"}).encode())
            continue
        if pid == 0:
            _child(request, w, sandbox_setup)
        os.close(w)
        try:
            socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [r])
        except OSError:
            # The simulator is gone (killed mid-spawn): nobody would track this child, nor
            # the holder it may have started in its own group already.
            for kill in (os.kill, os.killpg):
                try:
                    kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        finally:
            os.close(r)


def _child(request: dict, w: int, sandbox_setup) -> None:
    try:
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        if request.get("plan") is not None:  # None: a plain fork+exec (tests)
            sandbox_setup.prepare(request["plan"])
        os.execve(request["argv"][0], request["argv"], request["env"])
    except BaseException as exc:  # noqa: BLE001 - reported through the pipe
        try:
            os.write(2, f"sandbox setup failed: {exc}\n".encode())
        finally:
            os._exit(111)
    os._exit(111)


__all__ = ["Spawner", "default"]
