"""The FastAPI application: wires settings -> store -> services -> routes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from simulator import __doc__ as package_doc
from simulator.accounts import Accounts
from simulator.api import errors, network_policies
from simulator.api.request_log import RequestLog
from simulator.config import Settings
from simulator.db import Database
from simulator.network_policies import NetworkPolicyService


@dataclass
class Services:
    settings: Settings
    db: Database
    accounts: Accounts
    network_policies: NetworkPolicyService

    def close(self) -> None:
        self.db.close()


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)  # devboxes run untrusted code: the store is root's alone
    db = Database(settings.database_path)
    return Services(
        settings=settings,
        db=db,
        accounts=Accounts.from_file(settings.api_keys),
        network_policies=NetworkPolicyService(db, max_per_account=settings.max_policies_per_account),
    )


def create_app(settings: Settings) -> FastAPI:
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The store lives as long as the app object (a test client may run the ASGI lifespan
        # several times); SQLite needs no close for durability, commits are already on disk.
        yield

    app = FastAPI(
        title="devbox-sim",
        version="0.1.0",
        description=(package_doc or "").strip().splitlines()[0],
        lifespan=lifespan,
    )
    app.state.services = services
    errors.install(app)

    @app.get("/healthz", tags=["simulator"], summary="Liveness probe (no authentication)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(network_policies.router)
    app.add_middleware(RequestLog)
    return app
