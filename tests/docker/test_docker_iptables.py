"""Docker WITH its own iptables management (the systemd default) does not break the host
uplink: a real dockerd started in an isolated namespace that plays the host sets its FORWARD
policy to DROP, and devbox traffic still passes thanks to the uplink's DOCKER-USER rules
(and is dropped without them, so the rules are what makes it work).

The real host's firewall is never touched: dockerd, the data plane and the echo server all
live in namespaces made here (documentation range 192.0.2.0/24), removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.docker.conftest import require_docker
from tests.fake_host import ECHO_PORT, OUTSIDE, host_and_outside, in_ns

pytestmark = pytest.mark.privileged


def test_host_uplink_passes_dockers_forward_drop_through_docker_user(tmp_path):
    require_docker()
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is needed (bootstrap --test installs docker.io)")
    # dockerd's unix sockets (containerd's under --exec-root too) must fit in sun_path's 108
    # bytes; pytest's tmp_path may not (pytest-xdist adds a level), so they get a short directory.
    run_dir = Path(tempfile.mkdtemp(prefix="dbxd-", dir="/tmp"))
    sock_path = run_dir / "docker.sock"
    with host_and_outside("dbxt") as (host_ns, _), contextlib.ExitStack() as stop:
        stop.callback(shutil.rmtree, run_dir, True)
        # A fresh host has forwarding off; docker then turns it on and sets FORWARD to DROP.
        in_ns(host_ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        dockerd = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host_ns}", "dockerd", "--iptables=true", "--data-root", str(run_dir / "root"),
             "--exec-root", str(run_dir / "exec"), "-H", f"unix://{sock_path}", "--pidfile", str(tmp_path / "docker.pid")],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dockerd.log", "w"), start_new_session=True)
        stop.callback(_stop_dockerd, dockerd, run_dir)
        deadline = time.monotonic() + 60
        while "-P FORWARD DROP" not in in_ns(host_ns, "iptables", "-w", "-S", "FORWARD").stdout \
                or in_ns(host_ns, "iptables", "-w", "-L", "DOCKER-USER", check=False).returncode:
            assert dockerd.poll() is None, (tmp_path / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "dockerd never set up its iptables"
            time.sleep(0.1)  # polling dockerd's start-up with a deadline
        helper = Path(__file__).with_name("uplink_behind_docker.py")
        run = in_ns(host_ns, sys.executable, str(helper), OUTSIDE, str(ECHO_PORT), timeout=120)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report == {"docker_user_rules": 4, "with_rules": "ping", "without_rules": ""}, run.stderr[-2000:]


def _stop_dockerd(dockerd: subprocess.Popen, run_dir: Path) -> None:
    os.killpg(dockerd.pid, signal.SIGTERM)
    try:
        dockerd.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(dockerd.pid, signal.SIGKILL)
        dockerd.wait(10)
    # dockerd bind-mounts its data root onto itself and undoes it only on a clean exit; a
    # dockerd that died or was killed leaves the mount (and an unremovable directory) behind.
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted(points, key=len, reverse=True):
        if point.startswith(f"{run_dir}/"):
            subprocess.run(["umount", "-l", point], check=False)
