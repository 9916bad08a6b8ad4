"""Reading a command's output without trusting the command.

Devbox commands are untrusted: they may print without end (``yes``) or leave a background child
that keeps the output pipes open forever (``server &``). So nothing here reads "until EOF"
without a bound, and nothing keeps more output than a caller's cap:

* ``OutputDrain``: ONE daemon thread reads a process's stdout and stderr (``poll``) and hands
  every chunk to a callback. ``finish(grace)``, called once the process has exited, lets it read
  until both pipes reach EOF or ``grace`` seconds pass, whichever is first; then it stops
  reading and closes the read ends (a background child still writing gets EPIPE). No thread and
  no descriptor outlives ``finish``.
* ``run_to_completion``: run a command to its end, bounded by a timeout (the process group is
  killed then), its output decoded incrementally (UTF-8, invalid bytes as U+FFFD) and capped at
  ``max_bytes`` per stream; each piece of text goes to ``on_text``, which keeps what it needs.
  Launch commands and blueprint build steps use it; executions use ``OutputDrain`` directly.
* ``signal_group``: signal a command's process group, never a pid <= 0 (``killpg(0)`` would be
  the simulator's own group).
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("devbox_sim.command_output")

STREAMS = ("stdout", "stderr")
READ_BYTES = 65536
# After the process exits, how long its pipes may stay open (a background child holding them)
# before they are closed under it. Output written by then is kept.
OUTPUT_GRACE_SECONDS = 1.0
MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # per stream, as for executions
KILL_WAIT_SECONDS = 10.0  # after SIGKILL, how long to wait for the exit to be reported
# finish(): the drain thread stops at the grace deadline; this bounds the join on top of it
# (the callback is quick, so it is only a safety net).
JOIN_MARGIN_SECONDS = 5.0


def signal_group(proc, sig: int) -> bool:
    """Send ``sig`` to the command's process group (the runtimes start every command as the
    leader of its own group). Never signals pid <= 0; False if nothing was signalled.

    A runtime whose group leader is a wrapper that must outlive a catchable signal (netns:
    ``netns.sandbox.ExecProcess``) gives its process a ``signal_command(sig)``; every signal
    but SIGKILL goes through it. A runtime that must check the group's members itself
    (docker: ``DockerProcess.signal_group``, once the leader is gone) gives its process a
    ``signal_group(sig)``, used for every signal."""
    group = getattr(proc, "signal_group", None)  # a runtime that must vet the group (docker)
    if group is not None:
        return group(sig)
    command = getattr(proc, "signal_command", None)
    if command is not None and sig != signal.SIGKILL:
        return command(sig)
    pid = getattr(proc, "pid", None)
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False  # already gone


class OutputDrain:
    """Reads ``pipes`` (``{name: file}``) on one thread; ``on_chunk(name, bytes)`` per read."""

    def __init__(self, pipes: dict[str, object], on_chunk: Callable[[str, bytes], None], name: str = "drain"):
        self._pipes = {pipe.fileno(): (stream, pipe) for stream, pipe in pipes.items() if pipe is not None}
        self._on_chunk = on_chunk
        self._deadline: float | None = None
        # finish() wakes the thread through an eventfd (one descriptor, only while it reads).
        self._wake: int | None = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._wake_lock = threading.Lock()  # closed under it: a stale write would hit a reused fd
        self._eof = False
        self.done = threading.Event()  # the thread ended: every pipe is closed
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def finish(self, grace: float = OUTPUT_GRACE_SECONDS) -> bool:
        """The process exited: read on until EOF or for ``grace`` seconds at most, then close.
        True when both pipes reached EOF (all output was read). Bounded; idempotent."""
        with self._wake_lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + grace
                if self._wake is not None:  # else the thread ended already
                    os.eventfd_write(self._wake, 1)
        self.done.wait(grace + JOIN_MARGIN_SECONDS)
        return self.eof

    @property
    def eof(self) -> bool:
        return self.done.is_set() and self._eof

    def _run(self) -> None:
        poller = select.poll()
        wake = self._wake
        poller.register(wake, select.POLLIN)
        for fd in self._pipes:
            poller.register(fd, select.POLLIN)
        try:
            while self._pipes:
                deadline = self._deadline
                if deadline is None:
                    timeout_ms = None
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return  # grace over: what still holds the pipes gets no more reads
                    timeout_ms = max(1, int(remaining * 1000) + 1)
                for fd, _ in poller.poll(timeout_ms):
                    if fd == wake:
                        try:
                            os.eventfd_read(wake)
                        except BlockingIOError:
                            pass
                        continue
                    if fd not in self._pipes:
                        continue
                    try:
                        chunk = os.read(fd, READ_BYTES)  # readable (or hung up): does not block
                    except OSError:
                        chunk = b""
                    stream, pipe = self._pipes[fd]
                    if chunk:
                        try:
                            self._on_chunk(stream, chunk)
                        except Exception:
                            log.exception("output callback failed")
                    else:  # EOF
                        poller.unregister(fd)
                        del self._pipes[fd]
                        pipe.close()
            self._eof = True
        finally:
            for _, pipe in self._pipes.values():
                try:
                    pipe.close()
                except OSError:
                    pass
            self._pipes.clear()
            with self._wake_lock:
                os.close(wake)
                self._wake = None
            self.done.set()


@dataclass
class Completed:
    returncode: int | None  # as Popen reports it (-N for signal N); None: never reported
    timed_out: bool = False
    truncated: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(STREAMS, False))
    all_output_read: bool = True  # False: a background child kept a pipe open past the grace


class _Decoder:
    """One stream: bytes in (capped), whole characters out."""

    def __init__(self, max_bytes: int):
        self.room = max_bytes
        self.truncated = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> str:
        if len(chunk) > self.room:
            chunk, self.truncated = chunk[: self.room], True
        self.room -= len(chunk)
        return self._decoder.decode(chunk) if chunk else ""

    def finish(self) -> str:
        return self._decoder.decode(b"", final=True)


def run_to_completion(
    proc,
    *,
    timeout: float,
    on_text: Callable[[str, str], None],
    max_bytes: int = MAX_OUTPUT_BYTES,
    grace: float = OUTPUT_GRACE_SECONDS,
    name: str = "command",
) -> Completed:
    """Wait for ``proc`` (stdin closed) to exit, at most ``timeout`` seconds (then its process
    group is killed and ``timed_out`` is set); ``on_text(stream, text)`` gets its output as it
    arrives, at most ``max_bytes`` per stream (the rest is read and dropped, so the command
    never blocks on a full pipe). Returns once the output is read, or ``grace`` seconds after
    the exit if a background child keeps the pipes open. ``on_text`` is called from the drain
    thread, never after this returns."""
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    decoders = {stream: _Decoder(max_bytes) for stream in STREAMS}

    def on_chunk(stream: str, chunk: bytes) -> None:
        text = decoders[stream].feed(chunk)
        if text:
            on_text(stream, text)

    drain = OutputDrain({"stdout": proc.stdout, "stderr": proc.stderr}, on_chunk, name=f"output-{name}")
    timed_out = False
    try:
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            signal_group(proc, signal.SIGKILL)
            try:
                returncode = proc.wait(KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                returncode = None
    finally:
        read_all = drain.finish(grace)
    if not drain.done.is_set():
        log.warning("the output reader of %s did not stop", name)
    else:  # only now: on_text is never called concurrently with (or after) this
        for stream, decoder in decoders.items():
            rest = decoder.finish()
            if rest:
                on_text(stream, rest)
    return Completed(
        returncode=returncode,
        timed_out=timed_out,
        truncated={stream: decoder.truncated for stream, decoder in decoders.items()},
        all_output_read=read_all,
    )
