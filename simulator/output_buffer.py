"""One output stream (stdout or stderr) of a running command, kept as valid UTF-8.

Offsets, as the SSE streams and their ``offset`` parameter use them, are **byte positions in
the UTF-8 encoding of the output text** (the text the execution view finally shows). For
output that is valid UTF-8 that is exactly the position in the bytes the command wrote.
Invalid bytes are decoded to U+FFFD (3 bytes in UTF-8), so there the two differ; counting in
the served text keeps every offset meaningful after completion, when only the text is stored.

Bytes are decoded incrementally: a multi-byte character split across two reads is held back
until its last byte arrives (or, when the stream ends, becomes U+FFFD). The buffer therefore
only ever ends on a character boundary, so every chunk a stream sends is whole characters and
its end offset is a valid place to resume; joining the chunks gives the final text exactly.
"""

from __future__ import annotations

import codecs


class OutputBuffer:
    def __init__(self, max_bytes: int):
        # Cap on the text kept (its UTF-8), so also on what is stored and served: an invalid
        # byte becomes U+FFFD, three bytes, and a cap on bytes read let 16 MiB become 48.
        self.max_bytes = max_bytes
        self.data = bytearray()  # UTF-8 of the text decoded so far: always valid, whole characters
        self.read_bytes = 0
        self.truncated = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._finished = False

    def feed(self, chunk: bytes) -> bool:
        """Add what the command wrote; False when nothing new became readable."""
        if self._finished or self.truncated:
            if chunk and not self._finished:
                self.read_bytes += len(chunk)  # read and dropped
            return False
        self.read_bytes += len(chunk)
        text = self._decoder.decode(chunk)
        return self._keep(text.encode("utf-8"))

    def _keep(self, encoded: bytes) -> bool:
        room = self.max_bytes - len(self.data)
        if len(encoded) > room:
            encoded = encoded[: boundary_before(encoded, room)]  # whole characters only
            self.truncated = True
        self.data += encoded
        return bool(encoded)

    def finish(self) -> None:
        """The stream ended: a trailing partial character becomes U+FFFD."""
        if not self._finished:
            if not self.truncated:
                self._keep(self._decoder.decode(b"", final=True).encode("utf-8"))
            self._finished = True

    def text(self) -> str:
        return self.data.decode("utf-8")


def boundary_after(data: bytes | bytearray, offset: int) -> int:
    """The smallest character boundary >= ``offset``: a stream asked to start inside a
    character starts at the next one (never with a broken character)."""
    while offset < len(data) and is_continuation(data[offset]):
        offset += 1
    return offset


def is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def boundary_before(data: bytes | bytearray, end: int) -> int:
    """The largest character boundary <= ``end`` (so a chunk never splits a character)."""
    end = min(end, len(data))
    while 0 < end < len(data) and is_continuation(data[end]):
        end -= 1
    return end
