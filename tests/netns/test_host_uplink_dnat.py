"""With the host uplink, the host is never reachable and never a way past the router's policy:
not through a port the host publishes on its own address (Docker's ``-p``, a NodePort, a
libvirt forward: a DNAT in the host's prerouting), nor through a virtual IP it forwards (a
DNAT of an address that is not its own: kube-proxy external IPs, keepalived). Two simulators
on one host each get an uplink of their own.

Everything lives in namespaces made here (tests.fake_host): one plays the host, with the
DNAT rules, one the network behind it. The real host's firewall is never touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.fake_host import ECHO_PORT, HOST_SIDE, OUTSIDE, host_and_outside, in_ns

pytestmark = pytest.mark.privileged
PUBLISHED = 9999  # the host's published port, forwarded to OUTSIDE:ECHO_PORT
VIRTUAL = "203.0.113.80"  # an address the host forwards (not its own), to OUTSIDE:ECHO_PORT
ECHO = f"{OUTSIDE}:{ECHO_PORT}"


def probe(host_ns: str, *targets: str, planes: int = 1) -> dict:
    helper = Path(__file__).with_name("host_uplink_probe.py")
    config = {"dns": OUTSIDE, "targets": list(targets), "planes": planes}
    run = in_ns(host_ns, sys.executable, str(helper), json.dumps(config), timeout=180)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    report["stderr"] = run.stderr[-2000:]
    return report


def host_dnat(host_ns: str, match: str) -> None:
    """A DNAT of ``match`` to the echo server behind the host, in the host's prerouting."""
    in_ns(host_ns, "nft", "-f", "-", input=(
        "table ip host_dnat {\n"
        "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n"
        f"    {match} dnat to {ECHO}\n"
        "  }\n"
        "}\n"))


def test_a_port_the_host_publishes_does_not_lead_past_it():
    with host_and_outside("dbxd") as (host_ns, _):
        # What `docker run -p 9999:7777` does for a container at OUTSIDE, in nft terms.
        host_dnat(host_ns, f"fib daddr type local tcp dport {PUBLISHED}")
        report = probe(host_ns, ECHO, f"{HOST_SIDE}:{PUBLISHED}")
        # The network beyond the host is reachable under allow_all (so the path works)...
        assert report["replies"][0][ECHO] == "ping", report["stderr"]
        # ...but not through the host's published port.
        assert report["replies"][0][f"{HOST_SIDE}:{PUBLISHED}"] == "", report["stderr"]


def test_an_address_the_host_forwards_does_not_lead_past_it():
    with host_and_outside("dbxv") as (host_ns, _):
        host_dnat(host_ns, f"ip daddr {VIRTUAL} tcp dport 80")
        report = probe(host_ns, ECHO, f"{VIRTUAL}:80")
        assert report["replies"][0][ECHO] == "ping", report["stderr"]
        # The router judged VIRTUAL (allowed under allow_all); what the host rewrote it to, it
        # never saw: the host forwards nothing it rewrote for a devbox.
        assert report["replies"][0][f"{VIRTUAL}:80"] == "", report["stderr"]


def test_the_hosts_own_addresses_are_dropped_logged_and_not_counted():
    with host_and_outside("dbxa") as (host_ns, _):
        report = probe(host_ns, ECHO, f"{HOST_SIDE}:{ECHO_PORT}")
        assert report["replies"][0] == {ECHO: "ping", f"{HOST_SIDE}:{ECHO_PORT}": ""}, report["stderr"]
        assert [HOST_SIDE, ECHO_PORT, "reserved_address"] in report["blocked"]
        assert report["counted"] == [OUTSIDE]


def test_two_simulators_on_one_host_each_get_an_uplink_of_their_own():
    with host_and_outside("dbx2") as (host_ns, _):
        report = probe(host_ns, ECHO, planes=2)
        assert report["replies"] == [{ECHO: "ping"}, {ECHO: "ping"}], report["stderr"]
