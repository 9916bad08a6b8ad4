"""The tunnel proxy's pure parts: which Host names a tunnel, and the per-devbox cap."""

from __future__ import annotations

import pytest

from simulator.api import tunnel_proxy
from simulator.api.tunnel_headers import DefaultHeaders
from simulator.api.tunnel_proxy import TunnelProxy

KEY = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "host, expected",
    [
        (f"8080-{KEY}.tunnel.localhost:8484", (b"8080", KEY.encode())),
        (f"1-{KEY}.tunnel.runloop.ai", (b"1", KEY.encode())),
        (f"443-{KEY.upper()}.TUNNEL.example", (b"443", KEY.upper().encode())),  # names are case-blind
        ("127.0.0.1:8484", None),
        ("localhost", None),
        (f"{KEY}.tunnel.localhost", None),  # no port
        (f"x8080-{KEY}.tunnel.localhost", None),
        (f"123456-{KEY}.tunnel.localhost", None),  # more than 5 digits
        (f"8080-{KEY}.tunnelx.localhost", None),
        (f"8080-{KEY}_x.tunnel.localhost", None),
        (f"evil.com/8080-{KEY}.tunnel.localhost", None),
    ],
)
def test_tunnel_hosts(host, expected):
    match = tunnel_proxy._TUNNEL_HOST.match(host.encode())
    assert (match.groups() if match else None) == expected


def test_at_most_per_devbox_requests_in_flight():
    proxy = TunnelProxy(app=None, services=lambda: None)
    assert all(proxy._enter("dbx_a") for _ in range(tunnel_proxy.PER_DEVBOX))
    assert not proxy._enter("dbx_a")
    assert proxy._enter("dbx_b")  # another devbox has its own
    proxy._leave("dbx_a")
    assert proxy._enter("dbx_a")
    for _ in range(tunnel_proxy.PER_DEVBOX):
        proxy._leave("dbx_a")
    proxy._leave("dbx_b")
    assert proxy._in_flight == {}  # nothing left behind
    # WebSockets stay open: they have a count of their own, and take no HTTP slot.
    assert all(proxy._enter("dbx_a", websocket=True) for _ in range(tunnel_proxy.PER_DEVBOX_WEBSOCKETS))
    assert not proxy._enter("dbx_a", websocket=True)
    assert proxy._enter("dbx_a")
    proxy._leave("dbx_a")
    for _ in range(tunnel_proxy.PER_DEVBOX_WEBSOCKETS):
        proxy._leave("dbx_a", websocket=True)
    assert proxy._in_flight == {} and proxy._websockets == {}


# ----------------------------------------------------------------------------- the proxy under uvicorn
# The real middleware, served by uvicorn (httptools, as in production) on loopback, in front of
# raw TCP "devbox servers" on loopback; the services are stand-ins that admit every key.

import email.utils  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

import h11  # noqa: E402
import httpx  # noqa: E402

from tests.uvicorn_thread import served_in_thread  # noqa: E402

TUNNEL = f"-{KEY}.tunnel.localhost"


class _Box:
    def __init__(self, status="running"):
        self.id, self.account, self.status, self.tunnel = "dbx_t", "acct", status, None


class _Tunnels:
    def __init__(self, status="running", wake_seconds=0.0):
        self.status, self.wake_seconds = status, wake_seconds
        self.admitted = self.woken = self.touched = 0
        self.held: list = []  # the cuts of the connections open to the devbox

    def admit(self, key, token):
        self.admitted += 1
        return _Box(self.status)

    def wake(self, devbox):
        if devbox.status == "suspended":
            self.woken += 1
            time.sleep(self.wake_seconds)  # a resume takes a moment
            self.status = "running"
        return _Box("running")

    def reached(self, devbox):
        self.touched += 1

    def hold(self, devbox_id, tunnel_key, cut):
        self.held.append(cut)
        return lambda: self.held.remove(cut)


class _Runtime:
    def tunnel_socket(self, devbox_id):
        return socket.socket(), "127.0.0.1"


async def _api(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"api"})


@pytest.fixture
def proxy():
    """(base url, the TunnelProxy, its stand-in tunnel service)."""
    tunnels = _Tunnels()
    services = types.SimpleNamespace(tunnels=tunnels, runtime=_Runtime())
    app = TunnelProxy(_api, services=lambda: services)
    with served_in_thread(DefaultHeaders(app)) as (url, _):
        yield url, app, tunnels


class Upstream:
    """A raw TCP server on loopback standing in for a server in a devbox: ``handler(conn)`` runs
    per connection in a thread; ``port`` to point a tunnel at."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed at the end of the test
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                self.handler(conn)
            except OSError:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture
def upstream():
    made = []

    def make(handler) -> Upstream:
        made.append(Upstream(handler))
        return made[-1]

    yield make
    for server in made:
        server.close()


def read_request(conn) -> tuple[h11.Request, bytes]:
    """The request as an HTTP server sees it (h11 decodes chunking)."""
    parser = h11.Connection(h11.SERVER)
    request, body = None, b""
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            parser.receive_data(conn.recv(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body


def answering(answers: dict[str, bytes]):
    """An upstream handler giving each request target its canned raw response."""
    def answer(conn):
        request, _ = read_request(conn)
        conn.sendall(answers[request.target.decode()])
    return answer


def raw_client(url: str) -> socket.socket:
    """A plain TCP connection to the proxy, for what httpx would not send (or not read)."""
    return socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))


def host(port) -> dict:
    return {"Host": f"{port}{TUNNEL}"}


def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)  # polling with a deadline


def test_other_hosts_reach_the_api(proxy):
    url, _, tunnels = proxy
    assert httpx.get(url).text == "api" and tunnels.admitted == 0


def test_one_date_and_server_each_the_devbox_s_own_through_a_tunnel(proxy, upstream):
    url, _, _ = proxy
    answers = {
        "/own": b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: devbox/1\r\nContent-Length: 0\r\n\r\n",
        "/none": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    }

    server = upstream(answering(answers))
    with httpx.Client(headers=host(server.port)) as client:
        own = client.get(url + "/own").headers
        assert own.get_list("date") == ["Sun, 06 Nov 1994 08:49:37 GMT"] and own.get_list("server") == ["devbox/1"]
        # A forwarded answer without a Date gains one (RFC 9110 6.6.1), not the proxy's Server.
        none = client.get(url + "/none").headers
        assert len(none.get_list("date")) == 1 and email.utils.parsedate_to_datetime(none["date"]).year >= 2024
        assert "server" not in none
    # The API's own answers carry both, once.
    api = httpx.get(url).headers
    assert len(api.get_list("date")) == 1 and api.get_list("server") == ["uvicorn"]


def test_an_internal_error_has_date_and_server_too():
    """The defaults go on outside Starlette's error middleware: a 500 gets them as well."""
    import shutil
    import tempfile
    import warnings
    from pathlib import Path

    from simulator.app import create_app
    from simulator.config import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    data_dir = Path(tempfile.mkdtemp(prefix="devbox-sim-500-"))
    app = create_app(Settings(data_dir=data_dir))

    def broken():
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    try:
        with TestClient(DefaultHeaders(app), raise_server_exceptions=False) as client:
            response = client.get("/broken")
        assert response.status_code == 500 and response.json()["error_code"] == "internal_error"
        assert len(response.headers.get_list("date")) == 1 and response.headers.get_list("server") == ["uvicorn"]
    finally:
        shutil.rmtree(data_dir, True)


def test_a_chunked_request_body_arrives_whole(proxy, upstream):
    url, app, _ = proxy
    seen = {}

    def echo(conn):
        request, body = read_request(conn)
        seen["headers"], seen["body"] = dict(request.headers), body
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Up: 1\r\nConnection: close, X-Up\r\n\r\nok")

    server = upstream(echo)
    parts = (f"part{i};".encode() for i in range(50))
    response = httpx.post(url + "/p", content=parts, headers={**host(server.port), "Connection": "close, X-Drop",
                                                              "X-Drop": "1", "X-Keep": "1"})
    assert (response.status_code, response.text) == (201, "ok")
    assert "x-up" not in response.headers  # named by the devbox's Connection header
    assert seen["body"] == b"".join(f"part{i};".encode() for i in range(50))
    assert seen["headers"][b"transfer-encoding"] == b"chunked" and b"x-keep" in seen["headers"]
    assert b"x-drop" not in seen["headers"]  # named by the client's Connection header
    wait_for(lambda: app._in_flight == {})


def test_head_204_and_304_keep_no_stale_content_length(proxy, upstream):
    url, _, _ = proxy
    answers = {
        "/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: x\r\n\r\n",
        "/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
        "/both": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    }

    server = upstream(answering(answers))
    with httpx.Client(headers=host(server.port)) as client:
        not_modified = client.get(url + "/304")
        assert (not_modified.status_code, not_modified.headers.get("etag"), not_modified.content) == (304, "x", b"")
        assert "content-length" not in not_modified.headers
        assert client.get(url + "/204").status_code == 204
        head = client.head(url + "/head")
        assert (head.status_code, head.headers["content-length"], head.content) == (200, "7", b"")
        both = client.get(url + "/both")
        assert both.content == b"hello" and both.headers.get("content-length") != "100"


def test_a_client_going_away_ends_the_stream_at_the_devbox(proxy, upstream):
    url, app, _ = proxy
    ended = threading.Event()

    def endless(conn):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(400):  # at most 20 s
                conn.sendall(b"5\r\ntick\n\r\n")
                time.sleep(0.05)
        except OSError:
            ended.set()  # the proxy closed our connection

    server = upstream(endless)
    client = raw_client(url)
    client.sendall(f"GET /s HTTP/1.1\r\nHost: {server.port}{TUNNEL}\r\n\r\n".encode())
    assert b"tick" in client.recv(65536) or b"tick" in client.recv(65536)
    client.close()
    assert ended.wait(5), "the devbox kept streaming to a client that had gone"
    wait_for(lambda: app._in_flight == {})


def test_a_client_going_away_ends_a_fast_stream_too(proxy, upstream):
    """A devbox sending as fast as it can: every read and send completes at once, so the
    proxy must see the disconnect itself (a cancel landing on a finished wait_for is lost)."""
    url, app, _ = proxy
    ended = threading.Event()
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)

    def flood(conn):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        deadline = time.monotonic() + 20  # at most 20 s
        try:
            while time.monotonic() < deadline:
                conn.sendall(chunk)
        except OSError:
            ended.set()  # the proxy closed our connection

    server = upstream(flood)
    client = raw_client(url)
    client.sendall(f"GET /s HTTP/1.1\r\nHost: {server.port}{TUNNEL}\r\n\r\n".encode())
    assert client.recv(1000)
    client.close()
    assert ended.wait(10), "the proxy kept pulling from the devbox for a client that had gone"
    wait_for(lambda: app._in_flight == {})


def test_a_cut_ends_a_stream_from_a_devbox_that_went_silent(proxy, upstream):
    """What TunnelService does when the devbox ends: a netns devbox's server cannot close its
    side (its namespace is gone), so the proxy's cut is what ends the client's response."""
    url, app, tunnels = proxy
    release = threading.Event()

    def silent(conn):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ntick\n\r\n")
        release.wait(20)  # then nothing more, and no close: as from a removed namespace

    server = upstream(silent)
    client = raw_client(url)
    client.settimeout(10)
    try:
        client.sendall(f"GET /s HTTP/1.1\r\nHost: {server.port}{TUNNEL}\r\n\r\n".encode())
        received = client.recv(65536)
        while b"tick" not in received:
            received += client.recv(65536)
        wait_for(lambda: len(tunnels.held) == 1)
        tunnels.held[0]()
        while chunk := client.recv(65536):  # the response ends (cut short), within the timeout
            received += chunk
        assert not received.endswith(b"0\r\n\r\n")  # no clean end: the client sees it was cut
        wait_for(lambda: tunnels.held == [] and app._in_flight == {})
    finally:
        release.set()
        client.close()


def test_an_early_answer_of_the_devbox_is_passed_on(proxy, upstream):
    """A server may answer before it read the body (413) and then drain it, as servers do."""
    url, app, _ = proxy

    def refuse(conn):
        conn.recv(65536)  # the head and a little of the body
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):  # a lingering close: read the rest, then close
            pass

    server = upstream(refuse)
    response = httpx.post(url + "/up", content=b"x" * (8 << 20), headers=host(server.port), timeout=20)
    assert (response.status_code, response.text) == (413, "too big!")
    wait_for(lambda: app._in_flight == {})  # the app finishes just after the client has it all


def test_a_devbox_that_slams_the_door_mid_body_is_a_502_not_a_500(proxy, upstream):
    url, app, _ = proxy

    def slam(conn):
        conn.recv(1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST

    server = upstream(slam)
    response = httpx.post(url + "/up", content=b"x" * (8 << 20), headers=host(server.port), timeout=20)
    assert response.status_code == 502, (response.status_code, response.headers, response.content)
    assert response.json()["error_code"] == "tunnel_bad_response"
    wait_for(lambda: app._in_flight == {})


def test_no_http_from_the_devbox_is_502(proxy, upstream):
    url, _, _ = proxy

    def garbage(conn):
        conn.recv(65536)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    server = upstream(garbage)
    response = httpx.get(url, headers=host(server.port))
    assert (response.status_code, response.json()["error_code"]) == (502, "tunnel_bad_response")


def test_a_bad_port_or_coding_is_refused_before_anything_is_looked_up(proxy):
    url, _, tunnels = proxy
    for port in (0, 65536, 99999):
        response = httpx.get(url, headers={"Host": f"{port}{TUNNEL}"})
        assert (response.status_code, response.json()["error_code"]) == (400, "invalid_request")
    client = raw_client(url)
    client.sendall(f"POST / HTTP/1.1\r\nHost: 8080{TUNNEL}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".encode())
    head = client.recv(65536)
    client.close()
    assert head.startswith(b"HTTP/1.1 501") or head.startswith(b"HTTP/1.1 400")
    assert tunnels.admitted == 0


def test_concurrent_requests_share_one_resume(proxy, upstream):
    url, app, tunnels = proxy
    tunnels.status, tunnels.wake_seconds = "suspended", 0.3

    def ok(conn):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = upstream(ok)
    results = []

    def get():
        results.append(httpx.get(url, headers=host(server.port), timeout=10).text)

    threads = [threading.Thread(target=get) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results == ["ok"] * 5
    assert tunnels.woken == 1
    wait_for(lambda: app._in_flight == {} and app._waking == {})


def test_connect_is_refused_and_the_listener_stays_up(proxy, upstream):
    url, _, tunnels = proxy

    def agree(conn):
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

    server = upstream(agree)
    client = raw_client(url)
    client.settimeout(5)
    client.sendall(f"CONNECT /x HTTP/1.1\r\nHost: {server.port}{TUNNEL}\r\n\r\n".encode())
    assert client.recv(65536).startswith(b"HTTP/1.1 405")
    client.close()
    assert httpx.get(url, timeout=5).text == "api"  # the event loop is free
    assert tunnels.admitted == 0


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n",
])
def test_what_uvicorn_cannot_send_is_a_502_not_a_broken_reply(proxy, upstream, answer):
    url, app, _ = proxy

    def odd(conn):
        read_request(conn)
        conn.sendall(answer)

    server = upstream(odd)
    response = httpx.get(url, headers=host(server.port))
    assert (response.status_code, response.json()["error_code"]) == (502, "tunnel_bad_response")
    wait_for(lambda: app._in_flight == {})


def test_an_http10_client_gets_a_length_not_chunks(proxy, upstream):
    url, _, _ = proxy

    def until_close(conn):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"a" * 100000)

    server = upstream(until_close)
    client = raw_client(url)
    client.settimeout(10)
    client.sendall(f"GET / HTTP/1.0\r\nHost: {server.port}{TUNNEL}\r\n\r\n".encode())
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 100000" in head.lower() and b"chunked" not in head.lower()
    assert body == b"a" * 100000


def test_a_bodyless_answer_counts_as_activity(proxy, upstream):
    url, _, tunnels = proxy

    def empty(conn):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = upstream(empty)
    assert httpx.get(url, headers=host(server.port)).status_code == 204
    assert tunnels.touched == 1


def test_a_stalled_request_body_is_a_408(proxy, upstream, monkeypatch):
    url, app, _ = proxy
    monkeypatch.setattr(tunnel_proxy, "IDLE_SECONDS", 0.5)
    server = upstream(lambda conn: conn.recv(65536) and time.sleep(3))
    client = raw_client(url)
    client.settimeout(5)
    client.sendall(f"POST / HTTP/1.1\r\nHost: {server.port}{TUNNEL}\r\nContent-Length: 10\r\n\r\nabc".encode())
    assert client.recv(65536).startswith(b"HTTP/1.1 408")
    client.close()
    wait_for(lambda: app._in_flight == {})


def test_a_client_that_stops_reading_gives_its_slot_back(proxy, upstream, monkeypatch):
    url, app, _ = proxy
    monkeypatch.setattr(tunnel_proxy, "IDLE_SECONDS", 0.5)
    streaming, let_go = threading.Event(), threading.Event()

    def flood(conn):
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        streaming.set()
        chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
        try:
            for _ in range(1024):  # at most 64 MiB, until the proxy lets go
                conn.sendall(chunk)
        except OSError:
            let_go.set()  # the proxy closed our connection

    server = upstream(flood)
    client = raw_client(url)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.sendall(f"GET / HTTP/1.1\r\nHost: {server.port}{TUNNEL}\r\n\r\n".encode())
    try:
        assert streaming.wait(5)
        assert let_go.wait(10), "the proxy kept the devbox's stream for a client that does not read"
        wait_for(lambda: app._in_flight == {})  # though the client is still connected
    finally:
        client.close()


def test_a_tunnel_answers_an_http2_client_as_an_http1_one(proxy, upstream):
    """The TypeScript SDK's HTTP/2 (h2c) reaches a devbox through its tunnel: routed by
    :authority, forwarded as HTTP/1.1, and the devbox's connection-specific headers (malformed
    in HTTP/2: the client's h2 would refuse the whole response) are left out."""
    url, app, _ = proxy
    seen = {}

    def echo(conn):
        request, body = read_request(conn)
        seen["host"] = dict(request.headers)[b"host"]
        answer = request.method + b" " + request.target + b" " + body
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n"
                     b"X-Up: 1\r\n\r\n" + b"%x\r\n" % len(answer) + answer + b"\r\n0\r\n\r\n")

    server = upstream(echo)
    with httpx.Client(http1=False, http2=True, headers=host(server.port)) as client:
        response = client.post(url + "/x?q=1", content=b"hello")
    assert (response.http_version, response.status_code, response.text) == ("HTTP/2", 200, "POST /x?q=1 hello")
    assert response.headers["x-up"] == "1" and "keep-alive" not in response.headers
    assert seen["host"] == host(server.port)["Host"].encode()
    wait_for(lambda: app._in_flight == {})
