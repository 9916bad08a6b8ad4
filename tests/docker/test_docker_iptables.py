"""Docker WITH its own iptables management (the systemd default) does not break the host
uplink: a real dockerd started in an isolated namespace that plays the host sets its FORWARD
policy to DROP, and devbox traffic still passes thanks to the uplink's DOCKER-USER rules
(and is dropped without them, so the rules are what makes it work).

The real host's firewall is never touched: dockerd, the data plane and the echo server all
live in namespaces made here (documentation range 192.0.2.0/24), removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netns import namespaces
from tests.conftest import unique_name
from tests.docker.conftest import require_docker

pytestmark = pytest.mark.privileged
HOST_SIDE, OUTSIDE = "192.0.2.1", "192.0.2.2"
ECHO_PORT = 7777


def _in(ns: str, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], check=check, capture_output=True, text=True, **kwargs)


def _echo_server(ns: str):
    sock = namespaces.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((OUTSIDE, ECHO_PORT))
    sock.listen()

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed at the end of the test
            with conn:
                conn.sendall(conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    return sock


def test_host_uplink_passes_dockers_forward_drop_through_docker_user(tmp_path):
    require_docker()
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is needed (bootstrap --test installs docker.io)")
    host_ns, out_ns = unique_name("dbxth"), unique_name("dbxto")
    veth_host, veth_out = unique_name("dbxva"), unique_name("dbxvb")
    dockerd = echo = None
    sock_path = tmp_path / "docker.sock"
    namespaces.create(host_ns)
    namespaces.create(out_ns)
    try:
        subprocess.run(["ip", "link", "add", veth_host, "netns", host_ns, "type", "veth", "peer", "name", veth_out,
                        "netns", out_ns], check=True)
        for ns, dev, addr in ((host_ns, veth_host, HOST_SIDE), (out_ns, veth_out, OUTSIDE)):
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        subprocess.run(["ip", "-n", host_ns, "route", "add", "default", "via", OUTSIDE], check=True)
        # A fresh host has forwarding off; docker then turns it on and sets FORWARD to DROP.
        _in(host_ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        echo = _echo_server(out_ns)
        dockerd = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host_ns}", "dockerd", "--iptables=true", "--data-root", str(tmp_path / "root"),
             "--exec-root", str(tmp_path / "exec"), "-H", f"unix://{sock_path}", "--pidfile", str(tmp_path / "docker.pid")],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dockerd.log", "w"), start_new_session=True)
        deadline = time.monotonic() + 60
        while "-P FORWARD DROP" not in _in(host_ns, "iptables", "-w", "-S", "FORWARD").stdout \
                or _in(host_ns, "iptables", "-w", "-L", "DOCKER-USER", check=False).returncode:
            assert dockerd.poll() is None, (tmp_path / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "dockerd never set up its iptables"
            time.sleep(0.1)  # polling dockerd's start-up with a deadline
        helper = Path(__file__).with_name("uplink_behind_docker.py")
        run = _in(host_ns, sys.executable, str(helper), OUTSIDE, str(ECHO_PORT), timeout=120)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report == {"docker_user_rules": 2, "with_rules": "ping", "without_rules": ""}, run.stderr[-2000:]
    finally:
        if dockerd is not None:
            os.killpg(dockerd.pid, signal.SIGTERM)
            try:
                dockerd.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(dockerd.pid, signal.SIGKILL)
                dockerd.wait(10)
        if echo is not None:
            echo.close()
        namespaces.delete(host_ns)
        namespaces.delete(out_ns)
