"""The tunnel proxy: HTTP requests for ``{port}-{tunnel_key}.tunnel.<any host>`` go to ``port``
inside the devbox, on the API's own listener (pure ASGI, in front of the API's routes).

::

    client --Host: 8080-<key>.tunnel.localhost--> API listener --(this middleware)-->
        TunnelService.admit (key, token) -> a slot (64 per devbox) -> wake (running? one
        shared resume on wake_on_http) -> runtime.tunnel_socket (a socket in the router
        namespace) -> devbox_ip:8080, the request forwarded as HTTP/1.1 (h11), the response
        streamed back as it comes, until it ends or the client goes away
        (a WebSocket: the same way in, then ``tunnel_websocket.relay``)

Other requests pass to the API untouched. What is not proxied: upgrades other than WebSocket
(the Upgrade header is dropped), CONNECT (405), transfer codings other than chunked (501),
HTTP/2. Every connection to a devbox is registered with ``TunnelService.hold``: the tunnel's
removal or the devbox's end cuts it. What uvicorn
could not send (a status outside 200-599, a control character in a header) is a 502 before
anything is sent; an HTTP/1.0 client gets a length-less response buffered, with a length. Hop-by-hop headers (and those
``Connection`` names) are dropped both ways, as is the tunnel's own
``X-Runloop-Tunnel-Authorization``; ``Host`` is passed on as the client sent it.

uvicorn neither cancels an app whose client has gone nor fails its ``send``: a watcher on
``receive()`` ends the exchange on ``http.disconnect``, or a stream from the devbox would hold
its connection and slot for as long as the devbox sends. Likewise a ``send`` to a client that
stopped reading waits without limit: each is bounded by IDLE_SECONDS, as is each wait for
the request's body (408).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable

import anyio.to_thread
import h11

from simulator.api import tunnel_websocket
from simulator.api.tunnel_headers import end_to_end as _end_to_end
from simulator.api.tunnel_headers import TUNNEL_HOST
from simulator.errors import ApiError
from simulator.tunnels import AUTH_HEADER, TunnelRefused

log = logging.getLogger(__name__)

_TUNNEL_HOST = TUNNEL_HOST
CONNECT_SECONDS = 5.0
IDLE_SECONDS = 300.0  # the longest wait for the next piece either way (long polls and streams included)
PER_DEVBOX = 64  # tunnel requests in flight per devbox; more get 503
PER_DEVBOX_WEBSOCKETS = 256  # open WebSockets per devbox, counted apart: they stay open
READ_BYTES = 65536
TOUCH_EVERY_SECONDS = 1.0
BUFFER_FOR_HTTP10 = 16 << 20  # a length-less response buffered for an HTTP/1.0 client, at most  # http_keep_alive: activity recorded at most this often per request


class TunnelProxy:
    def __init__(self, app, services: Callable[[], object]):
        self.app = app
        self._services = services  # -> Services (built after the middleware is declared)
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}  # HTTP requests per devbox
        self._websockets: dict[str, int] = {}  # open WebSockets per devbox (long-lived: a count of their own)
        self._waking: dict[str, asyncio.Future] = {}  # devbox id -> the resume under way

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = next((value for name, value in scope.get("headers", ()) if name == b"host"), b"")
        match = _TUNNEL_HOST.match(host)
        if match is None:
            return await self.app(scope, receive, send)
        port, key = int(match.group(1)), match.group(2).decode().lower()
        if scope["type"] == "websocket" and (await receive())["type"] != "websocket.connect":
            return  # the client left before its handshake was read
        try:
            await self._forward(scope, receive, send, port, key)
        except ApiError as refused:
            if scope["type"] == "websocket":
                await tunnel_websocket.refuse(scope, send, refused.status, _error_body(refused.code, refused.message))
            else:
                await _error(send, refused.status, refused.code, refused.message)

    async def _forward(self, scope, receive, send, port: int, key: str) -> None:
        # The cheap refusals first: nothing is looked up, woken or connected for them.
        if not 1 <= port <= 65535:
            raise TunnelRefused(f"port {port} is not a TCP port", code="invalid_request", status=400)
        websocket = scope["type"] == "websocket"
        if not websocket and scope["method"] == "CONNECT":  # a switch to raw bytes, not carried
            raise TunnelRefused("CONNECT is not passed through a tunnel", code="method_not_allowed", status=405)
        framing = [] if websocket else _request_framing(scope)
        services = self._services()
        if services.runtime is None:
            raise TunnelRefused("this simulator runs no devboxes", code="no_runtime", status=503)
        headers = scope.get("headers", ())
        token = next((v.decode("latin-1") for n, v in headers if n == AUTH_HEADER.encode()), None)
        devbox = await anyio.to_thread.run_sync(services.tunnels.admit, key, token)
        if not self._enter(devbox.id, websocket):
            what = f"{PER_DEVBOX_WEBSOCKETS} WebSockets open" if websocket else f"{PER_DEVBOX} tunnel requests in flight"
            raise TunnelRefused(f"devbox {devbox.id} has {what}; retry later", code="too_many_tunnel_requests", status=503)
        try:
            devbox = await self._wake(services.tunnels, devbox)
            try:
                sock, address = await anyio.to_thread.run_sync(services.runtime.tunnel_socket, devbox.id)
            except LookupError as exc:
                raise TunnelRefused(str(exc), code="devbox_not_running", status=502) from None
            try:
                reader, writer = await _connect(sock, address, port, devbox.id)
            except BaseException:
                sock.close()
                raise
            cut = _Cut(writer)
            try:
                release = await anyio.to_thread.run_sync(services.tunnels.hold, devbox.id, key, cut)
                try:
                    touched = _Toucher(services.tunnels, devbox)
                    if websocket:
                        await tunnel_websocket.relay(scope, receive, send, reader, writer, touched, cut.was_cut)
                    else:
                        await _exchange(scope, receive, send, reader, writer, framing, touched)
                finally:
                    release()
            finally:
                cut.close()
        finally:
            self._leave(devbox.id, websocket)

    async def _wake(self, tunnels, devbox):
        """``tunnels.wake`` (a resume, when it comes to that) once per devbox at a time: the
        requests that arrive meanwhile wait for the same one, holding no thread."""
        if devbox.status != "suspended":
            return tunnels.wake(devbox)  # no resume: nothing blocks (it only checks the status)
        pending = self._waking.get(devbox.id)
        if pending is None:
            pending = asyncio.ensure_future(anyio.to_thread.run_sync(tunnels.wake, devbox))
            self._waking[devbox.id] = pending
            pending.add_done_callback(lambda _: self._waking.pop(devbox.id, None))
            # Its error is each waiter's; retrieved here too, should every waiter be gone.
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(pending)

    def _enter(self, devbox_id: str, websocket: bool = False) -> bool:
        counts, cap = (self._websockets, PER_DEVBOX_WEBSOCKETS) if websocket else (self._in_flight, PER_DEVBOX)
        with self._lock:
            count = counts.get(devbox_id, 0)
            if count >= cap:
                return False
            counts[devbox_id] = count + 1
            return True

    def _leave(self, devbox_id: str, websocket: bool = False) -> None:
        counts = self._websockets if websocket else self._in_flight
        with self._lock:
            count = counts.pop(devbox_id) - 1
            if count:
                counts[devbox_id] = count


class _Toucher:
    """http_keep_alive: the devbox's keep-alive timer restarts as data goes either way (at most
    once a second), so a long stream keeps it up like a command would."""

    def __init__(self, tunnels, devbox):
        self._tunnels, self._devbox, self._last = tunnels, devbox, float("-inf")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= TOUCH_EVERY_SECONDS:
            self._last = now
            self._tunnels.reached(self._devbox)


class _Cut:
    """One connection to a devbox, and how it ends.

    ``cut()`` (TunnelService, any thread): at once, by abort: a close would first wait to
    send what the devbox has not read, and a removed netns devbox reads nothing. The reader
    then sees the end, and the exchange ends. ``close()``: the exchange's own end, a close,
    unless the devbox left data unread (then an abort: nothing is kept waiting for it)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer, self._loop = writer, asyncio.get_running_loop()
        self._cut = False

    def __call__(self) -> None:
        self._cut = True
        try:
            self._loop.call_soon_threadsafe(self._writer.transport.abort)
        except RuntimeError:  # the loop is closed: so is the connection
            pass

    def was_cut(self) -> bool:
        return self._cut

    def close(self) -> None:
        transport = self._writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            self._writer.close()


def _request_framing(scope) -> list[tuple[bytes, bytes]]:
    """How the request's body goes on: its Content-Length, chunked, or no body."""
    headers = scope.get("headers", ())
    codings = [v.strip().lower() for n, v in headers if n == b"transfer-encoding"]
    if codings:
        if codings != [b"chunked"]:
            raise TunnelRefused("only the chunked transfer coding is passed through a tunnel",
                                code="not_implemented", status=501)
        return [(b"transfer-encoding", b"chunked")]
    length = next((v for n, v in headers if n == b"content-length"), None)
    return [(b"content-length", length)] if length is not None else []


async def _connect(sock, address: str, port: int, devbox_id: str):
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (address, port)), CONNECT_SECONDS)
    except asyncio.TimeoutError:
        raise TunnelRefused(f"port {port} of devbox {devbox_id} did not answer within {CONNECT_SECONDS:g} s",
                            code="tunnel_timeout", status=504) from None
    except OSError as exc:
        raise TunnelRefused(f"nothing accepts connections on port {port} of devbox {devbox_id} ({exc.strerror})",
                            code="tunnel_connect_failed", status=502) from None
    return await asyncio.open_connection(sock=sock)


async def _exchange(scope, receive, send, reader, writer, framing, touched: Callable[[], None]) -> None:
    """One request out, its response back. The client going away ends it at any point."""
    disconnected = asyncio.Event()
    watchers: list[asyncio.Future] = []

    async def relay_request() -> None:
        conn = h11.Connection(our_role=h11.CLIENT)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        host = next((v for n, v in scope.get("headers", ()) if n == b"host"), b"")
        headers = [(b"host", host), *_end_to_end(scope.get("headers", ())), *framing, (b"connection", b"close")]
        try:
            request = conn.send(h11.Request(method=scope["method"], target=target, headers=headers))
        except h11.LocalProtocolError as exc:
            raise TunnelRefused(f"cannot forward this request: {exc}", code="invalid_request", status=400) from None
        try:  # the devbox may answer before it read the whole body (e.g. 413): then stop sending
            writer.write(request)
            while True:
                try:
                    message = await asyncio.wait_for(receive(), IDLE_SECONDS)
                except asyncio.TimeoutError:  # the client stalled: the devbox cannot answer a half body
                    raise TunnelRefused(f"the request body stalled for {IDLE_SECONDS:g} s", code="request_timeout",
                                        status=408) from None
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return
                body = message.get("body", b"")
                if body and framing:
                    writer.write(conn.send(h11.Data(data=body)))
                    await asyncio.wait_for(writer.drain(), IDLE_SECONDS)
                    touched()
                if not message.get("more_body"):
                    break
            writer.write(conn.send(h11.EndOfMessage()))
            await asyncio.wait_for(writer.drain(), IDLE_SECONDS)
        # RuntimeError: uvloop's write to a transport the devbox's reset already closed.
        except (OSError, RuntimeError, asyncio.TimeoutError, h11.LocalProtocolError):
            pass  # the devbox closed or stopped reading: its response (or none: 502) tells
        # The body is in: from now on only a disconnect can come from the client.
        watchers.append(asyncio.ensure_future(watch_client()))
        await relay_response(conn)

    async def relay_response(conn: h11.Connection) -> None:
        # An HTTP/1.0 client cannot read chunked: a response of no stated length is buffered
        # (up to BUFFER_FOR_HTTP10) and sent with one.
        buffering = scope.get("http_version") == "1.0"
        held: h11.Response | None = None
        body = bytearray()
        started = False
        try:
            while True:
                # Checked on every turn: with a devbox sending as fast as it can, every read and
                # send completes at once, and the cancel of a client that left is lost on a
                # wait_for whose inner future is already done (Python 3.11).
                if disconnected.is_set():
                    return
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(READ_BYTES), IDLE_SECONDS)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    _check_response(event)
                    touched()
                    headers = _response_headers(event)
                    if buffering and not any(n == b"content-length" for n, _ in headers) \
                            and event.status_code not in (204, 304) and scope["method"] != "HEAD":
                        held = event
                        continue
                    started = True
                    if not await _send(send, {"type": "http.response.start", "status": event.status_code,
                                              "headers": headers}):
                        return
                elif isinstance(event, h11.Data):
                    touched()
                    if held is not None:
                        body += event.data
                        if len(body) > BUFFER_FOR_HTTP10:
                            raise TunnelRefused(f"a response of no stated length over {BUFFER_FOR_HTTP10} bytes "
                                                "cannot go to an HTTP/1.0 client", code="tunnel_bad_response", status=502)
                    elif not await _send(send, {"type": "http.response.body", "body": bytes(event.data), "more_body": True}):
                        return
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
                else:  # h11.PAUSED (a protocol switch) or anything else: nothing more is HTTP
                    if not started and held is None:
                        raise TunnelRefused("the devbox's server switched protocols", code="tunnel_bad_response",
                                            status=502)
                    break
            if held is not None:
                started = True
                headers = [*_response_headers(held), (b"content-length", str(len(body)).encode())]
                if not await _send(send, {"type": "http.response.start", "status": held.status_code, "headers": headers}):
                    return
                await _send(send, {"type": "http.response.body", "body": bytes(body), "more_body": False})
                return
            await _send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except (h11.RemoteProtocolError, asyncio.TimeoutError, OSError) as exc:
            if not started:
                raise TunnelRefused(f"the devbox's server gave no HTTP response ({type(exc).__name__}: {exc})",
                                    code="tunnel_bad_response", status=502) from None
            # The status is out: the response ends short (uvicorn closes the connection), as
            # behind any proxy whose upstream fails mid-way.
            log.info("tunnel response cut short: %s: %s", type(exc).__name__, exc)

    async def watch_client() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    exchange = asyncio.ensure_future(relay_request())
    gone = asyncio.ensure_future(disconnected.wait())
    try:
        await asyncio.wait([exchange, gone], return_when=asyncio.FIRST_COMPLETED)
        if exchange.done():
            await exchange  # its error, if any (a TunnelRefused becomes the JSON answer)
        else:  # the client went away: stop reading from the devbox (the caller closes it)
            exchange.cancel()
            await asyncio.gather(exchange, return_exceptions=True)
    finally:
        for task in (exchange, gone, *watchers):
            task.cancel()


async def _send(send, message: dict) -> bool:
    """Pass a piece of the response on; False when the client is gone or has not read for
    IDLE_SECONDS (uvicorn's send then waits without limit; on a transport already closed,
    uvloop raises RuntimeError)."""
    try:
        await asyncio.wait_for(send(message), IDLE_SECONDS)
    except (asyncio.TimeoutError, RuntimeError, OSError):
        return False
    return True


_BAD_HEADER_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _check_response(event: h11.Response) -> None:
    """What uvicorn would refuse only once the response counts as started (a status it has no
    line for, a control character h11 lets through): a 502 while one can still be sent."""
    if not 200 <= event.status_code <= 599:
        raise TunnelRefused(f"the devbox's server answered status {event.status_code}", code="tunnel_bad_response",
                            status=502)
    for name, value in event.headers:
        if _BAD_HEADER_VALUE.search(value):
            raise TunnelRefused(f"the devbox's server sent header {name.decode('latin-1')!r} with a control character",
                                code="tunnel_bad_response", status=502)


def _response_headers(event: h11.Response) -> list[tuple[bytes, bytes]]:
    """What the client gets: the end-to-end headers, and Content-Length only where it still
    describes the body as sent (h11 decoded any chunking; 1xx, 204 and 304 have no body)."""
    headers = _end_to_end(event.headers)
    chunked = any(n == b"transfer-encoding" for n, _ in event.headers)
    if not chunked and event.status_code not in (204, 304):
        headers += [(n, v) for n, v in event.headers if n == b"content-length"][:1]
    return headers


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"message": message, "error_code": code}).encode()


async def _error(send: Callable[[dict], Awaitable[None]], status: int, code: str, message: str) -> None:
    body = _error_body(code, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
