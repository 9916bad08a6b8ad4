"""A command while it runs: its process, its output so far and its stdin.

Reader threads ``feed`` output in; request threads read it (the view, the SSE streams, the
logs) and write stdin. Everything about the output is guarded by one lock, so a reader of
the output sees either the running state or the completed one, never a mix; stdin has its
own lock, so that sends are written one after the other, in order.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

from simulator import clock, devbox_logs
from simulator.command_output import signal_group
from simulator.devbox_model import Execution
from simulator.errors import Conflict, InvalidRequest
from simulator.output_buffer import OutputBuffer, boundary_after

STREAMS = ("stdout", "stderr")
COMPLETED = "completed"


class LiveExecution:
    def __init__(self, execution: Execution, proc: subprocess.Popen, max_output_bytes: int, attach_stdin: bool,
                 *, log_source: str = "exec", spill_dir: Path | None = None):
        self.execution = execution
        self.proc = proc
        self.attach_stdin = attach_stdin
        self.done = threading.Event()  # set once the completed execution is stored
        self._lock = threading.Lock()  # guards _output, _lines and _final
        self._output = {name: OutputBuffer(max_output_bytes, spill_dir) for name in STREAMS}
        self._released = False  # the buffers are given back: the output is _final's (release_output)
        self._lines = devbox_logs.LineLog(log_source, execution.command, execution.id)
        self.on_complete = None  # called with the stored (final) execution once it completed
        self._final: Execution | None = None
        self._stdin_lock = threading.Lock()
        # EOF asked for while a write held the lock: the writer closes stdin when it is done.
        self._eof_pending = False
        if proc.stdin is not None and not attach_stdin:
            proc.stdin.close()  # nobody will write to it: the command reads EOF at once

    @property
    def id(self) -> str:
        return self.execution.id

    def belongs_to(self, account: str, devbox_id: str) -> bool:
        return self.execution.account == account and self.execution.devbox_id == devbox_id

    def view(self) -> Execution:
        with self._lock:
            return self._final or self.execution

    @property
    def completed(self) -> bool:
        with self._lock:
            return self._final is not None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.returncode is not None:
            return
        # The runtime starts each command as the leader of its own process group; a pid <= 0
        # (a docker exec that never started) is never signalled: killpg(0) is our own group.
        signal_group(self.proc, sig)

    # --- output ----------------------------------------------------------------------------

    def feed(self, stream: str, chunk: bytes) -> bool:
        """Output the command wrote; True when new text became readable."""
        with self._lock:
            if self._final is not None:
                return False  # completed without this (a background child kept the pipe): drop
            buffer = self._output[stream]
            before = buffer.size
            if not buffer.feed(chunk):
                return False  # only part of a character so far, or beyond the cap
            self._lines.add(stream, buffer.read(before).decode("utf-8"))
            return True

    def complete(self, exit_status: int) -> tuple[Execution, list[devbox_logs.LogEntry]]:
        """The command ended: its final view and its log entries (to store together)."""
        with self._lock:
            for stream, buffer in self._output.items():
                before = buffer.size
                buffer.finish()  # a trailing partial character becomes U+FFFD
                self._lines.add(stream, buffer.read(before).decode("utf-8"))
            self._final = replace(
                self.execution,
                status=COMPLETED,
                exit_status=exit_status,
                stdout=self._output["stdout"].text(),
                stderr=self._output["stderr"].text(),
                stdout_truncated=self._output["stdout"].truncated,
                stderr_truncated=self._output["stderr"].truncated,
                end_time_ms=clock.now_ms(),
            )
            return self._final, self._lines.finish(exit_status)

    def read_from(self, stream: str, position: int) -> tuple[bytes, int, bool]:
        """(output from ``position``, moved to the next character boundary; that start;
        whether the command completed, so that this is all of the rest)."""
        with self._lock:  # copied under the lock: readers append to the buffer
            if self._released:
                data = (getattr(self._final, stream) or "").encode("utf-8")
                start = boundary_after(data, position)
                return data[start:], start, True
            buffer = self._output[stream]
            start = buffer.start_at(position)
            return buffer.read(start), start, self._final is not None

    def has_more(self, stream: str, position: int) -> bool:
        """Output beyond ``position``, or completed? (Cheap: no copy.)"""
        with self._lock:
            return self._final is not None or self._output[stream].size > position

    def release_output(self) -> None:
        """The completed output is stored: give back the buffers (their spill files). A
        reader that still holds this object is served the final text."""
        with self._lock:
            if self._final is None or self._released:
                return
            self._released = True
            for buffer in self._output.values():
                buffer.close()

    def log_entries(self) -> list[devbox_logs.LogEntry]:
        """Log entries so far; none once completed (they are stored with the result)."""
        with self._lock:
            return [] if self._final is not None else list(self._lines.entries)

    # --- stdin -----------------------------------------------------------------------------

    def write_stdin(self, data: bytes, seconds: float) -> bool:
        """Write ``data`` to the command's stdin; False when nobody reads it any more. One write
        at a time: another one meanwhile is a 409 at once, not a wait in line (each waiting
        write would hold a thread for up to ``seconds``)."""
        if not self._stdin_lock.acquire(blocking=False):
            raise Conflict(f"another write to the stdin of execution {self.id} is under way; send after it",
                           code="stdin_busy")
        try:
            stdin = self.proc.stdin
            if stdin is None or stdin.closed or self._eof_pending:
                raise InvalidRequest(f"the stdin of execution {self.id} was closed (EOF was sent)", code="stdin_closed")
            return _write_all(stdin.fileno(), data, seconds, self.id)
        finally:
            self._stdin_lock.release()
            if self._eof_pending:  # read after the release: see close_stdin
                self.close_stdin()

    def close_stdin(self) -> None:
        """EOF for the command (idempotent). Never waits for a write in progress (up to
        ``seconds`` on a command that does not read): that write closes stdin when it ends."""
        # The flag is set before trying the lock and a writer reads it after releasing the
        # lock, so one of the two always sees the other and stdin is closed exactly once.
        self._eof_pending = True
        if not self._stdin_lock.acquire(blocking=False):
            return
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        finally:
            self._stdin_lock.release()


def _write_all(fd: int, data: bytes, seconds: float, execution_id: str) -> bool:
    """Write everything to a pipe without blocking longer than ``seconds``; False if the
    reader is gone. A command that does not read for that long gets a 409 (what was written
    stays written: a pipe cannot take bytes back)."""
    deadline = time.monotonic() + seconds
    view = memoryview(data)
    os.set_blocking(fd, False)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
                continue
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return False
            remaining = deadline - time.monotonic()
            # poll, not select: select cannot watch a descriptor of 1024 or more (ValueError).
            writable = select.poll()
            writable.register(fd, select.POLLOUT)
            if remaining <= 0 or not writable.poll(remaining * 1000):
                raise Conflict(
                    f"execution {execution_id} has not read its stdin for {seconds:g} s; "
                    f"{len(data) - len(view)} of {len(data)} bytes were written",
                    code="stdin_full",
                )
        return True
    finally:
        os.set_blocking(fd, True)
