"""Build a blueprint in a build devbox on any runtime: the blueprint's disk is the build
devbox's disk once every step has run.

The build devbox has the blueprint's id, starts from the base blueprint's disk (if any) and
runs under the blueprint's top-level ``network_policy_id`` (build time only). Steps, in order:
``file_mounts`` written, the Dockerfile's RUN steps (``simulator.dockerfile``), then
``system_setup_commands``. A step that exits non-zero, or runs longer than
``STEP_TIMEOUT_SECONDS``, fails the build. Every step and its output go to the build log.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator import dockerfile
from simulator.blueprint_model import Blueprint
from simulator.policy_model import NetworkPolicy
from simulator.runtime.base import DevboxRuntime, DevboxSpec

STEP_TIMEOUT_SECONDS = 600.0
MAX_LOGGED_LINES = 2000  # per step and stream: the tail is kept

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
    runtime.provision(DevboxSpec(id=blueprint.id, account=blueprint.account, policy=request.policy, disk=request.base_disk))
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
    log("info", f"$ {step.command}" + (f"  (in {step.cwd})" if step.cwd else ""))
    proc = runtime.exec(devbox_id, step.command, env=step.env or None, cwd=step.cwd)
    try:
        stdout, stderr = proc.communicate(timeout=STEP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise BuildFailed(f"{step.command!r} ran longer than {STEP_TIMEOUT_SECONDS:g} s") from None
    for level, data in (("info", stdout), ("error", stderr)):
        lines = (data or b"").decode("utf-8", "replace").splitlines()
        if len(lines) > MAX_LOGGED_LINES:
            log(level, f"... {len(lines) - MAX_LOGGED_LINES} lines not kept")
        if lines:
            log(level, *lines[-MAX_LOGGED_LINES:])
    if proc.returncode != 0:
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        raise BuildFailed(f"{step.command!r} exited with {code}")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the runtime starts each command as its own group
    except (ProcessLookupError, PermissionError):
        pass
