"""Which headers cross the tunnel proxy: the end-to-end ones (RFC 9110 7.6.1)."""

from __future__ import annotations

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


# The messages that open a response (an HTTP one, a WebSocket's 101, a WebSocket refusal).
_RESPONSE_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})
SERVER = b"uvicorn"


def with_default_headers(send, *, server: bool):
    """``send`` that adds ``Date`` (and ``Server`` when ``server``) to a response that has none.

    uvicorn runs without its own Date and Server (``devbox-sim serve``): it would put them in
    front of every response, so a devbox server's answer through a tunnel carried two of each.
    The API's answers get both here; a devbox's keep its own and only gain a Date it lacks
    (RFC 9110 6.6.1: a forwarding recipient adds one)."""
    async def sending(message):
        if message["type"] in _RESPONSE_STARTS:
            headers = list(message.get("headers") or ())
            names = {name.lower() for name, _ in headers}
            added = []
            if b"date" not in names:
                added.append((b"date", formatdate(usegmt=True).encode()))
            if server and b"server" not in names:
                added.append((b"server", SERVER))
            if added:
                message = {**message, "headers": added + headers}
        await send(message)
    return sending
