"""netns/nft_element_json.py and nft_elements.encode_batch: libnftables JSON element commands
as raw netlink operations (pure; the privileged equivalence with libnftables itself is in
tests/netns/test_nft_elements.py)."""

from __future__ import annotations

import struct

import pytest

from netns import ruleset as R
from netns.nft_element_json import Unsupported, set_ops
from netns.nft_elements import (
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM,
    Element,
    SetOp,
    encode_batch,
)


def _ref(name):
    return {"family": "inet", "table": R.TABLE, "name": name}


def _add(name, elems):
    return {"add": {"element": {**_ref(name), "elem": elems}}}


def test_concatenated_ranges_are_a_first_and_a_last_key_of_32_bit_fields():
    (op,) = set_ops([_add("pcidrport_p", [{"concat": [{"prefix": {"addr": "198.51.100.0", "len": 24}}, "tcp",
                                                      {"range": [8000, 8100]}]}])], R.element_key)
    assert op == SetOp("add", "inet", R.TABLE, "pcidrport_p", (Element(
        key=bytes([198, 51, 100, 0, 6, 0, 0, 0]) + struct.pack(">H", 8000) + b"\0\0",
        key_end=bytes([198, 51, 100, 255, 6, 0, 0, 0]) + struct.pack(">H", 8100) + b"\0\0"),))
    (op,) = set_ops([_add("pcidr_p", [{"concat": [{"range": ["192.0.2.7", "192.0.2.9"]}, {"range": [0, 255]}]},
                                      {"concat": ["203.0.113.5", "udp"]}])], R.element_key)
    assert op.elements == (
        Element(bytes([192, 0, 2, 7, 0, 0, 0, 0]), key_end=bytes([192, 0, 2, 9, 255, 0, 0, 0])),
        Element(bytes([203, 0, 113, 5, 17, 0, 0, 0]), key_end=bytes([203, 0, 113, 5, 17, 0, 0, 0])),
    )


def test_plain_keys_flags_timeouts_deletes_and_flushes():
    ops = set_ops([
        {"flush": {"set": _ref("ppeer_p")}},
        _add("ppeer_p", ["ipv4"]),
        _add("learned_k", [{"elem": {"val": "203.0.113.34", "timeout": 30, "expires": 30}}]),
        {"delete": {"element": {**_ref("acct_acme"), "elem": ["10.88.0.2"]}}},
    ], R.element_key)
    assert ops == [
        SetOp("flush", "inet", R.TABLE, "ppeer_p"),
        SetOp("add", "inet", R.TABLE, "ppeer_p", (Element(b"\x02"),)),
        SetOp("add", "inet", R.TABLE, "learned_k", (Element(bytes([203, 0, 113, 34]), timeout=30),)),
        SetOp("delete", "inet", R.TABLE, "acct_acme", (Element(bytes([10, 88, 0, 2])),)),
    ]


def test_every_document_the_data_plane_sends_this_way_is_understood():
    docs = [R.update_policy(p, e) for p, e in (("p1", R.Egress(allow_all=True)), ("p2", R.Egress(
        allow_devbox_to_devbox=True, cidrs=(R.CidrRule("10.0.0.0/8"), R.CidrRule("192.0.2.0/24", (
            R.PortRange(443, None, "tcp"), R.PortRange(8000, 8100)))))), ("p3", R.Egress()))]
    docs += [R.learned_add("k", [("203.0.113.34", 30)]), R.learned_remove("k", ["203.0.113.34", "198.51.100.7"])]
    for doc in docs:
        ops = set_ops(doc["nftables"], R.element_key)
        assert len(ops) == len(doc["nftables"])


@pytest.mark.parametrize("command", [
    {"add": {"rule": {"family": "inet", "table": R.TABLE, "chain": "c", "expr": []}}},
    {"flush": {"chain": _ref("pol_p")}},
    _add("no_such_kind_p", ["192.0.2.1"]),  # a set whose key is not known
    _add("private", [{"prefix": {"addr": "10.0.0.0", "len": 8}}]),  # not a run-time set
    _add("learned_k", [{"prefix": {"addr": "10.0.0.0", "len": 8}}]),  # a range in a plain set
    _add("learned_k", [{"elem": {"val": "192.0.2.1", "timeout": 30, "expires": 12}}]),
    _add("learned_k", [{"elem": {"val": "192.0.2.1", "timeout": 1.5, "expires": 1.5}}]),  # libnftables: no timeout
    _add("learned_k", [{"elem": {"val": "192.0.2.1", "timeout": True, "expires": True}}]),
    _add("learned_k", [{"elem": {"timeout": 30, "expires": 30}}]),
    _add("learned_k", [{"elem": "192.0.2.1"}]),
    _add("learned_k", ["2001:db8::1"]),
    _add("pcidrport_p", [{"concat": ["192.0.2.1", "tcp"]}]),  # too few components
    _add("pcidrport_p", [{"concat": ["192.0.2.1", "sctp", 80]}]),
    _add("pcidrport_p", [{"concat": ["192.0.2.1", "tcp", 70000]}]),
    _add("ppeer_p", ["ipv5"]),
    {"delete": {"element": {**_ref("learned_k"), "elem": [{"elem": {"val": "192.0.2.1", "timeout": 5, "expires": 5}}]}}},
])
def test_anything_else_is_refused_not_guessed(command):
    with pytest.raises(Unsupported):
        set_ops([command], R.element_key)


def _messages(batch):
    out, off = [], 0
    while off < len(batch):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", batch, off)
        out.append((kind, flags, seq, batch[off + 20:off + length]))
        off += length
    return out


def test_a_batch_is_one_message_per_operation_between_begin_and_end():
    ops = [SetOp("flush", "inet", "t", "s1"), SetOp("add", "inet", "t", "s2", (Element(b"\x02"),)),
           SetOp("delete", "inet", "t", "s3", (Element(b"\x01\x02\x03\x04"),))]
    batch, owners = encode_batch(ops, seq=40)
    msgs = _messages(batch)
    assert [m[2] for m in msgs] == [40, 41, 42, 43, 44] and owners == [0, 1, 2]
    assert [m[0] & 0xFF for m in msgs[1:-1]] == [NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM]
    # only the last operation asks for an ACK: one reply per committed batch, however long
    assert [bool(m[1] & 0x4) for m in msgs] == [False, False, False, True, False]
    flush_body = msgs[1][3]
    assert b"s1\0" in flush_body and len(flush_body) == 8 + 8  # table and set names, no elements
    assert msgs[3][1] & 0x400 == 0 and msgs[2][1] & 0x400  # only adds create


def test_an_empty_delete_is_left_out_never_sent_as_a_flush():
    assert encode_batch([SetOp("delete", "inet", "t", "s", ())], seq=5) == (b"", [])
    batch, owners = encode_batch([SetOp("add", "inet", "t", "s", ()), SetOp("flush", "inet", "t", "s2")], seq=5)
    assert len(_messages(batch)) == 3 and owners == [1]


def test_long_element_lists_take_several_messages_of_one_batch():
    elements = tuple(Element(i.to_bytes(4, "big"), timeout=60) for i in range(5000))
    batch, owners = encode_batch([SetOp("add", "inet", "t", "s", elements)], seq=1)
    msgs = _messages(batch)
    assert len(msgs) > 3 and owners == [0] * (len(msgs) - 2)
    assert all(len(m[3]) < 65535 for m in msgs)  # an attribute's length is 16 bits
    assert sum(m[3].count(b"\x00\x00\xea\x60") for m in msgs[1:-1]) == 2 * 5000  # timeout + expiration


def test_a_deletes_duplicates_are_kept_as_the_kernel_refuses_them():
    e = Element(b"\x01\x01\x01\x01")
    one, _ = encode_batch([SetOp("delete", "inet", "t", "s", (e,))], 1)
    two, _ = encode_batch([SetOp("delete", "inet", "t", "s", (e, e))], 1)
    assert two.count(b"\x01\x01\x01\x01") == 2 * one.count(b"\x01\x01\x01\x01")


def test_duplicates_keep_their_first_place_and_last_value():
    a = Element(b"\x01\x01\x01\x01", timeout=5)
    b = Element(b"\x02\x02\x02\x02", timeout=6)
    a2 = Element(b"\x01\x01\x01\x01", timeout=7)
    assert encode_batch([SetOp("add", "inet", "t", "s", (a, b, a2))], 1) == \
        encode_batch([SetOp("add", "inet", "t", "s", (a2, b))], 1)


class _FakeSocket:
    """Replays recv outcomes: bytes, or an exception to raise."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)

    def recv(self, size, flags=0):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _error_reply(seq, err):
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", err) + b"\0" * 16


def test_a_lost_reply_is_a_refusal_only_when_an_error_of_the_batch_is_queued():
    """ENOBUFS: the kernel could not queue a reply. With one of the batch's errors queued it
    was refused (nothing applied); without, its outcome is unknown, which must not read as
    "nothing applied" (the data plane then puts its enforced state back)."""
    import errno

    from netns.nft_elements import NftElementsError, SetElements

    ops = [SetOp("add", "inet", "t", "s", (Element(b"\x01\x02\x03\x04"),))]
    elements = SetElements.__new__(SetElements)
    lost = OSError(errno.ENOBUFS, "No buffer space available")
    elements._sock = _FakeSocket([lost, _error_reply(11, -errno.ENOENT)])
    with pytest.raises(NftElementsError) as refused:
        elements._await_acks(10, [0], ops)
    assert refused.value.errno == errno.ENOENT and "add element inet t s" in str(refused.value)
    elements._sock = _FakeSocket([lost, _error_reply(3, -errno.ENOENT), BlockingIOError()])  # another batch's
    with pytest.raises(OSError) as unknown:
        elements._await_acks(10, [0], ops)
    assert not isinstance(unknown.value, NftElementsError) and unknown.value.errno == errno.ENOBUFS
    elements._sock = _FakeSocket([_error_reply(11, 0)])  # the ACK
    elements._await_acks(10, [0], ops)


def test_the_wait_for_an_answer_ends_on_time_though_signals_keep_coming():
    """A batch nobody answers (here: none was sent) times out after the 2 s wait, even with a
    signal every 0.3 s: a kernel receive timeout would start over after each one. The signals
    stop after 6 s, so a wait that starts over ends too, only late."""
    import signal
    import time

    from netns.nft_elements import SetElements

    ops = [SetOp("add", "inet", "t", "s", (Element(b"\x01\x02\x03\x04"),))]
    begun = time.monotonic()

    def tick(signum, frame):
        if time.monotonic() - begun > 6:
            signal.setitimer(signal.ITIMER_REAL, 0)

    previous = signal.signal(signal.SIGALRM, tick)
    try:
        with SetElements() as elements:
            signal.setitimer(signal.ITIMER_REAL, 0.3, 0.3)
            with pytest.raises(TimeoutError):
                elements._await_acks(10, [0], ops)
            waited = time.monotonic() - begun
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 1.9 <= waited < 3.5
