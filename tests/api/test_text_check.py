"""Lone UTF-16 surrogates in JSON bodies are a 400 at the door, before any state changes."""

from __future__ import annotations

import pytest

from simulator.api.text_check import lone_surrogates
from tests.api.conftest import ALICE
from tests.api.devbox_fixtures import devbox_client, runtime  # noqa: F401 - fixtures

JSON = {**ALICE, "Content-Type": "application/json"}


@pytest.mark.parametrize(
    "body, bad",
    [
        (b'{"name": "x"}', False),
        (b'{"name": "\\ud83d\\ude00"}', False),  # a valid pair: an emoji
        (b'{"name": "\\ud800"}', True),
        (b'{"name": "a\\udc00b"}', True),  # a lone low surrogate
        (b'{"\\ud800": 1}', True),  # in a key
        (b'{"a": [{"b": ["\\udfff"]}]}', True),  # nested
        (b'{"name": "\\\\ud800"}', False),  # an escaped backslash: the text "\\ud800"
        (b'not json \\ud800', False),  # not JSON: left to the route's own validation
    ],
)
def test_lone_surrogates_table(body, bad):
    assert lone_surrogates(body) is bad


def test_policy_with_a_lone_surrogate_is_a_400_and_nothing_is_stored(devbox_client):
    r = devbox_client.post("/v1/network-policies", content=b'{"name": "p\\ud800"}', headers=JSON)
    assert r.status_code == 400 and r.json()["error_code"] == "invalid_request"
    assert r.headers["x-should-retry"] == "false"
    assert devbox_client.get("/v1/network-policies", headers=ALICE).json()["total_count"] == 0
    ok = devbox_client.post("/v1/network-policies", content='{"name": "p\\ud83d\\ude00"}'.encode(), headers=JSON)
    assert ok.status_code == 200 and ok.json()["name"] == "p\U0001F600"


def test_blueprint_and_devbox_with_lone_surrogates_leave_the_account_usable(devbox_client):
    r = devbox_client.post("/v1/blueprints", content=b'{"name": "b", "system_setup_commands": ["echo \\ud800"]}', headers=JSON)
    assert r.status_code == 400
    r = devbox_client.post("/v1/devboxes", content=b'{"metadata": {"k": "\\udfff"}}', headers=JSON)
    assert r.status_code == 400
    assert devbox_client.get("/v1/blueprints", headers=ALICE).json()["blueprints"] == []
    assert devbox_client.get("/v1/devboxes", headers=ALICE).json()["devboxes"] == []
