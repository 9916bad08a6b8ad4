"""One devbox flooding the resolver: the kernel drops what is over its rate before the packets
reach the resolver's socket, which every devbox shares; the others resolve as before."""

from __future__ import annotations

import pytest

from netns import ruleset
from netns.nft import Nft
from tests.dataplane.conftest import GITHUB, make_policy

pytestmark = pytest.mark.privileged

QUERIES = 6000
# Paced at ~5,000 queries/s (50 every 10 ms): a rate the resolver keeps up with when nothing
# limits it, five times the limit. Denied names (NXDOMAIN) cost the resolver no upstream.
FLOOD = f"""
import socket, struct, threading, time
gateway = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((gateway, 53))
s.settimeout(1.0)
answered = 0

def count():  # replies are read as they come: a full socket buffer would drop them here
    global answered
    try:
        while True:
            s.recv(512)
            answered += 1
    except socket.timeout:
        pass

reader = threading.Thread(target=count)
reader.start()
question = struct.pack("!HHHHH", 0x100, 1, 0, 0, 0) + b"\\x07flooded\\x07example\\x00\\x00\\x01\\x00\\x01"
start = time.monotonic()
for i in range({QUERIES}):
    s.send(struct.pack("!H", i) + question)
    if i % 50 == 49:
        time.sleep(0.01)
took = time.monotonic() - start
reader.join()
print(answered, took)
"""


def _dropped(dataplane) -> int:
    """Packets the resolver-flood rule dropped so far (its counter, read from the router)."""
    nft = Nft(dataplane.router_ns)
    try:
        doc = nft.list_ruleset()
    finally:
        nft.close()
    for item in doc["nftables"]:
        rule = item.get("rule")
        if rule and rule["table"] == ruleset.TABLE and rule.get("comment") == ruleset.DNS_FLOOD_COMMENT:
            return next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    raise AssertionError("no resolver-flood rule in the router")


def test_a_flooding_devbox_is_held_to_its_rate_and_the_others_still_resolve(plane, devboxes):
    dataplane, runtime = plane
    flooder = devboxes.create(make_policy(allowed_hostnames=["github.com"]))
    other = devboxes.create(make_policy(allowed_hostnames=["github.com"]), account="acct-b")
    runtime.write_file(flooder, "flood.py", FLOOD.encode())
    before = _dropped(dataplane)

    out = devboxes.sh(flooder, "/usr/bin/python3 flood.py", timeout=60)
    assert out.returncode == 0, out.stderr
    answered, took = int(out.stdout.split()[0]), float(out.stdout.split()[1])
    allowed = ruleset.DNS_RATE_BURST + ruleset.DNS_RATE_PER_SECOND * took
    dropped = _dropped(dataplane) - before
    # What passed the limit is answered (at most the bucket and its refill), the rest the kernel
    # dropped; at least the bucket went through, so ordinary bursts are untouched.
    assert ruleset.DNS_RATE_BURST // 2 <= answered <= allowed + 100, (answered, took)
    assert dropped >= QUERIES - allowed - 100, (dropped, took)
    # Another devbox's budget is its own; the flooder's refills within milliseconds.
    assert devboxes.run(other, "resolve", "github.com") == f"OK {GITHUB}"
    assert devboxes.run(flooder, "resolve", "github.com") == f"OK {GITHUB}"
