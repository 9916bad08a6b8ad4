"""A ``docker exec`` that looks like ``subprocess.Popen`` to the execution service.

The execution service reads ``proc.stdout``/``proc.stderr`` with ``os.read(fileno())``, writes
and closes ``proc.stdin``, calls ``wait()`` and kills with ``os.killpg(proc.pid, SIGKILL)``. So:

- stdin, stdout and stderr are real OS pipes; two pump threads move bytes between them and
  the exec's hijacked API connection (docker multiplexes stdout/stderr into frames with an
  8-byte header: stream, 3 zero bytes, big-endian length). Closing ``stdin`` half-closes the
  connection, which docker turns into EOF on the command's stdin.
- ``pid`` is the command's pid in the host's PID namespace (from ``exec inspect``); 0 for an
  exec that never started, which then already has its ``returncode`` (nothing to signal: a
  pid <= 0 is never signalled, ``killpg(0)`` would hit the simulator's own group). runc
  starts every exec'd process with ``setsid``, so it leads its own process group and
  ``killpg(pid)`` kills the command with its children, exactly as for a netns sandbox.
- ``wait()`` follows the process itself (a pidfd), not the output: a background child that
  keeps stdout open must not keep the command "running". ``OUTPUT_GRACE_SECONDS`` after the
  exit, the connection is shut down (the child's later output is lost, as on netns). The exit code then comes from
  docker (128 + N for a signal, like a shell; Popen would say -N).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time

from netns.sandbox import group_members
from simulator.command_output import OUTPUT_GRACE_SECONDS

# Bounded polls on docker's exec state: the process starts (pid known) and its exit is recorded
# a moment after the hijacked connection answers / the pid dies. Never an unbounded wait.
START_TIMEOUT_SECONDS = 10.0
EXIT_RECORD_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.002


class ExecFailed(RuntimeError):
    pass


class DockerProcess:
    def __init__(self, api, exec_id: str, args: list[str], container_pid: int = 0):
        """``container_pid``: the container's init, whose cgroup is every exec's (0: unknown)."""
        self.args = args
        self.returncode: int | None = None
        self._api = api
        self._exec_id = exec_id
        self._exited = threading.Event()
        self._sock = api.exec_start(exec_id, socket=True)
        response = getattr(self._sock, "_response", None)
        # Read through the HTTP response's buffered reader: it may already hold the first
        # output bytes, read together with the response headers.
        self._reader = response.raw._fp.fp if response is not None else self._sock
        self._raw = getattr(self._sock, "_sock", self._sock)  # the socket, for writes and half-close
        # The API client's request timeout (60 s) came with the socket: a command quiet for
        # that long would have its stream cut, later output and stdin lost. A command runs for
        # as long as it runs; its end is seen through its pidfd, a removed container closes it.
        self._raw.settimeout(None)
        in_r, in_w = os.pipe()
        out_r, self._out_w = os.pipe()
        err_r, self._err_w = os.pipe()
        self.stdin = os.fdopen(in_w, "wb")
        self.stdout = os.fdopen(out_r, "rb")
        self.stderr = os.fdopen(err_r, "rb")
        self._stdin_r = in_r
        self._pidfd: int | None = None
        self._pidfd_lock = threading.Lock()  # closed under it: a signal never uses a stale fd
        self._cgroup = _cgroup_of(container_pid) if container_pid > 0 else ""
        try:
            self.pid, exited = self._started()
            if self.pid > 0 and not exited:
                # Held from now on: while it is open and not readable the leader lives, so its
                # pid (and process group id) cannot have been reused (see signal_group).
                try:
                    self._pidfd = os.pidfd_open(self.pid)
                except ProcessLookupError:
                    pass  # the leader is gone already (its background children may not be)
        except BaseException:
            self._close_everything()
            raise
        if exited:
            # Already over (or never started: pid 0): the exit code is known before anyone can
            # signal, so ``returncode`` is never None for a process that is not there.
            self._record_exit()
        self._pump = threading.Thread(target=self._pump_out, name=f"exec-out-{exec_id[:12]}", daemon=True)
        self._pump.start()
        threading.Thread(target=self._pump_in, name=f"exec-in-{exec_id[:12]}", daemon=True).start()
        if not exited:
            threading.Thread(target=self._wait_exit, name=f"exec-wait-{exec_id[:12]}", daemon=True).start()

    # --- Popen API ---------------------------------------------------------------------------

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, input: bytes | None = None, timeout: float | None = None):  # noqa: A002
        """Like Popen.communicate: feed ``input``, read both streams to EOF, wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.stdin.closed:
            try:
                if input:
                    self.stdin.write(input)
                self.stdin.close()
            except BrokenPipeError:
                pass
        results: dict[str, bytes] = {}

        def drain(name: str, pipe) -> None:
            results[name] = pipe.read()

        readers = [threading.Thread(target=drain, args=(n, p), daemon=True)
                   for n, p in (("out", self.stdout), ("err", self.stderr)) if not p.closed]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return results.get("out", b""), results.get("err", b"")

    def send_signal(self, sig: int) -> None:
        # Never pid <= 0 (kill(0) would signal the simulator's own process group), and only
        # through the pidfd: a dead leader's pid may already be another process's.
        with self._pidfd_lock:
            if self.returncode is None and self._pidfd is not None:
                try:
                    signal.pidfd_send_signal(self._pidfd, sig)
                except OSError:
                    pass

    def signal_group(self, sig: int) -> bool:
        """``sig`` to the command's process group (command_output.signal_group uses this).

        While the leader lives, its group id cannot have been reused: killpg. Once it is gone
        (its background children may live on, in its group), the pid may be reused by any new
        process, another devbox's command included, so the group's members are looked up one
        by one and signalled only if they are in this container's cgroup."""
        if self.pid <= 0:
            return False
        with self._pidfd_lock:
            if self._pidfd is not None and not self._leader_gone():
                try:
                    os.killpg(self.pid, sig)
                    return True
                except (ProcessLookupError, PermissionError):
                    return False
        sent = False
        for pid in group_members(self.pid):
            if self._cgroup and _cgroup_of(pid) == self._cgroup:
                try:
                    os.kill(pid, sig)
                    sent = True
                except (ProcessLookupError, PermissionError):
                    pass
        return sent

    def _leader_gone(self) -> bool:
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # --- plumbing ----------------------------------------------------------------------------

    def _inspect(self) -> dict:
        return self._api.exec_inspect(self._exec_id)

    def _started(self) -> tuple[int, bool]:
        """(host pid, already exited); polls until docker reports the process."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            state = self._inspect()
            if state.get("Pid"):
                return int(state["Pid"]), not state.get("Running", False) and state.get("ExitCode") is not None
            if not state.get("Running") and state.get("ExitCode") is not None:
                return 0, True  # failed to start (e.g. no such working directory)
            if time.monotonic() > deadline:
                raise ExecFailed(f"exec {self._exec_id[:12]} did not start within {START_TIMEOUT_SECONDS:g} s")
            time.sleep(POLL_SECONDS)  # bounded poll: docker has no "started" event for execs

    def _wait_exit(self) -> None:
        if self._pidfd is not None:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            poller.poll()  # readable once the process has exited
        # A background child may hold the exec's output (docker keeps the connection open for
        # it): after the grace the connection is cut, so the pump thread, its pipes and the
        # socket end now rather than with the child or the container. (Docker itself waits
        # for such an exec's streams, ~4 s, one exec of a container after the other, before
        # it records the exit; EXIT_RECORD_TIMEOUT_SECONDS bounds that wait here.)
        self._pump.join(OUTPUT_GRACE_SECONDS)
        if self._pump.is_alive():
            try:
                self._raw.shutdown(socket.SHUT_RDWR)  # the pump reads EOF and closes everything
            except OSError:
                pass
        self._record_exit()

    def _record_exit(self) -> None:
        """The process is gone: the exit code docker recorded (bounded poll)."""
        code = None
        deadline = time.monotonic() + EXIT_RECORD_TIMEOUT_SECONDS
        while code is None and time.monotonic() < deadline:
            try:
                state = self._inspect()
            except Exception:  # the container (and with it the exec) was removed: killed
                code = 128 + signal.SIGKILL
                break
            if not state.get("Running") and state.get("ExitCode") is not None:
                code = int(state["ExitCode"])
            else:
                time.sleep(POLL_SECONDS)  # bounded poll: docker records the exit a moment later
        self.returncode = code if code is not None else 128 + signal.SIGKILL
        self._close_pidfd()
        self._exited.set()

    def _close_pidfd(self) -> None:
        with self._pidfd_lock:
            pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)

    def _pump_out(self) -> None:
        targets = {1: self._out_w, 2: self._err_w}
        try:
            while True:
                header = self._read_exact(8)
                if header is None:
                    break
                stream, length = header[0], struct.unpack(">I", header[4:])[0]
                data = self._read_exact(length) if length else b""
                if data is None:
                    break
                fd = targets.get(stream)
                if fd is not None:
                    try:
                        _write_all(fd, data)
                    except BrokenPipeError:
                        targets[stream] = None  # the reader went away: drop this stream's output
        except OSError:
            pass  # the connection was closed under us (container removed)
        finally:
            for fd in (self._out_w, self._err_w):
                _close_quietly(fd)
            self._close_socket()

    def _read_exact(self, n: int) -> bytes | None:
        chunks, size = [], 0
        while size < n:
            chunk = self._reader.read1(n - size) if hasattr(self._reader, "read1") else self._reader.read(n - size)
            if not chunk:
                return None
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _pump_in(self) -> None:
        try:
            while chunk := os.read(self._stdin_r, 65536):
                self._raw.sendall(chunk)
        except OSError:
            pass
        finally:
            _close_quietly(self._stdin_r)
            try:
                self._raw.shutdown(socket.SHUT_WR)  # docker: EOF on the command's stdin
            except OSError:
                pass

    def _close_socket(self) -> None:
        try:
            self._sock.close()
            response = getattr(self._sock, "_response", None)
            if response is not None:
                response.close()
        except Exception:
            pass

    def _close_everything(self) -> None:
        self._close_pidfd()
        for pipe in (self.stdin, self.stdout, self.stderr):
            pipe.close()
        for fd in (self._stdin_r, self._out_w, self._err_w):
            _close_quietly(fd)
        self._close_socket()


def _cgroup_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f.read()
    except OSError:
        return ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
