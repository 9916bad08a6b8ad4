"""The network-policy service: one method per API action, named like the action.

Validation happens first, on the merged result; then the store and (through the change hooks,
called inside the same transaction) the kernel are changed together, so a failure anywhere
leaves nothing half-applied: when nothing was stored (a hook failed, or the COMMIT did, as on
a full disk) the hooks that had run are called again from the new version back to the stored
one, under the store's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from simulator import clock, ids, policy_store
from simulator.cidrs import validate_cidrs
from simulator.db import Database
from simulator.errors import InvalidRequest, found
from simulator.hostnames import normalise_patterns
from simulator.labels import reject_control_characters
from simulator.policy_model import Egress, NetworkPolicy, Page

log = logging.getLogger(__name__)

ID_PREFIX = "npol"
DEFAULT_MAX_PER_ACCOUNT = 100
MAX_NAME_LENGTH = 256
MAX_DESCRIPTION_LENGTH = 4096
MAX_HOSTNAMES = 1000
MAX_CIDRS = 1000
# Port rules over all of allowed_cidrs. Each becomes set elements in the policy's nftables
# chain: a million (1,000 CIDRs x 1,000 ports) took 90 s to apply, with the API waiting.
MAX_PORT_RULES = 4000
# How many entries a request may send per cap, duplicates included (they are dropped, and
# only the distinct ones count against the cap, but every one sent is read and checked).
RAW_FACTOR = 4

EGRESS_FLAGS = (
    "allow_all",
    "allow_devbox_to_devbox",
    "allow_agent_gateway",
    "allow_mcp_gateway",
    "allow_runloop_mirrors",
)

# (account, policy_id) -> human descriptions of what uses the policy ("devbox dbx_...").
UsageCheck = Callable[[str, str], list[str]]
# (before, after) -> None, called inside the update transaction; raising rolls it back.
UpdateHook = Callable[[NetworkPolicy, NetworkPolicy], None]


class NetworkPolicyService:
    def __init__(
        self,
        db: Database,
        *,
        max_per_account: int = DEFAULT_MAX_PER_ACCOUNT,
        unique_names: bool = False,
    ):
        self.db = db
        self.max_per_account = max_per_account
        self.unique_names = unique_names
        self._usage_checks: list[UsageCheck] = []
        self._update_hooks: list[UpdateHook] = []
        self._delete_hooks: list[Callable[[str], None]] = []

    # Plug-in points for devboxes and blueprints (delete-in-use, live enforcement).
    def add_usage_check(self, check: UsageCheck) -> None:
        self._usage_checks.append(check)

    def add_update_hook(self, hook: UpdateHook) -> None:
        self._update_hooks.append(hook)

    def add_delete_hook(self, hook: Callable[[str], None]) -> None:
        """``hook(policy_id)`` after a delete is stored (no devbox used the policy)."""
        self._delete_hooks.append(hook)

    # --- API actions -------------------------------------------------------------------

    def create_network_policy(
        self, account: str, params: dict[str, Any], request_id: str | None = None
    ) -> NetworkPolicy:
        if params.get("name") is None:
            raise InvalidRequest("name is required")
        name = _check_name(params["name"])
        description = _check_description(params.get("description"))
        egress = _merge_egress(Egress(), params)
        with self.db.transaction() as conn:
            if request_id:
                # A retried create (same x-request-id) returns what the first attempt made.
                previous = policy_store.by_request_id(conn, account, request_id)
                if previous is not None:
                    return previous
            if self.unique_names and policy_store.name_taken(conn, account, name):
                raise InvalidRequest(
                    f"a network policy named {name!r} already exists in this account",
                    code="duplicate_name",
                )
            if policy_store.count(conn, account) >= self.max_per_account:
                raise InvalidRequest(
                    f"this account already has {self.max_per_account} network policies, the maximum;"
                    " delete one before creating another",
                    code="quota_exceeded",
                )
            now = clock.now_ms()
            policy = NetworkPolicy(
                id=ids.new_id(ID_PREFIX),
                account=account,
                name=name,
                description=description,
                egress=egress,
                create_time_ms=now,
                update_time_ms=now,
            )
            policy_store.insert(conn, policy, request_id)
        return policy

    def retrieve_network_policy(self, account: str, policy_id: str) -> NetworkPolicy:
        with self.db.read() as conn:
            return self._get(conn, account, policy_id)

    def update_network_policy(self, account: str, policy_id: str, params: dict[str, Any]) -> NetworkPolicy:
        # Validate what can be validated before taking the write lock.
        name = _check_name(params["name"]) if params.get("name") is not None else None
        description = params.get("description")
        if description is not None:
            description = _check_description(description)
        applied: list[tuple[UpdateHook, NetworkPolicy, NetworkPolicy]] = []  # (hook, before, after)

        def undo() -> None:
            # Nothing was stored (the COMMIT failed, say, or a later hook): what the hooks
            # already enforce goes back to the stored version, newest hook first.
            for hook, stored, unstored in reversed(applied):
                try:
                    hook(unstored, stored)
                except Exception:
                    log.exception("putting %s back to its stored version", policy_id)

        with self.db.transaction(undo) as conn:
            before = self._get(conn, account, policy_id)
            egress = _merge_egress(before.egress, params)
            if name is not None and name != before.name and self.unique_names:
                if policy_store.name_taken(conn, account, name, except_id=policy_id):
                    raise InvalidRequest(
                        f"a network policy named {name!r} already exists in this account",
                        code="duplicate_name",
                    )
            after = replace(
                before,
                name=name if name is not None else before.name,
                description=description if description is not None else before.description,
                egress=egress,
                update_time_ms=clock.later_than(before.update_time_ms),
            )
            policy_store.update(conn, after)
            for hook in self._update_hooks:
                # Noted before the call: a hook that fails part way (its kernel change made,
                # cutting flows failed) is taken back too; taking back one that changed
                # nothing changes nothing.
                applied.append((hook, before, after))
                hook(before, after)
        return after

    def list_network_policies(
        self,
        account: str,
        *,
        id: str | None = None,
        name: str | None = None,
        search: str | None = None,
        starting_after: str | None = None,
        limit: int | None = None,
        include_total_count: bool = True,
    ) -> Page:
        with self.db.read() as conn:
            return policy_store.list_page(
                conn,
                account,
                id=id,
                name=name,
                search=search,
                starting_after=starting_after,
                limit=limit,
                include_total_count=include_total_count,
            )

    def delete_network_policy(self, account: str, policy_id: str) -> NetworkPolicy:
        with self.db.transaction() as conn:
            policy = self._get(conn, account, policy_id)
            users = [user for check in self._usage_checks for user in check(account, policy_id)]
            if users:
                shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
                raise InvalidRequest(
                    f"network policy {policy_id} is in use by active {shown}; shut them down or"
                    " give them another policy (devboxes), delete them or let their builds end"
                    " (blueprints) first",
                    code="policy_in_use",
                )
            policy_store.delete(conn, account, policy_id)
        for hook in self._delete_hooks:
            hook(policy_id)
        return policy

    # --- helpers for other services ----------------------------------------------------

    def require(self, account: str, policy_id: str) -> NetworkPolicy:
        """The policy, or 400 (not 404): used when another resource refers to a policy."""
        with self.db.read() as conn:
            policy = policy_store.get(conn, account, policy_id)
        if policy is None:
            raise InvalidRequest(f"network policy {policy_id!r} does not exist", code="unknown_network_policy")
        return policy

    @staticmethod
    def _get(conn, account: str, policy_id: str) -> NetworkPolicy:
        return found(policy_store.get(conn, account, policy_id), "network policy", policy_id)


def _check_name(name: str) -> str:
    if not name.strip():
        raise InvalidRequest("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"name is longer than {MAX_NAME_LENGTH} characters")
    return reject_control_characters("name", name)


def _check_description(description: str | None) -> str | None:
    if description is not None and len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequest(f"description is longer than {MAX_DESCRIPTION_LENGTH} characters")
    return description


def _check_sent(what: str, count: int, unit: str, cap: int) -> None:
    if count > RAW_FACTOR * cap:
        raise InvalidRequest(f"{what} {count} {unit}, more than {cap} (and more than {RAW_FACTOR * cap} "
                             "even before duplicates are dropped)")


def _merge_egress(current: Egress, params: dict[str, Any]) -> Egress:
    """Apply the provided (non-null) egress fields onto ``current``, validating them."""
    changes: dict[str, Any] = {}
    for flag in EGRESS_FLAGS:
        if params.get(flag) is not None:
            changes[flag] = params[flag]
    # The caps count what is stored: entries after normalisation, duplicates dropped. What is
    # sent is bounded too (by RAW_FACTOR times the cap), before any of it is read.
    if params.get("allowed_hostnames") is not None:
        raw = params["allowed_hostnames"]
        _check_sent("allowed_hostnames holds", len(raw), "entries", MAX_HOSTNAMES)
        hostnames = normalise_patterns(raw)
        if len(hostnames) > MAX_HOSTNAMES:
            raise InvalidRequest(f"allowed_hostnames holds {len(hostnames)} distinct names, more than {MAX_HOSTNAMES}")
        changes["allowed_hostnames"] = hostnames
    if params.get("allowed_cidrs") is not None:
        raw = params["allowed_cidrs"]
        _check_sent("allowed_cidrs holds", len(raw), "entries", MAX_CIDRS)
        sent_ports = sum(len(entry["ports"]) for entry in raw
                         if isinstance(entry, dict) and isinstance(entry.get("ports"), list))
        _check_sent("allowed_cidrs hold", sent_ports, "port rules in all", MAX_PORT_RULES)
        cidrs = validate_cidrs(raw)
        if len(cidrs) > MAX_CIDRS:
            raise InvalidRequest(f"allowed_cidrs holds {len(cidrs)} distinct entries, more than {MAX_CIDRS}")
        ports = sum(len(cidr.ports or ()) for cidr in cidrs)
        if ports > MAX_PORT_RULES:
            raise InvalidRequest(f"allowed_cidrs hold {ports} distinct port rules in all, more than {MAX_PORT_RULES}")
        changes["allowed_cidrs"] = cidrs
    # allow_all implies devbox-to-devbox, over what the user set it to: turning allow_all off
    # brings that back (the value it implied goes), however many updates ago it was set.
    requested = changes.get("allow_devbox_to_devbox", current.devbox_to_devbox_requested)
    changes["devbox_to_devbox_requested"] = requested
    changes["allow_devbox_to_devbox"] = changes.get("allow_all", current.allow_all) or requested
    return replace(current, **changes)
