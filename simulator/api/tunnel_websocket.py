"""WebSocket through a tunnel: the client's handshake is made again to the devbox's server
(wsproto as the client), and once that server accepts, messages go both ways until a side
closes.

::

    client --ws--> uvicorn (wsproto) --ASGI websocket--> TunnelProxy (admit, slot, wake,
        connect: as for HTTP) --> relay(): handshake to devbox_ip:port
            accepted: its subprotocol and headers to the client, then messages both ways
            refused:  its status, headers and body as the client's HTTP response

Frames are not copied: uvicorn ends the client's WebSocket and wsproto the devbox's, so each
side has its own pings and compression. Messages (text or binary, whole), and the close code
and reason, cross. Bounds: a message from the devbox is at most MAX_MESSAGE bytes (the
client's are bounded by uvicorn's ws_max_size, also 16 MiB): more closes both sides with 1009;
a side that does not take what is sent for SEND_SECONDS ends it. An idle WebSocket is left
open; the devbox ending (or the tunnel's removal) cuts it: the client gets 1001. A devbox
server that drops the connection without a close frame gives the client 1011, as does a
failure of the relay itself (logged). A handshake answer uvicorn cannot pass on (a status
outside 200-599, such as a 103 before the 101; headers that are not ASCII) is a 502.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from simulator.api.tunnel_headers import end_to_end
from simulator.tunnels import TunnelRefused

HANDSHAKE_SECONDS = 30.0  # the devbox's server answers the handshake within this, or 504
SEND_SECONDS = 300.0  # the longest wait for either side to take what is sent to it
MAX_MESSAGE = 16 << 20
MAX_REFUSAL_BODY = 1 << 20  # a refused handshake's body, passed on whole
READ_BYTES = 65536
log = logging.getLogger(__name__)
# The handshake's own headers: each side's are made by its own end (uvicorn, wsproto).
_HANDSHAKE = frozenset({
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-protocol", b"sec-websocket-extensions",
    b"sec-websocket-accept",
})
# Close codes a close frame cannot carry (RFC 6455 7.4.1), and what is sent instead.
_UNSENDABLE = {1005: 1000, 1006: 1001, 1015: 1001}


class ServerWebSocketProtocol(WSProtocol):
    """uvicorn's wsproto side (``uvicorn.Config(ws=...)``), except that a handshake wsproto
    cannot read (a Host that is no valid IDNA, header bytes that are not ASCII) is answered 400
    and closed. uvicorn lets that exception out of ``data_received``: a "Fatal error on
    transport" traceback in the log for any client that can reach the listener."""

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except Exception as exc:  # (UnicodeError, mostly) nothing of it reached the app
            log.info("unreadable WebSocket handshake from %s: %r", self.client, exc)
            if not self.transport.is_closing():
                if not self.handshake_complete:
                    self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                self.transport.close()


async def refuse(scope, send, status: int, body: bytes, headers=((b"content-type", b"application/json"),)) -> None:
    """Answer the handshake with an HTTP response (uvicorn's websocket.http.response), or,
    where the server has no such extension, with a bare 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "websocket.http.response.body", "body": body})


async def relay(scope, receive, send, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                touched: Callable[[], None], was_cut: Callable[[], bool]) -> None:
    """The handshake with the devbox's server, then its answer to the client, then the
    messages. Raises TunnelRefused only before the client has an answer. ``was_cut()``: the
    connection to the devbox ended because the tunnel was removed or the devbox ended."""
    ws = WSConnection(ConnectionType.CLIENT)
    target = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    host = next((v for n, v in scope.get("headers", ()) if n == b"host"), b"")
    try:
        writer.write(ws.send(Request(
            # uvicorn decoded the Host (IDNA) and encodes it in UTF-8; wsproto makes it IDNA again.
            host=host.decode("utf-8"), target=target.decode("latin-1"),
            subprotocols=list(scope.get("subprotocols") or ()),
            extra_headers=end_to_end(scope.get("headers", ()), also=_HANDSHAKE),
        )))
    except (LocalProtocolError, UnicodeError) as exc:
        raise TunnelRefused(f"cannot forward this handshake: {exc}", code="invalid_request", status=400) from None
    answer, events = await _handshake(ws, reader)
    if not isinstance(answer, AcceptConnection):
        rejection, body = answer
        if not 200 <= rejection.status_code <= 599:  # e.g. a 103 first: nothing uvicorn can pass on
            raise TunnelRefused(f"the devbox's server answered the WebSocket handshake with status "
                                f"{rejection.status_code}", code="tunnel_bad_response", status=502)
        await refuse(scope, send, rejection.status_code, body, end_to_end(rejection.headers, also=_HANDSHAKE))
        return
    await send({"type": "websocket.accept", "subprotocol": answer.subprotocol,
                "headers": end_to_end(answer.extra_headers, also=_HANDSHAKE)})
    touched()
    to_devbox = asyncio.ensure_future(_client_to_devbox(receive, send, ws, writer, touched))
    to_client = asyncio.ensure_future(_devbox_to_client(send, ws, reader, writer, touched, events, was_cut))
    try:
        await asyncio.wait([to_devbox, to_client], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_devbox, to_client):
            task.cancel()
        outcomes = await asyncio.gather(to_devbox, to_client, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, asyncio.CancelledError)]
    if failures:  # a bug, or a protocol state not foreseen: logged, and the client told
        log.error("tunnel WebSocket relay failed", exc_info=failures[0])
        await _to_client(send, {"type": "websocket.close", "code": 1011, "reason": "the tunnel's relay failed"})


async def _handshake(ws: WSConnection, reader: asyncio.StreamReader):
    """(the devbox server's AcceptConnection, the events that came with it: frames sent right
    after the handshake), or ((RejectConnection, its body), [])."""
    rejection, body = None, bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANDSHAKE_SECONDS
    try:
        while True:
            data = await asyncio.wait_for(reader.read(READ_BYTES), max(0.0, deadline - loop.time()))
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return event, list(ws.events())  # the rest of what this read brought
                if isinstance(event, RejectConnection):
                    rejection = event
                    if not event.has_body:
                        return (rejection, b""), []
                elif isinstance(event, RejectData):
                    body += event.data
                    if len(body) > MAX_REFUSAL_BODY:
                        raise TunnelRefused(f"the devbox's server refused the WebSocket with a body over "
                                            f"{MAX_REFUSAL_BODY} bytes", code="tunnel_bad_response", status=502)
                    if event.body_finished:
                        return (rejection, bytes(body)), []
                elif isinstance(event, CloseConnection):  # the connection ended first
                    raise RemoteProtocolError("connection closed during the handshake", event_hint=None)
            if not data:
                raise RemoteProtocolError("connection closed during the handshake", event_hint=None)
    except asyncio.TimeoutError:
        raise TunnelRefused(f"the devbox's server did not answer the WebSocket handshake within "
                            f"{HANDSHAKE_SECONDS:g} s", code="tunnel_timeout", status=504) from None
    # ValueError: wsproto decodes some headers as ASCII (UnicodeDecodeError).
    except (RemoteProtocolError, OSError, ValueError) as exc:
        raise TunnelRefused(f"the devbox's server did not accept a WebSocket ({exc})", code="tunnel_bad_response",
                            status=502) from None


async def _client_to_devbox(receive, send, ws: WSConnection, writer, touched) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
            try:
                out = ws.send(Message(data=data))
            except LocalProtocolError:
                continue  # the devbox is closing: the other direction ends the relay with its close
            if not await _to_devbox(writer, out):
                await _to_client(send, {"type": "websocket.close", "code": 1011,
                                        "reason": "the devbox's server stopped taking messages"})
                return
            touched()
        elif message["type"] == "websocket.disconnect":
            code = message.get("code") or 1005
            await _send_event(ws, writer, CloseConnection(code=_UNSENDABLE.get(code, code), reason=message.get("reason") or ""))
            return


async def _devbox_to_client(send, ws: WSConnection, reader, writer, touched, events, was_cut) -> None:
    parts: list = []
    size = 0
    data = b"(the handshake's read)"
    while True:
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                # Bytes, as uvicorn counts the client's: text as UTF-8.
                size += len(event.data.encode()) if isinstance(event, TextMessage) else len(event.data)
                if size > MAX_MESSAGE:
                    await _to_client(send, {"type": "websocket.close", "code": 1009,
                                            "reason": f"a message from the devbox exceeded {MAX_MESSAGE} bytes"})
                    await _send_event(ws, writer, CloseConnection(code=1009, reason="message too big"))
                    return
                parts.append(event.data)
                if event.message_finished:
                    key = "text" if isinstance(event, TextMessage) else "bytes"
                    payload = ("" if key == "text" else b"").join(parts)
                    parts, size = [], 0
                    if not await _to_client(send, {"type": "websocket.send", key: payload}):
                        return
                    touched()
            elif isinstance(event, Ping):
                await _send_event(ws, writer, event.response())
                touched()
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    await _send_event(ws, writer, event.response())  # the closing handshake
                if event.code == 1006:  # no close frame: the connection just ended
                    code, reason = (1001, "the devbox ended or its tunnel was removed") if was_cut() \
                        else (1011, "the devbox's server closed the connection")
                else:
                    code, reason = _UNSENDABLE.get(event.code, event.code), event.reason or ""
                await _to_client(send, {"type": "websocket.close", "code": code, "reason": reason})
                return
        if not data:
            return
        try:
            data = await reader.read(READ_BYTES)  # no time limit: an idle WebSocket is fine
        except OSError:
            data = b""
        ws.receive_data(data or None)
        events = ws.events()


async def _send_event(ws: WSConnection, writer: asyncio.StreamWriter, event) -> bool:
    """``event`` to the devbox, if the connection's state still allows it (a close crossing
    the devbox's own, say)."""
    try:
        data = ws.send(event)
    except LocalProtocolError:
        return False
    return await _to_devbox(writer, data)


async def _to_devbox(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """False when the devbox's end is closed or has not read for SEND_SECONDS."""
    try:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), SEND_SECONDS)
    # RuntimeError: uvloop's write to a transport already closed.
    except (OSError, RuntimeError, asyncio.TimeoutError):
        return False
    return True


async def _to_client(send, message: dict) -> bool:
    """False when the client is gone or has not read for SEND_SECONDS."""
    try:
        await asyncio.wait_for(send(message), SEND_SECONDS)
    except (OSError, RuntimeError, asyncio.TimeoutError):
        return False
    return True

