"""Where a new devbox's disk and defaults come from: a blueprint or a disk snapshot.

Plugged into the devbox service (``DevboxService.set_origins``):

* ``blueprint_id``, or ``blueprint_name`` (the newest ``build_complete`` blueprint of that
  name): the blueprint's disk; its ``launch_parameters`` are the defaults, and the request's
  own ``launch_parameters`` override them field by field (so its ``network_policy_id`` wins).
  The blueprint's top-level ``network_policy_id`` applied to its build only.
* ``snapshot_id`` (a ``complete`` snapshot): the snapshot's disk; the policy is the request's
  ``launch_parameters.network_policy_id``, else the one the source devbox had when the
  snapshot was taken (which must still exist).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator.blueprints import BlueprintService
from simulator.devbox_model import Devbox
from simulator.errors import InvalidRequest
from simulator.idle_policy import with_defaults
from simulator.runtime.base import RuntimeFailure
from simulator.snapshots import SnapshotService


@dataclass(frozen=True)
class Origin:
    launch_parameters: dict[str, Any] = field(default_factory=dict)
    blueprint_id: str | None = None
    snapshot_id: str | None = None


class DevboxOrigins:
    def __init__(self, blueprints: BlueprintService, snapshots: SnapshotService):
        self.blueprints = blueprints
        self.snapshots = snapshots

    def resolve(self, account: str, params: dict[str, Any], launch: dict[str, Any]) -> Origin:
        """The effective launch parameters and source ids; 400 for an unusable source."""
        if params.get("blueprint_id") is not None or params.get("blueprint_name") is not None:
            blueprint = self.blueprints.require_built(
                account, blueprint_id=params.get("blueprint_id"), name=params.get("blueprint_name")
            )
            defaults = {k: v for k, v in blueprint.launch_parameters.items() if v is not None}
            return Origin(with_defaults(defaults, launch), blueprint_id=blueprint.id)
        if params.get("snapshot_id") is not None:
            snapshot = self.snapshots.require_complete(account, params["snapshot_id"])
            merged = dict(launch)
            if merged.get("network_policy_id") is None and snapshot.network_policy_id:
                try:
                    self.blueprints.network_policies.require(account, snapshot.network_policy_id)
                except InvalidRequest as exc:
                    raise InvalidRequest(
                        f"{exc.message}: snapshot {snapshot.id} was taken under it; give"
                        " launch_parameters.network_policy_id",
                        code=exc.code,
                    ) from None
                merged["network_policy_id"] = snapshot.network_policy_id
            return Origin(merged, snapshot_id=snapshot.id)
        return Origin(dict(launch))

    def disk_for(self, devbox: Devbox) -> str | None:
        """The disk the devbox starts from (read when it is provisioned)."""
        if devbox.blueprint_id:
            blueprint = self.blueprints.retrieve_blueprint(devbox.account, devbox.blueprint_id)
            if blueprint.disk is None:
                raise RuntimeFailure(f"blueprint {blueprint.id} was deleted before the devbox started")
            return blueprint.disk
        if devbox.snapshot_id:
            snapshot = self.snapshots.query_status(devbox.account, devbox.snapshot_id)
            if snapshot.disk is None:
                raise RuntimeFailure(f"disk snapshot {snapshot.id} was deleted before the devbox started")
            return snapshot.disk
        return None
