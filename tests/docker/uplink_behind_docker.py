"""Run INSIDE an isolated namespace that plays the host (via nsenter, so the data plane's
"host" is that namespace): a data plane with the HOST uplink and one allow_all netns devbox,
which connects to an echo server at ``argv[1]:argv[2]`` beyond that "host". Prints one line per
attempt: first with the uplink's DOCKER-USER rules, then after deleting them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simulator.dataplane import DataPlane, DataPlaneConfig  # noqa: E402
from simulator.runtime.base import DevboxSpec  # noqa: E402
from simulator.runtime.netns_runtime import NetnsRuntime  # noqa: E402
from tests.dataplane.conftest import make_policy  # noqa: E402


def main(host: str, port: int) -> None:
    config = DataPlaneConfig(instance=secrets.token_hex(3), uplink="host", upstream_dns=((host, 53),), subnet="10.92.0.0/16")
    dataplane = DataPlane(config)
    dataplane.start()
    state = tempfile.TemporaryDirectory(prefix="devbox-sim-uplink-")
    runtime = NetnsRuntime(dataplane, Path(state.name))
    report = {}
    try:
        uplink = dataplane._router.uplink
        report["docker_user_rules"] = len(uplink.iptables_rules)
        runtime.provision(DevboxSpec(id="dbx_uplink", account="a", policy=make_policy(allow_all=True)))
        code = (f"import socket; s=socket.create_connection(('{host}', {port}), timeout=2); "
                "s.sendall(b'ping'); print(s.recv(10).decode())")

        def attempt() -> str:
            out, _ = runtime.exec("dbx_uplink", f'/usr/bin/python3 -c "{code}"').communicate(timeout=20)
            return out.decode().strip()

        report["with_rules"] = attempt()
        for rule in uplink.iptables_rules:
            subprocess.run(["iptables", "-w", "-D", "DOCKER-USER", *rule], check=True)
        report["without_rules"] = attempt()
    finally:
        runtime.close()
        state.cleanup()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
