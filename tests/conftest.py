"""Shared test rules.

Privileged tests (real namespaces, nftables, DNS sockets on namespace addresses) carry
``@pytest.mark.privileged``. On a developer laptop without root they skip; in CI (``CI`` set)
a missing privilege is a failure, never a skip, because CI must prove the real data plane.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys

import pytest

_counter = itertools.count()


def _privilege_problems() -> list[str]:
    problems = []
    if sys.platform != "linux":
        problems.append("not Linux")
    if os.geteuid() != 0:
        problems.append("not root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not installed")
    return problems


@pytest.fixture(autouse=True)
def _enforce_privileged_marker(request):
    if request.node.get_closest_marker("privileged") is None:
        return
    problems = _privilege_problems()
    if not problems:
        return
    reason = "privileged test needs: " + ", ".join(problems)
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI must run privileged tests, not skip them)")
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    """A short name unique to this test process, safe for interface names (<= 15 chars)."""
    name = f"{prefix}{os.getpid() % 100000:x}{next(_counter):x}"
    assert len(name) <= 15, name
    return name


@pytest.fixture
def uniq():
    return unique_name


def pytest_configure(config):
    """A terminated run (a CI time limit, ``kill``, every process of the run at once) unwinds
    like Ctrl-C: pytest then tears down the fixtures still set up, so the namespaces,
    containers and tables they made are removed. Without this, SIGTERM ended each process
    (xdist workers too) at once and left a running test's devboxes behind."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Every test gets a node id of its own, and a run with two the same stops.

    schemathesis 4 names each API operation's item ``test_x[GET /path]`` but gives them all the
    function's node id. pytest-xdist (``make test`` runs two workers) schedules and reports by
    node id, so with equal ids one operation ran and the other fifty were silently dropped.
    """
    for item in items:
        base, _, last = item.nodeid.rpartition("::")
        if base and item.name != last and item.name.startswith(last + "["):
            _set_nodeid(item, f"{base}::{item.name}")
    seen: dict[str, int] = {}
    for item in items:
        seen[item.nodeid] = seen.get(item.nodeid, 0) + 1
    duplicated = sorted(nodeid for nodeid, count in seen.items() if count > 1)
    if duplicated:
        raise pytest.UsageError(f"tests sharing a node id (xdist would run one of them): {duplicated[:5]}")


def _set_nodeid(item, nodeid: str) -> None:
    if hasattr(item, "_id"):  # pytest >= 9.2 keeps a structured NodeId
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(nodeid)
    else:
        item._nodeid = nodeid
