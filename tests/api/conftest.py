from __future__ import annotations

import warnings

import pytest

from simulator.app import create_app
from simulator.config import Settings
from tests.api.devbox_fixtures import devbox_client, devbox_server, runtime  # noqa: F401 (fixtures)
from tests.server import ServerProcess

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def make_client(tmp_path):
    """Build an in-process client for an app with the given settings overrides."""
    clients = []

    def make(runtime=None, **overrides) -> TestClient:
        settings = Settings(data_dir=tmp_path / f"data{len(clients)}", **overrides)
        client = TestClient(create_app(settings, runtime))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
        # The app keeps its store open for as long as it lives (simulator.app): closed here,
        # or every test left three descriptors behind, and a worker past 1024 of them made
        # libnftables abort the process (netns.nft).
        client.app.state.services.close()


@pytest.fixture
def client(make_client):
    return make_client()


ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


@pytest.fixture
def server(tmp_path):
    with ServerProcess(tmp_path / "server-data", "--max-policies", "200") as proc:
        yield proc
