"""The execution service: commands run in a devbox, one method per API action.

A command starts through ``runtime.exec`` and becomes a ``LiveExecution``, followed by two
daemon threads: one reads both output pipes (``simulator.command_output.OutputDrain``: bytes
are decoded into the live execution's buffers, capped per stream, and each read wakes the SSE
streams) and one waits for the exit, gives the pipes ``OUTPUT_GRACE_SECONDS`` to reach EOF
(then closes them: a background child keeps neither a descriptor nor a thread), then
records the completed execution and its log lines in SQLite and wakes the long polls. Output
is kept whole up to the cap, so ``*_truncated`` is false in practice and the SDK never needs the SSE streams to see everything.

SSE streams (``stream_stdout_updates``/``stream_stderr_updates``) send ``(text, offset)``
chunks from a byte offset; see ``simulator.output_buffer`` for what offsets count.
Stdin: a command started with ``attach_stdin`` keeps its stdin pipe open for ``send_std_in``;
any other command reads EOF at once.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio.to_thread

from simulator import clock, devbox_logs, execution_store, ids, lifecycle
from simulator.command_output import MAX_OUTPUT_BYTES, OUTPUT_GRACE_SECONDS, OutputDrain
from simulator.db import Database
from simulator.devbox_model import Devbox, Execution
from simulator.devboxes import DevboxService, check_command, hold_seconds
from simulator.errors import InvalidRequest, NotFound, RequestTimeout
from simulator.live_execution import COMPLETED, LiveExecution
from simulator.output_buffer import boundary_after, boundary_before
from simulator.runtime.base import RuntimeFailure
from simulator.watch import Watch

log = logging.getLogger("devbox_sim.executions")

ID_PREFIX = "exn"
QUEUED, RUNNING = "queued", "running"
STATUSES = (QUEUED, RUNNING, COMPLETED)
# MAX_OUTPUT_BYTES (16 MiB) per stream; beyond it the rest is dropped, *_truncated true.
WAIT_MAX_SECONDS = 25.0  # execution long polls: the SDK's read timeout is the hold + 5 s
EXECUTE_SYNC_MAX_SECONDS = 600.0  # the SDK gives execute_sync a 600 s timeout
# Commands running at once (each holds about 7 descriptors and 4 threads of the simulator):
# more get 400 too_many_executions until some end.
MAX_RUNNING_PER_DEVBOX = 256
MAX_RUNNING_PER_ACCOUNT = 1024
KILLED = 128 + signal.SIGKILL  # what a shell reports for a SIGKILLed command: 137
# After the process exits, its pipes get OUTPUT_GRACE_SECONDS (simulator.command_output) to
# reach EOF, then they are closed: a background child that inherited stdout could otherwise
# keep the execution "running" (and its descriptors open) forever.
FINISH_WAIT_SECONDS = 5.0  # kill / devbox shutdown: how long to wait for the exit to be recorded
SSE_CHUNK_BYTES = 65536  # at most this much output per SSE event
# An SSE stream with nothing new sends a comment this often, so the client's 30 s read
# timeout never fires on a quiet command (the SDK would reconnect, but needlessly).
SSE_PING_SECONDS = 10.0
# send_std_in: how long a write may wait for the command to read (a full pipe) before 409.
STDIN_WRITE_SECONDS = 10.0
STDIN_SIGNALS = ("EOF", "INTERRUPT")


def watch_key(execution_id: str) -> str:
    return f"execution:{execution_id}"


def output_key(execution_id: str) -> str:
    """Notified on every new piece of output and on completion (SSE streams wait on it)."""
    return f"output:{execution_id}"


def exit_status(returncode: int) -> int:
    """Popen reports death by signal N as -N; a shell (and Runloop) reports 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


class ExecutionService:
    def __init__(
        self,
        db: Database,
        devboxes: DevboxService,
        watch: Watch | None = None,
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        max_stored_output_bytes: int = execution_store.MAX_STORED_OUTPUT_BYTES,
        spill_dir: Path | None = None,
    ):
        self.db = db
        self.devboxes = devboxes
        self.watch = watch or devboxes.watch
        self.max_output_bytes = max_output_bytes
        self.max_stored_output_bytes = max_stored_output_bytes  # all commands' output in the store
        # Where running commands' output goes beyond a little (output_buffer); None: memory.
        self.spill_dir = spill_dir
        self._live: dict[str, LiveExecution] = {}
        self._live_lock = threading.Lock()
        self._starting: list[tuple[str, str]] = []  # (account, devbox id) of starts under way
        # Starting a command is serialised per devbox (striped), so that two attempts with
        # the same command_id or x-request-id cannot both start it.
        self._start_locks = [threading.Lock() for _ in range(64)]
        devboxes.add_terminal_hook(self._devbox_finished)
        devboxes.set_entrypoint_runner(self._start_entrypoint)
        with db.transaction() as conn:
            # Commands of a previous simulator process: their pipes are gone, and so (with
            # the devbox runtime's processes) are they. Report them killed.
            stale = execution_store.complete_unfinished(conn, KILLED, clock.now_ms())
        if stale:
            log.warning("%d executions from a previous run were marked completed (killed)", stale)

    # --- API actions -------------------------------------------------------------------

    def execute_async(
        self, account: str, devbox_id: str, command: str, request_id: str | None = None, attach_stdin: bool = False
    ) -> Execution:
        return self._start(account, devbox_id, command, None, request_id, attach_stdin)

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
        hold = hold_seconds(optimistic_timeout, WAIT_MAX_SECONDS, WAIT_MAX_SECONDS, "optimistic_timeout")
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
        if live is not None and live.belongs_to(account, devbox_id):
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
        self._require_not_frozen(account, devbox_id)
        live.kill()
        if not live.done.wait(FINISH_WAIT_SECONDS):
            log.warning("execution %s did not finish within %s s of SIGKILL", execution_id, FINISH_WAIT_SECONDS)
        return live.view()

    def send_std_in(
        self, account: str, devbox_id: str, execution_id: str, text: str | None = None, signal_name: str | None = None
    ) -> bool:
        """Write ``text`` to the command's stdin, or close it (``EOF``) or interrupt the command
        (``INTERRUPT``: SIGINT to its process group). Returns False when the command no longer
        reads its stdin (it closed it or exited meanwhile)."""
        if (text is None or text == "") == (signal_name is None):
            raise InvalidRequest("give exactly one of a non-empty text and a signal")
        if signal_name is not None and signal_name not in STDIN_SIGNALS:
            raise InvalidRequest(f"signal must be one of {', '.join(STDIN_SIGNALS)}, got {signal_name!r}")
        self.retrieve_execution(account, devbox_id, execution_id)  # 404 first
        with self._live_lock:
            live = self._live.get(execution_id)
        if live is None or live.completed:
            if signal_name == "EOF":
                # The usual "send the last line, then close" races the command's exit: its
                # stdin is closed either way, so that is a success (the SDK's close_std_in
                # raises on success false).
                return True
            raise InvalidRequest(f"execution {execution_id} has completed; it reads no more input", code="execution_completed")
        if not live.attach_stdin:
            raise InvalidRequest(
                f"execution {execution_id} was not started with attach_stdin: its stdin is closed", code="stdin_not_attached"
            )
        self._require_not_frozen(account, devbox_id)
        self.devboxes.touch(devbox_id)
        if signal_name == "INTERRUPT":
            with self.devboxes.lifecycle_lock(devbox_id):  # no suspend while it is signalled
                self._require_not_frozen(account, devbox_id)
                live.kill(signal.SIGINT)
            return True
        if signal_name == "EOF":
            live.close_stdin()
            return True
        return live.write_stdin(text.encode("utf-8"), STDIN_WRITE_SECONDS)

    async def stream_stdout_updates(
        self, account: str, devbox_id: str, execution_id: str, offset: int = 0
    ) -> AsyncIterator[tuple[str, int] | None]:
        return await self._stream_updates(account, devbox_id, execution_id, "stdout", offset)

    async def stream_stderr_updates(
        self, account: str, devbox_id: str, execution_id: str, offset: int = 0
    ) -> AsyncIterator[tuple[str, int] | None]:
        return await self._stream_updates(account, devbox_id, execution_id, "stderr", offset)

    def list_logs(self, account: str, devbox_id: str, execution_id: str | None = None) -> list[devbox_logs.LogEntry]:
        """The devbox's logs, oldest first: stored entries plus the lines of running commands."""
        self.devboxes.retrieve_devbox(account, devbox_id)  # 404 for an unknown devbox
        with self.db.read() as conn:
            entries = devbox_logs.list_for(conn, account, devbox_id, execution_id)
        with self._live_lock:
            running = [
                live
                for live in self._live.values()
                if live.belongs_to(account, devbox_id) and execution_id in (None, live.id)
            ]
        for live in running:
            entries.extend(live.log_entries())  # none once completed: those are stored
        # Stored entries are in completion order; a stable sort by time interleaves commands.
        return sorted(entries, key=lambda entry: entry.timestamp_ms)

    # --- output streams ----------------------------------------------------------------

    async def _stream_updates(
        self, account: str, devbox_id: str, execution_id: str, stream: str, offset: int
    ) -> AsyncIterator[tuple[str, int] | None]:
        """Check the request (404, bad offset) now, then return the chunks as an iterator:
        ``(text, offset after it)``, or None when nothing came for ``SSE_PING_SECONDS``."""
        if offset < 0:
            raise InvalidRequest(f"offset must not be negative, got {offset}")
        await anyio.to_thread.run_sync(self.retrieve_execution, account, devbox_id, execution_id)
        return self._chunks(account, devbox_id, execution_id, stream, offset)

    async def _chunks(
        self, account: str, devbox_id: str, execution_id: str, stream: str, position: int
    ) -> AsyncIterator[tuple[str, int] | None]:
        while True:
            data, start, completed = await anyio.to_thread.run_sync(
                self._read_output, account, devbox_id, execution_id, stream, position
            )
            # Once completed, ``data`` is all the rest: cut it here, without re-reading.
            while data:
                end = boundary_before(data, SSE_CHUNK_BYTES)
                position = start = start + end
                yield data[:end].decode("utf-8"), position
                data = data[end:]
            if completed:
                return

            def more(position: int = position) -> bool | None:
                return True if self._has_more(account, devbox_id, execution_id, stream, position) else None

            if await self.watch.wait(output_key(execution_id), more, SSE_PING_SECONDS) is None:
                yield None

    def _read_output(
        self, account: str, devbox_id: str, execution_id: str, stream: str, position: int
    ) -> tuple[bytes, int, bool]:
        """(output from ``position``, moved to the next character boundary; that start; whether
        the execution has completed, so that this is all of the rest)."""
        with self._live_lock:
            live = self._live.get(execution_id)
        if live is not None and live.belongs_to(account, devbox_id):
            return live.read_from(stream, position)
        execution = self.retrieve_execution(account, devbox_id, execution_id)
        data = (getattr(execution, stream) or "").encode("utf-8")
        start = boundary_after(data, position)
        return data[start:], start, execution.status == COMPLETED

    def _has_more(self, account: str, devbox_id: str, execution_id: str, stream: str, position: int) -> bool:
        """Is there output beyond ``position``, or has the execution completed? (Cheap: no copy.)"""
        with self._live_lock:
            live = self._live.get(execution_id)
        if live is not None:
            return live.has_more(stream, position)
        return True  # completed (and stored) meanwhile: the next read says so

    # --- running a command -------------------------------------------------------------

    def _require_not_frozen(self, account: str, devbox_id: str) -> None:
        # A frozen process cannot take a signal or read input until it is thawed.
        status = self.devboxes.retrieve_devbox(account, devbox_id).status
        if status in (lifecycle.SUSPENDING, lifecycle.SUSPENDED):
            raise InvalidRequest(f"devbox {devbox_id} is {status}; resume it first", code="devbox_not_running")

    def _start_entrypoint(self, devbox: Devbox, command: str) -> None:
        """The devbox's main process: an execution like any other (its lines in the devbox's
        log as ``entrypoint``), whose end shuts the devbox down."""
        def ended(final: Execution) -> None:
            self.devboxes.entrypoint_exited(devbox.account, devbox.id)

        self._start(devbox.account, devbox.id, command, None, None, on_complete=ended, log_source="entrypoint")

    def _start(
        self,
        account: str,
        devbox_id: str,
        command: str,
        command_id: str | None,
        request_id: str | None,
        attach_stdin: bool = False,
        *,
        on_complete: Callable[[Execution], None] | None = None,
        log_source: str = "exec",
    ) -> Execution:
        check_command("command", command)
        devbox = self.devboxes.require_running(account, devbox_id)
        runtime = self.devboxes.require_runtime()
        with self._start_locks[zlib.crc32(devbox_id.encode()) % len(self._start_locks)]:
            with self.db.read() as conn:
                previous = None
                if command_id:
                    previous = execution_store.by_command_id(conn, account, devbox_id, command_id)
                if previous is None and request_id and not command_id:  # a command_id is the key then
                    previous = execution_store.by_request_id(conn, account, request_id)
                    if previous is not None and (previous.devbox_id, previous.command) != (devbox_id, command):
                        # Not a retry of that request (a client reusing one id for all, say):
                        # run this one, and keep the id with the first.
                        previous, request_id = None, None
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
            slot = self._reserve_slot(account, devbox_id)
            try:
                try:
                    proc = runtime.exec(devbox_id, command, env=dict(devbox.environment_variables))
                except RuntimeFailure as exc:
                    raise InvalidRequest(f"cannot run a command on devbox {devbox_id}: {exc}", code="devbox_not_running")
                live = LiveExecution(execution, proc, self.max_output_bytes, attach_stdin, log_source=log_source,
                                     spill_dir=self.spill_dir)
                live.on_complete = on_complete
                try:
                    with self.db.transaction() as conn:
                        try:
                            execution_store.insert(conn, execution, request_id)
                        except sqlite3.IntegrityError:
                            if request_id is None:
                                raise
                            # The same id began another command meanwhile (on another devbox: its
                            # start lock is another): the id stays with that one.
                            execution_store.insert(conn, execution, None)
                except BaseException:
                    live.kill()
                    raise
                with self._live_lock:
                    self._live[execution.id] = live
            finally:
                with self._live_lock:
                    self._starting.remove(slot)
        threading.Thread(target=self._follow, args=(live,), name=f"follow-{execution.id}", daemon=True).start()
        self.devboxes.touch(devbox_id)
        return execution

    def _reserve_slot(self, account: str, devbox_id: str) -> tuple[str, str]:
        """Each running command holds pipes, threads and a connection in this process, which
        every account shares: a devbox, and an account, may run only so many at once. The
        slot is taken under the lock the check reads, and held until the command is in
        ``_live`` (or failed to start): starts on several devboxes at once cannot all pass."""
        slot = (account, devbox_id)
        with self._live_lock:
            running = [(live.execution.account, live.execution.devbox_id)
                       for live in self._live.values() if not live.completed] + self._starting
            self._check_capacity(account, devbox_id, running)
            self._starting.append(slot)
        return slot

    @staticmethod
    def _check_capacity(account: str, devbox_id: str, running: list[tuple[str, str]]) -> None:
        on_devbox = sum(box == devbox_id for _account, box in running)
        if on_devbox >= MAX_RUNNING_PER_DEVBOX:
            raise InvalidRequest(
                f"devbox {devbox_id} already runs {on_devbox} commands, the most it may at once; "
                "wait for some to end or kill them", code="too_many_executions")
        on_account = sum(owner == account for owner, _box in running)
        if on_account >= MAX_RUNNING_PER_ACCOUNT:
            raise InvalidRequest(
                f"this account already runs {on_account} commands, the most it may at once; "
                "wait for some to end or kill them", code="too_many_executions")

    def _follow(self, live: LiveExecution) -> None:
        key = output_key(live.id)

        def on_chunk(name: str, chunk: bytes) -> None:
            if live.feed(name, chunk):
                self.watch.notify(key)

        try:
            drain = OutputDrain({"stdout": live.proc.stdout, "stderr": live.proc.stderr}, on_chunk, name=f"output-{live.id}")
        except OSError:  # out of descriptors: the command cannot be followed, so it must not run
            log.exception("cannot follow execution %s; killing it", live.id)
            live.kill()
            for pipe in (live.proc.stdout, live.proc.stderr):
                if pipe is not None:
                    pipe.close()
            self._complete(live, exit_status(live.proc.wait()))
            return
        returncode = live.proc.wait()
        # A background child may hold the pipes: after the grace they are closed under it, so
        # it costs no descriptor and no thread of the simulator until the devbox ends.
        drain.finish(OUTPUT_GRACE_SECONDS)
        self._complete(live, exit_status(returncode))

    def _complete(self, live: LiveExecution, status: int) -> None:
        final, entries = live.complete(status)

        def store() -> None:
            with self.db.transaction() as conn:
                execution_store.complete(conn, final, self.max_stored_output_bytes)
                devbox_logs.insert(conn, final.account, final.devbox_id, entries)
            with self._live_lock:
                self._live.pop(live.id, None)
            live.release_output()

        # Until it is stored (its disk full, say), the completed execution is answered from
        # memory: it stays in _live, completed.
        self.devboxes.store_retrier.write(f"the result of execution {live.id}", store)
        live.close_stdin()
        live.done.set()
        self.devboxes.touch(final.devbox_id)
        self.watch.notify(watch_key(live.id))
        self.watch.notify(output_key(live.id))
        if live.on_complete is not None:
            try:
                live.on_complete(final)
            except Exception:
                log.exception("completion hook of execution %s failed", live.id)

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
