"""The HTTP/2 protocol's edge cases (simulator/api/h2_server.py, h2_stream.py) on uvicorn in
this process, served as ``devbox-sim serve`` does (uvicorn_protocol_options), with a test app
whose handlers the tests drive: resets, the stream cap, flow control both ways, bounds."""

from __future__ import annotations

import asyncio
import threading
import time

import h2.errors
import h2.settings
import pytest
from hyperframe.frame import GoAwayFrame

from simulator.api import h2_server, h2_stream
from tests.h2_peer import H2Peer
from tests.uvicorn_thread import served_in_thread


class App:
    """/hold: takes the body, waits for a disconnect (counted), then for ``release``;
    /later: waits for ``release``, then answers "later";
    /echo: the request body back; /raise: an exception before any response;
    /firehose: 64 KiB chunks until 10 MiB or ``stop`` (``sent`` counts the sends that returned)."""

    def __init__(self):
        self.started = self.disconnects = self.finished = self.sent = 0
        self.release = threading.Event()
        self.stop = threading.Event()

    async def __call__(self, scope, receive, send):
        assert scope["type"] == "http" and scope["http_version"] == "2"
        path = scope["path"]
        if path == "/hold":
            self.started += 1
            await receive()
            if (await receive())["type"] == "http.disconnect":
                self.disconnects += 1
            while not self.release.is_set():
                await asyncio.sleep(0.01)  # polling the test's threading.Event
            self.finished += 1
        elif path == "/later":
            self.started += 1
            while not self.release.is_set():
                await asyncio.sleep(0.01)  # polling the test's threading.Event
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"later"})
            return
        elif path == "/raise":
            raise RuntimeError("boom")
        elif path == "/echo":
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        elif path == "/firehose":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while not self.stop.is_set() and self.sent < 10 << 20:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
                self.sent += 65536
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"Connection", b"keep-alive")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def served():
    """(base url, the App) on uvicorn in a thread; idle h2 connections close after 1 s."""
    app = App()
    with served_in_thread(app, log_level="critical", timeout_keep_alive=1) as (url, server):
        app.server = server
        try:
            yield url, app
        finally:
            app.release.set()
            app.stop.set()


def _until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)  # polling the app's counters with a deadline


def test_end_of_request_in_its_own_data_frame(served):
    """node's http2 client ends a GET with an empty DATA frame: the app still gets its request."""
    url, _ = served
    with H2Peer(url) as peer:
        answer = peer.get("/", separate_end=True)
        assert (answer["status"], bytes(answer["body"])) == (200, b"ok")
        assert b"connection" not in dict(answer["headers"])  # HTTP/1.1-only headers are dropped


def test_reset_streams_give_their_place_back_and_rapid_reset_loses_the_connection(served, monkeypatch):
    """A stream the client reset frees its place at once (node does not retry a refusal), but
    its handler runs on; a client with MAX_RESET_RUNNING of them (the "rapid reset" attack)
    loses the connection, so a connection never runs more handlers than the two bounds."""
    url, app = served
    monkeypatch.setattr(h2_server, "MAX_RESET_RUNNING", 8)
    with H2Peer(url) as peer:
        held = [peer.request("GET", "/hold") for _ in range(h2_server.MAX_STREAMS)]
        _until(lambda: app.started == h2_server.MAX_STREAMS)  # every place taken
        for stream_id in held[:5]:
            peer.reset(stream_id)
        _until(lambda: app.disconnects == 5)  # each handler heard of it, and runs on
        quick = [peer.request("GET", "/") for _ in range(5)]
        peer.read_until(peer.ended(*quick))
        assert [peer.responses[q]["status"] for q in quick] == [200] * 5  # their places are free (before: refused)
        for stream_id in held[5:8]:
            peer.reset(stream_id)
        _until(lambda: app.disconnects == 8)
        peer.request("GET", "/")  # the 8 reset handlers still run: enough
        peer.read_until(lambda: peer.closed)
        assert peer.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    app.release.set()
    _until(lambda: app.finished == h2_server.MAX_STREAMS)  # the handlers ended, none cancelled


def test_the_client_s_goaway_lets_its_streams_finish(served):
    """node's session.close() (and its answer to our GOAWAY) sends GOAWAY(NO_ERROR): the
    streams it opened still get their responses (before: the connection was dropped at once)."""
    url, app = served
    with H2Peer(url) as peer:
        stream_id = peer.request("GET", "/later")
        _until(lambda: app.started == 1)
        peer.sock.sendall(GoAwayFrame(stream_id=0, last_stream_id=0, error_code=0).serialize())
        peer.sync()  # the server handled the GOAWAY while the handler still waits
        app.release.set()
        peer.read_until(peer.ended(stream_id))
        assert (peer.responses[stream_id]["status"], bytes(peer.responses[stream_id]["body"])) == (200, b"later")
        peer.read_until(lambda: peer.closed)  # then the server closes, gracefully
        assert peer.goaway.error_code == 0


def test_a_graceful_stop_finishes_streams_and_its_goaways_never_grow(served):
    """GOAWAY at the stop; streams opened after it are refused; the closing GOAWAY repeats the
    first one's last stream (RFC 9113 6.8: node takes a larger one for a protocol error)."""
    url, app = served
    with H2Peer(url) as peer:
        first = peer.request("GET", "/later")
        _until(lambda: app.started == 1)
        app.server.should_exit = True
        peer.read_until(lambda: peer.goaways)
        assert (peer.goaways[0].error_code, peer.goaways[0].last_stream_id) == (0, first)
        late = peer.request("GET", "/")
        peer.read_until(peer.ended(late))
        assert peer.responses[late]["reset"] == h2.errors.ErrorCodes.REFUSED_STREAM
        app.release.set()
        peer.read_until(peer.ended(first))
        assert bytes(peer.responses[first]["body"]) == b"later"
        peer.read_until(lambda: peer.closed)
        assert [g.last_stream_id for g in peer.goaways] == [first] * len(peer.goaways)


def test_a_response_that_cannot_move_is_given_up(served, monkeypatch):
    """A client that opens no window holds a response (and its handler) only STALL_SECONDS."""
    url, _ = served
    monkeypatch.setattr(h2_stream, "STALL_SECONDS", 0.5)
    with H2Peer(url, window=16384) as peer:
        stream_id = peer.request("GET", "/firehose")
        started = time.monotonic()
        peer.read_until(peer.ended(stream_id), seconds=5)
        assert peer.responses[stream_id]["reset"] == h2.errors.ErrorCodes.CANCEL
        assert 0.4 < time.monotonic() - started < 4
        assert len(peer.responses[stream_id]["body"]) == 16384  # what the window allowed
        assert peer.get("/")["status"] == 200  # the connection goes on


def test_large_bodies_both_ways(served):
    url, _ = served
    body = bytes(range(256)) * (12 << 10)  # 3 MiB: many stream and connection windows
    with H2Peer(url) as peer:
        stream_id = peer.request("POST", "/echo", body=body)
        peer.read_until(peer.ended(stream_id))
        assert peer.responses[stream_id]["status"] == 200 and bytes(peer.responses[stream_id]["body"]) == body


def test_a_streaming_response_waits_for_the_client_s_window(served):
    """A client that grants no more window holds the app's send(): nothing piles up."""
    url, app = served
    with H2Peer(url, window=16384) as peer:
        stream_id = peer.request("GET", "/firehose")
        peer.read_until(lambda: len(peer.responses[stream_id]["body"]) >= 16384)
        time.sleep(0.3)
        peer.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            peer._read_once()  # nothing more comes
        assert app.sent == 0  # the first 64 KiB send() is still waiting
        assert len(peer.responses[stream_id]["body"]) == 16384
        peer.sock.settimeout(10)
        peer.conn.increment_flow_control_window(1 << 20, stream_id)  # grant 1 MiB more
        peer.conn.increment_flow_control_window(1 << 20)
        peer.flush()
        peer.read_until(lambda: len(peer.responses[stream_id]["body"]) >= 16384 + (1 << 20))
        assert 0 < app.sent <= 16384 + (1 << 20)
        app.stop.set()
        peer.reset(stream_id)


def test_an_app_that_raises_gives_a_500_and_the_connection_goes_on(served):
    url, _ = served
    with H2Peer(url) as peer:
        answer = peer.get("/raise")
        assert (answer["status"], bytes(answer["body"])) == (500, b"Internal Server Error")
        assert peer.get("/")["status"] == 200


def test_an_oversized_header_list_ends_the_connection(served):
    url, _ = served
    with H2Peer(url) as peer:
        peer.request("GET", "/", headers=[(b"x-big", b"x" * (h2_server.MAX_HEADER_LIST + 1))])
        peer.read_until(lambda: peer.closed)
        assert peer.goaway is not None and peer.goaway.error_code != 0
    with H2Peer(url) as other:  # the server itself goes on
        assert other.get("/")["status"] == 200


def test_an_idle_connection_gets_goaway_after_the_keep_alive_timeout(served):
    url, _ = served
    with H2Peer(url) as peer:
        assert peer.get("/")["status"] == 200
        started = time.monotonic()
        peer.read_until(lambda: peer.closed, seconds=5)
        assert peer.goaway is not None and peer.goaway.error_code == 0
        assert 0.5 < time.monotonic() - started < 4


def test_connect_is_refused(served):
    url, _ = served
    with H2Peer(url) as peer:
        stream_id = peer.conn.get_next_available_stream_id()
        peer.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
        peer.flush()
        peer.responses[stream_id] = {"status": None, "headers": [], "body": bytearray(), "ended": False, "reset": None}
        peer.read_until(peer.ended(stream_id))
        assert peer.responses[stream_id]["status"] == 501
        settings = dict(peer.conn.remote_settings)
        assert settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0  # no WebSockets over h2


def test_a_body_the_app_does_not_read_stops_at_its_window(served):
    """The request body is acknowledged only as the app takes it: /hold takes two messages,
    so the client can send little more than three stream windows, not megabytes."""
    url, _ = served
    with H2Peer(url) as peer:
        stream_id = peer.request("POST", "/hold", end=False)
        sent, deadline = 0, time.monotonic() + 0.5
        peer.sock.settimeout(0.05)
        while time.monotonic() < deadline:
            size = min(peer.conn.local_flow_control_window(stream_id), peer.conn.max_outbound_frame_size)
            if size:
                peer.conn.send_data(stream_id, b"x" * size)
                peer.flush()
                sent += size
            else:
                try:
                    peer._read_once()  # a WINDOW_UPDATE, if any
                except TimeoutError:
                    pass
        assert 65535 <= sent <= 3 * 65535


def _open(peer: H2Peer, path: str, length: int, end: bool = False) -> int:
    """A POST stream declaring ``length`` bytes of body (frames queued, not yet sent)."""
    return peer.request("POST", path, headers=[(b"content-length", str(length).encode())], end=end, flush=False)


def test_a_body_ended_short_by_headers_resets_its_stream(served):
    """RFC 9113 8.1.1 for a request that ends on HEADERS: its own (END_STREAM, content-length
    100) or trailers after 10 bytes. h2 checks the length on DATA only (and trailers reset
    its count), so both were served as whole requests; the same with the exact length is."""
    url, _app = served
    with H2Peer(url) as peer:
        bare = _open(peer, "/echo", 100, end=True)
        trailed = _open(peer, "/echo", 100)
        peer.conn.send_data(trailed, b"0123456789")
        peer.conn.send_headers(trailed, [(b"x-trailer", b"1")], end_stream=True)
        exact = _open(peer, "/echo", 3)
        peer.conn.send_data(exact, b"abc")
        peer.conn.send_headers(exact, [(b"x-trailer", b"1")], end_stream=True)
        peer.flush()
        peer.read_until(peer.ended(bare, trailed, exact))
        assert [peer.responses[s]["reset"] for s in (bare, trailed)] == [h2.errors.ErrorCodes.PROTOCOL_ERROR] * 2
        assert peer.responses[exact]["status"] == 200 and peer.responses[exact]["body"] == b"abc"
        assert peer.get("/")["status"] == 200 and peer.goaway is None


def test_a_stream_refused_after_h2_reset_it_leaves_the_connection_up(served):
    """After the client's GOAWAY every new stream is refused; one whose body is malformed in
    the same read was reset by h2 already, and refusing it again raised and killed the
    connection, with a request still in flight on it."""
    url, app = served
    with H2Peer(url) as peer:
        first = peer.request("GET", "/later")
        _until(lambda: app.started == 1)
        peer.sock.sendall(GoAwayFrame(stream_id=0, last_stream_id=0, error_code=0).serialize())
        peer.sync()
        late = _open(peer, "/", 0)
        peer.conn.send_data(late, b"x")  # past its content-length: h2 resets it in the same read
        peer.flush()
        peer.sync()
        app.release.set()
        peer.read_until(peer.ended(first))
        assert peer.responses[first]["status"] == 200 and peer.responses[first]["body"] == b"later"


def test_declared_lengths_are_forgotten_when_the_server_resets_a_stream(served):
    """The request's content-length is kept until its stream ends; a stream the server resets
    (answered before its body came, here) never ends for h2, so the reset itself forgets it:
    a long-lived connection must not grow with every such request."""
    url, app = served
    with H2Peer(url) as peer:
        for _ in range(4):
            ids = [_open(peer, "/", 100) for _ in range(50)]  # "/" answers before any body is sent
            peer.flush()
            peer.read_until(peer.ended(*ids))
            assert all(peer.responses[s]["status"] == 200 for s in ids)
        peer.sync()
        (protocol,) = [c for c in app.server.server_state.connections if isinstance(c, h2_server.H2Protocol)]
        assert protocol.conn._declared == {}
