"""examples/github-actions.yml: its SDK test passes against a real netns server with the
example world, and again on the same server (a service outlives CI runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.runtime_servers import runtime_server

pytestmark = pytest.mark.privileged

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def embedded_test() -> str:
    """The Python file the workflow writes with ``cat > .../test_egress.py <<'PY'``."""
    lines = (EXAMPLES / "github-actions.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("test_egress.py <<'PY'")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "PY")
    return textwrap.dedent("\n".join(lines[start:end])) + "\n"


def test_the_workflow_s_sdk_test_passes_twice_on_one_server(tmp_path):
    test_file = tmp_path / "test_egress.py"
    test_file.write_text(embedded_test())
    with runtime_server(tmp_path, "netns", (EXAMPLES / "world.toml").read_text(), subnet_base=200) as (server, _):
        env = {**os.environ, "RUNLOOP_BASE_URL": server.url, "RUNLOOP_API_KEY": "ci-key"}
        env.pop("PYTEST_ADDOPTS", None)  # not CI's junit report
        for run in (1, 2):
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
                capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
            )
            assert result.returncode == 0, f"run {run}:\n{result.stdout}\n{result.stderr}"
            assert "1 passed" in result.stdout
