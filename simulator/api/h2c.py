"""HTTP/2 over cleartext (h2c, "prior knowledge") on the API's port, next to HTTP/1.1.

The Runloop TypeScript SDK (>= 1.25) talks HTTP/2 to an ``http://`` base URL from its first
byte (``node:http2``); Python clients (httpx) talk HTTP/1.1. Each connection is told apart by
its first bytes: the HTTP/2 client preface (``PRI * HTTP/2.0...``, 24 bytes) hands it to
``h2_server.H2Protocol``; anything else is uvicorn's own HTTP/1.1 protocol, untouched (the
class below *is* it, with a look at the first bytes in front). Bytes that could still become
the preface are held until they do or cannot: an HTTP/1.1 request whose method happens to be
``PRI``, or a first packet of a few bytes, is HTTP/1.1 as soon as a byte differs.

Only prior knowledge: no ``Upgrade: h2c`` (RFC 9113 dropped it; node does not send it).
"""

from __future__ import annotations

# httptools' protocol, else h11's: the one uvicorn picks for http="auto"
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from simulator.api.h2_server import H2Protocol

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2cOrHttp1Protocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP/1.1 protocol, or HTTP/2 when the connection opens with the preface."""

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self._server_state = server_state
        self._app_state = app_state
        self._first_bytes: bytes | None = b""  # None once the protocol is decided

    def data_received(self, data: bytes) -> None:
        if self._first_bytes is None:
            return super().data_received(data)
        data = self._first_bytes + data
        if len(data) < len(PREFACE) and PREFACE.startswith(data):
            self._first_bytes = data  # at most 23 bytes
            return
        self._first_bytes = None
        if data.startswith(PREFACE):
            self._switch_to_h2(data)
        else:
            super().data_received(data)

    def _switch_to_h2(self, data: bytes) -> None:
        self.connections.discard(self)  # the HTTP/2 protocol registers itself
        protocol = H2Protocol(self.config, self._server_state, self._app_state, self.loop)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(data)
