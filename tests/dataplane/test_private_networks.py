"""``--private-networks by-cidr``: private networks (the host's LAN, VPNs, Docker's bridges)
open only through an allowed CIDR, not through allow_all, no policy, or a DNS answer that
points there. The default, ``open``, reaches them like any destination (#3: "allow_all: all
egress").

The "LAN" host is a world host given a private address (10.77.0.10): it lives in the world
namespace this module's data plane creates, so every packet stays there. (A world file may
not say so: WorldConfig.from_dict refuses anything but documentation ranges; the config is
built directly here.)"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess

import pytest

from simulator.world import Host, WorldConfig
from tests.dataplane.conftest import GITHUB, WORLD, make_policy
from tests.dataplane.test_live_update import Held, updated
from tests.dataplane.test_network_events import events, wait_for  # noqa: F401 (a fixture)

pytestmark = pytest.mark.privileged

LAN = "10.77.0.10"
_base = WorldConfig.from_dict(WORLD)
WORLD_CONFIG = dataclasses.replace(
    _base, hosts=(*_base.hosts, Host(name="nas.lan.example", address=LAN, tcp_echo=(443, 8443)))
)
PLANE_OPTIONS = {"world": WORLD_CONFIG, "private_networks": "by-cidr"}


def test_allow_all_and_no_policy_do_not_reach_a_private_network(devboxes):
    for policy in (make_policy(allow_all=True), None):
        box = devboxes.create(policy)
        assert devboxes.run(box, "tcp", GITHUB, "443") == "OK ping"  # the internet: yes
        assert devboxes.run(box, "tcp", LAN, "443").startswith("FAIL")
        # the name resolves (allow_all answers every name) but its address stays closed
        assert devboxes.run(box, "resolve", "nas.lan.example") == f"OK {LAN}"
        assert devboxes.run(box, "tcp", "nas.lan.example", "443").startswith("FAIL")


def test_the_decision_log_says_a_private_network_closed_it(devboxes, events):  # noqa: F811
    """The drop's reason is "private_network" when the policy alone would have allowed the
    connection, "policy" when it would not have either."""
    opened = devboxes.create(make_policy(allow_all=True))
    closed = devboxes.create(make_policy())
    for box in (opened, closed):
        assert devboxes.run(box, "tcp", LAN, "443").startswith("FAIL")
    found = wait_for(events, opened, lambda e: e.kind == "blocked" and e.addresses == (LAN,))
    assert (found[0].verdict, found[0].reason, found[0].port) == ("denied", "private_network", 443)
    found = wait_for(events, closed, lambda e: e.kind == "blocked" and e.addresses == (LAN,))
    assert found[0].reason == "policy"


def test_a_cidr_opens_a_private_network_with_its_ports_also_under_allow_all(devboxes):
    for egress in ({"allow_all": True}, {"allowed_hostnames": ["github.com"]}):
        box = devboxes.create(make_policy(allowed_cidrs=[{"cidr": f"{LAN}/32", "ports": [{"port": 443, "protocol": "TCP"}]}],
                                          **egress))
        assert devboxes.run(box, "tcp", LAN, "443") == "OK ping"
        assert devboxes.run(box, "tcp", LAN, "8443").startswith("FAIL")  # not its port


def test_an_allowed_name_pointing_into_a_private_network_does_not_open_it(devboxes):
    box = devboxes.create(make_policy(allowed_hostnames=["*.lan.example", "github.com"]))
    assert devboxes.run(box, "resolve", "nas.lan.example") == f"OK {LAN}"
    assert devboxes.run(box, "tcp", "nas.lan.example", "443").startswith("FAIL")
    assert devboxes.run(box, "tcp", "github.com", "443") == "OK ping"


def test_dropping_the_cidr_from_allow_all_cuts_the_established_connection(plane, devboxes):
    dataplane = plane[0]
    policy = make_policy(allow_all=True, allowed_cidrs=[{"cidr": f"{LAN}/32", "ports": [{"port": 443, "protocol": "TCP"}]}])
    box = devboxes.create(policy)
    held = Held(devboxes, box, LAN, 443)
    try:
        assert held.poke("before") == "OK before"
        plain = updated(policy, allowed_cidrs=())
        dataplane.policy_updated(policy, plain)
        assert held.poke("after").startswith("FAIL")
    finally:
        held.close()
    assert devboxes.run(box, "tcp", LAN, "443").startswith("FAIL")
    assert devboxes.run(box, "tcp", GITHUB, "443") == "OK ping"


def test_by_default_private_networks_are_open(tmp_path):
    """The default (``open``): allow_all, no policy and an allowed name reach the LAN like the
    internet, and the router's private set is empty."""
    from tests.conftest import _privilege_problems

    if _privilege_problems():
        pytest.skip("needs root")
    from simulator.dataplane import DataPlane, DataPlaneConfig
    from simulator.runtime.netns_runtime import NetnsRuntime
    from tests.dataplane.conftest import Devboxes

    dataplane = DataPlane(DataPlaneConfig(instance=secrets.token_hex(3), world=WORLD_CONFIG, subnet="10.87.0.0/16"))
    dataplane.start()
    try:
        runtime = NetnsRuntime(dataplane, tmp_path)  # closing it stops the data plane
    except BaseException:
        dataplane.stop()
        raise
    made = Devboxes(runtime)
    try:
        elements = subprocess.run(["ip", "netns", "exec", dataplane.router_ns, "nft", "-j", "list", "set", "inet",
                                   "devbox_sim", "private"], capture_output=True, text=True, check=True).stdout
        assert '"elem"' not in elements
        for policy in (make_policy(allow_all=True), None):
            assert made.run(made.create(policy), "tcp", LAN, "443") == "OK ping"
        named = made.create(make_policy(allowed_hostnames=["nas.lan.example"]))
        assert made.run(named, "tcp", "nas.lan.example", "443") == "OK ping"
    finally:
        made.cleanup()
        runtime.close()
