"""OutputBuffer: incremental UTF-8 decoding whose chunks join to exactly the one-shot text."""

from __future__ import annotations

import errno
import os
import random

from simulator.output_buffer import OutputBuffer, boundary_after, boundary_before


def test_a_character_split_across_reads_is_held_back_until_whole():
    buffer = OutputBuffer(1000)
    assert buffer.feed(b"a\xc3") is True and buffer.data == b"a"
    assert buffer.feed(b"") is False
    assert buffer.feed(b"\xa9") is True and buffer.text() == "a\u00e9"


def test_any_split_joins_to_the_one_shot_decoding():
    rng = random.Random(7)
    raw = "héllo wörld ✓ 😀 ".encode() * 50 + b"\xff\xfe bad \xe2\x82" + b"tail"
    expected = raw.decode("utf-8", "replace")
    for _ in range(200):
        buffer, pieces, position = OutputBuffer(10_000), [], 0
        cuts = sorted(rng.sample(range(1, len(raw)), 20))
        for start, end in zip([0, *cuts], [*cuts, len(raw)]):
            buffer.feed(raw[start:end])
            pieces.append(buffer.data[position:].decode("utf-8"))  # always whole characters
            position = len(buffer.data)
        buffer.finish()
        pieces.append(buffer.data[position:].decode("utf-8"))
        assert "".join(pieces) == buffer.text() == expected


def test_a_trailing_partial_character_becomes_a_replacement_at_the_end():
    buffer = OutputBuffer(1000)
    buffer.feed(b"x\xe2\x82")
    assert buffer.text() == "x"
    buffer.finish()
    assert buffer.text() == "x\ufffd"
    assert buffer.feed(b"more") is False  # nothing after the end


def test_the_cap_counts_the_text_kept_and_marks_truncation():
    buffer = OutputBuffer(5)
    buffer.feed(b"abc")
    buffer.feed(b"defgh")
    assert buffer.feed(b"more") is False  # read and dropped
    buffer.finish()
    assert buffer.text() == "abcde" and buffer.truncated and buffer.read_bytes == 12


def test_invalid_bytes_cannot_make_the_kept_text_three_times_the_cap():
    """Each invalid byte is U+FFFD, three bytes: a cap on bytes read let 16 MiB of 0xff
    become 48 MiB held, stored and served (100 MB of JSON)."""
    buffer = OutputBuffer(10)
    buffer.feed(b"\xff" * 10)
    buffer.finish()
    assert buffer.text() == "\ufffd" * 3 and len(buffer.data) == 9 and buffer.truncated  # whole characters
    split = OutputBuffer(4)
    split.feed(b"ab\xe2\x82")  # a character held back, then the stream ends: U+FFFD does not fit
    split.finish()
    assert split.text() == "ab" and split.truncated


def test_boundaries():
    data = "aé✓".encode()  # a | c3 a9 | e2 9c 93
    assert [boundary_after(data, i) for i in range(7)] == [0, 1, 3, 3, 6, 6, 6]
    assert [boundary_before(data, i) for i in range(8)] == [0, 1, 1, 3, 3, 3, 6, 6]



# --- spilling to a file --------------------------------------------------------------------


def test_spilled_output_reads_exactly_like_output_in_memory(tmp_path):
    rng = random.Random(11)
    raw = "héllo wörld ✓ 😀 ".encode() * 400 + b"\xff bad \xe2\x82" + b"tail"
    memory, spilled = OutputBuffer(1_000_000), OutputBuffer(1_000_000, tmp_path / "spill", memory_bytes=100)
    cuts = sorted(rng.sample(range(1, len(raw)), 50))
    for start, end in zip([0, *cuts], [*cuts, len(raw)]):
        assert memory.feed(raw[start:end]) == spilled.feed(raw[start:end])
        assert memory.size == spilled.size and memory.read(memory.size // 3) == spilled.read(spilled.size // 3)
    memory.finish()
    spilled.finish()
    assert spilled.spilled and not memory.spilled
    assert os.listdir(tmp_path / "spill") == []  # the file has no name
    assert spilled.text() == memory.text() == raw.decode("utf-8", "replace")
    for position in range(0, 40):  # moved to the next whole character, like boundary_after
        assert spilled.start_at(position) == memory.start_at(position) == boundary_after(memory.data, position)
    assert spilled.start_at(10**9) == 10**9
    spilled.close()
    assert spilled.size == 0 and spilled.read() == b""


def test_output_stays_in_memory_when_it_cannot_spill(tmp_path):
    (tmp_path / "file").write_text("")
    buffer = OutputBuffer(1000, tmp_path / "file" / "spill", memory_bytes=4)  # not a directory
    assert buffer.feed(b"0123456789") and buffer.feed(b"abc")
    assert not buffer.spilled and buffer.text() == "0123456789abc" and not buffer.truncated


def test_a_failed_write_truncates_the_stream_there(tmp_path, monkeypatch):
    buffer = OutputBuffer(1000, tmp_path, memory_bytes=4)
    assert buffer.feed(b"0123456789") and buffer.spilled

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    assert buffer.feed(b"more") is False
    monkeypatch.undo()
    assert buffer.truncated and buffer.feed(b"again") is False
    buffer.finish()
    assert buffer.text() == "0123456789"


def test_a_short_write_while_spilling_keeps_everything_in_the_file(tmp_path, monkeypatch):
    """A nearly full disk writes short, not failing: the copy to the file went on as if all of
    it was there, and the text read back was cut inside a character."""
    real_pwrite = os.pwrite

    def one_byte_at_a_time(fd, data, offset):
        return real_pwrite(fd, data[:1], offset)

    monkeypatch.setattr(os, "pwrite", one_byte_at_a_time)
    buffer = OutputBuffer(1000, tmp_path, memory_bytes=5)
    buffer.feed("éé".encode())
    buffer.feed("é".encode())
    assert buffer.spilled and buffer.size == 6 and buffer.text() == "ééé"
