"""The offline world's services run in the simulator's process and answer untrusted devboxes:
bounded in concurrent connections and idle time, quiet when a client goes away."""

from __future__ import annotations

import secrets
import socket
import threading
import time

import pytest

from netns import namespaces
from simulator import world as world_module
from simulator.world import World, WorldConfig

pytestmark = pytest.mark.privileged

HOST = "192.0.2.77"


@pytest.fixture
def small_world(monkeypatch, request):
    """A world with one host, its services capped at 3 connections; idle time 30 s, or the
    test's ``idle`` mark."""
    idle = request.node.get_closest_marker("idle")
    monkeypatch.setattr(world_module, "MAX_CONCURRENT_PER_SERVICE", 3)
    monkeypatch.setattr(world_module, "MAX_CONCURRENT_PER_CLIENT", 3)
    monkeypatch.setattr(world_module, "IDLE_SECONDS", idle.args[0] if idle else 30)
    config = WorldConfig.from_dict({"hosts": {"svc.example": {"address": HOST, "http": [80], "tcp_echo": [443]}}})
    running = World(f"dbxs-tw{secrets.token_hex(3)}", config)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        assert running.ns_name not in namespaces.list_names(running.ns_name)


def _connect(world: World, port: int, source: str | None = None) -> socket.socket:
    sock = namespaces.socket_in(world.ns_name, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    if source is not None:  # a second client address: the world namespace's loopback
        sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def _get(world: World) -> bytes:
    with _connect(world, 80) as sock:
        sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
        return b"".join(iter(lambda: sock.recv(4096), b""))


@pytest.mark.parametrize("port", [80, 443])
def test_connections_beyond_the_cap_are_closed_and_slots_come_back(small_world, port):
    threads_before = threading.active_count()
    held = [_connect(small_world, port) for _ in range(3)]
    try:
        if port == 80:
            for sock in held:
                sock.sendall(b"GET /half")  # a request never finished
        else:
            for sock in held:  # the echo is served: the three hold their slots
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
        with _connect(small_world, port) as extra:
            extra.sendall(b"GET / HTTP/1.0\r\n\r\n" if port == 80 else b"y")
            assert extra.recv(4096) == b""  # closed at once, not served
        assert threading.active_count() <= threads_before + 3
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5  # bounded: the server threads notice the closes
    while True:
        try:
            if port == 80:
                if _get(small_world).endswith(b"svc.example /x\n"):
                    break
            else:
                with _connect(small_world, port) as sock:
                    sock.sendall(b"z")
                    if sock.recv(1) == b"z":
                        break
        except OSError:
            pass
        assert time.monotonic() < deadline, "slots did not come back"
        time.sleep(0.05)


def test_one_client_cannot_hold_every_slot(small_world, monkeypatch):
    monkeypatch.setattr(world_module, "MAX_CONCURRENT_PER_CLIENT", 2)
    greedy = [_connect(small_world, 443, source="127.0.0.1") for _ in range(2)]
    try:
        for sock in greedy:
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
        with _connect(small_world, 443, source="127.0.0.1") as third:
            third.sendall(b"y")
            assert third.recv(1) == b""  # over its own share: closed
        with _connect(small_world, 443) as other:  # another client still gets the free slot
            other.sendall(b"z")
            assert other.recv(1) == b"z"
    finally:
        for sock in greedy:
            sock.close()


@pytest.mark.idle(1)
def test_idle_half_requests_are_closed_by_the_server(small_world):
    with _connect(small_world, 80) as sock:
        sock.sendall(b"GET /never-finished")
        start = time.monotonic()
        assert sock.recv(4096) == b""  # the server gave up on it (IDLE_SECONDS = 1)
        assert time.monotonic() - start < 4
