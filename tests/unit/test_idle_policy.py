"""simulator.idle_policy: which launch_parameters decide the idle action and the HTTP wake."""

from __future__ import annotations

import types

import pytest

from simulator.idle_policy import IdlePolicy, idle_policy, resumes_on_http, suspend_hooks, with_defaults

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
        ({"after_idle": {"idle_time_seconds": True, "on_idle": "suspend"}}, IdlePolicy(None, "shutdown", "keep_alive_timeout")),
        # An unusable lifecycle.after_idle does not hide a good after_idle.
        ({"after_idle": SUSPEND_30, "lifecycle": {"after_idle": {"on_idle": "suspend"}}}, IdlePolicy(30.0, "suspend", "idle")),
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
    # Stored unchecked: a string is no list of commands (not one per character), a bool no deadline.
    odd = {"suspend_commands": "rm -rf x", "suspend_deadline_ms": True}
    assert suspend_hooks({"lifecycle": {"lifecycle_hooks": odd}}) == ([], 30.0)


SHUTDOWN_60 = {"idle_time_seconds": 60, "on_idle": "shutdown"}
HOOKS = {"suspend_commands": ["sync"]}


@pytest.mark.parametrize(
    "blueprint, devbox, expected",
    [
        ({"keep_alive_time_seconds": 60}, {"launch_commands": ["x"]}, {"keep_alive_time_seconds": 60, "launch_commands": ["x"]}),
        # The devbox's own idle policy wins wherever either put it, and both places agree.
        ({"lifecycle": {"after_idle": SUSPEND_30}}, {"after_idle": SHUTDOWN_60},
         {"after_idle": SHUTDOWN_60, "lifecycle": {"after_idle": SHUTDOWN_60}}),
        ({"after_idle": SUSPEND_30}, {"lifecycle": {"after_idle": SHUTDOWN_60}},
         {"after_idle": SHUTDOWN_60, "lifecycle": {"after_idle": SHUTDOWN_60}}),
        # lifecycle merges key by key: the devbox's resume trigger keeps the blueprint's hooks.
        ({"lifecycle": {"lifecycle_hooks": HOOKS, "resume_triggers": {"http": False}}},
         {"lifecycle": {"resume_triggers": {"http": True}}},
         {"lifecycle": {"lifecycle_hooks": HOOKS, "resume_triggers": {"http": True}}}),
        ({"lifecycle": {"after_idle": SUSPEND_30}}, {}, {"lifecycle": {"after_idle": SUSPEND_30}}),
    ],
)
def test_a_blueprints_launch_parameters_under_a_devboxs(blueprint, devbox, expected):
    merged = with_defaults(blueprint, devbox)
    assert merged == expected
    if "after_idle" in devbox or "after_idle" in devbox.get("lifecycle", {}):
        assert idle_policy(merged) == IdlePolicy(60.0, "shutdown", "idle")
