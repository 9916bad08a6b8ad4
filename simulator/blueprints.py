"""The blueprint service: one method per API action, named like the action.

Create stores the blueprint ``queued`` and starts a build thread (``simulator.blueprint_build``):
``building``, then ``build_complete`` with the build devbox's disk, or ``failed``
(``failure_reason: build_failed``, the reason in the build log). Delete keeps the row as
``state: "deleted"`` and removes the disk; it is refused (400) while disk snapshots taken from
its devboxes exist. Both policy references (build time and ``launch_parameters``) count as
uses of the policy.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from typing import Any

from simulator import blueprint_store, clock, devbox_store, disks, dockerfile, ids, snapshot_store
from simulator.blueprint_build import BuildFailed, BuildRequest, build
from simulator.blueprint_model import (
    ALL_STATUSES,
    BUILD_COMPLETE,
    BUILDING,
    CREATED,
    DELETED,
    FAILED,
    IN_BUILD,
    QUEUED,
    Blueprint,
    BuildLog,
)
from simulator.db import Database
from simulator.devboxes import DevboxService, check_command
from simulator.idle_policy import suspend_hooks
from simulator.errors import Conflict, InvalidRequest, found
from simulator.labels import reject_control_characters
from simulator.network_policies import NetworkPolicyService
from simulator.policy_model import Page
from simulator.runtime.base import RuntimeFailure

log = logging.getLogger("devbox_sim.blueprints")

ID_PREFIX = "bpt"
MAX_NAME_LENGTH = 256


class BlueprintService:
    def __init__(self, db: Database, network_policies: NetworkPolicyService, devboxes: DevboxService):
        self.db = db
        self.network_policies = network_policies
        self.devboxes = devboxes
        network_policies.add_usage_check(self._policy_users)

    # --- API actions -------------------------------------------------------------------

    def create_blueprint(self, account: str, params: dict[str, Any], request_id: str | None = None) -> Blueprint:
        runtime = self.devboxes.require_runtime()
        _check_params(params)
        with self.db.transaction() as conn:
            if request_id:
                previous = blueprint_store.by_request_id(conn, account, request_id)
                if previous is not None:
                    return previous
            # Inside the transaction: a policy or base cannot vanish before we store.
            for policy_id in (params.get("network_policy_id"), (params.get("launch_parameters") or {}).get("network_policy_id")):
                if policy_id is not None:  # "" too: an unknown policy, not "none"
                    self.network_policies.require(account, policy_id)
            base = self._base(account, params)
            blueprint = Blueprint(
                id=ids.new_id(ID_PREFIX),
                account=account,
                name=params["name"],
                status=QUEUED,
                create_time_ms=clock.now_ms(),
                parameters=params,
                base_blueprint_id=base.id if base else None,
            )
            blueprint_store.insert(conn, blueprint, request_id)
        threading.Thread(
            target=self._build, args=(runtime, blueprint, base), name=f"build-{blueprint.id}", daemon=True
        ).start()
        return blueprint

    def preview_blueprint(self, account: str, params: dict[str, Any]) -> str:
        """The Dockerfile a create with ``params`` would build, checked as create checks it (the
        same 400s, and the Dockerfile's own errors, which a build would fail on): the given
        Dockerfile, then the system setup commands as RUN steps; the base, the file mounts and
        the build args as comments. Nothing is stored or built."""
        _check_params(params)
        for policy_id in (params.get("network_policy_id"), (params.get("launch_parameters") or {}).get("network_policy_id")):
            if policy_id is not None:
                self.network_policies.require(account, policy_id)
        base = self._base(account, params)
        text = params.get("dockerfile") or ""
        if text:
            try:
                dockerfile.plan(text, params.get("build_args"))
            except dockerfile.DockerfileError as exc:
                raise InvalidRequest(f"dockerfile: {exc}", code="invalid_dockerfile") from None
        # Names and paths are user text: quoted (JSON), so none can start an instruction.
        lines = [f"# devbox-sim preview of blueprint {json.dumps(params['name'])}: a build writes the file mounts,",
                 "# then replays the RUN, ENV, ARG and WORKDIR steps below in a build devbox (see the README)."]
        if base is not None:
            lines.append(f"# Built on blueprint {base.id} ({json.dumps(base.name)}).")
        lines += [f"# file_mounts: {json.dumps(path)}" for path in params.get("file_mounts") or {}]
        lines += [f"# build_args: {json.dumps(key)}" for key in params.get("build_args") or {}]
        if text:
            # A continuation left open at the end leads nowhere in a build; here it would take
            # in the first RUN below.
            lines.append(text.rstrip().removesuffix("\\").rstrip())
        # A command of several lines in the exec form (one JSON line), run by the shell as a build does.
        lines += [f"RUN {command}" if "\n" not in command else f"RUN {json.dumps(['/bin/sh', '-c', command])}"
                  for command in params.get("system_setup_commands") or []]
        return "\n".join(lines) + "\n"

    def retrieve_blueprint(self, account: str, blueprint_id: str) -> Blueprint:
        """Deleted blueprints still answer, with ``state: "deleted"``."""
        with self.db.read() as conn:
            return self._get(conn, account, blueprint_id)

    def list_blueprints(
        self,
        account: str,
        *,
        name: str | None = None,
        status: str | None = None,
        starting_after: str | None = None,
        limit: int | None = None,
        include_total_count: bool = True,
    ) -> Page:
        if status is not None and status not in ALL_STATUSES:
            raise InvalidRequest(f"unknown blueprint status {status!r}; known: {', '.join(ALL_STATUSES)}")
        with self.db.read() as conn:
            return blueprint_store.list_page(
                conn, account, name=name, status=status, starting_after=starting_after, limit=limit,
                include_total_count=include_total_count,
            )

    def delete_blueprint(self, account: str, blueprint_id: str) -> None:
        """Idempotent on a deleted blueprint; a build in progress is stopped."""
        with self.db.transaction() as conn:
            blueprint = self._get(conn, account, blueprint_id)
            if blueprint.state == DELETED:
                return
            dependents = snapshot_store.live_of_blueprint(conn, account, blueprint_id)
            if dependents:
                raise InvalidRequest(
                    f"blueprint {blueprint_id} has disk snapshots: {', '.join(dependents)}; delete them first",
                    code="blueprint_in_use",
                )
            # As for a snapshot: a devbox accepted from it may not have begun copying its disk.
            starting = devbox_store.provisioning_from(conn, account, blueprint_id=blueprint_id)
            if starting:
                raise Conflict(f"blueprint {blueprint_id} is being made into {', '.join(starting)}; delete it once"
                               " they are running", code="blueprint_in_use")
            blueprint_store.update(conn, replace(blueprint, state=DELETED, disk=None))
        if blueprint.disk is not None:
            disks.delete(self.devboxes.runtime, blueprint.disk)
        if blueprint.status in IN_BUILD and self.devboxes.runtime is not None:
            # Stop the build devbox (its id is the blueprint's): the running step dies and
            # the build ends as failed; a build not provisioned yet finds the blueprint deleted.
            try:
                self.devboxes.runtime.shutdown(blueprint.id)
            except Exception:
                log.exception("could not stop the build of %s", blueprint.id)

    def logs(self, account: str, blueprint_id: str) -> list[BuildLog]:
        with self.db.read() as conn:
            self._get(conn, account, blueprint_id)
            return blueprint_store.logs(conn, blueprint_id)

    # --- helpers for other services and the simulator -----------------------------------

    def require_built(self, account: str, *, blueprint_id: str | None = None, name: str | None = None) -> Blueprint:
        """The blueprint a devbox starts from (by id, or the newest built one of a name); 400
        if there is none or it is not built."""
        with self.db.read() as conn:
            if blueprint_id is not None:
                blueprint = blueprint_store.get(conn, account, blueprint_id)
                if blueprint is None or blueprint.state == DELETED:
                    raise InvalidRequest(f"blueprint {blueprint_id!r} does not exist", code="unknown_blueprint")
                if blueprint.status != BUILD_COMPLETE:
                    raise InvalidRequest(f"blueprint {blueprint_id} is {blueprint.status}, not build_complete",
                                         code="blueprint_not_built")
                return blueprint
            blueprint = blueprint_store.newest_built(conn, account, name or "")
        if blueprint is None:
            raise InvalidRequest(f"no built blueprint is named {name!r}", code="unknown_blueprint")
        return blueprint

    def reconcile(self) -> list[str]:
        """After a restart: builds cut short fail (their build devboxes went with the runtime)."""
        with self.db.read() as conn:
            cut = blueprint_store.all_in_build(conn)
        for blueprint in cut:
            self._log(blueprint.id, "error", "the simulator restarted during the build")
            self._finish(blueprint, status=FAILED)
        return [blueprint.id for blueprint in cut]

    # --- the build ---------------------------------------------------------------------

    def _build(self, runtime, blueprint: Blueprint, base: Blueprint | None) -> None:
        what = f"the outcome of blueprint {blueprint.id}'s build"
        try:
            moved = self._move(blueprint, BUILDING)
        except Exception:  # the store cannot take it (a full disk): the build fails
            log.exception("could not record the start of %s's build", blueprint.id)
            self.devboxes.store_retrier.write(what, lambda: self._finish(blueprint, status=FAILED))
            return
        if not moved:  # deleted before it started
            self._log(blueprint.id, "error", "build failed: the blueprint was deleted")
            self.devboxes.store_retrier.write(what, lambda: self._finish(blueprint, status=FAILED))
            return
        try:
            policy = self.network_policies.require(blueprint.account, blueprint.build_policy_id) if blueprint.build_policy_id else None
            request = BuildRequest(
                blueprint=blueprint,
                policy=policy,
                base_disk=base.disk if base else None,
                file_mounts=dict(blueprint.parameters.get("file_mounts") or {}),
                cancelled=lambda: self.retrieve_blueprint(blueprint.account, blueprint.id).state == DELETED,
            )
            disk = build(runtime, request, lambda level, *messages: self._log(blueprint.id, level, *messages))
        except Exception as exc:
            if not isinstance(exc, (BuildFailed, RuntimeFailure)):
                log.exception("build of %s failed", blueprint.id)
            self._log(blueprint.id, "error", f"build failed: {exc}")
            self.devboxes.store_retrier.write(what, lambda: self._finish(blueprint, status=FAILED))
            return

        def record() -> None:
            if not self._finish(blueprint, status=BUILD_COMPLETE, disk=disk):
                disks.delete(runtime, disk)  # deleted while it built

        self.devboxes.store_retrier.write(what, record)

    def _move(self, blueprint: Blueprint, status: str) -> bool:
        with self.db.transaction() as conn:
            current = blueprint_store.get(conn, blueprint.account, blueprint.id)
            if current is None or current.state == DELETED:
                return False
            blueprint_store.update(conn, replace(current, status=status))
        return True

    def _finish(self, blueprint: Blueprint, *, status: str, disk: str | None = None) -> bool:
        """Record the outcome; False if the blueprint was deleted meanwhile (the outcome is
        still recorded) or had already finished."""
        with self.db.transaction() as conn:
            current = blueprint_store.get(conn, blueprint.account, blueprint.id)
            if current is None or current.status not in IN_BUILD:
                return False  # already finished (a restart's reconcile failed it)
            live = current.state == CREATED
            blueprint_store.update(
                conn,
                replace(
                    current,
                    status=status,
                    disk=disk if live else None,
                    failure_reason="build_failed" if status == FAILED else None,
                    build_finish_time_ms=clock.now_ms(),
                ),
            )
        return live

    def _log(self, blueprint_id: str, level: str, *messages: str) -> None:
        now = clock.now_ms()
        try:
            with self.db.transaction() as conn:
                for message in messages:
                    blueprint_store.add_log(conn, blueprint_id, BuildLog(level, message, now))
        except Exception as exc:  # a build log line lost (a full disk) must not fail the build
            log.warning("could not store a build log line of %s: %r", blueprint_id, exc)

    def _base(self, account: str, params: dict[str, Any]) -> Blueprint | None:
        if params.get("base_blueprint_id") is not None:  # "" is an unknown id, not "no base"
            return self.require_built(account, blueprint_id=params["base_blueprint_id"])
        if params.get("base_blueprint_name") is not None:
            return self.require_built(account, name=params["base_blueprint_name"])
        return None

    def _policy_users(self, account: str, policy_id: str) -> list[str]:
        with self.db.read() as conn:
            return [f"blueprint {blueprint_id}" for blueprint_id in blueprint_store.using_policy(conn, account, policy_id)]

    @staticmethod
    def _get(conn, account: str, blueprint_id: str) -> Blueprint:
        return found(blueprint_store.get(conn, account, blueprint_id), "blueprint", blueprint_id)


def _check_params(params: dict[str, Any]) -> None:
    name = params.get("name")
    if name is None or not name.strip():
        raise InvalidRequest("name is required and must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"name is longer than {MAX_NAME_LENGTH} characters")
    reject_control_characters("name", name)
    if params.get("base_blueprint_id") is not None and params.get("base_blueprint_name") is not None:
        raise InvalidRequest("give at most one of base_blueprint_id and base_blueprint_name")
    commands = [*(params.get("system_setup_commands") or []), *((params.get("launch_parameters") or {}).get("launch_commands") or [])]
    texts = [*commands, params.get("dockerfile") or "", *(params.get("file_mounts") or {}).values(),
             *(params.get("file_mounts") or {}).keys(), *(params.get("build_args") or {}).values()]
    if any("\0" in text for text in texts):
        raise InvalidRequest("commands, dockerfile, file_mounts and build_args must not contain NUL characters")
    launch = params.get("launch_parameters") or {}
    hooks = suspend_hooks(launch)[0] if isinstance(launch, dict) else []
    for command in [*commands, *hooks]:
        if isinstance(command, str):
            check_command("system_setup_commands, launch_commands and suspend_commands", command)
    from simulator.files import check_file_mount_size  # (files builds on the devbox service)

    for path, content in (params.get("file_mounts") or {}).items():
        if isinstance(path, str) and isinstance(content, str):
            check_file_mount_size(path, content)
