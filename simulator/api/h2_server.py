"""An HTTP/2 connection (h2c) served to the ASGI app: uvicorn's server lifecycle, the ``h2``
library's framing, one ``H2Stream`` (and app task) per request.

``h2c.H2cOrHttp1Protocol`` hands a connection over here once its first bytes are the HTTP/2
preface. Like uvicorn's own protocols this one is in ``server_state.connections`` (so a stop
calls ``shutdown()`` and waits for it to go) and its app tasks are in ``server_state.tasks``.

Bounds, for clients that reach the port through tunnels:
- MAX_STREAMS requests at once per connection (advertised; past it, REFUSED_STREAM). A stream
  the client reset no longer counts there (node frees its slot at once and does not retry a
  refusal), but its handler runs on (as on HTTP/1.1, nothing is cancelled half way): such
  handlers are counted apart, and a client with MAX_RESET_RUNNING of them (resetting streams
  as fast as it opens them, the "rapid reset" attack) loses the connection (GOAWAY
  ENHANCE_YOUR_CALM). So a connection never runs more than the two together.
- a header list of at most MAX_HEADER_LIST bytes (h2 enforces it when decoding), and at most
  64 CONTINUATION frames per header block (h2's own limit).
- request bodies: each stream's window (64 KiB) is given back only as the app takes the body,
  and the connection's window is CONNECTION_WINDOW: that much at most is buffered. Like
  uvicorn's HTTP/1.1 reading (paused past 64 KiB), there is no size limit here, only
  backpressure (the app's body_limit caps sizes). A body longer or shorter than its
  content-length resets its own stream (PROTOCOL_ERROR), not the connection.
- output: when the socket's buffer is full (the client does not read), reading stops too, so
  frames answered automatically (PING, SETTINGS acks, refusals) cannot pile up unread.
- a response that cannot move for ``h2_stream.STALL_SECONDS`` (the client opens no window, or
  does not read) has its stream reset (CANCEL): a client cannot hold a hundred responses per
  connection in memory for ever.
- an idle connection (no stream) is closed with a GOAWAY after ``timeout_keep_alive``; a
  connection being closed that does not take its last bytes within CLOSE_SECONDS is aborted.
- the client's own GOAWAY (NO_ERROR: node sends one on ``session.close()``, and in answer to
  ours) ends the connection once its streams finished, as ours does.

No extended CONNECT (RFC 8441) is advertised: WebSockets stay on HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame
from uvicorn.protocols.http.flow_control import FlowControl, service_unavailable
from uvicorn.protocols.utils import (
    get_client_addr,
    get_local_addr,
    get_path_with_query_string,
    get_remote_addr,
    is_ssl,
)

from simulator.api.h2_stream import H2Stream

MAX_STREAMS = 100
MAX_RESET_RUNNING = 400
CLOSE_SECONDS = 5.0
MAX_HEADER_LIST = 65536
CONNECTION_WINDOW = 1 << 20  # 16 stream windows: one stream whose app does not read stalls no other
ErrorCodes = h2.errors.ErrorCodes
_SENDING = frozenset({h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE})
_OPEN = _SENDING | {h2.stream.StreamState.HALF_CLOSED_LOCAL}
log = logging.getLogger("uvicorn.error")
access_log = logging.getLogger("uvicorn.access")


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection, but a GOAWAY(NO_ERROR) from the client leaves it open: the client will
    start no new stream, yet those it started are to finish (RFC 9113 6.8), and h2 would drop
    every later frame of theirs (their WINDOW_UPDATEs too) and everything queued to send."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.malformed: list[int] = []  # streams reset for a body not of its declared length
        self._declared: dict[int, int] = {}  # stream -> its request's content-length, until it ends

    def _receive_frame(self, frame):
        """A request whose body runs past its content-length, or ends short of it, is malformed:
        RFC 9113 8.1.1 makes that an error of its stream, not of the connection (the other
        requests on it go on). h2 raises it for DATA as a connection error, without the
        stream, and does not check a request ended by HEADERS (END_STREAM on the request's
        own headers, or trailers): here the stream is reset instead, a DATA frame's
        flow-controlled bytes given back to the connection window, the frame's events for
        the stream dropped, and the stream listed in ``malformed`` for the server to end."""
        try:
            events = super()._receive_frame(frame)
        except h2.exceptions.InvalidBodyLengthError:
            if isinstance(frame, DataFrame):
                self.acknowledge_received_data(frame.flow_controlled_length, frame.stream_id)
            return self._malformed(frame.stream_id, [])
        kinds = {type(e) for e in events if getattr(e, "stream_id", None) == frame.stream_id}
        if isinstance(frame, HeadersFrame) and h2.events.RequestReceived in kinds:
            # Trailers reset h2's expected length: the request's own is kept here.
            declared = getattr(self.streams.get(frame.stream_id), "_expected_content_length", None)
            if declared is not None:
                self._declared[frame.stream_id] = declared
        if kinds & {h2.events.StreamEnded, h2.events.StreamReset}:
            declared = self._declared.pop(frame.stream_id, None)
            stream = self.streams.get(frame.stream_id)
            if (isinstance(frame, HeadersFrame) and h2.events.StreamEnded in kinds and declared is not None
                    and declared != getattr(stream, "_actual_content_length", declared)):
                return self._malformed(frame.stream_id, events)
        return events

    def reset_stream(self, stream_id, error_code=0):
        # Every reset of ours (an early answer, a refusal, a stall, a malformed body): the
        # client's later frames on the stream are dropped by h2, so no end would remove it.
        self._declared.pop(stream_id, None)
        return super().reset_stream(stream_id, error_code)

    def _malformed(self, stream_id: int, events: list) -> list:
        self.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
        self.malformed.append(stream_id)
        return [e for e in events if getattr(e, "stream_id", None) != stream_id]

    def _receive_goaway_frame(self, frame):
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Protocol(asyncio.Protocol):
    def __init__(self, config, server_state, app_state, _loop=None):
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.app_state = app_state
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.root_path = config.root_path
        self.conn = _ServerConnection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        self.conn.decoder.max_header_list_size = MAX_HEADER_LIST
        self.streams: dict[int, H2Stream] = {}  # by stream id, until the stream's task ended
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.keep_alive_timer: asyncio.TimerHandle | None = None
        self.abort_timer: asyncio.TimerHandle | None = None
        self.last_stream_id: int | None = None  # set once a GOAWAY went out: later streams are refused

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - self.conn.inbound_flow_control_window)
        self.flush()
        self._idle_if_no_streams()

    def data_received(self, data: bytes) -> None:
        self._cancel_keep_alive()
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 protocol error from %s: %s", self.client, exc)
            self._close(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR))
            return
        for event in events:
            self._handle(event)
        while self.conn.malformed:  # reset by the connection itself (see _ServerConnection)
            if (stream := self.streams.get(self.conn.malformed.pop())) is not None:
                stream.disconnect()
        self.flush()
        self._idle_if_no_streams()

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)
        self._cancel_keep_alive()
        if self.abort_timer is not None:
            self.abort_timer.cancel()
        for stream in list(self.streams.values()):
            stream.disconnect()
        if self.flow is not None:
            self.flow.resume_writing()  # a send() waiting for the socket learns it is gone

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        self.flow.pause_writing()
        self.transport.pause_reading()  # see the module's doc: output never piles up unread

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if not self.transport.is_closing():
            self.transport.resume_reading()

    # uvicorn's server
    def shutdown(self) -> None:
        """A graceful stop: GOAWAY now (no new stream), close once the streams finished."""
        if not self.streams:
            self._close(ErrorCodes.NO_ERROR)
        elif self.last_stream_id is None:
            self._goaway()

    # Events from the client
    def _handle(self, event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            else:
                stream.data_received(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.request_ended()
        elif isinstance(event, h2.events.StreamReset):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.disconnect()  # its task keeps its place until it ends (see the doc)
        elif isinstance(event, h2.events.WindowUpdated):
            targets = self.streams.values() if event.stream_id == 0 else [self.streams.get(event.stream_id)]
            for stream in targets:
                if stream is not None:
                    stream.window_event.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for stream in self.streams.values():  # INITIAL_WINDOW_SIZE may have grown every window
                stream.window_event.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            if event.error_code != ErrorCodes.NO_ERROR:  # h2 sends nothing more: the streams are over
                self.flush()
                self.transport.close()
            elif not self.streams:
                self._close(ErrorCodes.NO_ERROR)
            elif self.last_stream_id is None:
                # A graceful close by the client: no new stream; close once these finished.
                self.last_stream_id = self.conn.highest_inbound_stream_id

    def _request(self, stream_id: int, headers) -> None:
        reset_running = sum(1 for stream in self.streams.values() if stream.disconnected)
        if reset_running >= MAX_RESET_RUNNING:
            log.warning("HTTP/2 client %s reset %d streams whose handlers still run: closing", self.client, reset_running)
            self._close(ErrorCodes.ENHANCE_YOUR_CALM)
            return
        if self.last_stream_id is not None or len(self.streams) - reset_running >= MAX_STREAMS:
            # The client may retry it. (Not if h2 reset it already, in the same read: a body
            # not of its length; a reset of a closed stream would end the connection.)
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        pseudo, regular, host, cookies, expect_continue = {}, [], None, [], False
        for name, value in headers:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"host":
                host = host if host is not None else value
            elif name == b"cookie":
                cookies.append(value)  # h2 lets a client split the header; ASGI apps expect one
            else:
                if name == b"expect" and value.lower() == b"100-continue":
                    expect_continue = True
                regular.append((name, value))
        host = pseudo.get(b":authority", host)  # the tunnel proxy routes by Host
        if host is not None:
            regular.insert(0, (b"host", host))
        if cookies:
            regular.append((b"cookie", b"; ".join(cookies)))
        method = pseudo.get(b":method", b"").decode("ascii", "replace")
        raw_path, _, query = pseudo.get(b":path", b"").partition(b"?")
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            path = ""
        app = self.app
        if method == "CONNECT":
            app, path, raw_path = _plain(501, b"CONNECT is not supported"), "/", b"/"
        elif not path.startswith("/") and path != "*":
            app, path, raw_path = _plain(400, b"Invalid request path"), "/", b"/"
        elif self.config.limit_concurrency is not None and (
            len(self.connections) >= self.config.limit_concurrency or len(self.tasks) >= self.config.limit_concurrency
        ):
            log.warning("Exceeded concurrency limit.")
            app = service_unavailable
        if "%" in path:
            path = unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.3"},
            "http_version": "2",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": self.root_path,
            "path": self.root_path + path,
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": regular,
            "state": self.app_state.copy(),
        }
        stream = H2Stream(self, stream_id, scope, expect_continue)
        self.streams[stream_id] = stream
        run = stream.run_asgi(app)
        if getattr(self.config, "reset_contextvars", False):  # uvicorn's opt-in, as on HTTP/1.1
            task = self.loop.create_task(run, context=contextvars.Context())
        else:
            task = self.loop.create_task(run)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: self._stream_done(stream_id))
        self.tasks.add(task)

    def _stream_done(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id)
        self.acknowledge(stream_id, stream.unacknowledged)  # the body the app left (if any)
        if self.transport.is_closing():
            return
        if self.last_stream_id is not None and not self.streams:
            self._close(ErrorCodes.NO_ERROR)  # the graceful stop's last stream
            return
        self._idle_if_no_streams()

    # For the streams
    def send_headers(self, stream_id: int, headers, end_stream: bool) -> None:
        if self._usable(stream_id):
            self.conn.send_headers(stream_id, headers, end_stream=end_stream)
            self.flush()

    def send_data(self, stream_id: int, data: bytes) -> None:
        if self._usable(stream_id):
            self.conn.send_data(stream_id, data)
            self.flush()

    def end_response(self, stream_id: int) -> None:
        if not self._usable(stream_id):
            return
        self.conn.end_stream(stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None and stream.more_body and self._usable(stream_id, sending=False):
            # The response is whole before the request: the client may stop sending (RFC 9113 8.1).
            self.conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        self.server_state.total_requests += 1
        self.flush()

    def reset(self, stream_id: int, code: int) -> None:
        if self._usable(stream_id, sending=False):
            self.conn.reset_stream(stream_id, code)
            self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Give the client back ``size`` bytes of window (the app took them, or nobody will)."""
        if size and not self.transport.is_closing():
            self.conn.acknowledge_received_data(size, stream_id)
            self.flush()

    def window(self, stream_id: int) -> int | None:
        """How much may be sent on the stream now; None once it cannot carry anything."""
        if not self._usable(stream_id):
            return None
        return self.conn.local_flow_control_window(stream_id)

    def max_frame_size(self) -> int:
        return self.conn.max_outbound_frame_size

    async def drain(self) -> None:
        await self.flow.drain()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def log_access(self, scope: dict, status: int) -> None:
        if access_log.hasHandlers():
            access_log.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                            get_path_with_query_string(scope), scope["http_version"], status)

    # Helpers
    def _usable(self, stream_id: int, sending: bool = True) -> bool:
        """The connection is up and the stream can still carry our frames (``sending``: more
        of the response; otherwise a reset)."""
        if self.transport.is_closing():
            return False
        stream = self.conn.streams.get(stream_id)
        if stream is None:
            return False
        return stream.state_machine.state in (_SENDING if sending else _OPEN)

    def _goaway(self) -> None:
        """GOAWAY (NO_ERROR) written by hand: h2's close_connection() would also stop the open
        streams (h2 refuses to send anything after it), and they are to finish."""
        self.flush()  # what h2 queued goes first, whole frames
        self.last_stream_id = self.conn.highest_inbound_stream_id
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.last_stream_id, error_code=ErrorCodes.NO_ERROR)
        self.transport.write(frame.serialize())

    def _close(self, code: int) -> None:
        if self.transport.is_closing():
            return
        # The same last stream as a GOAWAY already sent: it may not grow (RFC 9113 6.8; node
        # takes a larger one for a protocol error).
        self.conn.close_connection(error_code=code, last_stream_id=self.last_stream_id)
        self.flush()
        self.transport.close()  # once the buffer is written: a client that does not read...
        self.abort_timer = self.loop.call_later(CLOSE_SECONDS, self.transport.abort)  # ...is cut

    def _idle_if_no_streams(self) -> None:
        if not self.streams and self.keep_alive_timer is None and not self.transport.is_closing():
            self.keep_alive_timer = self.loop.call_later(self.config.timeout_keep_alive, self._close, ErrorCodes.NO_ERROR)

    def _cancel_keep_alive(self) -> None:
        if self.keep_alive_timer is not None:
            self.keep_alive_timer.cancel()
            self.keep_alive_timer = None


def _plain(status: int, text: bytes):
    """An ASGI app answering every request with ``status`` and ``text``."""
    async def answer(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text})
    return answer
