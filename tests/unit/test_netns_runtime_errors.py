"""NetnsRuntime turns a sandbox's OSError during suspend/resume into RuntimeFailure.

A shutdown racing a suspend removes the devbox's cgroup and files while the freeze reads
them: the sandbox raised a bare FileNotFoundError, which the devbox service logs as an
unexpected error with its traceback (one run in four of such races), although the outcome
(the devbox shut down) was right. A RuntimeFailure is the runtime saying why, quietly."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from simulator.runtime.base import RuntimeFailure
from simulator.runtime.netns_runtime import NetnsRuntime


class _GoneSandbox:
    def suspend(self):
        raise FileNotFoundError(2, "No such file or directory", "/sys/fs/cgroup/dbxsim/x/cgroup.events")

    def resume(self):
        raise FileNotFoundError(2, "No such file or directory", "/data/devboxes/x/.sandbox/state.json")


@pytest.mark.parametrize("action", ["suspend", "resume"])
def test_a_sandbox_gone_meanwhile_is_a_runtime_failure(action):
    runtime = NetnsRuntime.__new__(NetnsRuntime)  # no data plane needed: only the lookup and the call
    runtime._lock = threading.Lock()
    runtime._devboxes = {"dbx_1": SimpleNamespace(sandbox=_GoneSandbox())}
    with pytest.raises(RuntimeFailure, match=f"devbox dbx_1 cannot be {action.rstrip('e')}ed: .*No such file or directory"):
        getattr(runtime, action)("dbx_1")
