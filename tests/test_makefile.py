"""`make run`: the command it runs honours the serve flags' environment and SERVE_ARGS (read
with `make -n`, which prints the recipe and runs nothing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _serve_line(*args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEVBOX_SIM_") and k not in ("DATA_DIR", "SERVE_ARGS")}
    out = subprocess.run(["make", "-s", "-n", "run", *args], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    [line] = [line for line in out.splitlines() if "devbox-sim serve" in line]
    return line.split()[1:]


@pytest.mark.skipif(shutil.which("make") is None and not os.environ.get("CI"), reason="no make on this machine")
def test_make_run_takes_the_data_dir_from_the_environment_and_more_flags_from_serve_args():
    assert _serve_line() == ["serve", "--data-dir", "data"]
    # Before, --data-dir data always won over DEVBOX_SIM_DATA_DIR (a flag beats its variable).
    assert _serve_line(DEVBOX_SIM_DATA_DIR="/tmp/elsewhere") == ["serve", "--data-dir", "/tmp/elsewhere"]
    assert _serve_line("DATA_DIR=/tmp/d", "SERVE_ARGS=--port 9000 --runtime netns") == [
        "serve", "--data-dir", "/tmp/d", "--port", "9000", "--runtime", "netns"]
