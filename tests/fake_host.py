"""A namespace that plays the host, and one behind it, for tests of the HOST uplink.

``host_and_outside()`` makes both (uniquely named), joined by a veth on the documentation range
192.0.2.0/24 (host side HOST_SIDE, outside OUTSIDE, the host's default route), with a TCP echo
server at OUTSIDE:ECHO_PORT; everything is removed on exit. Run a data plane "on the host" by
running a helper script in the host namespace (``in_ns``): the real host is never touched.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator

from netns import namespaces
from tests.conftest import unique_name

HOST_SIDE, OUTSIDE = "192.0.2.1", "192.0.2.2"
ECHO_PORT = 7777


def in_ns(ns: str, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], check=check, capture_output=True, text=True, **kwargs)


def _echo_server(ns: str) -> socket.socket:
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


@contextlib.contextmanager
def host_and_outside(prefix: str = "dbxf") -> Iterator[tuple[str, str]]:
    """(host namespace, outside namespace), set up as the module says."""
    host_ns, out_ns = unique_name(prefix + "h"), unique_name(prefix + "o")
    veth_host, veth_out = unique_name(prefix + "a"), unique_name(prefix + "b")
    echo = None
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
        echo = _echo_server(out_ns)
        yield host_ns, out_ns
    finally:
        if echo is not None:
            echo.close()
        namespaces.delete(host_ns)
        namespaces.delete(out_ns)
