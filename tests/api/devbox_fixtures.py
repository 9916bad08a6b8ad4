"""Fixtures for the devbox and execution tests, written against a ``runtime`` fixture.

Today ``runtime`` is the test double (``tests.api.local_runtime``: plain subprocesses); the
same tests are meant to run over the real runtimes later by parametrizing this fixture.
Tests that need a test-double hook (``hold_provisioning``, ``fail_provisioning``) use
``needs_hooks(runtime)`` so that they skip on a runtime without them.
"""

from __future__ import annotations

import pytest

from tests.api.local_runtime import LocalRuntime
from tests.runtime_servers import local_runtime_env
from tests.server import ServerProcess


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
    with ServerProcess(tmp_path / "server-data", env=local_runtime_env()) as proc:
        yield proc


def needs_hooks(runtime, *hooks: str) -> None:
    missing = [hook for hook in hooks if not hasattr(runtime, hook)]
    if missing:
        pytest.skip(f"runtime {runtime.name} has no test hook {', '.join(missing)}")
