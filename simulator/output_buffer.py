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

Where the text is kept: in memory up to ``MEMORY_BYTES``, then in an unlinked temporary file
in ``spill_dir`` (the data dir's). A devbox may run 256 commands at once and each stream
keeps up to 16 MiB: in memory that was gigabytes of the simulator's RSS for a few chatty
commands, which every account shares. On disk it costs a descriptor per long stream, and
nothing is left behind by a crash (the file has no name). A file that cannot be written (a
full disk) ends the keeping: the stream is truncated there, as at the cap.
"""

from __future__ import annotations

import codecs
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MEMORY_BYTES = 64 * 1024  # per stream; most commands' output never leaves memory


class OutputBuffer:
    def __init__(self, max_bytes: int, spill_dir: Path | None = None, memory_bytes: int = MEMORY_BYTES):
        # Cap on the text kept (its UTF-8), so also on what is stored and served: an invalid
        # byte becomes U+FFFD, three bytes, and a cap on bytes read let 16 MiB become 48.
        self.max_bytes = max_bytes
        self.read_bytes = 0
        self.truncated = False
        self._memory = bytearray()  # the kept UTF-8 while it fits in memory_bytes
        self._memory_bytes = memory_bytes if spill_dir is not None else max_bytes
        self._spill_dir = spill_dir
        self._file = None  # then all of it is here instead
        self._size = 0  # bytes kept: always valid UTF-8, whole characters
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._finished = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        """The kept bytes in [start, end) (a copy)."""
        end = self._size if end is None else min(end, self._size)
        if start >= end:
            return b""
        if self._file is None:
            return bytes(self._memory[start:end])
        return os.pread(self._file.fileno(), end - start, start)

    @property
    def data(self) -> bytes:
        """All the kept bytes (a copy)."""
        return self.read()

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
        room = self.max_bytes - self._size
        if len(encoded) > room:
            encoded = encoded[: boundary_before(encoded, room)]  # whole characters only
            self.truncated = True
        if not encoded:
            return False
        if self._file is None and self._size + len(encoded) > self._memory_bytes:
            self._spill()
        try:
            if self._file is None:
                self._memory += encoded
            else:
                _write_all(self._file.fileno(), encoded, self._size)
        except OSError as exc:  # the data dir is full or read-only: keep what is kept
            log.warning("command output cannot be kept beyond %d bytes: %s", self._size, exc)
            self.truncated = True
            return False
        self._size += len(encoded)
        return True

    def _spill(self) -> None:
        spill = None
        try:
            self._spill_dir.mkdir(mode=0o700, exist_ok=True)
            spill = tempfile.TemporaryFile(dir=self._spill_dir)  # O_TMPFILE: never has a name
            _write_all(spill.fileno(), bytes(self._memory), 0)  # a nearly full disk writes short
        except OSError as exc:
            if spill is not None:
                spill.close()
            log.warning("command output stays in memory (cannot spill to %s: %s)", self._spill_dir, exc)
            self._memory_bytes = self.max_bytes  # do not try again for every chunk
            return
        self._file, self._memory = spill, bytearray()

    def finish(self) -> None:
        """The stream ended: a trailing partial character becomes U+FFFD."""
        if not self._finished:
            if not self.truncated:
                self._keep(self._decoder.decode(b"", final=True).encode("utf-8"))
            self._finished = True

    def text(self) -> str:
        # Always valid UTF-8; "replace" only so that a broken file could never stop a completion.
        return self.read().decode("utf-8", "replace")

    def start_at(self, position: int) -> int:
        """``position`` moved to the next character boundary (``boundary_after``)."""
        if position >= self._size:
            return position
        return position + _continuations(self.read(position, position + 4))

    def close(self) -> None:
        """Forget the kept text (its file's descriptor and space): only once nobody reads it."""
        if self._file is not None:
            self._file.close()
        self._file, self._memory, self._size = None, bytearray(), 0


def _write_all(fd: int, data: bytes, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def boundary_after(data: bytes | bytearray, offset: int) -> int:
    """The smallest character boundary >= ``offset``: a stream asked to start inside a
    character starts at the next one (never with a broken character)."""
    while offset < len(data) and is_continuation(data[offset]):
        offset += 1
    return offset


def _continuations(data: bytes) -> int:
    """How many continuation bytes ``data`` starts with."""
    n = 0
    while n < len(data) and is_continuation(data[n]):
        n += 1
    return n


def is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def boundary_before(data: bytes | bytearray, end: int) -> int:
    """The largest character boundary <= ``end`` (so a chunk never splits a character)."""
    end = min(end, len(data))
    while 0 < end < len(data) and is_continuation(data[end]):
        end -= 1
    return end
