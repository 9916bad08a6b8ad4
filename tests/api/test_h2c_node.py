"""node's own HTTP/2 client (`node:http2`, what the TypeScript SDK >= 1.25 uses over http://)
against a real server: calls, a graceful close by the client, a graceful stop of the server.

node comes with scripts/bootstrap.sh --test (Debian's nodejs; the SDK itself is not installable
offline). Its GOAWAY habits are what Python's h2 clients lack: it answers the server's GOAWAY
with its own, and `session.close()` sends one while streams still run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess

import httpx
import pytest

from tests.server import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("node") is None and not os.environ.get("CI"),
                                reason="node is not installed (bootstrap.sh --test installs it)")

BUNDLE = "/docs/swagger-ui-bundle.js"  # 1.5 MB: many flow control windows
CLIENT = r"""
const http2 = require('node:http2');
const crypto = require('node:crypto');
const [mode, url, pid] = [process.argv[2], process.argv[3], Number(process.argv[4] || 0)];
const auth = {'authorization': 'Bearer node-token'};
const s = http2.connect(url);
const out = {goaways: [], errors: []};
s.on('error', e => out.errors.push('session ' + e.code));
s.on('goaway', (code, last) => out.goaways.push([code, last]));
function call(method, path, body) {
  return new Promise(resolve => {
    const headers = {':method': method, ':path': path, ...auth};
    if (body !== undefined) headers['content-type'] = 'application/json';
    const req = s.request(headers);
    const chunks = [];
    let status;
    req.on('response', h => { status = h[':status']; });
    req.on('data', d => chunks.push(d));
    req.on('error', e => out.errors.push('stream ' + e.code));
    req.on('close', () => {
      const all = Buffer.concat(chunks);
      resolve({status, rst: req.rstCode, bytes: all.length,
               sha256: crypto.createHash('sha256').update(all).digest('hex'), text: all.toString('utf8', 0, 4096)});
    });
    if (body !== undefined) req.end(JSON.stringify(body)); else req.end();
    if (mode === 'close' && path.startsWith('/docs')) req.on('response', () => s.close());
    if (mode === 'stop' && path.startsWith('/docs')) {
      req.on('response', () => { req.pause(); process.kill(pid, 'SIGTERM'); setTimeout(() => req.resume(), 1000); });
    }
  });
}
(async () => {
  if (mode === 'api') {
    out.created = await call('POST', '/v1/network-policies', {name: 'from-node', allowed_hostnames: ['github.com']});
    const id = JSON.parse(out.created.text).id;
    out.got = await call('GET', '/v1/network-policies/' + id);
    out.missing = await call('GET', '/v1/network-policies/npol_nope');
    out.bad = await call('POST', '/v1/network-policies', {name: 3});
    s.close();
  } else {
    out.download = await call('GET', '/docs/swagger-ui-bundle.js');
    if (mode === 'stop') s.close();
  }
  console.log(JSON.stringify(out));
})();
setTimeout(() => { console.log(JSON.stringify({...out, timeout: true})); process.exit(1); }, 15000).unref();
"""


@pytest.fixture
def node_client(tmp_path):
    script = tmp_path / "client.js"
    script.write_text(CLIENT)

    def run(mode: str, server: ServerProcess) -> dict:
        done = subprocess.run(["node", str(script), mode, server.url, str(server.proc.pid)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (done.stdout, done.stderr)
        return json.loads(done.stdout)

    return run


def _bundle(server) -> tuple[int, str]:
    body = httpx.get(server.url + BUNDLE, timeout=30).content
    return len(body), hashlib.sha256(body).hexdigest()


def test_node_http2_calls_answer_as_http1_does(tmp_path, node_client):
    with ServerProcess(tmp_path / "data") as server:
        out = node_client("api", server)
        with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer node-token"}) as one:
            expected_missing = one.get("/v1/network-policies/npol_nope")
            expected_bad = one.post("/v1/network-policies", json={"name": 3})
    assert out["errors"] == [] and "timeout" not in out
    created = json.loads(out["created"]["text"])
    assert out["created"]["status"] == 200 and created["name"] == "from-node"
    assert created["egress"]["allowed_hostnames"] == ["github.com"]
    assert out["got"]["status"] == 200 and json.loads(out["got"]["text"]) == created
    assert (out["missing"]["status"], json.loads(out["missing"]["text"])) == (404, expected_missing.json())
    assert (out["bad"]["status"], json.loads(out["bad"]["text"])) == (400, expected_bad.json())


def test_node_closing_its_session_still_gets_the_whole_response(tmp_path, node_client):
    """`session.close()` sends GOAWAY with the download still running: it must complete
    (before: the server dropped the connection, and node saw a truncated 200)."""
    with ServerProcess(tmp_path / "data") as server:
        size, digest = _bundle(server)
        out = node_client("close", server)
    assert out["errors"] == [] and "timeout" not in out
    assert (out["download"]["status"], out["download"]["rst"]) == (200, 0)
    assert (out["download"]["bytes"], out["download"]["sha256"]) == (size, digest)


def test_a_graceful_stop_lets_node_finish_its_download(tmp_path, node_client):
    """SIGTERM while node holds a download (paused, so it waits on flow control): the server
    sends GOAWAY, node answers with its own, and the download still completes whole."""
    server = ServerProcess(tmp_path / "data").start()
    try:
        size, digest = _bundle(server)
        out = node_client("stop", server)
        assert server.proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
    finally:
        server.stop()
    assert out["errors"] == [] and "timeout" not in out
    assert out["goaways"] and out["goaways"][0][0] == 0  # the server's graceful GOAWAY came first
    assert (out["download"]["status"], out["download"]["rst"]) == (200, 0)
    assert (out["download"]["bytes"], out["download"]["sha256"]) == (size, digest)
