"""Which headers cross the tunnel proxy: the end-to-end ones (RFC 9110 7.6.1)."""

from __future__ import annotations

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
