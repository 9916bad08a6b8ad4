"""One HTTP/2 stream as one ASGI ``http`` request: ``receive()`` hands over the request body
and ``send()`` puts the response on the stream (``h2_server.H2Protocol`` owns the connection).

It behaves as uvicorn's HTTP/1.1 cycle does (``RequestResponseCycle``), so the app cannot tell
the two apart except by ``http_version``: after a reset or a lost connection ``receive()``
says ``http.disconnect`` and ``send()`` does nothing; an app that raises before it started a
response gets a 500; the task is never cancelled (HTTP/1.1 lets a handler run to its end after
the client went away, and so does this: a cancel could stop a state change half way).

Bounds: the request body is acknowledged (WINDOW_UPDATE) only once the app took it, so at most
one stream window of it waits here; a response body leaves only as fast as the client's flow
control windows and the socket take it, so ``send()`` waits, and nothing piles up; a wait of
``STALL_SECONDS`` with no progress resets the stream (CANCEL) and the app sees a disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import re

import h2.errors

log = logging.getLogger("uvicorn.error")

# As uvicorn checks a response's headers on HTTP/1.1 (its HEADER_RE, HEADER_VALUE_RE); ':' in
# a name also keeps an app from setting a pseudo-header.
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
# Connection-specific headers are malformed in HTTP/2 (RFC 9113 8.2.2); an app written for
# HTTP/1.1 (or a devbox's server answering through a tunnel) may still send them.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_NO_BODY_STATUSES = frozenset({204, 304})
STALL_SECONDS = 30.0  # a response that cannot move this long is given up (see the module's doc)


class H2Stream:
    def __init__(self, connection, stream_id: int, scope: dict, expect_continue: bool):
        self.connection = connection  # the H2Protocol: its h2 connection, flush() and drain()
        self.stream_id = stream_id
        self.scope = scope
        self.expect_continue = expect_continue
        # Request side
        self.body = bytearray()
        self.unacknowledged = 0  # flow-controlled bytes received but not yet taken by the app
        self.more_body = True
        self.body_taken = False  # the app had the last of it (more_body False)
        self.message_event = asyncio.Event()
        # Response side
        self.window_event = asyncio.Event()  # set when a window may have grown (or all is over)
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.head_only = scope["method"] == "HEAD"

    # Events from the connection
    def data_received(self, data: bytes, flow_controlled: int) -> None:
        if self.response_complete or self.disconnected:
            self.connection.acknowledge(self.stream_id, flow_controlled)  # nobody will read it
            return
        self.body += data
        self.unacknowledged += flow_controlled
        self.message_event.set()

    def request_ended(self) -> None:
        self.more_body = False
        self.message_event.set()

    def disconnect(self) -> None:
        """The client reset the stream, or the connection is gone."""
        if not self.response_complete:
            self.disconnected = True
        self.body.clear()
        self.connection.acknowledge(self.stream_id, self.unacknowledged)  # the connection's window
        self.unacknowledged = 0
        self.message_event.set()
        self.window_event.set()

    # The app's task
    async def run_asgi(self, app) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started and not self.disconnected:
                await self._send_500()
            else:
                self.connection.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            if result is not None:
                log.error("ASGI callable should return None, but returned '%s'.", result)
                self.connection.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            elif not self.response_started and not self.disconnected:
                log.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self.connection.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    async def _send_500(self) -> None:
        await self.send({"type": "http.response.start", "status": 500, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def receive(self) -> dict:
        if self.expect_continue and not self.disconnected:
            self.expect_continue = False
            self.connection.send_headers(self.stream_id, [(b":status", b"100")], end_stream=False)
        if not self.disconnected and not self.response_complete:
            if not self.body and self.more_body:
                self.message_event.clear()
                await self.message_event.wait()
            elif self.body_taken:  # only a disconnect (or the response's end) comes now
                self.message_event.clear()
                while not (self.disconnected or self.response_complete):
                    await self.message_event.wait()
                    self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        self.body_taken = not self.more_body
        body, self.body = bytes(self.body), bytearray()
        taken, self.unacknowledged = self.unacknowledged, 0
        self.connection.acknowledge(self.stream_id, taken)  # the client may send this much more
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict) -> None:
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self.expect_continue = False
            status = message["status"]
            self.head_only = self.head_only or status in _NO_BODY_STATUSES
            headers = [(b":status", str(status).encode())]
            for name, value in [*self.connection.default_headers, *message.get("headers", ())]:
                if _BAD_NAME.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if _BAD_VALUE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                name = name.lower()
                if name not in _HOP_BY_HOP:
                    headers.append((name, value))
            self.connection.log_access(self.scope, status)
            self.connection.send_headers(self.stream_id, headers, end_stream=False)
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            more_body = message.get("more_body", False)
            if not self.head_only:
                await self._send_data(message.get("body", b""))
            if not more_body and not self.disconnected:
                self.response_complete = True
                self.message_event.set()
                self.connection.end_response(self.stream_id)
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")

    async def _send_data(self, body: bytes) -> None:
        """``body`` onto the stream, frame by frame as the flow control windows allow."""
        view = memoryview(body)
        while view and not self.disconnected:
            # The socket's buffer is full (the client reads slowly), or the window is shut.
            if not await self._progress(self.connection.drain()):
                return
            if self.disconnected:
                return
            window = self.connection.window(self.stream_id)
            if window is None:
                return  # the stream is gone (reset while we waited)
            if window <= 0:
                self.window_event.clear()
                if not await self._progress(self.window_event.wait()):  # WINDOW_UPDATE, SETTINGS, the end
                    return
                continue
            size = min(window, self.connection.max_frame_size(), len(view))
            self.connection.send_data(self.stream_id, bytes(view[:size]))
            view = view[size:]

    async def _progress(self, wait) -> bool:
        """Whether ``wait`` ended within STALL_SECONDS; if not, the stream is reset (CANCEL)."""
        try:
            await asyncio.wait_for(wait, STALL_SECONDS)
            return True
        except TimeoutError:
            log.info("HTTP/2 stream %d of %s made no progress for %g s: reset", self.stream_id,
                     self.scope["client"], STALL_SECONDS)
            self.connection.reset(self.stream_id, h2.errors.ErrorCodes.CANCEL)
            self.disconnect()
            return False
