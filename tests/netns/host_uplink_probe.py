"""Run INSIDE an isolated namespace that plays the host (via nsenter, so the data plane's
"host" is that namespace): a data plane with the HOST uplink and one allow_all netns devbox,
which connects to every ``IP:PORT`` given (a TCP echo is expected). Prints one JSON line:
{"IP:PORT": "<echoed text, or empty>"}.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from simulator.dataplane import DataPlane, DataPlaneConfig  # noqa: E402
from simulator.runtime.base import DevboxSpec  # noqa: E402
from simulator.runtime.netns_runtime import NetnsRuntime  # noqa: E402
from tests.dataplane.conftest import make_policy  # noqa: E402


def main(dns: str, targets: list[str]) -> None:
    config = DataPlaneConfig(instance=secrets.token_hex(3), uplink="host", upstream_dns=((dns, 53),), subnet="10.92.0.0/16")
    dataplane = DataPlane(config)
    dataplane.start()
    state = tempfile.TemporaryDirectory(prefix="devbox-sim-uplink-")
    runtime = NetnsRuntime(dataplane, Path(state.name))  # closing it stops the plane
    report = {}
    try:
        runtime.provision(DevboxSpec(id="dbx_uplink", account="a", policy=make_policy(allow_all=True)))
        for target in targets:
            host, port = target.rsplit(":", 1)
            code = (f"import socket; s=socket.create_connection(('{host}', {port}), timeout=2); "
                    "s.sendall(b'ping'); print(s.recv(10).decode())")
            out, _ = runtime.exec("dbx_uplink", f'/usr/bin/python3 -c "{code}"').communicate(timeout=20)
            report[target] = out.decode().strip()
    finally:
        runtime.close()
        state.cleanup()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
