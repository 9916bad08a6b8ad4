"""simulator.idle_policy: which launch_parameters decide the idle action and the HTTP wake."""

from __future__ import annotations

import types

import pytest

from simulator.idle_policy import IdlePolicy, idle_policy, resumes_on_http, suspend_hooks

SUSPEND_30 = {"idle_time_seconds": 30, "on_idle": "suspend"}


@pytest.mark.parametrize(
    "launch, expected",
    [
        ({}, IdlePolicy(None, "shutdown", "keep_alive_timeout")),
        ({"keep_alive_time_seconds": 60}, IdlePolicy(60, "shutdown", "keep_alive_timeout")),
        ({"keep_alive_time_seconds": 60, "after_idle": SUSPEND_30}, IdlePolicy(30.0, "suspend", "idle")),
        ({"lifecycle": {"after_idle": {"idle_time_seconds": 5, "on_idle": "shutdown"}}}, IdlePolicy(5.0, "shutdown", "idle")),
        # A blueprint's after_idle under a devbox's own lifecycle.after_idle: the lifecycle one.
        ({"after_idle": SUSPEND_30, "lifecycle": {"after_idle": {"idle_time_seconds": 5, "on_idle": "shutdown"}}},
         IdlePolicy(5.0, "shutdown", "idle")),
        ({"lifecycle": {"resume_triggers": {"http": True}}}, IdlePolicy(None, "shutdown", "keep_alive_timeout")),
        # Stored before the API checked it: ignored, the keep-alive time holds.
        ({"keep_alive_time_seconds": 60, "after_idle": {"idle_time_seconds": "x", "on_idle": "suspend"}},
         IdlePolicy(60, "shutdown", "keep_alive_timeout")),
        ({"after_idle": {"idle_time_seconds": 5, "on_idle": "nap"}}, IdlePolicy(None, "shutdown", "keep_alive_timeout")),
        ({"after_idle": "soon"}, IdlePolicy(None, "shutdown", "keep_alive_timeout")),
    ],
)
def test_idle_policy(launch, expected):
    assert idle_policy(launch) == expected


def tunnel(wake):
    return types.SimpleNamespace(wake_on_http=wake)


@pytest.mark.parametrize(
    "launch, the_tunnel, expected",
    [
        ({}, None, False),
        ({}, tunnel(False), False),
        ({}, tunnel(True), True),
        ({"lifecycle": {"resume_triggers": {"http": True}}}, tunnel(False), True),
        ({"lifecycle": {"resume_triggers": {"http": False}}}, tunnel(True), False),  # it takes precedence
        ({"lifecycle": {"resume_triggers": {"axon_event": True}}}, tunnel(True), True),  # http unset: the tunnel's
        ({"lifecycle": {"resume_triggers": {"http": True}}}, None, True),
    ],
)
def test_resumes_on_http(launch, the_tunnel, expected):
    assert resumes_on_http(launch, the_tunnel) is expected


def test_suspend_hooks():
    assert suspend_hooks({}) == ([], 30.0)
    hooks = {"suspend_commands": ["a", "b"], "suspend_deadline_ms": 1500}
    assert suspend_hooks({"lifecycle": {"lifecycle_hooks": hooks}}) == (["a", "b"], 1.5)
