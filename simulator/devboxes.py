"""The devbox service: one method per API action, named like the action.

The service owns the lifecycle: it validates every status change against
``simulator.lifecycle``, records it in ``state_transitions`` and wakes the long polls waiting
on the devbox. The runtime (``simulator.runtime.base.DevboxRuntime``) only does the work:
provisioning runs in a worker thread (provisioning -> [initializing: launch_commands] ->
running); shutdown, suspend (running -> suspending -> suspended) and resume (suspended ->
running) are synchronous. The runtime is never called inside a store transaction.

A running devbox has a keep-alive timer (``simulator.keep_alive``): it shuts down with
``shutdown_reason: keep_alive_timeout`` after ``keep_alive_time_seconds`` without activity, or
does what ``after_idle`` says instead (``simulator.idle_policy``: shut down, or suspend).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import anyio.to_thread

from simulator import clock, command_output, devbox_logs, devbox_store, ids, lifecycle
from simulator.db import Database
from simulator.devbox_model import Devbox, StateTransition
from simulator.errors import ApiError, Conflict, InvalidRequest, RequestTimeout, found
from simulator.labels import reject_control_characters
from simulator.idle_policy import idle_policy, suspend_hooks
from simulator.keep_alive import KeepAliveTimers
from simulator.network_policies import NetworkPolicyService
from simulator.policy_model import NetworkPolicy, Page
from simulator.runtime.base import DevboxRuntime, DevboxSpec, RuntimeFailure
from simulator.store_retry import StoreRetrier
from simulator.tunnels import new_tunnel
from simulator.usage import resource_usage, spec_limits
from simulator.watch import Watch

log = logging.getLogger("devbox_sim.devboxes")

ID_PREFIX = "dbx"
WAIT_DEFAULT_SECONDS = 10.0
WAIT_MAX_SECONDS = 30.0  # the SDK's read timeout is the hold + 5 s
CREATE_HOLD_SECONDS = 20.0  # create_and_await_running: well under the client's 30 s timeout
MAX_NAME_LENGTH = 256
LAUNCH_OUTPUT_TAIL = 2000  # characters of a failed launch command's output kept in the reason
# A launch command's output is read into bounded buffers (simulator.command_output): at most
# this much per stream reaches the logs; the rest is read and dropped.
LAUNCH_OUTPUT_MAX_BYTES = command_output.MAX_OUTPUT_BYTES
# A launch command that runs longer fails the devbox (its process group is killed).
LAUNCH_COMMAND_TIMEOUT_SECONDS = 600.0
# A stopping simulator waits this long for devboxes still being provisioned to be freed.
STOP_PROVISIONING_WAIT_SECONDS = 20.0

# A devbox reached shutdown or failure (called outside any transaction, after the runtime
# released it). Executions use it to finish the devbox's commands.
TerminalHook = Callable[[Devbox], None]


class NoRuntime(ApiError):
    status = 503
    code = "no_runtime"


class Stopping(ApiError):
    status = 503
    code = "stopping"


def watch_key(devbox_id: str) -> str:
    return f"devbox:{devbox_id}"


class DevboxService:
    def __init__(
        self,
        db: Database,
        network_policies: NetworkPolicyService,
        runtime: DevboxRuntime | None = None,
        watch: Watch | None = None,
    ):
        self.db = db
        self.network_policies = network_policies
        self.runtime = runtime
        self.watch = watch or Watch()
        self._terminal_hooks: list[TerminalHook] = []
        # Blueprints and snapshots (simulator.devbox_origins): a devbox's disk and defaults.
        self.origins = None
        self._shutdown_guards: list[Callable[[Devbox], None]] = []  # raise to refuse (409)
        self._entrypoint_runner: Callable[[Devbox, str], None] | None = None
        self.keep_alive_timers = KeepAliveTimers(self._keep_alive_expired)
        self.stopping = threading.Event()  # set when the simulator stops (stop_all)
        self._stopped_all = threading.Event()  # ... and once stop_all has ended every devbox
        # Outcomes background threads could not store (a full disk): retried until stored.
        self.store_retrier = StoreRetrier(self.stopping)
        # Suspend and resume of one devbox are serialised (striped locks): each is a stored
        # move, a runtime call and another stored move, which must not interleave.
        self._lifecycle_locks = [threading.Lock() for _ in range(64)]
        self._provisioning: set[threading.Thread] = set()  # provisioning threads still running
        # devbox id -> set once it ends (a shutdown) while still provisioning: the runtime stops
        self._provisioning_ended: dict[str, threading.Event] = {}
        self._provisioning_by_id: dict[str, threading.Thread] = {}
        self._provisioning_lock = threading.Lock()
        # Deleting a policy that an active devbox uses is a 400 naming the devbox.
        network_policies.add_usage_check(self._policy_users)

    def add_terminal_hook(self, hook: TerminalHook) -> None:
        self._terminal_hooks.append(hook)

    def set_origins(self, origins) -> None:
        self.origins = origins

    def add_shutdown_guard(self, guard: Callable[[Devbox], None]) -> None:
        self._shutdown_guards.append(guard)

    def set_entrypoint_runner(self, runner: Callable[[Devbox, str], None]) -> None:
        """How a devbox's ``entrypoint`` is started once it runs (the execution service's;
        it calls ``entrypoint_exited`` when the process ends)."""
        self._entrypoint_runner = runner

    # --- API actions -------------------------------------------------------------------

    def create_devbox(self, account: str, params: dict[str, Any], request_id: str | None = None) -> Devbox:
        runtime = self.require_runtime()
        name = _check_name(params.get("name"))
        # An empty id is a source too (400 unknown, below), not "none": `snapshot_id=os.environ.get(
        # "SNAP", "")` must not quietly start a devbox without the snapshot's files.
        sources = [key for key in ("blueprint_id", "blueprint_name", "snapshot_id") if params.get(key) is not None]
        if len(sources) > 1:
            raise InvalidRequest(f"give at most one of blueprint_id, blueprint_name and snapshot_id, got {sources}")
        launch = {k: v for k, v in (params.get("launch_parameters") or {}).items() if v is not None}
        for command in launch.get("launch_commands") or []:
            check_command("launch_commands", command)
        for command in suspend_hooks(launch)[0]:
            check_command("lifecycle.lifecycle_hooks.suspend_commands", command)
        environment = _check_environment(params.get("environment_variables") or {})
        file_mounts = _check_file_mounts(params.get("file_mounts") or {})
        entrypoint = params.get("entrypoint") or None
        if entrypoint is not None:
            check_command("entrypoint", entrypoint)
        _refuse_unsimulated(params)
        with self.db.transaction() as conn:
            if request_id:
                # A retried create (same x-request-id) returns what the first attempt made.
                previous = devbox_store.by_request_id(conn, account, request_id)
                if previous is not None:
                    return previous
            blueprint_id, snapshot_id = params.get("blueprint_id"), params.get("snapshot_id")
            if self.origins is not None:  # a blueprint's or snapshot's defaults (400 if unusable)
                origin = self.origins.resolve(account, params, launch)
                launch, blueprint_id, snapshot_id = origin.launch_parameters, origin.blueprint_id, origin.snapshot_id
            # Checked inside the transaction: the policy cannot be deleted before we store. An
            # empty id is an unknown policy (400), never "no policy" (unrestricted egress).
            if launch.get("network_policy_id") is not None:
                self.network_policies.require(account, launch["network_policy_id"])
            now = clock.now_ms()
            devbox = Devbox(
                id=ids.new_id(ID_PREFIX),
                account=account,
                status=lifecycle.PROVISIONING,
                create_time_ms=now,
                launch_parameters=launch,
                metadata=dict(params.get("metadata") or {}),
                environment_variables=environment,
                state_transitions=(StateTransition(lifecycle.PROVISIONING, now),),
                name=name,
                blueprint_id=blueprint_id,
                snapshot_id=snapshot_id,
                tunnel=new_tunnel(params["tunnel"], now) if params.get("tunnel") is not None else None,
            )
            devbox_store.insert(conn, devbox, request_id)
        thread = threading.Thread(
            target=self._provision_tracked, args=(runtime, devbox, file_mounts, entrypoint), name=f"provision-{devbox.id}",
            daemon=True,
        )
        with self._provisioning_lock:
            self._provisioning.add(thread)
            self._provisioning_by_id[devbox.id] = thread
            self._provisioning_ended[devbox.id] = threading.Event()
            thread.start()  # under the lock: whoever finds it registered can join it
        return devbox

    async def create_and_await_running(
        self, account: str, params: dict[str, Any], request_id: str | None = None, hold_seconds: float = CREATE_HOLD_SECONDS
    ) -> Devbox:
        """Create, then hold until running, failure or shutdown (or ``hold_seconds``)."""
        devbox = await anyio.to_thread.run_sync(self.create_devbox, account, params, request_id)
        settled = (lifecycle.RUNNING, *lifecycle.TERMINAL)
        held = await self.watch.wait(watch_key(devbox.id), self._status_check(account, devbox.id, settled), hold_seconds)
        return held or await anyio.to_thread.run_sync(self.retrieve_devbox, account, devbox.id)

    def retrieve_devbox(self, account: str, devbox_id: str) -> Devbox:
        with self.db.read() as conn:
            return self._get(conn, account, devbox_id)

    def retrieve_resource_usage(self, account: str, devbox_id: str) -> dict[str, Any]:
        """CPU, memory and disk use a cloud devbox of its size would have had (simulator.usage)."""
        return resource_usage(self.retrieve_devbox(account, devbox_id), clock.now_ms())

    def list_devboxes(
        self,
        account: str,
        *,
        status: str | None = None,
        starting_after: str | None = None,
        limit: int | None = None,
        include_total_count: bool = True,
    ) -> Page:
        if status is not None:
            _check_statuses([status])
        with self.db.read() as conn:
            return devbox_store.list_page(
                conn,
                account,
                status=status,
                starting_after=starting_after,
                limit=limit,
                include_total_count=include_total_count,
            )

    def update_devbox(self, account: str, devbox_id: str, params: dict[str, Any]) -> Devbox:
        name = _check_name(params.get("name"))
        with self.db.transaction() as conn:
            devbox = self._get(conn, account, devbox_id)
            devbox = replace(
                devbox,
                name=name if name is not None else devbox.name,
                metadata=dict(params["metadata"]) if params.get("metadata") is not None else devbox.metadata,
            )
            devbox_store.update(conn, devbox)
        return devbox

    async def wait_for_status(
        self, account: str, devbox_id: str, statuses: list[str], timeout_seconds: float | None = None
    ) -> Devbox:
        """Hold until the devbox's status is one of ``statuses``; 408 when the time runs out."""
        wanted = _check_statuses(statuses)
        timeout = hold_seconds(timeout_seconds, WAIT_DEFAULT_SECONDS, WAIT_MAX_SECONDS)
        devbox = await self.watch.wait(watch_key(devbox_id), self._status_check(account, devbox_id, wanted), timeout)
        if devbox is None:
            current = await anyio.to_thread.run_sync(self.retrieve_devbox, account, devbox_id)
            raise RequestTimeout(
                f"devbox {devbox_id} is {current.status}, not one of {sorted(wanted)}, after {timeout:g} s; ask again"
            )
        return devbox

    def shutdown_devbox(self, account: str, devbox_id: str, force: bool = False) -> Devbox:
        """Synchronous: the result is already shut down. Idempotent on a finished devbox.
        Without ``force``, the shutdown guards may refuse (409 while a snapshot is taken)."""
        devbox = self.retrieve_devbox(account, devbox_id)
        if devbox.status in lifecycle.TERMINAL:
            return devbox
        # The guards (e.g. 409 while a disk snapshot is in progress) check inside the move.
        guards = () if force else self._shutdown_guards
        moved = self._move(devbox, lifecycle.SHUTDOWN, shutdown_reason="api_shutdown", guards=guards)
        if moved is None:  # it failed or was shut down meanwhile
            return self.retrieve_devbox(account, devbox_id)
        self._release(moved)
        return moved

    def suspend_devbox(self, account: str, devbox_id: str) -> Devbox:
        """Freeze every process (suspending -> suspended); network and rules stay. 400 unless
        running. Synchronous (the result is already suspended) unless the devbox has suspend
        commands: they may take a minute, longer than a client waits for an answer, so the
        answer is then ``suspending`` and the commands and the freeze follow (the SDK's
        ``suspend()`` waits for ``suspended`` anyway)."""
        runtime = self.require_runtime()
        with self._lifecycle_lock(devbox_id):
            devbox = self.retrieve_devbox(account, devbox_id)
            suspending = self._move(devbox, lifecycle.SUSPENDING) if devbox.status == lifecycle.RUNNING else None
            if suspending is None:
                raise lifecycle.InvalidTransition(f"devbox {devbox_id} is {devbox.status}; only a running devbox can be suspended")
            self.keep_alive_timers.stop(devbox_id)
        if not suspend_hooks(suspending.launch_parameters)[0]:
            return self._freeze(runtime, suspending)
        threading.Thread(target=self._suspend_with_hooks, args=(runtime, suspending),
                         name=f"suspend-{devbox_id}", daemon=True).start()
        return suspending

    def _suspend_with_hooks(self, runtime: DevboxRuntime, suspending: Devbox) -> None:
        """Worker thread: the suspend commands, then the freeze. Outside the lifecycle lock:
        locks are shared by several devboxes. Meanwhile the status (suspending) refuses another
        suspend or a resume; a shutdown may come, and wins."""
        try:
            self._run_suspend_hooks(runtime, suspending)
            self._freeze(runtime, suspending)
        except ApiError as failed:  # the freeze failed: back to running (logged there)
            log.info("devbox %s was not suspended: %s", suspending.id, failed.message)
        except Exception:
            log.exception("suspending %s failed", suspending.id)

    def _freeze(self, runtime: DevboxRuntime, suspending: Devbox) -> Devbox:
        with self._lifecycle_lock(suspending.id):
            try:
                runtime.suspend(suspending.id)
            except Exception as exc:
                return self._suspend_failed(runtime, suspending, exc)
            try:
                moved = self._move(suspending, lifecycle.SUSPENDED)
            except Exception:
                # The store cannot say "suspended" (its disk is full): thaw, and say "running"
                # again as soon as it can be written, rather than stay "suspending", frozen.
                try:
                    runtime.resume(suspending.id)
                except Exception:
                    log.exception("could not thaw devbox %s after its suspend was not stored", suspending.id)
                self.store_retrier.write(f"the state of devbox {suspending.id}",
                                         lambda: self._move(suspending, lifecycle.RUNNING, detail="suspend not stored"))
                raise
            return moved or self.retrieve_devbox(suspending.account, suspending.id)

    def resume_devbox(self, account: str, devbox_id: str) -> Devbox:
        """Thaw the processes: suspended -> running (``resuming`` is never shown). 400 unless
        suspended."""
        runtime = self.require_runtime()
        with self._lifecycle_lock(devbox_id):
            devbox = self.retrieve_devbox(account, devbox_id)
            if devbox.status != lifecycle.SUSPENDED:
                raise lifecycle.InvalidTransition(f"devbox {devbox_id} is {devbox.status}; only a suspended devbox can be resumed")
            try:
                runtime.resume(devbox_id)
            except Exception as exc:
                # A shutdown does not wait for this lock: one that ended the devbox meanwhile left
                # the runtime nothing to thaw. That devbox did not fail; it is answered as is.
                current = self.retrieve_devbox(account, devbox_id)
                if current.status in lifecycle.TERMINAL:
                    return current
                if not isinstance(exc, RuntimeFailure):
                    log.exception("runtime %s failed to resume %s", runtime.name, devbox_id)
                self._fail(devbox, "health_check_failed", f"resume failed: {exc}")
                raise Conflict(f"devbox {devbox_id} could not be resumed ({exc}); it failed") from exc
            try:
                moved = self._move(devbox, lifecycle.RUNNING)
            except Exception:
                self._resume_not_stored(runtime, devbox)
                raise
            if moved is None:  # shut down meanwhile
                return self.retrieve_devbox(account, devbox_id)
            self.keep_alive_timers.start(account, devbox_id, keep_alive_seconds(moved))
            return moved

    def _resume_not_stored(self, runtime: DevboxRuntime, devbox: Devbox) -> None:
        """The store cannot say "running" (its disk is full) after the thaw: freeze again, so
        the devbox is what the store says, suspended (thawed, its processes would run where
        every endpoint refuses commands and no keep-alive timer counts). If it cannot be
        frozen again, it is stored as running, with its timer, as soon as the store can."""
        try:
            runtime.suspend(devbox.id)
            return
        except Exception:
            log.exception("could not freeze devbox %s again after its resume was not stored", devbox.id)

        def store_running() -> None:
            moved = self._move(devbox, lifecycle.RUNNING, detail="resume stored late")
            if moved is not None:
                self.keep_alive_timers.start(moved.account, moved.id, keep_alive_seconds(moved))

        self.store_retrier.write(f"the state of devbox {devbox.id}", store_running)

    def keep_alive(self, account: str, devbox_id: str) -> None:
        """Reset the keep-alive timer (400 unless running)."""
        self.require_running(account, devbox_id)
        self.keep_alive_timers.touch(devbox_id)

    def touch(self, devbox_id: str) -> None:
        """Activity on the devbox (a command, stdin, a file): its keep-alive timer restarts."""
        self.keep_alive_timers.touch(devbox_id)

    # --- helpers for other services and the simulator -----------------------------------

    def require_runtime(self) -> DevboxRuntime:
        if self.runtime is None:
            raise NoRuntime("this simulator was started without a devbox runtime; devbox endpoints are unavailable")
        return self.runtime

    def require_running(self, account: str, devbox_id: str) -> Devbox:
        devbox = self.retrieve_devbox(account, devbox_id)
        if devbox.status != lifecycle.RUNNING:
            raise InvalidRequest(f"devbox {devbox_id} is {devbox.status}, not running", code="devbox_not_running")
        return devbox

    def reconcile(self, alive_ids: Iterable[str]) -> list[str]:
        """After a restart: make the store agree with what the runtime still has.

        A devbox stored as active survives only if the runtime reports it alive and it had
        finished booting (running or suspended); any other active devbox (its processes are
        gone, or its provisioning was cut short) becomes ``failure`` with a reason, and is
        released in the runtime if it was still there. Returns the ids marked failed.
        """
        alive = set(alive_ids)
        with self.db.read() as conn:
            active = devbox_store.all_active(conn)
        failed = []
        for devbox in active:
            if devbox.id in alive and devbox.status in (lifecycle.RUNNING, lifecycle.SUSPENDED):
                if devbox.status == lifecycle.RUNNING:
                    self.keep_alive_timers.start(devbox.account, devbox.id, keep_alive_seconds(devbox))
                continue
            why = (
                "the simulator restarted while the devbox was " + devbox.status
                if devbox.id in alive
                else "the simulator restarted and the devbox's runtime was gone"
            )
            moved = self._move(devbox, lifecycle.FAILURE, failure_reason="health_check_failed", detail=why)
            if moved is not None:
                failed.append(devbox.id)
                if devbox.id in alive:
                    self._release(moved)
        return failed

    def stop_all(self, why: str) -> list[str]:
        """The simulator is stopping (and takes the runtime with it): every active devbox ends
        now, as ``failure`` with ``why``, its runtime resources released and its terminal hooks
        run (commands finished, the log's summary line). So the store tells what happened
        when it happened, not at the next start. Returns the ids ended."""
        self.stopping.set()  # account-wide streams (watch_evictions) end too
        with self.db.read() as conn:
            active = devbox_store.all_active(conn)
        ended = []
        for devbox in active:
            try:
                moved = self._move(devbox, lifecycle.FAILURE, failure_reason="health_check_failed", detail=why)
            except Exception:
                # The store cannot say so (its disk is full, say): the devbox ends all the same,
                # and the next start records it (reconcile finds it active and its runtime gone).
                log.exception("could not record the end of devbox %s; ending it anyway", devbox.id)
                with self._provisioning_lock:
                    cancel = self._provisioning_ended.get(devbox.id)
                if cancel is not None:
                    cancel.set()
                moved = devbox
            if moved is not None:  # else it ended meanwhile
                ended.append(devbox.id)
                self._release(moved, await_provisioning=False)  # all of them together, below
        # Waits that saw "stopping" before their devbox had ended wait for this (_status_check).
        self._stopped_all.set()
        for devbox in active:
            self.watch.notify(watch_key(devbox.id))
        # A devbox still being provisioned is not the runtime's yet, so the release above found
        # nothing to free; its provisioning thread frees it when it sees the failure. Wait for
        # those threads (bounded), so that nothing is left when the runtime closes.
        deadline = time.monotonic() + STOP_PROVISIONING_WAIT_SECONDS
        with self._provisioning_lock:
            pending = list(self._provisioning)
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("stopping: %s still running after %g s", thread.name, STOP_PROVISIONING_WAIT_SECONDS)
        return ended

    # --- lifecycle ---------------------------------------------------------------------

    def _lifecycle_lock(self, devbox_id: str) -> threading.Lock:
        return self._lifecycle_locks[hash(devbox_id) % len(self._lifecycle_locks)]

    def lifecycle_lock(self, devbox_id: str) -> threading.Lock:
        """The lock suspend and resume hold: whoever holds it keeps them out (an interrupt
        freezes and thaws the devbox for a moment: a suspend in between must not be thawed)."""
        return self._lifecycle_lock(devbox_id)

    def _suspend_failed(self, runtime: DevboxRuntime, suspending: Devbox, exc: Exception) -> Devbox:
        """The freeze failed: thaw what froze and go back to running, or report the shutdown
        that caused it."""
        if not isinstance(exc, RuntimeFailure):
            log.exception("runtime %s failed to suspend %s", runtime.name, suspending.id)
        try:
            runtime.resume(suspending.id)
        except Exception:
            pass  # nothing froze, or the devbox is gone
        back = self._move(suspending, lifecycle.RUNNING, detail=f"suspend failed: {exc}")
        if back is None:  # shut down (or failed) meanwhile: that is the answer
            return self.retrieve_devbox(suspending.account, suspending.id)
        self.keep_alive_timers.start(back.account, back.id, keep_alive_seconds(back))
        raise Conflict(f"devbox {suspending.id} could not be suspended: {exc}; it keeps running", code="suspend_failed")

    def _keep_alive_expired(self, account: str, devbox_id: str) -> None:
        """Timer thread: no activity for the idle period (idle_policy). Only a running devbox expires
        (one suspended meanwhile has no timer; a stale expiry finds it not running)."""
        devbox = self.retrieve_devbox(account, devbox_id)
        if devbox.status in (lifecycle.PROVISIONING, lifecycle.INITIALIZING):
            # Armed just before the move to running, which has not happened yet: a full period.
            self.keep_alive_timers.start(account, devbox_id, keep_alive_seconds(devbox))
            return
        if devbox.status != lifecycle.RUNNING:
            return
        try:
            for guard in self._shutdown_guards:
                guard(devbox)
        except ApiError as refused:  # e.g. a disk snapshot in progress: that is activity too
            log.info("devbox %s keeps running past its keep-alive time: %s", devbox_id, refused.message)
            self.keep_alive_timers.start(account, devbox_id, keep_alive_seconds(devbox))
            return
        policy = idle_policy(devbox.launch_parameters)
        if policy.on_idle == "suspend":  # after_idle (suspend commands run on a thread of their own)
            try:
                self.suspend_devbox(account, devbox_id)
            except ApiError as refused:  # no longer running (a stale expiry), or the freeze failed
                log.info("devbox %s was not suspended when idle: %s", devbox_id, refused.message)
                return
            log.info("devbox %s suspending: no activity for %s s", devbox_id, policy.seconds)
            return
        try:
            moved = self._move(devbox, lifecycle.SHUTDOWN, shutdown_reason=policy.shutdown_reason,
                               expect=lifecycle.RUNNING, guards=self._shutdown_guards)
        except ApiError as refused:  # a snapshot began after the check above
            log.info("devbox %s keeps running past its keep-alive time: %s", devbox_id, refused.message)
            self.keep_alive_timers.start(account, devbox_id, keep_alive_seconds(devbox))
            return
        if moved is not None:
            log.info("devbox %s shut down: no activity for %s s", devbox_id, keep_alive_seconds(devbox))
            self._release(moved)

    def _provision_tracked(self, runtime: DevboxRuntime, devbox: Devbox, file_mounts: dict[str, str] | None,
                           entrypoint: str | None = None) -> None:
        try:
            self._provision(runtime, devbox, file_mounts, entrypoint)
        except Exception:
            # The store could not record a step (its disk is full): the devbox fails, recorded
            # as soon as it can be, rather than stay "provisioning" for good, holding its runtime.
            log.exception("provisioning of devbox %s failed", devbox.id)
            self.store_retrier.write(f"the failure of devbox {devbox.id}", lambda: self._fail(
                devbox, "execution_failed", "the simulator could not record the devbox's provisioning (its store could not be written)"))
        finally:
            with self._provisioning_lock:
                self._provisioning.discard(threading.current_thread())
                self._provisioning_by_id.pop(devbox.id, None)
                self._provisioning_ended.pop(devbox.id, None)

    def _provision(self, runtime: DevboxRuntime, devbox: Devbox, file_mounts: dict[str, str] | None = None,
                   entrypoint: str | None = None) -> None:
        """Worker thread: drive provisioning -> [initializing] -> running, or failure.
        ``file_mounts`` are written once the devbox exists, before the launch commands; the
        ``entrypoint`` starts once it is running."""
        with self._provisioning_lock:  # set when it ends (a shutdown) before it is running
            ended = self._provisioning_ended.get(devbox.id) or threading.Event()
        try:
            # Read now, not at create: an update made meanwhile must not be lost. (It cannot
            # have been deleted: an active devbox keeps its policy in use.)
            policy = self._policy(devbox)
            runtime.provision(
                DevboxSpec(
                    id=devbox.id,
                    account=devbox.account,
                    policy=policy,
                    environment_variables=dict(devbox.environment_variables),
                    disk=self.origins.disk_for(devbox) if self.origins is not None else None,
                    **spec_limits(devbox.launch_parameters),  # held to its size (runtime.base)
                    cancelled=ended.is_set,
                )
            )
        except Exception as exc:  # a RuntimeFailure, or a runtime bug: the devbox failed either way
            if ended.is_set():  # shut down meanwhile (and released then): the runtime stopped
                self._release_quietly(devbox)
                return
            if not isinstance(exc, RuntimeFailure):
                log.exception("runtime %s failed to provision %s", runtime.name, devbox.id)
            self._fail(devbox, "execution_failed", f"provisioning failed: {exc}")
            return
        if ended.is_set():  # shut down as provisioning finished: nothing more is done for it
            self._release_quietly(devbox)
            return
        failure = self._write_file_mounts(runtime, devbox, file_mounts or {})
        if failure is not None:
            self._fail(devbox, "execution_failed", failure)
            return
        if devbox.launch_commands:
            if self._move(devbox, lifecycle.INITIALIZING) is None:
                return self._release_quietly(devbox)  # shut down while provisioning
            for command in devbox.launch_commands:
                failure = self._run_setup_command(runtime, devbox, command)
                if failure is not None:
                    self._fail(devbox, "execution_failed", failure)
                    return
        # Armed before the move, so that whoever sees "running" also sees the timer, and a
        # shutdown racing the move finds (and stops) it.
        self.keep_alive_timers.start(devbox.account, devbox.id, keep_alive_seconds(devbox))
        # With an entrypoint, "running" and its start are one step for a suspend (which takes
        # the same lock): the entrypoint starts in a running devbox.
        with self._lifecycle_lock(devbox.id) if entrypoint is not None else contextlib.nullcontext():
            running = self._move(devbox, lifecycle.RUNNING)
            if running is None:
                self.keep_alive_timers.stop(devbox.id)
                self._release_quietly(devbox)
                return
            if entrypoint is not None and self._entrypoint_runner is not None:
                try:
                    self._entrypoint_runner(running, entrypoint)
                except Exception as exc:  # e.g. shut down meanwhile (then _fail moves nothing)
                    message = exc.message if isinstance(exc, ApiError) else str(exc)
                    log.info("the entrypoint of devbox %s did not start: %s", devbox.id, message)
                    self._fail(running, "execution_failed", f"the entrypoint did not start: {message}")

    def entrypoint_exited(self, account: str, devbox_id: str) -> None:
        """The devbox's entrypoint ended: the devbox, bound to it, shuts down
        (``shutdown_reason: entrypoint_exit``), as if forced: a snapshot in progress finishes."""
        with self.db.read() as conn:
            devbox = devbox_store.get(conn, account, devbox_id)
        if devbox is None or devbox.status in lifecycle.TERMINAL:
            return
        try:
            self.record_logs(devbox, [devbox_logs.LogEntry(
                "info", "entrypoint", clock.now_ms(), message="the entrypoint ended: shutting the devbox down")])
        except Exception as exc:  # a log line lost (a full store) must not keep the devbox up
            log.warning("could not log the end of devbox %s's entrypoint: %r", devbox_id, exc)

        def end() -> None:
            moved = self._move(devbox, lifecycle.SHUTDOWN, shutdown_reason="entrypoint_exit")
            if moved is not None:
                self._release(moved)

        self.store_retrier.write(f"the end of devbox {devbox_id}", end)

    def _write_file_mounts(self, runtime: DevboxRuntime, devbox: Devbox, file_mounts: dict[str, str]) -> str | None:
        """Write the create request's ``file_mounts`` (``{path: content}``, paths as the file
        endpoints take them); a failure description (what the file endpoints would answer, no
        host path), or None."""
        from simulator.files import translate_error  # (files builds on this module)

        entries = []
        try:
            for path, content in file_mounts.items():
                data = content.encode("utf-8")
                try:
                    runtime.write_file(devbox.id, path, data)
                except Exception as exc:
                    if not isinstance(exc, (OSError, ValueError, RuntimeFailure)):
                        log.exception("runtime %s failed to write file mount %s of %s", runtime.name, path, devbox.id)
                    return f"file mount {path!r}: {translate_error(exc, path, 'write').message}"
                entries.append(devbox_logs.LogEntry("info", "files", clock.now_ms(), message=f"wrote {path} ({len(data)} bytes)"))
        finally:
            if entries:
                self.record_logs(devbox, entries)
        return None

    def _run_suspend_hooks(self, runtime: DevboxRuntime, devbox: Devbox) -> None:
        """``lifecycle_hooks.suspend_commands``, in order, within their deadline: a failure or
        an overrun is logged (in the devbox's log too) and the suspend goes on."""
        commands, seconds = suspend_hooks(devbox.launch_parameters)
        deadline = time.monotonic() + seconds
        for command in commands:
            left = deadline - time.monotonic()
            if left > 0:
                # Logged as the SDK's "setup_commands" (its log sources are a closed set); the
                # failure messages say "suspend command".
                failure = self._run_setup_command(runtime, devbox, command, kind="suspend command",
                                                  source="setup_commands", timeout=left)
            else:
                failure = f"suspend command {command!r} not run: the {seconds:g} s of suspend_deadline_ms were spent"
                self._log_warning(devbox, "setup_commands", command, failure)
            if failure is not None:
                log.info("devbox %s: %s; suspending anyway", devbox.id, failure)

    def _run_setup_command(self, runtime: DevboxRuntime, devbox: Devbox, command: str, *, kind: str = "launch command",
                           source: str = "setup_commands", timeout: float = LAUNCH_COMMAND_TIMEOUT_SECONDS) -> str | None:
        """Run one launch (or suspend) command to completion; a failure description, or None if
        it exited 0.

        Bounded: the output goes to the log (as ``source``) line by line, at most
        ``LAUNCH_OUTPUT_MAX_BYTES`` per stream (only the tail is kept besides, for the failure
        reason); the command may run ``timeout`` seconds; a background child that keeps the
        output pipes open delays the next step by ``command_output.OUTPUT_GRACE_SECONDS`` at most."""
        lines = devbox_logs.LineLog(source, command, None)
        tail = [""]

        def on_text(stream: str, text: str) -> None:
            lines.add(stream, text)
            tail[0] = (tail[0] + text)[-LAUNCH_OUTPUT_TAIL:]

        try:
            proc = runtime.exec(devbox.id, command, env=dict(devbox.environment_variables))
        except Exception as exc:
            failure = f"{kind} {command!r} could not run: {exc}"
            self._log_warning(devbox, source, command, failure)
            return failure
        try:
            result = command_output.run_to_completion(
                proc,
                timeout=timeout,
                on_text=on_text,
                max_bytes=LAUNCH_OUTPUT_MAX_BYTES,
                name=f"{source}-{devbox.id}",
            )
        except Exception as exc:  # e.g. out of descriptors: the command must not run on unwatched
            command_output.signal_group(proc, signal.SIGKILL)
            log.exception("could not follow %s %r of %s", kind, command, devbox.id)
            return f"{kind} {command!r} could not be followed: {exc}"
        if result.returncode is None:
            code = 128 + signal.SIGKILL  # killed, and the exit was never reported
        else:
            code = result.returncode if result.returncode >= 0 else 128 - result.returncode
        notes = [f"{stream} beyond {LAUNCH_OUTPUT_MAX_BYTES} bytes not logged" for stream, cut in result.truncated.items() if cut]
        if result.timed_out:
            notes.append(f"ran longer than {timeout:.3g} s: killed")
        if notes:  # before the exit entry (the log is ordered by time)
            lines.entries.append(devbox_logs.LogEntry("warn", source, clock.now_ms(), command, None, None, "; ".join(notes)))
        self.record_logs(devbox, lines.finish(code))
        if result.timed_out:
            return f"{kind} {command!r} ran longer than {timeout:.3g} s"
        if code == 0:
            return None
        return f"{kind} {command!r} exited with {code}: {tail[0].strip()}"

    def _log_warning(self, devbox: Devbox, source: str, command: str, message: str) -> None:
        self.record_logs(devbox, [devbox_logs.LogEntry("warn", source, clock.now_ms(), command, None, None, message)])

    def record_logs(self, devbox: Devbox, entries: list[devbox_logs.LogEntry]) -> None:
        try:
            with self.db.transaction() as conn:
                devbox_logs.insert(conn, devbox.account, devbox.id, entries)
        except Exception:
            log.exception("could not store %d log entries of devbox %s", len(entries), devbox.id)

    def runtime_lost(self, devbox_id: str, detail: str) -> None:
        """The runtime saw a devbox die on its own (e.g. its container's main process was
        killed from inside): it becomes ``failure`` and is released. Any thread."""
        with self.db.read() as conn:
            devbox = next((d for d in devbox_store.all_active(conn) if d.id == devbox_id), None)
        if devbox is not None:
            self._fail(devbox, "health_check_failed", detail)

    def _fail(self, devbox: Devbox, reason: str, detail: str) -> None:
        moved = self._move(devbox, lifecycle.FAILURE, failure_reason=reason, detail=detail)
        if moved is not None:
            log.warning("devbox %s failed: %s", devbox.id, detail)
            self._release(moved)
        else:  # it ended meanwhile (which is what killed it): that end ran the hooks already
            self._release_quietly(devbox)

    def _move(
        self,
        devbox: Devbox,
        status: str,
        *,
        failure_reason: str | None = None,
        shutdown_reason: str | None = None,
        detail: str | None = None,
        expect: str | None = None,
        guards: Iterable[Callable[[Devbox], None]] = (),
    ) -> Devbox | None:
        """Change the stored status if the lifecycle allows it from the current one (and the
        current one is ``expect``, when given); wake the waiters. None when it does not
        (another change won the race, e.g. a shutdown). ``guards`` may refuse (raise) inside
        the same transaction: what they check cannot change before the move is stored (a
        snapshot begun between a check and a move was lost to the shutdown)."""
        with self.db.transaction() as conn:
            current = devbox_store.get(conn, devbox.account, devbox.id)
            if current is None or not lifecycle.can_move(current.status, status):
                return None
            if expect is not None and current.status != expect:
                return None
            for guard in guards:
                guard(current)
            now = clock.later_than(current.state_transitions[-1].transition_time_ms - 1)
            terminal = status in lifecycle.TERMINAL
            moved = replace(
                current,
                status=status,
                state_transitions=(*current.state_transitions, StateTransition(status, now, detail or failure_reason)),
                end_time_ms=now if terminal else current.end_time_ms,
                failure_reason=failure_reason or current.failure_reason,
                shutdown_reason=shutdown_reason or current.shutdown_reason,
            )
            devbox_store.update(conn, moved)
        if terminal:
            with self._provisioning_lock:
                ended = self._provisioning_ended.get(devbox.id)
            if ended is not None:
                ended.set()  # still provisioning: the runtime stops at its next step
        self.watch.notify(watch_key(devbox.id))
        return moved

    def _release(self, devbox: Devbox, *, await_provisioning: bool = True) -> None:
        """The devbox is finished: free its runtime resources, then let hooks tidy up."""
        self.keep_alive_timers.stop(devbox.id)
        self._release_quietly(devbox)
        if await_provisioning:
            self._await_provisioning(devbox.id)
        for hook in self._terminal_hooks:
            try:
                hook(devbox)
            except Exception:
                log.exception("terminal hook failed for %s", devbox.id)

    def _await_provisioning(self, devbox_id: str) -> None:
        """A devbox that ended while its provisioning thread runs was not the runtime's yet, so
        the release found nothing to free: that thread frees what it made at its next step
        (it sees the end). Wait for it (bounded), so that an answered shutdown has left
        nothing behind: a Docker container lived on for 0.3 s after the answer."""
        with self._provisioning_lock:
            thread = self._provisioning_by_id.get(devbox_id)
        if thread is None or thread is threading.current_thread():
            return
        thread.join(STOP_PROVISIONING_WAIT_SECONDS)
        if thread.is_alive():
            log.warning("devbox %s ended; its provisioning still runs after %g s", devbox_id, STOP_PROVISIONING_WAIT_SECONDS)

    def _release_quietly(self, devbox: Devbox) -> None:
        if self.runtime is None:
            return
        try:
            self.runtime.shutdown(devbox.id)
        except Exception:
            log.exception("runtime %s failed to shut down %s", self.runtime.name, devbox.id)

    def _status_check(self, account: str, devbox_id: str, wanted: Iterable[str]) -> Callable[[], Devbox | None]:
        wanted = frozenset(wanted)

        def check() -> Devbox | None:
            devbox = self.retrieve_devbox(account, devbox_id)  # 404 ends the wait at once
            if devbox.status in wanted:
                return devbox
            if self._stopped_all.is_set() or (self.stopping.is_set() and devbox.status in lifecycle.TERMINAL):
                # The stop ends every devbox (which wakes this wait): a status not reached by
                # now never will be in this process; the poll ends instead of holding the stop.
                # Not before the devbox has ended: a check that read it just before the stop
                # began told "is running" of a devbox the stop was about to end.
                raise Stopping(f"the simulator is stopping; devbox {devbox_id} is {devbox.status}")
            return None

        return check

    def _policy(self, devbox: Devbox) -> NetworkPolicy | None:
        if not devbox.network_policy_id:
            return None
        return self.network_policies.require(devbox.account, devbox.network_policy_id)

    def _policy_users(self, account: str, policy_id: str) -> list[str]:
        with self.db.read() as conn:
            return [f"devbox {devbox_id}" for devbox_id in devbox_store.active_using_policy(conn, account, policy_id)]

    @staticmethod
    def _get(conn, account: str, devbox_id: str) -> Devbox:
        return found(devbox_store.get(conn, account, devbox_id), "devbox", devbox_id)


def keep_alive_seconds(devbox: Devbox) -> float | None:
    """The devbox's idle period: ``after_idle``'s, else its keep-alive time (None: Runloop's
    default, an hour)."""
    return idle_policy(devbox.launch_parameters).seconds


def hold_seconds(requested: float | None, default: float, cap: float, field: str = "timeout_seconds") -> float:
    """A long poll's hold: the request's ``field`` (any number, the SDK sends floats), capped."""
    if requested is None:
        return default
    if requested < 0:
        raise InvalidRequest(f"{field} must not be negative, got {requested}")
    return float(min(requested, cap))  # int against float compares exactly: no overflow for 10**400


def _check_statuses(statuses: list[str]) -> frozenset[str]:
    if not statuses:
        raise InvalidRequest("statuses must name at least one status")
    unknown = [s for s in statuses if s not in lifecycle.ALL_STATUSES]
    if unknown:
        raise InvalidRequest(f"unknown devbox status {unknown[0]!r}; known: {', '.join(lifecycle.ALL_STATUSES)}")
    return frozenset(statuses)


def _check_name(name: str | None) -> str | None:
    if name is not None and len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"name is longer than {MAX_NAME_LENGTH} characters")
    return name if name is None else reject_control_characters("name", name)


def _check_text(field: str, value: str) -> str:
    if "\0" in value:
        raise InvalidRequest(f"{field} must not contain NUL characters")
    return value


# A command is one argument of the shell that runs it, and the kernel takes at most 128 KiB in
# one (MAX_ARG_STRLEN; over it exec fails with E2BIG); a little is left for a runtime's wrapping.
MAX_COMMAND_BYTES = 127 * 1024


def check_command(field: str, command: str) -> str:
    _check_text(field, command)
    size = len(command.encode("utf-8", "surrogatepass"))
    if size > MAX_COMMAND_BYTES:
        raise InvalidRequest(f"{field}: a command is at most {MAX_COMMAND_BYTES} bytes, this one {size};"
                             " write a longer script to a file (write_file_contents) and run that")
    return command


# Create fields for what the simulator has not got: refused when given, rather than taken and
# ignored (a test would read an empty secret, or miss a mount, with no error to say why).
_UNSIMULATED = {
    "secrets": "there is no secrets store here: give the values in environment_variables",
    "mounts": "object and file mounts are not simulated: give files in file_mounts, or write them (write_file_contents)",
    "code_mounts": "code mounts (git clones) are not simulated: give files in file_mounts, or clone with a command "
                   "(egress per the devbox's policy)",
}


def _refuse_unsimulated(params: dict[str, Any]) -> None:
    for field, why in _UNSIMULATED.items():
        if params.get(field):
            raise InvalidRequest(f"{field}: {why}", code="not_supported")


def _check_file_mounts(file_mounts: dict[str, str]) -> dict[str, str]:
    """Checked at create (400); whether a path may be written is the runtime's to say, when
    the devbox exists (a bad one fails the devbox, naming the path)."""
    from simulator.files import check_file_mount_size, check_path  # (files builds on this module)

    if not isinstance(file_mounts, dict):
        raise InvalidRequest("file_mounts must be an object of {path: content}")
    for path, content in file_mounts.items():
        if not isinstance(path, str):
            raise InvalidRequest("file_mounts paths must be strings")
        if not isinstance(content, str):
            raise InvalidRequest(f"file_mounts[{path!r}] must be a string")
        try:
            check_path(path)
        except InvalidRequest as exc:
            raise InvalidRequest(f"file_mounts: {exc.message}", code=exc.code) from None
        check_file_mount_size(path, content)
    return dict(file_mounts)


# Each variable is one KEY=VALUE argument of every command's exec (at most 128 KiB each, and
# all arguments together within the kernel's ARG_MAX): the total, with a command's 127 KiB.
MAX_ENVIRONMENT_BYTES = 64 * 1024


def _check_environment(environment: dict[str, str]) -> dict[str, str]:
    total = 0
    for key, value in environment.items():
        if not key or "=" in key or "\0" in key:
            raise InvalidRequest(f"environment variable name {key!r} is not valid")
        _check_text(f"environment_variables.{key}", value)
        total += len(key.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass")) + 2
    if total > MAX_ENVIRONMENT_BYTES:
        raise InvalidRequest(f"environment_variables hold {total} bytes, more than {MAX_ENVIRONMENT_BYTES};"
                             " put large values in a file (file_mounts)")
    return dict(environment)
