"""A devbox's resource usage (``GET /v1/devboxes/{id}/usage``), computed from its lifecycle as
Runloop describes it: CPU and memory for the time it was not suspended, disk for all the time
since it was created (storage is kept while suspended), each times the size it asked for.

The sizes are the SDK's (``launch_parameters.resource_size_request``, SMALL when unset;
CUSTOM_SIZE takes ``custom_cpu_cores``, ``custom_gb_memory`` and ``custom_disk_size``, checked
at create). "Active" is all the time not suspended: provisioning, initializing and the
suspend commands' time (``suspending``) count, as the devbox holds its CPU and memory then.
This is the bill a cloud devbox of that size would have run up, not a measurement (the runtimes
hold a devbox to its size's vCPUs and memory, ``size_of``, up to the machine's CPUs and 2 GiB,
not to its disk).
"""

from __future__ import annotations

from typing import Any

from simulator import lifecycle
from simulator.devbox_model import Devbox

# (vCPUs, memory GiB, disk GiB), as the SDK documents resource_size_request.
SIZES = {
    "X_SMALL": (0.5, 1, 4),
    "SMALL": (1, 2, 4),
    "MEDIUM": (2, 4, 8),
    "LARGE": (2, 8, 16),
    "X_LARGE": (4, 16, 16),
    "XX_LARGE": (8, 32, 16),
}
DEFAULT_SIZE = "SMALL"


def size_of(launch_parameters: dict[str, Any]) -> tuple[float, float, float]:
    """(vCPUs, memory GiB, disk GiB) the devbox asked for."""
    requested = launch_parameters.get("resource_size_request") or DEFAULT_SIZE
    if requested == "CUSTOM_SIZE":
        cpu, memory, disk = SIZES[DEFAULT_SIZE]
        return (_number(launch_parameters.get("custom_cpu_cores"), cpu), _number(launch_parameters.get("custom_gb_memory"), memory),
                _number(launch_parameters.get("custom_disk_size"), disk))
    return SIZES.get(requested, SIZES[DEFAULT_SIZE])


def spec_limits(launch_parameters: dict[str, Any]) -> dict[str, Any]:
    """``DevboxSpec`` fields that hold a devbox (or a build) to its size: vCPUs, memory bytes."""
    cpus, memory_gib, _disk_gib = size_of(launch_parameters)
    return {"cpus": cpus, "memory": round(memory_gib * 1024**3)}


def resource_usage(devbox: Devbox, now_ms: int) -> dict[str, Any]:
    """The ``DevboxResourceUsageView``."""
    end_ms = devbox.end_time_ms
    if end_ms is None:  # still on: now, but never before what is recorded (the wall clock may step back)
        end_ms = max(now_ms, devbox.create_time_ms, *(t.transition_time_ms for t in devbox.state_transitions))
    elapsed_ms = end_ms - devbox.create_time_ms
    elapsed = elapsed_ms // 1000
    active = min(elapsed, max(0, elapsed_ms - _suspended_ms(devbox, end_ms)) // 1000)
    cpu, memory, disk = size_of(devbox.launch_parameters)
    return {  # the products as the SDK defines them: whole seconds times the size
        "id": devbox.id,
        "status": devbox.status,
        "start_time_ms": devbox.create_time_ms,
        "end_time_ms": devbox.end_time_ms,
        "total_elapsed_seconds": elapsed,
        "total_active_seconds": active,
        "vcpu_seconds": int(active * cpu),
        "memory_gb_seconds": int(active * memory),
        "disk_gb_seconds": int(elapsed * disk),
    }


def _suspended_ms(devbox: Devbox, end_ms: int) -> int:
    """Time spent suspended: from each move to ``suspended`` to the next transition (or the end)."""
    total, since = 0, None
    for transition in devbox.state_transitions:
        if since is not None:
            total += transition.transition_time_ms - since
            since = None
        if transition.status == lifecycle.SUSPENDED:
            since = transition.transition_time_ms
    if since is not None:
        total += end_ms - since
    return total


def _number(value, default: float, limit: float = 64) -> float:
    """A size the API checked; a stored value it did not (older stores) falls back to SMALL's."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= limit
    return value if ok else default
