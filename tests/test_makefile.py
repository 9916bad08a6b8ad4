"""`make run`: the command it runs honours the serve flags' environment and SERVE_ARGS (read
with `make -n`, which prints the recipe and runs nothing)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _serve_line(*args: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DEVBOX_SIM_") and k not in ("DATA_DIR", "SERVE_ARGS")}
    out = subprocess.run(["make", "-s", "-n", "run", *args], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    [line] = [line for line in out.splitlines() if "devbox-sim serve" in line]
    return shlex.split(line)[1:]  # as the shell will split it


@pytest.mark.skipif(shutil.which("make") is None and not os.environ.get("CI"), reason="no make on this machine")
def test_make_run_leaves_the_environment_to_the_command_and_takes_more_flags_from_serve_args():
    # The serve command reads DEVBOX_SIM_DATA_DIR itself (default `data`). Before, make always
    # passed --data-dir data, which beat the variable; then, a make-expanded unquoted copy of it.
    assert _serve_line() == ["serve"]
    assert _serve_line(DEVBOX_SIM_DATA_DIR="/tmp/a b $(shell echo no)") == ["serve"]
    assert _serve_line("DATA_DIR=/tmp/d d", "SERVE_ARGS=--port 9000 --runtime netns") == [
        "serve", "--data-dir", "/tmp/d d", "--port", "9000", "--runtime", "netns"]
