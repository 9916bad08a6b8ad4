"""Devbox statuses and the transitions between them, declared once.

The devbox service validates every status change against ``TRANSITIONS``; nothing else decides
which change is legal. Suspend/resume statuses are listed so that views and ``wait_for_status``
accept them.

``resuming`` is never entered: resume thaws the devbox's processes and moves it from
``suspended`` straight to ``running`` (the SDK's ``resume_async`` callers accept only
suspended/running), as ``scheduled`` is listed but never entered. ``suspending`` is stored
while the processes are being frozen; a freeze that fails goes back to ``running``.
"""

from __future__ import annotations

from simulator.errors import ApiError

SCHEDULED = "scheduled"  # deprecated by Runloop; never entered here, accepted in wait_for_status
QUEUED = "queued"
PROVISIONING = "provisioning"
INITIALIZING = "initializing"
RUNNING = "running"
SUSPENDING = "suspending"
SUSPENDED = "suspended"
RESUMING = "resuming"
FAILURE = "failure"
SHUTDOWN = "shutdown"

ALL_STATUSES = (
    SCHEDULED, QUEUED, PROVISIONING, INITIALIZING, RUNNING,
    SUSPENDING, SUSPENDED, RESUMING, FAILURE, SHUTDOWN,
)

# from -> the statuses it may move to. Any non-terminal status may fail or be shut down.
TRANSITIONS: dict[str, frozenset[str]] = {
    SCHEDULED: frozenset({QUEUED, PROVISIONING, FAILURE, SHUTDOWN}),
    QUEUED: frozenset({PROVISIONING, FAILURE, SHUTDOWN}),
    PROVISIONING: frozenset({INITIALIZING, RUNNING, FAILURE, SHUTDOWN}),
    INITIALIZING: frozenset({RUNNING, FAILURE, SHUTDOWN}),
    RUNNING: frozenset({SUSPENDING, FAILURE, SHUTDOWN}),
    SUSPENDING: frozenset({SUSPENDED, RUNNING, FAILURE, SHUTDOWN}),
    SUSPENDED: frozenset({RUNNING, RESUMING, FAILURE, SHUTDOWN}),
    RESUMING: frozenset({RUNNING, FAILURE, SHUTDOWN}),
    FAILURE: frozenset(),
    SHUTDOWN: frozenset(),
}

TERMINAL = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
# Statuses in which a devbox still holds resources (and so "uses" its network policy).
ACTIVE = frozenset(ALL_STATUSES) - TERMINAL

assert set(TRANSITIONS) == set(ALL_STATUSES)
assert all(targets <= set(ALL_STATUSES) for targets in TRANSITIONS.values())


class InvalidTransition(ApiError):
    status = 400
    code = "invalid_state"


def can_move(current: str, new: str) -> bool:
    return new in TRANSITIONS[current]


def check_move(devbox_id: str, current: str, new: str) -> None:
    if not can_move(current, new):
        raise InvalidTransition(f"devbox {devbox_id} is {current} and cannot become {new}")
