"""simulator.usage: resource use from a devbox's lifecycle and size."""

from __future__ import annotations

import pytest

from simulator.devbox_model import Devbox, StateTransition
from simulator.usage import resource_usage, size_of


def devbox(transitions, launch=None, status="running", end=None):
    return Devbox(id="dbx_u", account="a", status=status, create_time_ms=transitions[0][1],
                  launch_parameters=launch or {}, end_time_ms=end,
                  state_transitions=tuple(StateTransition(s, t) for s, t in transitions))


@pytest.mark.parametrize(
    "launch, size",
    [
        ({}, (1, 2, 4)),  # SMALL when unset
        ({"resource_size_request": "X_SMALL"}, (0.5, 1, 4)),
        ({"resource_size_request": "XX_LARGE"}, (8, 32, 16)),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 4, "custom_gb_memory": 16, "custom_disk_size": 32},
         (4, 16, 32)),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 2}, (2, 2, 4)),  # the rest: SMALL's
    ],
)
def test_sizes(launch, size):
    assert size_of(launch) == size


def test_running_then_suspended_then_running_then_shut_down():
    box = devbox(
        [("provisioning", 0), ("running", 2_000), ("suspending", 10_000), ("suspended", 11_000),
         ("running", 41_000), ("shutdown", 61_000)],
        launch={"resource_size_request": "MEDIUM"}, status="shutdown", end=61_000,
    )
    usage = resource_usage(box, now_ms=999_999)  # ended: now does not matter
    assert usage == {
        "id": "dbx_u", "status": "shutdown", "start_time_ms": 0, "end_time_ms": 61_000,
        "total_elapsed_seconds": 61, "total_active_seconds": 31,  # 30 s suspended
        "vcpu_seconds": 62, "memory_gb_seconds": 124, "disk_gb_seconds": 61 * 8,  # disk all along
    }


def test_still_suspended_counts_until_now():
    box = devbox([("provisioning", 1_000), ("running", 1_500), ("suspending", 5_000), ("suspended", 5_500)],
                 launch={"resource_size_request": "X_SMALL"}, status="suspended")
    usage = resource_usage(box, now_ms=21_000)
    assert (usage["total_elapsed_seconds"], usage["total_active_seconds"], usage["vcpu_seconds"]) == (20, 4, 2)
    assert usage["end_time_ms"] is None and usage["disk_gb_seconds"] == 80


def test_a_wall_clock_stepping_back_never_makes_active_exceed_elapsed():
    box = devbox([("provisioning", 0), ("running", 1_000), ("suspending", 99_000), ("suspended", 100_000)],
                 status="suspended")
    usage = resource_usage(box, now_ms=40_000)  # the clock went back below the last transition
    assert usage["total_elapsed_seconds"] == 100 and usage["total_active_seconds"] == 100  # all active until suspended


@pytest.mark.parametrize("stored", [float("inf"), float("nan"), 10**400, -2, "4", True, 1e308])
def test_custom_sizes_stored_unchecked_fall_back_to_small(stored):
    launch = {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": stored, "custom_gb_memory": stored}
    assert size_of(launch)[:2] == (1, 2)
    resource_usage(devbox([("provisioning", 0), ("running", 5_000)], launch=launch), now_ms=10_000)  # no error
