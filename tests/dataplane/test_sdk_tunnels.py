"""Devbox tunnels through the official SDK (``devbox.net.enable_tunnel``...) and real HTTP:
a server started in the devbox is reached through the API's listener with the Host
``{port}-{tunnel_key}.tunnel.localhost``.

WebSockets go the same way. Runs on the netns runtime (privileged), on the subprocess test
double (there the devbox's ports are the host's loopback ports), and again on Docker
(tests/docker/test_sdk_tunnels_docker.py).
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from runloop_api_client import BadRequestError, NotFoundError, RunloopSDK
from wsproto.events import AcceptConnection, CloseConnection, Message
from wsproto.extensions import PerMessageDeflate

from tests.dataplane.test_sdk_lifecycle import devbox, sdk, server, token  # noqa: F401 (fixtures)
from tests.ws_peer import handshake

# Echoes each request as JSON: method, path, headers (lower case), body (content-length only).
ECHO_SERVER = """
import http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def answer(self):
        size = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(size) if size else b""
        out = json.dumps({"method": self.command, "path": self.path, "body": body.decode(),
                          "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-echo", "yes")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
"""

# A WebSocket echo server with the standard library only (the devbox's python3 has nothing
# else): the handshake (its 101 names the path it was asked for, in x-path), then each frame's
# payload back in one unmasked frame of the same kind; a ping gets a pong, a close its echo.
WS_ECHO_SERVER = r"""
import base64, hashlib, socket, struct, sys, threading
def exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
def serve(conn):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        lines = head.split(b"\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])}
        if b"sec-websocket-key" not in headers:
            conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1(headers[b"sec-websocket-key"] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                     b"sec-websocket-accept: " + accept + b"\r\nx-path: " + lines[0].split(b" ")[1] + b"\r\n\r\n")
        while True:
            first, second = exact(conn, 2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack("!H", exact(conn, 2))[0]
            elif size == 127:
                size = struct.unpack("!Q", exact(conn, 8))[0]
            mask = exact(conn, 4) if second & 0x80 else bytes(4)
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(exact(conn, size)))
            kind = 10 if opcode == 9 else opcode
            length = bytes([len(payload)]) if len(payload) < 126 else bytes([126]) + struct.pack("!H", len(payload))
            conn.sendall(bytes([0x80 | kind]) + length + payload)
            if opcode == 8:
                return
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(16)
while True:
    threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
"""


def free_port() -> int:
    """A port free on the host: the test double's devboxes share the host's ports."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def through(server, port: int, key: str, path: str = "/", method: str = "GET", **kwargs) -> httpx.Response:  # noqa: F811
    return httpx.request(method, f"{server.url}{path}", headers={"Host": f"{port}-{key}.tunnel.localhost",
                                                                  **kwargs.pop("headers", {})}, timeout=10, **kwargs)


def start_echo(devbox, server, key: str, headers: dict | None = None) -> int:  # noqa: F811
    """The echo server on a free port in the devbox, answering through the tunnel."""
    port = free_port()
    devbox.file.write(file_path="echo_server.py", contents=ECHO_SERVER)
    devbox.cmd.exec_async(f"python3 echo_server.py {port}")
    deadline = time.monotonic() + 15
    while True:
        response = through(server, port, key, "/ready", headers=headers or {})
        if response.status_code == 200:
            return port
        assert response.json()["error_code"] == "tunnel_connect_failed", response.text  # not listening yet
        assert time.monotonic() < deadline, "the echo server never answered through the tunnel"
        time.sleep(0.1)  # polling the server's start with a deadline


def test_an_open_tunnel_reaches_a_server_in_the_devbox(server, devbox):  # noqa: F811
    assert devbox.get_tunnel() is None
    tunnel = devbox.net.enable_tunnel()
    assert (tunnel.auth_mode, tunnel.http_keep_alive, tunnel.wake_on_http, tunnel.auth_token) == ("open", True, False, None)
    assert devbox.get_tunnel() == tunnel  # the devbox view shows it
    port = start_echo(devbox, server, tunnel.tunnel_key)
    # Method, path with query, headers and body arrive as sent; the answer comes back whole.
    response = through(server, port, tunnel.tunnel_key, "/a/b?x=1&y=%20", "POST", content=b"payload",
                       headers={"X-Custom": "v"})
    assert response.status_code == 200 and response.headers["x-echo"] == "yes"
    # The devbox server's own Date and Server (http.server sends both), once each.
    assert len(response.headers.get_list("date")) == 1
    assert [name.split("/")[0] for name in response.headers.get_list("server")] == ["BaseHTTP"]
    echoed = response.json()
    assert (echoed["method"], echoed["path"], echoed["body"]) == ("POST", "/a/b?x=1&y=%20", "payload")
    assert echoed["headers"]["x-custom"] == "v"
    assert echoed["headers"]["host"] == f"{port}-{tunnel.tunnel_key}.tunnel.localhost"
    # No API key needed (the key in the name is the capability), and none passed on.
    assert "authorization" not in echoed["headers"]
    # One tunnel per devbox.
    with pytest.raises(BadRequestError, match="already has a tunnel"):
        devbox.net.enable_tunnel()
    # A port nothing listens on, and a key nobody has: JSON errors.
    closed = through(server, free_port(), tunnel.tunnel_key)
    assert (closed.status_code, closed.json()["error_code"]) == (502, "tunnel_connect_failed")
    unknown = through(server, port, "0" * 32)
    assert (unknown.status_code, unknown.json()["error_code"]) == (404, "not_found")
    # Removed: the URL stops working at once.
    devbox.net.remove_tunnel()
    assert devbox.get_tunnel() is None
    assert through(server, port, tunnel.tunnel_key).status_code == 404
    with pytest.raises(BadRequestError, match="has no tunnel"):
        devbox.net.remove_tunnel()
    # The API itself is unaffected by a tunnel-looking path on the normal host.
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_an_authenticated_tunnel_needs_its_token(server, devbox):  # noqa: F811
    tunnel = devbox.net.enable_tunnel(auth_mode="authenticated", http_keep_alive=False)
    assert tunnel.auth_mode == "authenticated" and tunnel.auth_token and not tunnel.http_keep_alive
    good = {"X-Runloop-Tunnel-Authorization": f"Bearer {tunnel.auth_token}"}
    port = start_echo(devbox, server, tunnel.tunnel_key, headers=good)
    for headers in ({}, {"X-Runloop-Tunnel-Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {tunnel.auth_token}"}):
        refused = through(server, port, tunnel.tunnel_key, headers=headers)
        assert (refused.status_code, refused.json()["error_code"]) == (401, "unauthorized")
    response = through(server, port, tunnel.tunnel_key, "/in", headers=good)
    assert response.status_code == 200
    assert "x-runloop-tunnel-authorization" not in response.json()["headers"]  # the token stays with us


def test_tunnel_from_create_wakes_a_suspended_devbox(server, sdk):  # noqa: F811
    box = sdk.devbox.create(tunnel={"auth_mode": "open", "wake_on_http": True})
    try:
        tunnel = box.get_tunnel()
        assert tunnel is not None and tunnel.wake_on_http
        port = start_echo(box, server, tunnel.tunnel_key)
        box.suspend()
        assert sdk.api.devboxes.retrieve(box.id).status == "suspended"
        response = through(server, port, tunnel.tunnel_key, "/wake")
        assert response.status_code == 200 and response.json()["path"] == "/wake"
        assert sdk.api.devboxes.retrieve(box.id).status == "running"
    finally:
        box.shutdown()
    # An ended devbox's tunnel leads nowhere.
    ended = through(server, port, tunnel.tunnel_key)
    assert (ended.status_code, ended.json()["error_code"]) == (502, "devbox_not_running")


def test_a_suspended_devbox_without_wake_is_not_reached_and_stays_suspended(server, devbox, sdk):  # noqa: F811
    tunnel = devbox.net.enable_tunnel()
    port = start_echo(devbox, server, tunnel.tunnel_key)
    devbox.suspend()
    refused = through(server, port, tunnel.tunnel_key)
    assert (refused.status_code, refused.json()["error_code"]) == (502, "devbox_not_running")
    assert sdk.api.devboxes.retrieve(devbox.id).status == "suspended"
    devbox.resume()
    assert through(server, port, tunnel.tunnel_key).status_code == 200


def test_resume_triggers_http_wakes_a_devbox_whose_tunnel_does_not(server, sdk):  # noqa: F811
    box = sdk.devbox.create(launch_parameters={"lifecycle": {"resume_triggers": {"http": True}}},
                            tunnel={"auth_mode": "open", "wake_on_http": False})
    try:
        tunnel = box.get_tunnel()
        port = start_echo(box, server, tunnel.tunnel_key)
        box.suspend()
        response = through(server, port, tunnel.tunnel_key, "/resumed")
        assert response.status_code == 200 and response.json()["path"] == "/resumed"
        assert sdk.api.devboxes.retrieve(box.id).status == "running"
    finally:
        box.shutdown()


def test_tunnel_and_ssh_errors(server, sdk, devbox):  # noqa: F811
    with pytest.raises(NotFoundError):
        sdk.api.devboxes.enable_tunnel("dbx_nope")
    other = RunloopSDK(bearer_token=token(), base_url=server.url, max_retries=0)
    with pytest.raises(NotFoundError):  # another account's devbox
        other.api.devboxes.enable_tunnel(devbox.id)
    with pytest.raises(BadRequestError) as ssh:
        devbox.net.create_ssh_key()
    assert json.loads(ssh.value.response.text)["error_code"] == "not_supported"
    devbox.shutdown()
    with pytest.raises(BadRequestError, match="not running"):
        devbox.net.enable_tunnel()


def ws_connect(server, port: int | None, key: str, target: str = "/", extensions=()):  # noqa: F811
    """A WebSocket client through the tunnel to ``port`` (None: to the API itself)."""
    host, api_port = server.url.removeprefix("http://").rsplit(":", 1)
    name = f"{host}:{api_port}" if port is None else f"{port}-{key}.tunnel.localhost"
    return handshake((host, int(api_port)), name, target, extensions=extensions)


def start_ws_echo(devbox, server, key: str) -> int:  # noqa: F811
    """The WebSocket echo server on a free port in the devbox, accepting through the tunnel."""
    port = free_port()
    devbox.file.write(file_path="ws_echo_server.py", contents=WS_ECHO_SERVER)
    devbox.cmd.exec_async(f"python3 ws_echo_server.py {port}")
    deadline = time.monotonic() + 15
    while True:
        client, answer = ws_connect(server, port, key)
        client.sock.close()
        if isinstance(answer, AcceptConnection):
            return port
        rejection, body = answer
        assert b"tunnel_connect_failed" in body, (rejection, body)  # not listening yet
        assert time.monotonic() < deadline, "the WebSocket server never answered through the tunnel"
        time.sleep(0.1)  # polling the server's start with a deadline


def test_a_websocket_reaches_a_server_in_the_devbox_and_ends_with_the_tunnel_or_the_devbox(server, devbox):  # noqa: F811
    tunnel = devbox.net.enable_tunnel()
    port = start_ws_echo(devbox, server, tunnel.tunnel_key)
    _, (rejection, _body) = ws_connect(server, None, "", "/v1/devboxes")
    assert rejection.status_code == 403  # the API has no WebSocket of its own
    client, answer = ws_connect(server, port, tunnel.tunnel_key, "/live?session=1", extensions=[PerMessageDeflate()])
    assert (b"x-path", b"/live?session=1") in answer.extra_headers  # the path reached the devbox
    # No compression with clients: an inflated frame is not bounded before uvicorn counts it.
    assert answer.extensions == []
    client.send(Message(data="hello devbox"))
    assert client.message() == "hello devbox"
    client.send(Message(data=bytes(range(256)) * 16))
    assert client.message() == bytes(range(256)) * 16
    # Removing the tunnel closes its WebSockets (new ones get 404 like any request).
    devbox.net.remove_tunnel()
    closed = client.next()
    assert isinstance(closed, CloseConnection) and closed.code == 1001
    _, (rejection, _body) = ws_connect(server, port, tunnel.tunnel_key)
    assert rejection.status_code == 404
    # The devbox ending closes them too, at once (its server cannot say so itself on netns:
    # its namespace is gone).
    tunnel = devbox.net.enable_tunnel()
    client, answer = ws_connect(server, port, tunnel.tunnel_key)
    client.send(Message(data="still there"))
    assert client.message() == "still there"
    devbox.shutdown()
    closed = client.next()
    assert isinstance(closed, CloseConnection) and closed.code in (1001, 1011), closed
