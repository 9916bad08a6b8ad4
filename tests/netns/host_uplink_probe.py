"""Run INSIDE an isolated namespace that plays the host (via nsenter, so the data plane's
"host" is that namespace): ``planes`` data planes with the HOST uplink side by side, each with
one allow_all netns devbox, which connects to every ``IP:PORT`` given (a TCP echo is
expected). argv[1]: JSON {"dns": IP, "targets": ["IP:PORT", ...], "planes": N}. Prints one JSON
line: {"replies": [{"IP:PORT": "<echoed text, or empty>"} per plane], "blocked": [[address,
port, reason] of the first plane's logged drops], "counted": [addresses of the first plane's
allowed connections]}.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simulator.dataplane import DataPlane, DataPlaneConfig  # noqa: E402
from simulator.runtime.base import DevboxSpec  # noqa: E402
from simulator.runtime.netns_runtime import NetnsRuntime  # noqa: E402
from tests.dataplane.conftest import make_policy  # noqa: E402


def main(config: dict) -> None:
    state = tempfile.TemporaryDirectory(prefix="devbox-sim-uplink-")
    runtimes: list[NetnsRuntime] = []
    blocked: list = []
    report: dict = {"replies": []}
    try:
        for index in range(config.get("planes", 1)):
            plane = DataPlane(DataPlaneConfig(instance=secrets.token_hex(3), uplink="host",
                                              upstream_dns=((config["dns"], 53),), subnet=f"10.{92 + index}.0.0/16"))
            plane.start()
            runtimes.append(NetnsRuntime(plane, Path(state.name) / str(index)))  # closing it stops the plane
            if index == 0:
                plane.block_listeners.append(lambda _id, packet, reason, _policy: blocked.append(
                    [packet.dst, packet.dport, reason]))
            runtimes[-1].provision(DevboxSpec(id=f"dbx_uplink{index}", account="a", policy=make_policy(allow_all=True)))
        for index, runtime in enumerate(runtimes):
            replies = {}
            for target in config["targets"]:
                host, port = target.rsplit(":", 1)
                code = (f"import socket; s=socket.create_connection(('{host}', {port}), timeout=2); "
                        "s.sendall(b'ping'); print(s.recv(10).decode())")
                out, _ = runtime.exec(f"dbx_uplink{index}", f'/usr/bin/python3 -c "{code}"').communicate(timeout=20)
                replies[target] = out.decode().strip()
            report["replies"].append(replies)
        deadline = time.monotonic() + 2  # the log's reader thread: let it catch up (bounded)
        while time.monotonic() < deadline and not blocked:
            time.sleep(0.05)
        report["blocked"] = blocked
        report["counted"] = [c["destination"] for c in runtimes[0].dataplane.allowed_connections("dbx_uplink0")]
    finally:
        for runtime in runtimes:
            runtime.close()
        state.cleanup()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
