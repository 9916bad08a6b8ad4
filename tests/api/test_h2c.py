"""HTTP/2 over cleartext (h2c, prior knowledge) on the API's port, as the TypeScript SDK's
node:http2 client speaks it, next to HTTP/1.1 on the same port (simulator/api/h2c.py).

Against a real server process; the protocol's own edge cases (flow control, resets, bounds)
are in tests/unit/test_h2_protocol.py. curl (nghttp2, as node's client) comes with
scripts/bootstrap.sh."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import threading
import time

import h2.errors
import httpx
import pytest
from runloop_api_client import DefaultHttpxClient, NotFoundError, Runloop

from tests.api.conftest import ALICE
from tests.h2_peer import H2Peer
from tests.server import ServerProcess

URL = "/v1/network-policies"
DEVBOXES = "/v1/devboxes"


def h2c(server, **kw) -> httpx.Client:
    """httpx speaking HTTP/2 from the first byte over http:// (prior knowledge)."""
    return httpx.Client(base_url=server.url, http1=False, http2=True, headers=ALICE, timeout=30, **kw)


def h1(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=ALICE, timeout=30)


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.http_version, b.http_version) == ("HTTP/2", "HTTP/1.1")
    assert a.status_code == b.status_code
    assert a.content == b.content
    for name in ("content-type", "content-length", "x-should-retry"):
        assert a.headers.get(name) == b.headers.get(name), name


def test_policies_over_h2c_answer_as_over_http1(server):
    with h2c(server) as two, h1(server) as one:
        created = two.post(URL, json={"name": "over-h2", "allowed_hostnames": ["github.com"]})
        assert created.http_version == "HTTP/2" and created.status_code == 200, created.text
        policy = created.json()
        _same(two.get(f"{URL}/{policy['id']}"), one.get(f"{URL}/{policy['id']}"))
        _same(two.get(URL), one.get(URL))
        assert [p["id"] for p in two.get(URL).json()["network_policies"]] == [policy["id"]]
        # Errors: their JSON bodies and headers are the same whichever the protocol.
        _same(two.get(f"{URL}/npol_nope"), one.get(f"{URL}/npol_nope"))
        _same(two.post(URL, json={"name": 3}), one.post(URL, json={"name": 3}))
        _same(two.post(URL, content=b"{not json", headers={"content-type": "application/json"}),
              one.post(URL, content=b"{not json", headers={"content-type": "application/json"}))
        _same(two.get(URL, headers={"authorization": "Bearer"}), one.get(URL, headers={"authorization": "Bearer"}))


def test_official_sdk_over_h2c(server):
    versions = []
    http_client = DefaultHttpxClient(http1=False, event_hooks={"response": [lambda r: versions.append(r.http_version)]})
    with Runloop(base_url=server.url, bearer_token="sdk-h2", http_client=http_client, max_retries=0) as client:
        policy = client.network_policies.create(name="sdk-h2", allowed_hostnames=["*.npmjs.org"])
        assert client.network_policies.retrieve(policy.id).egress.allowed_hostnames == ["*.npmjs.org"]
        assert [p.id for p in client.network_policies.list()] == [policy.id]
        with pytest.raises(NotFoundError):
            client.network_policies.retrieve("npol_nope")
    assert versions and set(versions) == {"HTTP/2"}


def test_many_concurrent_streams_on_one_connection(server):
    with h1(server) as one:
        ids = {one.post(URL, json={"name": f"p{i}"}).json()["id"] for i in range(5)}
    with H2Peer(server.url) as peer:
        streams = [peer.request("GET", f"{URL}/{sorted(ids)[i % 5]}") for i in range(100)]  # all open at once
        peer.read_until(peer.ended(*streams))
        answers = [peer.responses[s] for s in streams]
    assert all(a["status"] == 200 and a["reset"] is None for a in answers)
    assert {json.loads(a["body"])["id"] for a in answers} == ids


def test_large_response_and_large_request_bodies(server):
    with h2c(server) as two, h1(server) as one:
        bundle = two.get("/docs/swagger-ui-bundle.js")  # ~1.5 MB: many windows' worth
        assert len(bundle.content) > 1 << 20
        assert hashlib.sha256(bundle.content).digest() == hashlib.sha256(one.get("/docs/swagger-ui-bundle.js").content).digest()
        # 3 MB of request body: read only as the app takes it (the windows open as it does).
        body = json.dumps({"name": "big", "description": "x" * (3 << 20)}).encode()
        headers = {"content-type": "application/json"}
        _same(two.post(URL, content=body, headers=headers), one.post(URL, content=body, headers=headers))


def test_a_stream_reset_mid_response_leaves_the_connection_serving(server):
    with H2Peer(server.url, window=16384) as peer:  # the response stops after 16 KiB until we grant more
        big = peer.request("GET", "/docs/swagger-ui-bundle.js")
        peer.read_until(lambda: len(peer.responses[big]["body"]) >= 16384)
        peer.reset(big)
        peer.conn.increment_flow_control_window(1 << 20)  # the connection's own window is not the limit
        peer.flush()
        after = peer.request("GET", "/healthz")
        peer.read_until(peer.ended(after))
        assert peer.responses[after]["status"] == 200 and peer.responses[after]["body"] == b'{"status":"ok"}'
        assert not peer.responses[big]["ended"] and len(peer.responses[big]["body"]) == 16384


@pytest.mark.parametrize("pieces", [
    [b"PRI /v1/network-policies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n\r\n"],  # the method PRI
    [b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n"],  # the preface's request line, but HTTP/1.1
    [b"PRI * HTTP/2.0\r\n", b"\r\nSX\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"],  # diverges late
], ids=["method-pri", "pri-star-http1", "diverges-late"])
def test_http1_requests_that_start_like_the_preface_stay_http1(server, pieces):
    answer = _raw_exchange(server, pieces)
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]


def test_http1_in_short_pieces_and_the_preface_byte_by_byte(server):
    answer = _raw_exchange(server, [b"GET", b" /hea", b"lthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"ok"}')
    # HTTP/2 whose preface comes in one-byte pieces is still HTTP/2.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n":
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        settings = sock.recv(9)
        assert settings[3] == 0x4, settings  # the server's SETTINGS frame: HTTP/2 it is
    with httpx.Client(base_url=server.url) as plain:
        assert plain.get("/healthz").http_version == "HTTP/1.1"


def _raw_exchange(server, pieces: list[bytes]) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)  # each piece in its own packet
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_curl_http2_prior_knowledge(server):
    done = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                           "-H", "Authorization: Bearer curl", f"{server.url}{URL}/npol_nope"],
                          capture_output=True, text=True, timeout=30, check=False)
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "2 404"
    assert json.loads(body) == {"message": "network policy 'npol_nope' not found", "error_code": "not_found"}


def test_sse_output_stream_over_h2c(devbox_server):
    with h2c(devbox_server) as client:
        devbox_id = client.post(f"{DEVBOXES}/create_and_await_running").json()["id"]
        try:
            command = "echo first; while [ ! -e go ]; do sleep 0.01; done; echo second"
            execution = client.post(f"{DEVBOXES}/{devbox_id}/execute_async", json={"command": command}).json()
            path = f"{DEVBOXES}/{devbox_id}/executions/{execution['execution_id']}/stream_stdout_updates"
            with client.stream("GET", path) as response:
                assert response.http_version == "HTTP/2"
                assert response.headers["content-type"].startswith("text/event-stream")
                events = (json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: "))
                assert next(events)["output"] == "first\n"  # while the command still runs
                client.post(f"{DEVBOXES}/{devbox_id}/execute_sync", json={"command": "touch go"})
                rest = list(events)  # the stream ends when the command does
            assert "".join(e["output"] for e in rest) == "second\n"
        finally:
            client.post(f"{DEVBOXES}/{devbox_id}/shutdown")


def test_graceful_stop_with_an_idle_h2_connection(tmp_path):
    with ServerProcess(tmp_path / "data") as proc, H2Peer(proc.url) as peer:
        assert peer.get("/healthz")["status"] == 200
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        peer.read_until(lambda: peer.closed)
        assert peer.goaway is not None and peer.goaway.error_code == 0
        assert proc.proc.wait(timeout=10) == -signal.SIGTERM  # uvicorn re-raises the signal it handled (not -9)
        assert time.monotonic() - started < 5  # not the 10 s of a graceful stop's timeout


def test_graceful_stop_finishes_a_stream_in_flight(devbox_server, tmp_path):
    """A stop during an output stream: the stop ends the devboxes, so the command and then its
    stream end, and the client (curl: nghttp2, like node) gets the stream's end, GOAWAY, EOF."""
    with h1(devbox_server) as one:
        devbox_id = one.post(f"{DEVBOXES}/create_and_await_running").json()["id"]
        execution = one.post(f"{DEVBOXES}/{devbox_id}/execute_async", json={"command": "echo first; sleep 60"}).json()
    out = tmp_path / "events"
    path = f"{DEVBOXES}/{devbox_id}/executions/{execution['execution_id']}/stream_stdout_updates"
    curl = subprocess.Popen(["curl", "-sS", "-N", "--http2-prior-knowledge", "-H", "Authorization: Bearer alice-token",
                             "-o", str(out), "-w", "%{http_version} %{http_code}", devbox_server.url + path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: out.exists() and b"first" in out.read_bytes())
        devbox_server.proc.send_signal(signal.SIGTERM)
        stdout, stderr = curl.communicate(timeout=20)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    assert (curl.returncode, stdout, stderr) == (0, "2 200", "")  # a cut stream is curl's exit 92
    assert devbox_server.proc.wait(timeout=15) == -signal.SIGTERM


def _wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)  # polling with a deadline


def test_http1_and_h2c_clients_at_once(server):
    """Both protocols on one port at the same time, each connection keeping its own."""
    failures = []

    def run(make, version):
        try:
            with make(server) as client:
                for _ in range(20):
                    response = client.get("/healthz")
                    assert (response.status_code, response.http_version) == (200, version)
        except (AssertionError, httpx.HTTPError) as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=args) for args in [(h2c, "HTTP/2"), (h1, "HTTP/1.1")] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures


@pytest.mark.parametrize("declared, sent", [(10, b'{"name": "runs past its length"}'), (100, b'{"name": "x"}')],
                         ids=["longer", "shorter"])
def test_a_body_not_of_its_declared_length_resets_its_stream_only(server, declared, sent):
    """RFC 9113 8.1.1: a malformed request is an error of its stream; the connection serves on."""
    with H2Peer(server.url) as peer:
        slow = peer.request("GET", "/healthz")  # another stream, open on the same connection
        bad = peer.request("POST", URL, headers=[(b"content-type", b"application/json"),
                                                 (b"content-length", str(declared).encode())], end=False)
        peer.send_body(bad, sent, end=True)
        peer.read_until(peer.ended(bad, slow))
        assert peer.responses[bad]["reset"] == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert peer.responses[slow]["status"] == 200 and peer.goaway is None
        after = peer.get(URL)
        assert after["status"] == 200 and json.loads(after["body"])["total_count"] == 0  # nothing stored
