"""An API request body past its route's cap is a 413 ``request_too_large``, and changes nothing."""

from __future__ import annotations

import http.client
import json
import re
import socket
import warnings

import httpx
import pytest

from simulator.api.body_limit import LIMITS, BodyLimit, Limits
from simulator.app import create_app
from simulator.config import Settings
from tests.api.conftest import ALICE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LIMIT = 4096
SMALL = Limits(default=LIMIT, file_json=4 * LIMIT, upload=3 * LIMIT)


@pytest.fixture
def small_limit_client(tmp_path):
    """The app behind caps of a few KiB (the real file routes' are hundreds of MiB)."""
    app = create_app(Settings(data_dir=tmp_path / "data"))
    with TestClient(BodyLimit(app, limits=SMALL)) as client:
        yield client
    app.state.services.close()


def _chunks(body: bytes, size: int = 1000):
    """The body as a stream (no Content-Length: the limit must count what arrives)."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def _policy(description_length: int) -> bytes:
    return json.dumps({"name": "p", "description": "d" * description_length}).encode()


def test_a_streamed_body_past_the_cap_is_413_and_nothing_is_stored(small_limit_client):
    r = small_limit_client.post("/v1/network-policies", content=_chunks(_policy(LIMIT)),
                                headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error_code"] == "request_too_large" and str(LIMIT) in r.json()["message"]
    assert r.headers["x-should-retry"] == "false"
    assert small_limit_client.get("/v1/network-policies", headers=ALICE).json()["total_count"] == 0


def test_a_streamed_body_within_the_cap_is_served(small_limit_client):
    r = small_limit_client.post("/v1/network-policies", content=_chunks(_policy(LIMIT - 200)),
                                headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "d" * (LIMIT - 200)


def test_a_declared_length_past_the_cap_is_413_before_any_byte_is_read(small_limit_client):
    body = _policy(LIMIT)
    r = small_limit_client.post("/v1/network-policies", content=body,
                                headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error_code"] == "request_too_large"


def test_an_upload_past_the_cap_is_413_not_the_routes_answer(small_limit_client):
    # Within the cap the route answers (503: this app has no runtime): the form is read whole first.
    files = {"file": ("f.bin", b"x" * 100)}
    small = small_limit_client.post("/v1/devboxes/dbx_nope/upload_file", data={"path": "f"}, files=files, headers=ALICE)
    assert small.status_code == 503, small.text
    files = {"file": ("f.bin", b"x" * (2 * LIMIT))}  # over the default cap, within the upload one
    assert small_limit_client.post("/v1/devboxes/dbx_nope/upload_file", data={"path": "f"}, files=files,
                                   headers=ALICE).status_code == 503
    files = {"file": ("f.bin", b"x" * (3 * LIMIT))}
    big = small_limit_client.post("/v1/devboxes/dbx_nope/upload_file", data={"path": "f"}, files=files, headers=ALICE)
    assert big.status_code == 413 and big.json()["error_code"] == "request_too_large"


@pytest.mark.parametrize("path", ["/v1/devboxes/dbx_nope/write_file_contents", "/v1/devboxes",
                                  "/v1/devboxes/dbx_nope/executions/exe_nope/send_std_in",
                                  "/v1/devboxes/create_and_await_running", "/v1/blueprints", "/v1/blueprints/preview"])
def test_routes_that_carry_file_contents_take_a_files_worth(small_limit_client, path):
    """A file's contents as JSON text may take six bytes a character (control characters are
    escaped as \\u001b): these routes take the larger cap, and only they."""
    body = json.dumps({"file_path": "f", "contents": "\x1b" * (LIMIT // 2), "name": "b"}).encode()
    assert LIMIT < len(body) < SMALL.file_json
    r = small_limit_client.post(path, content=_chunks(body), headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code != 413, r.text
    over = json.dumps({"contents": "\x1b" * SMALL.file_json}).encode()
    r = small_limit_client.post(path, content=_chunks(over), headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 413
    # the policy routes, and every other, take the default
    r = small_limit_client.post("/v1/devboxes/dbx_nope/execute_async", content=body,
                                headers={**ALICE, "Content-Type": "application/json"})
    assert r.status_code == 413 and f"{LIMIT} bytes POST /v1/devboxes/dbx_nope/execute_async" in r.json()["message"]


def test_the_real_caps_take_any_file_a_route_may_store():
    from simulator.files import MAX_FILE_BYTES

    # a 64 MiB file of control characters written as JSON; an upload's form around 64 MiB
    assert LIMITS.file_json >= 6 * MAX_FILE_BYTES + 1024 and LIMITS.upload >= MAX_FILE_BYTES + 1024


def test_the_server_answers_a_huge_declared_body_at_once(server):
    """The real server: a request declaring 1 TB gets the 413 without sending a byte of it."""
    host, port = re.match(r"http://([\d.]+):(\d+)", server.url).groups()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/network-policies HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: {ALICE['Authorization']}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {10 ** 12}\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413
        body = json.loads(response.read(int(response.getheader("content-length"))))
    assert body["error_code"] == "request_too_large" and str(LIMITS.default) in body["message"]
    # A policy body past the default cap (8 MiB), sent whole: refused, nothing stored.
    flood = json.dumps({"name": "flood", "allowed_hostnames": ["a.co"] * (LIMITS.default // 6)}).encode()
    r = httpx.post(server.url + "/v1/network-policies", content=flood,
                   headers={**ALICE, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error_code"] == "request_too_large"
    listed = httpx.get(server.url + "/v1/network-policies", headers=ALICE, timeout=10).json()
    assert listed["total_count"] == 0

