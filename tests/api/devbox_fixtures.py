"""Fixtures for the devbox and execution tests, written against a ``runtime`` fixture.

Today ``runtime`` is the test double (``tests.api.local_runtime``: plain subprocesses); the
same tests are meant to run over the real runtimes later by parametrizing this fixture.
Tests that need a test-double hook (``hold_provisioning``, ``fail_provisioning``) use
``needs_hooks(runtime)`` so that they skip on a runtime without them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.api.local_runtime import LocalRuntime
from tests.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime(tmp_path):
    runtime = LocalRuntime(tmp_path / "runtime")
    yield runtime
    runtime.close()


@pytest.fixture
def devbox_client(make_client, runtime):
    return make_client(runtime=runtime)


@pytest.fixture
def devbox_server(tmp_path):
    """A real server process whose devboxes run on the test-double runtime (test hook)."""
    env = {
        "DEVBOX_SIM_TEST_RUNTIME": "tests.api.local_runtime:make_runtime",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with ServerProcess(tmp_path / "server-data", env=env) as proc:
        yield proc


def needs_hooks(runtime, *hooks: str) -> None:
    missing = [hook for hook in hooks if not hasattr(runtime, hook)]
    if missing:
        pytest.skip(f"runtime {runtime.name} has no test hook {', '.join(missing)}")
