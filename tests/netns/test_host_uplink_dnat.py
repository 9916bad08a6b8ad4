"""With the host uplink, a port the host publishes on its own address (Docker's ``-p``, a
NodePort, a libvirt forward: a DNAT in the host's prerouting) must not carry a devbox's
packets through the host to what is behind it: the host itself is never reachable.

Everything lives in namespaces made here (tests.fake_host): one plays the host, with the
DNAT rule, one the network behind it. The real host's firewall is never touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.fake_host import ECHO_PORT, HOST_SIDE, OUTSIDE, host_and_outside, in_ns

pytestmark = pytest.mark.privileged
PUBLISHED = 9999  # the host's published port, forwarded to OUTSIDE:ECHO_PORT


def test_a_port_the_host_publishes_does_not_lead_past_it():
    with host_and_outside("dbxd") as (host_ns, _):
        # What `docker run -p 9999:7777` does for a container at OUTSIDE, in nft terms.
        in_ns(host_ns, "nft", "-f", "-", input=(
            "table ip publish {\n"
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n"
            f"    fib daddr type local tcp dport {PUBLISHED} dnat to {OUTSIDE}:{ECHO_PORT}\n"
            "  }\n"
            "}\n"))
        helper = Path(__file__).with_name("host_uplink_probe.py")
        run = in_ns(host_ns, sys.executable, str(helper), OUTSIDE, f"{OUTSIDE}:{ECHO_PORT}", f"{HOST_SIDE}:{PUBLISHED}",
                    timeout=120)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        # The network beyond the host is reachable under allow_all (so the path works)...
        assert report[f"{OUTSIDE}:{ECHO_PORT}"] == "ping", run.stderr[-2000:]
        # ...but not through the host's published port.
        assert report[f"{HOST_SIDE}:{PUBLISHED}"] == "", run.stderr[-2000:]
