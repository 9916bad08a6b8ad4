"""Property run (schemathesis) over the blueprint and disk-snapshot endpoints with a runtime
that runs nothing: no 5xx, documented status codes, responses that match their schemas.

The runtime is a stub (every command is ``/bin/true``, whatever was generated; disks are
names), so generated setup commands never run and builds, devboxes and snapshots still move
through their statuses.
"""

from __future__ import annotations

import atexit
import random
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from simulator.app import create_app
from simulator.config import Settings
from simulator.runtime.base import DevboxSpec, RuntimeFailure


class InertRuntime:
    name = "inert"

    def __init__(self):
        self.alive: set[str] = set()
        self.disks: set[str] = set()

    def provision(self, spec: DevboxSpec) -> None:
        if spec.disk is not None and spec.disk not in self.disks:
            raise RuntimeFailure(f"no disk {spec.disk}")
        self.alive.add(spec.id)

    def exec(self, devbox_id, command, *, env=None, cwd=None) -> subprocess.Popen:
        return subprocess.Popen(["/bin/true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)

    def read_file(self, devbox_id, path):
        raise FileNotFoundError(path)

    def write_file(self, devbox_id, path, data):
        pass

    def suspend(self, devbox_id):
        pass

    def resume(self, devbox_id):
        pass

    def snapshot_disk(self, devbox_id, snapshot_id):
        self.disks.add(snapshot_id)
        return snapshot_id

    def delete_disk(self, disk):
        self.disks.discard(disk)

    def shutdown(self, devbox_id):
        self.alive.discard(devbox_id)

    def close(self):
        pass


# The app is built at import (schemathesis reads its schema then); its data goes at exit.
_DATA_DIR = Path(tempfile.mkdtemp(prefix="devbox-sim-disk-fuzz-"))
atexit.register(shutil.rmtree, _DATA_DIR, True)
_app = create_app(Settings(data_dir=_DATA_DIR), InertRuntime())
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)
schema.config.generation.update(modes=list(schemathesis.GenerationMode))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# Real objects for generated requests to land on (else nearly every id is a 404).
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
_AUTH = {"Authorization": "Bearer fuzz"}
_seed = TestClient(_app)
_DEVBOX = _seed.post("/v1/devboxes/create_and_await_running", headers=_AUTH).json()["id"]
_SNAPSHOTS = [_seed.post(f"/v1/devboxes/{_DEVBOX}/snapshot_disk", headers=_AUTH).json()["id"] for _ in range(3)]
_BLUEPRINTS = [_seed.post("/v1/blueprints", json={"name": f"seed{i}"}, headers=_AUTH).json()["id"] for i in range(3)]
_POOLS = {"/v1/blueprints": _BLUEPRINTS, "/v1/devboxes/disk_snapshots": _SNAPSHOTS, "/v1/devboxes/{id}/snapshot": [_DEVBOX]}


_RNG = random.Random(5)


def _aim(case) -> None:
    """Half of the requests with an id get a real one (of the right kind)."""
    if "id" not in (case.path_parameters or {}) or _RNG.random() < 0.5:
        return
    for prefix, pool in _POOLS.items():
        if case.path.startswith(prefix):
            case.path_parameters["id"] = _RNG.choice(pool)


@schema.include(path_regex=r"^/v1/(blueprints|devboxes/disk_snapshots|devboxes/\{id\}/snapshot_disk)").parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_disk_endpoints_conform(case):
    _aim(case)
    response = case.call(headers={"Authorization": "Bearer fuzz"})
    case.validate_response(response, checks=CHECKS, headers={"Authorization": "Bearer fuzz"})
