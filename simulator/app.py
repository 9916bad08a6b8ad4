"""The FastAPI application: wires settings -> store -> services -> routes."""

from __future__ import annotations

import gc
import importlib
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from simulator import __doc__ as package_doc
from simulator import disks
from simulator.accounts import Accounts
from simulator.api import blueprints as blueprint_routes
from simulator.api import devboxes as devbox_routes
from simulator.api import docs as api_docs
from simulator.api import errors, network_policies
from simulator.api import executions as execution_routes
from simulator.api import files as file_routes
from simulator.api import network_events as network_event_routes
from simulator.api import snapshots as snapshot_routes
from simulator.api.body_limit import BodyLimit
from simulator.api.request_log import RequestLog
from simulator.api.text_check import RejectLoneSurrogates
from simulator.api.tunnel_proxy import TunnelProxy
from simulator.blueprints import BlueprintService
from simulator.config import Settings
from simulator.db import Database
from simulator.devbox_origins import DevboxOrigins
from simulator.devboxes import DevboxService
from simulator.executions import ExecutionService
from simulator.files import FileService
from simulator.network_events import NetworkEventLog
from simulator.network_policies import NetworkPolicyService
from simulator.runtime.base import DevboxRuntime
from simulator.runtime.factory import make_runtime
from simulator.snapshots import SnapshotService
from simulator.tunnels import TunnelService
from simulator.watch import Watch

log = logging.getLogger("devbox_sim")

# TEST HOOK, not a feature: "module:factory" naming a callable factory(settings) -> runtime.
# It lets the HTTP-contract tests run a real server process over a test-double runtime
# (tests.api.local_runtime:make_runtime); users choose a runtime with --runtime.
TEST_RUNTIME_ENV = "DEVBOX_SIM_TEST_RUNTIME"


@dataclass
class Services:
    settings: Settings
    db: Database
    accounts: Accounts
    network_policies: NetworkPolicyService
    devboxes: DevboxService
    executions: ExecutionService
    files: FileService
    network_events: NetworkEventLog
    snapshots: SnapshotService
    blueprints: BlueprintService
    tunnels: TunnelService
    runtime: DevboxRuntime | None = None  # None: devbox endpoints answer 503 no_runtime

    def close(self) -> None:
        self.db.close()


def build_services(settings: Settings, runtime: DevboxRuntime | None = None) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)  # devboxes run untrusted code: the store is root's alone
    db = Database(settings.database_path)
    policies = NetworkPolicyService(db, max_per_account=settings.max_policies_per_account,
                                    unique_names=settings.unique_policy_names)
    dataplane = getattr(runtime, "dataplane", None)
    if dataplane is not None:
        # Inside the update transaction: enforcement fails -> the stored update rolls back.
        policies.add_update_hook(dataplane.policy_updated)
        policies.add_delete_hook(dataplane.policy_deleted)
    devboxes = DevboxService(db, policies, runtime, Watch())
    lost_hook = getattr(runtime, "set_lost_hook", None)  # runtimes that can see a devbox die
    if lost_hook is not None:
        lost_hook(devboxes.runtime_lost)
    snapshots = SnapshotService(db, devboxes)
    blueprints = BlueprintService(db, policies, devboxes)
    devboxes.set_origins(DevboxOrigins(blueprints, snapshots))
    events = NetworkEventLog(account_of=_account_of(dataplane) if dataplane is not None else None)
    if dataplane is not None:
        dataplane.query_listeners.append(events.on_query)
        dataplane.block_listeners.append(events.on_blocked)
    devboxes.add_terminal_hook(
        lambda devbox: log.info("devbox %s %s: %s", devbox.id, devbox.status, events.summary(devbox.id))
    )
    return Services(
        settings=settings,
        db=db,
        accounts=Accounts.from_file(settings.api_keys),
        network_policies=policies,
        devboxes=devboxes,
        executions=ExecutionService(db, devboxes, spill_dir=_spill_dir(settings)),
        files=FileService(devboxes),
        network_events=events,
        snapshots=snapshots,
        blueprints=blueprints,
        tunnels=TunnelService(db, devboxes),
        runtime=runtime,
    )


def _spill_dir(settings: Settings):
    """Running commands' output beyond a little (simulator.output_buffer): on the data dir's
    file system (not /tmp, which is often memory), in files that have no name."""
    return settings.data_dir / "spill"  # made at the first spill: a full disk must not stop a start


def _test_runtime(settings: Settings) -> DevboxRuntime | None:
    spec = os.environ.get(TEST_RUNTIME_ENV)
    if not spec:
        return None
    module, _, factory = spec.partition(":")
    log.warning("using the TEST runtime %s (%s is a test hook)", spec, TEST_RUNTIME_ENV)
    return getattr(importlib.import_module(module), factory)(settings)


# Why a devbox that was active when the simulator stopped ended (its last transition).
STOPPED = "the simulator stopped"


def create_app(settings: Settings, runtime: DevboxRuntime | None = None) -> FastAPI:
    """The app; with no ``runtime`` given it makes (and owns) the one the settings ask for."""
    owned_runtime = None
    chosen_here = runtime is None
    if chosen_here:
        runtime = owned_runtime = _test_runtime(settings) or make_runtime(settings)
    try:
        services = build_services(settings, runtime)
    except BaseException:
        if owned_runtime is not None:
            owned_runtime.close()
        raise
    if chosen_here:
        # A freshly started runtime has nothing alive (it removed what a previous run left),
        # and no runtime (--runtime none) has nothing at all: devboxes the store still shows as
        # active are marked failed, never shown running (nor holding their policies forever).
        vanished = services.devboxes.reconcile(set())
        if vanished:
            log.warning("%d devboxes from a previous run are gone: %s", len(vanished), ", ".join(vanished))
        cut_snapshots = services.snapshots.reconcile()
        cut = cut_snapshots + services.blueprints.reconcile()
        if cut:
            log.warning("snapshots and builds cut short by a restart failed: %s", ", ".join(cut))
        # Only Docker has work that outlives the simulator: the daemon finishes a commit.
        late_disks = getattr(owned_runtime, "remove_late_disks", None)
        if late_disks is not None:
            late_disks(cut_snapshots)
    if owned_runtime is not None:
        # Before any request can start a snapshot or build: disks no stored snapshot or
        # blueprint references (a crash between recording a delete and removing the files).
        stray = disks.remove_unreferenced(services.db, owned_runtime)
        if stray:
            log.warning("removed %d disks nothing references: %s", len(stray), ", ".join(stray))

    def end_devboxes() -> None:
        ended = services.devboxes.stop_all(STOPPED)
        if ended:
            log.info("stopping: ended %d devboxes: %s", len(ended), ", ".join(ended))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The store lives as long as the app object (a test client may run the ASGI lifespan
        # several times); SQLite needs no close for durability, commits are already on disk.
        # Tail latency: a full GC pass walks every object startup made (FastAPI, pydantic,
        # the runtime); frozen, they are skipped and such passes stay short.
        gc.collect()
        gc.freeze()
        yield
        try:
            if owned_runtime is not None:
                # A runtime the app made itself dies with the server, and its devboxes with it.
                try:
                    end_devboxes()  # again: requests in flight when the server began to stop
                finally:
                    owned_runtime.close()
        finally:
            services.db.checkpoint()  # a clean stop leaves no WAL behind

    app = FastAPI(
        title="devbox-sim",
        version="0.1.0",
        description=(package_doc or "").strip().splitlines()[0],
        lifespan=lifespan,
        # "/v1/network-policies/" is a 404 like any unknown path, not a 307 to the route
        # (sent before authentication, with an empty body).
        redirect_slashes=False,
        # FastAPI's pages load Swagger UI and ReDoc from a CDN; ours is served locally (api.docs).
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    # The server calls this when it begins to stop, before it waits for open connections: a
    # command's output stream or a long poll ends only when its devbox does.
    app.state.end_devboxes = end_devboxes if owned_runtime is not None else None
    errors.install(app)
    api_docs.install(app)

    @app.get("/healthz", tags=["simulator"], summary="Liveness probe (no authentication)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(network_policies.router)
    app.include_router(blueprint_routes.router)
    app.include_router(snapshot_routes.router)  # before the devbox routes: /disk_snapshots is no devbox id
    app.include_router(devbox_routes.router)
    app.include_router(execution_routes.router)
    app.include_router(file_routes.router)
    app.include_router(network_event_routes.router)
    app.add_middleware(RejectLoneSurrogates)
    app.add_middleware(BodyLimit)  # outside the text check, which reads JSON bodies whole
    # Outside the text check: a tunnel carries the devbox's bytes, whatever they are.
    app.add_middleware(TunnelProxy, services=lambda: app.state.services)
    app.add_middleware(RequestLog)  # outermost: logs the 400s of the check too
    return app


def _account_of(dataplane):
    """devbox id -> its account, for the decision log (None once it left the data plane)."""

    def account_of(devbox_id: str) -> str | None:
        attached = dataplane.attached(devbox_id)
        return attached.account if attached is not None else None

    return account_of
