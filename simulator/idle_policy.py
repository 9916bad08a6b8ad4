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
    after = _lifecycle(launch_parameters).get("after_idle") or launch_parameters.get("after_idle")
    if isinstance(after, dict):
        seconds, on_idle = after.get("idle_time_seconds"), after.get("on_idle")
        # Checked at the API; a devbox stored before these checks existed may hold anything.
        if isinstance(seconds, int) and seconds >= 1 and on_idle in ("shutdown", "suspend"):
            return IdlePolicy(float(seconds), on_idle, "idle")
    return IdlePolicy(launch_parameters.get("keep_alive_time_seconds"), "shutdown", "keep_alive_timeout")


def resumes_on_http(launch_parameters: dict[str, Any], tunnel) -> bool:
    """Whether a request through the devbox's tunnel resumes it when it is suspended."""
    http = _part(_lifecycle(launch_parameters), "resume_triggers").get("http")
    if isinstance(http, bool):
        return http
    return tunnel is not None and bool(tunnel.wake_on_http)


def suspend_hooks(launch_parameters: dict[str, Any]) -> tuple[list[str], float]:
    """(the commands to run before a suspend, the seconds they have in all)."""
    hooks = _part(_lifecycle(launch_parameters), "lifecycle_hooks")
    commands = [c for c in hooks.get("suspend_commands") or () if isinstance(c, str)]
    deadline_ms = hooks.get("suspend_deadline_ms")
    if not isinstance(deadline_ms, int) or not 1 <= deadline_ms <= 60_000:
        deadline_ms = DEFAULT_SUSPEND_DEADLINE_MS
    return commands, deadline_ms / 1000


def _lifecycle(launch_parameters: dict[str, Any]) -> dict[str, Any]:
    return _part(launch_parameters, "lifecycle")


def _part(parent: dict[str, Any], key: str) -> dict[str, Any]:
    """``parent[key]`` if it is an object (the API checks shapes; older stored devboxes were not)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}
