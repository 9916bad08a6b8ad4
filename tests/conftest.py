"""Shared test rules.

Privileged tests (real namespaces, nftables, DNS sockets on namespace addresses) carry
``@pytest.mark.privileged``. On a developer laptop without root they skip; in CI (``CI`` set)
a missing privilege is a failure, never a skip, because CI must prove the real data plane.
"""

from __future__ import annotations

import itertools
import os
import shutil
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
