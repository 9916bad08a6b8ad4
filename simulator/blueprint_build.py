"""Build a blueprint in a build devbox on any runtime: the blueprint's disk is the build
devbox's disk once every step has run.

The build devbox has the blueprint's id, starts from the base blueprint's disk (if any) and
runs under the blueprint's top-level ``network_policy_id`` (build time only). Steps, in order:
``file_mounts`` written, the Dockerfile's RUN steps (``simulator.dockerfile``), then
``system_setup_commands``. A step that exits non-zero, or runs longer than
``STEP_TIMEOUT_SECONDS``, fails the build. Every step and its output go to the build log
(bounded: ``simulator.command_output``; a background child left by a step delays the build by
the output grace period at most).
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator import command_output, dockerfile
from simulator.blueprint_model import Blueprint
from simulator.policy_model import NetworkPolicy
from simulator.runtime.base import DevboxRuntime, DevboxSpec
from simulator.usage import spec_limits

STEP_TIMEOUT_SECONDS = 600.0
MAX_LOGGED_LINES = 2000  # per step and stream: the tail is kept
MAX_LINE_CHARS = 16_384  # a longer line is cut (marked with "...")
# Per step and stream, as for executions: output beyond it is read and dropped, never kept.
MAX_STEP_OUTPUT_BYTES = command_output.MAX_OUTPUT_BYTES

Log = Callable[..., None]  # log(level, *messages): one call, one write


class BuildFailed(Exception):
    pass


@dataclass(frozen=True)
class BuildRequest:
    blueprint: Blueprint
    policy: NetworkPolicy | None  # the build-time policy
    base_disk: str | None = None
    file_mounts: dict[str, str] = field(default_factory=dict)
    cancelled: Callable[[], bool] = lambda: False  # checked before each step (a deleted blueprint)


def steps_of(blueprint: Blueprint, log: Log) -> list[dockerfile.Step]:
    params = blueprint.parameters
    steps: list[dockerfile.Step] = []
    if params.get("dockerfile"):
        try:
            plan = dockerfile.plan(params["dockerfile"], params.get("build_args"))
        except dockerfile.DockerfileError as exc:
            raise BuildFailed(f"dockerfile: {exc}") from exc
        for note in plan.ignored:
            log("info", f"dockerfile {note}")
        steps += plan.steps
    steps += [dockerfile.Step(command) for command in params.get("system_setup_commands") or []]
    return steps


def build(runtime: DevboxRuntime, request: BuildRequest, log: Log) -> str:
    """Run the build; the disk reference of the result. Raises BuildFailed (or RuntimeFailure)."""
    blueprint = request.blueprint
    steps = steps_of(blueprint, log)  # a bad Dockerfile fails before anything starts
    policy = request.policy.id if request.policy else "none (unrestricted)"
    log("info", f"starting the build devbox (build-time network policy: {policy})")
    # Held to the size its devboxes will have, as they are (untrusted RUN steps could spin).
    runtime.provision(DevboxSpec(id=blueprint.id, account=blueprint.account, policy=request.policy,
                                 disk=request.base_disk, **spec_limits(blueprint.launch_parameters)))
    try:
        for path, content in request.file_mounts.items():
            log("info", f"writing file mount {path}")
            try:
                runtime.write_file(blueprint.id, path, content.encode())
            except (OSError, ValueError) as exc:
                raise BuildFailed(f"file mount {path}: {exc}") from exc
        for step in steps:
            if request.cancelled():
                raise BuildFailed("the blueprint was deleted")
            _run(runtime, blueprint.id, step, log)
        log("info", "saving the disk")
        disk = runtime.snapshot_disk(blueprint.id, blueprint.id)
    finally:
        runtime.shutdown(blueprint.id)
    log("info", "build complete")
    return disk


def _run(runtime: DevboxRuntime, devbox_id: str, step: dockerfile.Step, log: Log) -> None:
    """One step, bounded: ``STEP_TIMEOUT_SECONDS``, output capped per stream (only the last
    ``MAX_LOGGED_LINES`` lines are kept), and a background child holding the output pipes
    (``RUN svc &``) costs ``command_output.OUTPUT_GRACE_SECONDS`` at most, never a hang."""
    log("info", f"$ {step.command}" + (f"  (in {step.cwd})" if step.cwd else ""))
    proc = runtime.exec(devbox_id, step.command, env=step.env or None, cwd=step.cwd)
    tails = {"stdout": TailLines(MAX_LOGGED_LINES), "stderr": TailLines(MAX_LOGGED_LINES)}
    try:
        result = command_output.run_to_completion(
            proc,
            timeout=STEP_TIMEOUT_SECONDS,
            on_text=lambda stream, text: tails[stream].add(text),
            max_bytes=MAX_STEP_OUTPUT_BYTES,
            name=f"build-{devbox_id}",
        )
    except Exception:
        command_output.signal_group(proc, signal.SIGKILL)  # never left running unwatched
        raise
    for (stream, tail), level in zip(tails.items(), ("info", "error")):
        lines = tail.finish()
        if tail.dropped:
            log(level, f"... {tail.dropped} lines not kept")
        if lines:
            log(level, *lines)
        if result.truncated[stream]:
            log(level, f"... {stream} beyond {MAX_STEP_OUTPUT_BYTES} bytes not kept")
    if result.timed_out:
        raise BuildFailed(f"{step.command!r} ran longer than {STEP_TIMEOUT_SECONDS:g} s")
    if result.returncode != 0:
        returncode = result.returncode
        code = 128 + signal.SIGKILL if returncode is None else returncode if returncode >= 0 else 128 - returncode
        raise BuildFailed(f"{step.command!r} exited with {code}")


class TailLines:
    """The last ``keep`` lines of a stream as text arrives (each cut at MAX_LINE_CHARS)."""

    def __init__(self, keep: int):
        self.lines: deque[str] = deque(maxlen=keep)
        self.dropped = 0
        self._partial = ""

    def add(self, text: str) -> None:
        *lines, partial = (self._partial + text).split("\n")
        for line in lines:
            self._line(line)
        self._partial = partial[: MAX_LINE_CHARS + 1]  # a line without end is kept only as logged

    def finish(self) -> list[str]:
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        return list(self.lines)

    def _line(self, line: str) -> None:
        if len(self.lines) == self.lines.maxlen:
            self.dropped += 1
        self.lines.append(line[:MAX_LINE_CHARS] + "..." if len(line) > MAX_LINE_CHARS else line)
