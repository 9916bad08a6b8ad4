"""What a running devbox does after a time without activity, and what wakes it, from its
``launch_parameters`` (shapes checked by the API schema, ``LaunchParametersParam``):

- ``keep_alive_time_seconds`` (default an hour): it shuts down, ``shutdown_reason:
  keep_alive_timeout``.
- ``after_idle`` or ``lifecycle.after_idle`` (``{idle_time_seconds, on_idle}``): replaces it,
  as the SDK documents ("Devbox will ignore keep_alive_time_seconds"). ``on_idle: shutdown``
  ends it with ``shutdown_reason: idle``; ``suspend`` suspends it.
- ``lifecycle.resume_triggers.http``: a request through its tunnel resumes it when suspended.
  Set either way, it takes precedence over the tunnel's ``wake_on_http``.
- ``lifecycle.lifecycle_hooks.suspend_commands``: run one after the other before every
  suspend (by the API or when idle), all within ``suspend_deadline_ms`` (default 30 s);
  failures and overruns are logged and the suspend goes on.

Activity is what ``simulator.keep_alive`` says it is; the timer is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_SUSPEND_DEADLINE_MS = 30_000


@dataclass(frozen=True)
class IdlePolicy:
    seconds: float | None  # None: keep_alive.DEFAULT_SECONDS
    on_idle: str  # "shutdown" | "suspend"
    shutdown_reason: str  # when on_idle is shutdown: "keep_alive_timeout" | "idle"


def idle_policy(launch_parameters: dict[str, Any]) -> IdlePolicy:
    for after in (_lifecycle(launch_parameters).get("after_idle"), launch_parameters.get("after_idle")):
        if _valid_after_idle(after):
            return IdlePolicy(float(after["idle_time_seconds"]), after["on_idle"], "idle")
    return IdlePolicy(launch_parameters.get("keep_alive_time_seconds"), "shutdown", "keep_alive_timeout")


def with_defaults(defaults: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A blueprint's launch_parameters under a devbox's own: key by key, ``lifecycle`` one level
    deeper (the devbox's ``resume_triggers`` does not drop the blueprint's hooks), and the
    devbox's idle policy, wherever it gave it, in both places the blueprint had one."""
    merged = {**defaults, **request}
    if isinstance(defaults.get("lifecycle"), dict) and isinstance(request.get("lifecycle"), dict):
        merged["lifecycle"] = {**defaults["lifecycle"], **request["lifecycle"]}
    own = _part(request, "lifecycle").get("after_idle") or request.get("after_idle")
    if own:
        if "after_idle" in merged:
            merged["after_idle"] = own
        if "after_idle" in _part(merged, "lifecycle"):
            merged["lifecycle"] = {**merged["lifecycle"], "after_idle": own}
    return merged


def resumes_on_http(launch_parameters: dict[str, Any], tunnel) -> bool:
    """Whether a request through the devbox's tunnel resumes it when it is suspended."""
    http = _part(_lifecycle(launch_parameters), "resume_triggers").get("http")
    if isinstance(http, bool):
        return http
    return tunnel is not None and bool(tunnel.wake_on_http)


def suspend_hooks(launch_parameters: dict[str, Any]) -> tuple[list[str], float]:
    """(the commands to run before a suspend, the seconds they have in all)."""
    hooks = _part(_lifecycle(launch_parameters), "lifecycle_hooks")
    commands = hooks.get("suspend_commands")
    commands = [c for c in commands if isinstance(c, str)] if isinstance(commands, list) else []
    deadline_ms = hooks.get("suspend_deadline_ms")
    if not _is_int(deadline_ms) or not 1 <= deadline_ms <= 60_000:
        deadline_ms = DEFAULT_SUSPEND_DEADLINE_MS
    return commands, deadline_ms / 1000


# Checked at the API; what a devbox or blueprint stored before these checks holds may be
# anything, and what is not valid is ignored.
def _valid_after_idle(after) -> bool:
    return isinstance(after, dict) and _is_int(after.get("idle_time_seconds")) and after["idle_time_seconds"] >= 1 \
        and after.get("on_idle") in ("shutdown", "suspend")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _lifecycle(launch_parameters: dict[str, Any]) -> dict[str, Any]:
    return _part(launch_parameters, "lifecycle")


def _part(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]`` if it is an object (the API checks shapes; older stored devboxes were not)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}
