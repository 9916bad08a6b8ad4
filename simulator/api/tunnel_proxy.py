"""The tunnel proxy: HTTP requests for ``{port}-{tunnel_key}.tunnel.<any host>`` go to ``port``
inside the devbox, on the API's own listener (pure ASGI, in front of the API's routes).

::

    client --Host: 8080-<key>.tunnel.localhost--> API listener --(this middleware)-->
        TunnelService.admit (key, token) -> a slot (64 per devbox) -> wake (running? one
        shared resume on wake_on_http) -> runtime.tunnel_socket (a socket in the router
        namespace) -> devbox_ip:8080, the request forwarded as HTTP/1.1 (h11), the response
        streamed back as it comes, until it ends or the client goes away

Other requests pass to the API untouched. What is not proxied: WebSocket and other upgrades
(refused), transfer codings other than chunked (501), HTTP/2. Hop-by-hop headers (and those
``Connection`` names) are dropped both ways, as is the tunnel's own
``X-Runloop-Tunnel-Authorization``; ``Host`` is passed on as the client sent it.

uvicorn neither cancels an app whose client has gone nor fails its ``send``: a watcher on
``receive()`` ends the exchange on ``http.disconnect``, or a stream from the devbox would hold
its connection and slot for as long as the devbox sends.
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

from simulator.errors import ApiError
from simulator.tunnels import AUTH_HEADER, TunnelRefused

log = logging.getLogger(__name__)

_TUNNEL_HOST = re.compile(rb"^(\d{1,5})-([a-z0-9]{1,64})\.tunnel\.", re.IGNORECASE)
# RFC 9110 7.6.1, plus what this proxy sets itself or keeps to itself.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"host", AUTH_HEADER.encode(),
})
CONNECT_SECONDS = 5.0
IDLE_SECONDS = 300.0  # the longest wait for the next piece either way (long polls and streams included)
PER_DEVBOX = 64  # tunnel requests in flight per devbox; more get 503
READ_BYTES = 65536
TOUCH_EVERY_SECONDS = 1.0  # http_keep_alive: activity recorded at most this often per request


class TunnelProxy:
    def __init__(self, app, services: Callable[[], object]):
        self.app = app
        self._services = services  # -> Services (built after the middleware is declared)
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._waking: dict[str, asyncio.Future] = {}  # devbox id -> the resume under way

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = next((value for name, value in scope.get("headers", ()) if name == b"host"), b"")
        match = _TUNNEL_HOST.match(host)
        if match is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1003})
            return
        port, key = int(match.group(1)), match.group(2).decode().lower()
        try:
            await self._forward(scope, receive, send, port, key)
        except ApiError as refused:
            await _error(send, refused.status, refused.code, refused.message)

    async def _forward(self, scope, receive, send, port: int, key: str) -> None:
        # The cheap refusals first: nothing is looked up, woken or connected for them.
        if not 1 <= port <= 65535:
            raise TunnelRefused(f"port {port} is not a TCP port", code="invalid_request", status=400)
        framing = _request_framing(scope)
        services = self._services()
        if services.runtime is None:
            raise TunnelRefused("this simulator runs no devboxes", code="no_runtime", status=503)
        headers = scope.get("headers", ())
        token = next((v.decode("latin-1") for n, v in headers if n == AUTH_HEADER.encode()), None)
        devbox = await anyio.to_thread.run_sync(services.tunnels.admit, key, token)
        if not self._enter(devbox.id):
            raise TunnelRefused(f"devbox {devbox.id} has {PER_DEVBOX} tunnel requests in flight; retry later",
                                code="too_many_tunnel_requests", status=503)
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
            try:
                touched = _Toucher(services.tunnels, devbox)
                await _exchange(scope, receive, send, reader, writer, framing, touched)
            finally:
                writer.close()
        finally:
            self._leave(devbox.id)

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
        return await asyncio.shield(pending)

    def _enter(self, devbox_id: str) -> bool:
        with self._lock:
            count = self._in_flight.get(devbox_id, 0)
            if count >= PER_DEVBOX:
                return False
            self._in_flight[devbox_id] = count + 1
            return True

    def _leave(self, devbox_id: str) -> None:
        with self._lock:
            count = self._in_flight.pop(devbox_id) - 1
            if count:
                self._in_flight[devbox_id] = count


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


def _end_to_end(headers) -> list[tuple[bytes, bytes]]:
    """``headers`` less the hop-by-hop ones and those their ``Connection`` names."""
    named = {token.strip().lower() for n, v in headers if n.lower() == b"connection" for token in v.split(b",")}
    return [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP and n.lower() not in named]


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
                message = await asyncio.wait_for(receive(), IDLE_SECONDS)
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
        started = False
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(READ_BYTES), IDLE_SECONDS)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    started = True
                    await send({"type": "http.response.start", "status": event.status_code,
                                "headers": _response_headers(event)})
                elif isinstance(event, h11.Data):
                    await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
                    touched()
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
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


def _response_headers(event: h11.Response) -> list[tuple[bytes, bytes]]:
    """What the client gets: the end-to-end headers, and Content-Length only where it still
    describes the body as sent (h11 decoded any chunking; 1xx, 204 and 304 have no body)."""
    headers = _end_to_end(event.headers)
    chunked = any(n == b"transfer-encoding" for n, _ in event.headers)
    if not chunked and event.status_code not in (204, 304):
        headers += [(n, v) for n, v in event.headers if n == b"content-length"][:1]
    return headers


async def _error(send: Callable[[dict], Awaitable[None]], status: int, code: str, message: str) -> None:
    body = json.dumps({"message": message, "error_code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
