"""An HTTP/2 client over a plain socket (the h2 library, prior knowledge), for tests that
control each frame: when a stream ends, resets, how much window the server gets."""

from __future__ import annotations

import re
import socket
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

SECONDS = 10


class _GoawayTolerantConnection(h2.connection.H2Connection):
    """h2's client, but reading on after a GOAWAY (h2 would drop every later frame): the tests
    watch the streams a GOAWAY lets finish, and the GOAWAY that closes the connection."""

    def _receive_goaway_frame(self, frame):
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Peer:
    """One h2c connection; ``request()`` opens a stream, ``read_until()`` collects events.

    ``responses[stream_id]`` gathers ``status``, ``headers``, ``body`` and ``ended``; a
    reset stream has ``reset`` (its error code); ``goaways`` are the server's GOAWAY events
    (``goaway`` the last)."""

    def __init__(self, url: str, window: int | None = None):
        host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
        self.authority = f"{host}:{port}".encode()
        self.sock = socket.create_connection((host, int(port)), timeout=SECONDS)
        self.conn = _GoawayTolerantConnection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if window is not None:  # a client that gives the server little room for its responses
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.auto_ack = window is None
        self.flush()
        self.responses: dict[int, dict] = {}
        self.goaway = None
        self.goaways: list = []
        self.ping_acks: list[bytes] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = b"", headers=(), end: bool = True,
                separate_end: bool = False, flush: bool = True) -> int:
        """Open a stream; ``separate_end``: END_STREAM in an empty DATA frame of its own (as
        node's http2 client does for a GET); ``flush=False``: its frames stay queued (sent
        with the next flush, in one write with what follows)."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [
            (b":method", method.encode()), (b":path", path.encode()), (b":scheme", b"http"),
            (b":authority", self.authority), (b"authorization", b"Bearer alice-token"), *headers,
        ], end_stream=end and not body and not separate_end)
        self.responses[stream_id] = {"status": None, "headers": [], "body": bytearray(), "ended": False, "reset": None}
        if body:
            self.send_body(stream_id, body, end=end and not separate_end)
        if separate_end:
            self.conn.end_stream(stream_id)
        if flush:
            self.flush()
        return stream_id

    def send_body(self, stream_id: int, body: bytes, end: bool) -> None:
        """``body`` as fast as the server's windows allow (reading its WINDOW_UPDATEs)."""
        view = memoryview(body)
        while view:
            window = self.conn.local_flow_control_window(stream_id)
            if window == 0:
                self.flush()
                self._read_once()
                continue
            size = min(window, self.conn.max_outbound_frame_size, len(view))
            self.conn.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
        if end:
            self.conn.end_stream(stream_id)
        self.flush()

    def sync(self) -> None:
        """Wait until the server has read everything sent so far: it answers frames in order,
        so its ack of a PING sent now comes after it handled what went before."""
        data = len(self.ping_acks).to_bytes(8, "big")
        self.conn.ping(data)
        self.flush()
        self.read_until(lambda: data in self.ping_acks)

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def read_until(self, done, seconds: float = SECONDS) -> None:
        """Read frames until ``done()`` holds (or the connection closed, or time is up)."""
        deadline = time.monotonic() + seconds
        while not done():
            assert not self.closed, "the server closed the connection"
            assert time.monotonic() < deadline, "timed out"
            self._read_once()

    def ended(self, *stream_ids: int):
        return lambda: all(self.responses[s]["ended"] or self.responses[s]["reset"] is not None for s in stream_ids)

    def get(self, path: str, **kw) -> dict:
        stream_id = self.request("GET", path, **kw)
        self.read_until(self.ended(stream_id))
        return self.responses[stream_id]

    def _read_once(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            response = self.responses.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                response["headers"] = event.headers
                response["status"] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                response["body"] += event.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                response["ended"] = True
            elif isinstance(event, h2.events.StreamReset) and response is not None:
                response["reset"] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                self.goaways.append(event)
            elif isinstance(event, h2.events.PingAckReceived):
                self.ping_acks.append(event.ping_data)
        self.flush()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Peer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
