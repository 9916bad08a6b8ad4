"""The execution service: commands run in a devbox, one method per API action.

A command starts through ``runtime.exec`` and is followed by three daemon threads: one per
output pipe (bytes are appended to an in-memory buffer, capped per stream) and one that waits
for the exit, then records the completed execution in SQLite and wakes the long polls.
Output is kept whole up to the cap, so ``*_truncated`` is false in practice and the SDK never
needs the SSE streams to see everything.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import zlib
from dataclasses import replace

import anyio.to_thread

from simulator import clock, execution_store, ids
from simulator.db import Database
from simulator.devbox_model import Devbox, Execution
from simulator.devboxes import DevboxService, _check_text, hold_seconds
from simulator.errors import InvalidRequest, NotFound, RequestTimeout
from simulator.runtime.base import RuntimeFailure
from simulator.watch import Watch

log = logging.getLogger("devbox_sim.executions")

ID_PREFIX = "exn"
QUEUED, RUNNING, COMPLETED = "queued", "running", "completed"
STATUSES = (QUEUED, RUNNING, COMPLETED)
MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # per stream; beyond it the rest is dropped, *_truncated true
WAIT_MAX_SECONDS = 25.0  # execution long polls: the SDK's read timeout is the hold + 5 s
EXECUTE_SYNC_MAX_SECONDS = 600.0  # the SDK gives execute_sync a 600 s timeout
KILLED = 128 + signal.SIGKILL  # what a shell reports for a SIGKILLed command: 137
# After the process exits, how long to wait for its pipes to reach EOF. A background child
# that inherited stdout could otherwise keep the execution "running" forever.
OUTPUT_GRACE_SECONDS = 1.0
FINISH_WAIT_SECONDS = 5.0  # kill / devbox shutdown: how long to wait for the exit to be recorded


def watch_key(execution_id: str) -> str:
    return f"execution:{execution_id}"


def exit_status(returncode: int) -> int:
    """Popen reports death by signal N as -N; a shell (and Runloop) reports 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


class _Live:
    """A command still running: its process and the output read so far."""

    def __init__(self, execution: Execution, proc: subprocess.Popen):
        self.execution = execution
        self.proc = proc
        self.lock = threading.Lock()
        self.output = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated = {"stdout": False, "stderr": False}
        self.final: Execution | None = None
        self.done = threading.Event()

    def view(self) -> Execution:
        return self.final or self.execution

    def kill(self) -> None:
        if self.proc.returncode is not None:
            return
        try:
            # The runtime starts each command as the leader of its own process group.
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # already gone


class ExecutionService:
    def __init__(
        self,
        db: Database,
        devboxes: DevboxService,
        watch: Watch | None = None,
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ):
        self.db = db
        self.devboxes = devboxes
        self.watch = watch or devboxes.watch
        self.max_output_bytes = max_output_bytes
        self._live: dict[str, _Live] = {}
        self._live_lock = threading.Lock()
        # Starting a command is serialised per devbox (striped), so that two attempts with
        # the same command_id or x-request-id cannot both start it.
        self._start_locks = [threading.Lock() for _ in range(64)]
        devboxes.add_terminal_hook(self._devbox_finished)
        with db.transaction() as conn:
            # Commands of a previous simulator process: their pipes are gone, and so (with
            # the devbox runtime's processes) are they. Report them killed.
            stale = execution_store.complete_unfinished(conn, KILLED, clock.now_ms())
        if stale:
            log.warning("%d executions from a previous run were marked completed (killed)", stale)

    # --- API actions -------------------------------------------------------------------

    def execute_async(self, account: str, devbox_id: str, command: str, request_id: str | None = None) -> Execution:
        return self._start(account, devbox_id, command, command_id=None, request_id=request_id)

    async def execute(
        self,
        account: str,
        devbox_id: str,
        command: str,
        command_id: str,
        optimistic_timeout: float | None = None,
        request_id: str | None = None,
    ) -> Execution:
        """Start (or find, by ``command_id``) the command; hold up to the timeout for it to end."""
        hold = hold_seconds(optimistic_timeout, WAIT_MAX_SECONDS, WAIT_MAX_SECONDS)
        execution = await anyio.to_thread.run_sync(self._start, account, devbox_id, command, command_id, request_id)
        done = await self.watch.wait(watch_key(execution.id), self._status_check(account, execution, {COMPLETED}), hold)
        return done or await anyio.to_thread.run_sync(self.retrieve_execution, account, devbox_id, execution.id)

    async def execute_sync(self, account: str, devbox_id: str, command: str, request_id: str | None = None) -> Execution:
        execution = await anyio.to_thread.run_sync(self._start, account, devbox_id, command, None, request_id)
        done = await self.watch.wait(
            watch_key(execution.id), self._status_check(account, execution, {COMPLETED}), EXECUTE_SYNC_MAX_SECONDS
        )
        if done is None:
            raise RequestTimeout(
                f"execution {execution.id} still runs after {EXECUTE_SYNC_MAX_SECONDS:g} s; use execute_async"
            )
        return done

    def retrieve_execution(self, account: str, devbox_id: str, execution_id: str) -> Execution:
        with self._live_lock:
            live = self._live.get(execution_id)
        if live is not None and live.execution.account == account and live.execution.devbox_id == devbox_id:
            return live.view()
        with self.db.read() as conn:
            execution = execution_store.get(conn, account, devbox_id, execution_id)
        if execution is None:
            self.devboxes.retrieve_devbox(account, devbox_id)  # an unknown devbox says so
            raise NotFound(f"execution {execution_id!r} not found on devbox {devbox_id}")
        return execution

    async def wait_for_status(
        self, account: str, devbox_id: str, execution_id: str, statuses: list[str], timeout_seconds: float | None = None
    ) -> Execution:
        """Hold until the execution's status is one of ``statuses``; 408 (retry) on timeout."""
        wanted = _check_statuses(statuses)
        timeout = hold_seconds(timeout_seconds, WAIT_MAX_SECONDS, WAIT_MAX_SECONDS)
        execution = await anyio.to_thread.run_sync(self.retrieve_execution, account, devbox_id, execution_id)
        done = await self.watch.wait(watch_key(execution_id), self._status_check(account, execution, wanted), timeout)
        if done is None:
            raise RequestTimeout(f"execution {execution_id} is not {'/'.join(sorted(wanted))} after {timeout:g} s; ask again")
        return done

    def kill_execution(self, account: str, devbox_id: str, execution_id: str) -> Execution:
        """Kill the command's whole process group and return it completed (exit 137)."""
        execution = self.retrieve_execution(account, devbox_id, execution_id)
        with self._live_lock:
            live = self._live.get(execution_id)
        if live is None:
            return execution  # already completed
        live.kill()
        if not live.done.wait(FINISH_WAIT_SECONDS):
            log.warning("execution %s did not finish within %s s of SIGKILL", execution_id, FINISH_WAIT_SECONDS)
        return live.view()

    # --- running a command -------------------------------------------------------------

    def _start(
        self, account: str, devbox_id: str, command: str, command_id: str | None, request_id: str | None
    ) -> Execution:
        _check_text("command", command)
        devbox = self.devboxes.require_running(account, devbox_id)
        runtime = self.devboxes.require_runtime()
        with self._start_locks[zlib.crc32(devbox_id.encode()) % len(self._start_locks)]:
            with self.db.read() as conn:
                previous = None
                if command_id:
                    previous = execution_store.by_command_id(conn, account, devbox_id, command_id)
                if previous is None and request_id:
                    previous = execution_store.by_request_id(conn, account, request_id)
            if previous is not None:
                return self.retrieve_execution(account, devbox_id, previous.id)
            execution = Execution(
                id=ids.new_id(ID_PREFIX),
                account=account,
                devbox_id=devbox_id,
                command=command,
                status=RUNNING,
                create_time_ms=clock.now_ms(),
                command_id=command_id,
            )
            try:
                proc = runtime.exec(devbox_id, command, env=dict(devbox.environment_variables))
            except RuntimeFailure as exc:
                raise InvalidRequest(f"cannot run a command on devbox {devbox_id}: {exc}", code="devbox_not_running")
            if proc.stdin is not None:
                proc.stdin.close()  # stdin is not offered yet (send_std_in): commands read EOF
            live = _Live(execution, proc)
            try:
                with self.db.transaction() as conn:
                    execution_store.insert(conn, execution, request_id)
            except BaseException:
                live.kill()
                raise
            with self._live_lock:
                self._live[execution.id] = live
        threading.Thread(target=self._follow, args=(live,), name=f"follow-{execution.id}", daemon=True).start()
        return execution

    def _follow(self, live: _Live) -> None:
        readers = [
            threading.Thread(target=self._read, args=(live, name, pipe), name=f"{name}-{live.execution.id}", daemon=True)
            for name, pipe in (("stdout", live.proc.stdout), ("stderr", live.proc.stderr))
            if pipe is not None
        ]
        for reader in readers:
            reader.start()
        returncode = live.proc.wait()
        deadline = time.monotonic() + OUTPUT_GRACE_SECONDS
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        self._complete(live, exit_status(returncode))

    def _read(self, live: _Live, name: str, pipe) -> None:
        try:
            while chunk := os.read(pipe.fileno(), 65536):
                with live.lock:
                    if live.final is not None:
                        continue  # completed without us (a background child kept the pipe): drain
                    buffer = live.output[name]
                    room = self.max_output_bytes - len(buffer)
                    if len(chunk) > room:
                        chunk = chunk[: max(room, 0)]
                        live.truncated[name] = True
                    buffer += chunk
        except OSError:
            pass  # the pipe was closed under us
        finally:
            pipe.close()

    def _complete(self, live: _Live, status: int) -> None:
        with live.lock:
            live.final = replace(
                live.execution,
                status=COMPLETED,
                exit_status=status,
                stdout=live.output["stdout"].decode("utf-8", "replace"),
                stderr=live.output["stderr"].decode("utf-8", "replace"),
                stdout_truncated=live.truncated["stdout"],
                stderr_truncated=live.truncated["stderr"],
                end_time_ms=clock.now_ms(),
            )
            live.output = {"stdout": bytearray(), "stderr": bytearray()}
        try:
            with self.db.transaction() as conn:
                execution_store.complete(conn, live.final)
        except Exception:
            log.exception("could not store the result of execution %s", live.execution.id)
        with self._live_lock:
            self._live.pop(live.execution.id, None)
        live.done.set()
        self.watch.notify(watch_key(live.execution.id))

    def _devbox_finished(self, devbox: Devbox) -> None:
        """The devbox is gone: its commands are killed (if the runtime left any) and completed."""
        with self._live_lock:
            running = [live for live in self._live.values() if live.execution.devbox_id == devbox.id]
        for live in running:
            live.kill()
        for live in running:
            live.done.wait(FINISH_WAIT_SECONDS)

    def _status_check(self, account: str, execution: Execution, wanted):
        def check() -> Execution | None:
            current = self.retrieve_execution(account, execution.devbox_id, execution.id)
            return current if current.status in wanted else None

        return check


def _check_statuses(statuses: list[str]) -> frozenset[str]:
    if not statuses:
        raise InvalidRequest("statuses must name at least one status")
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise InvalidRequest(f"unknown execution status {unknown[0]!r}; known: {', '.join(STATUSES)}")
    return frozenset(statuses)
