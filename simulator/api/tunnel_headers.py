"""Which headers cross the tunnel proxy: the end-to-end ones (RFC 9110 7.6.1)."""

from __future__ import annotations

import re
import time
from email.utils import formatdate

from simulator.tunnels import AUTH_HEADER

# Hop-by-hop, plus what the proxy sets itself (framing, Host) or keeps to itself (the
# tunnel's token).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"host", AUTH_HEADER.encode(),
})


def end_to_end(headers, also: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """``headers`` less the hop-by-hop ones, those their ``Connection`` names, and ``also``."""
    named = {token.strip().lower() for n, v in headers if n.lower() == b"connection" for token in v.split(b",")}
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named
            and n.lower() not in also]


# {port}-{tunnel key}.tunnel.<any host>: a request for a server in a devbox (tunnel_proxy).
TUNNEL_HOST = re.compile(rb"^(\d{1,5})-([a-z0-9]{1,64})\.tunnel\.", re.IGNORECASE)

# The messages that open a response (an HTTP one, a WebSocket's 101, a WebSocket refusal).
_RESPONSE_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})
SERVER = b"uvicorn"
_date: tuple[int, bytes] = (0, b"")  # (second, its Date value): formatted once a second, as uvicorn does


def _date_now() -> bytes:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]


def with_default_headers(send, *, server: bool):
    """``send`` that adds ``Date`` (and ``Server`` when ``server``) to a response that has none.

    uvicorn runs without its own Date and Server (``devbox-sim serve``): it would put them in
    front of every response, so a devbox server's answer through a tunnel carried two of each.
    The API's answers get both here (DefaultHeaders); a devbox's keep its own and only gain a
    Date it lacks (RFC 9110 6.6.1: a forwarding recipient adds one)."""
    async def sending(message):
        if message["type"] in _RESPONSE_STARTS:
            headers = list(message.get("headers") or ())
            names = {name.lower() for name, _ in headers}
            added = []
            if b"date" not in names:
                added.append((b"date", _date_now()))
            if server and b"server" not in names:
                added.append((b"server", SERVER))
            if added:
                message = {**message, "headers": added + headers}
        await send(message)
    return sending


class DefaultHeaders:
    """The app as uvicorn serves it: every response gains the Date (and, but through a tunnel,
    the Server) it lacks. Outside Starlette's error middleware, so a 500 has them too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = next((value for name, value in scope.get("headers", ()) if name == b"host"), b"")
            send = with_default_headers(send, server=TUNNEL_HOST.match(host) is None)
        await self.app(scope, receive, send)
