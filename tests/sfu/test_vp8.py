import random

from conference.sfu.vp8 import Vp8Descriptor, Vp8Rewriter, parse_descriptor

DATA = b"\x10\x02\x00\x9d\x01\x2a"  # a few bytes of VP8 data after the descriptor


def vp8(
    picture_id: int | None = None,
    *,
    bits: int = 15,
    tl0: int | None = None,
    tid: int | None = None,
    key_idx: int | None = None,
    start: bool = True,
    pid: int = 0,
    data: bytes = DATA,
) -> bytes:
    """Build a VP8 RTP payload: RFC 7741 descriptor followed by ``data``."""
    x = 0
    ext = b""
    if picture_id is not None:
        x |= 0x80
        if bits == 15:
            ext += bytes((0x80 | (picture_id >> 8), picture_id & 0xFF))
        else:
            ext += bytes((picture_id,))
    if tl0 is not None:
        x |= 0x40
        ext += bytes((tl0,))
    if tid is not None or key_idx is not None:
        t = 0
        if tid is not None:
            x |= 0x20
            t |= tid << 6
        if key_idx is not None:
            x |= 0x10
            t |= key_idx
        ext += bytes((t,))
    b0 = (0x10 if start else 0) | pid
    if x:
        return bytes((0x80 | b0, x)) + ext + data
    return bytes((b0,)) + data


def ids(payload: bytes) -> tuple[int | None, int | None]:
    d = parse_descriptor(payload)
    assert d is not None
    return d.picture_id, d.tl0picidx


# parse_descriptor


def test_parse_full_descriptor() -> None:
    p = vp8(0x1234, tl0=200, tid=2, key_idx=17, start=True, pid=3)
    assert parse_descriptor(p) == Vp8Descriptor(
        picture_id=0x1234,
        picture_id_bits=15,
        tl0picidx=200,
        temporal_id=2,
        key_idx=17,
        start_of_partition=True,
        partition_id=3,
        size=6,
    )


def test_parse_minimal_descriptor() -> None:
    d = parse_descriptor(vp8(start=False, pid=1))
    assert d == Vp8Descriptor(None, 0, None, None, None, False, 1, 1)


def test_parse_7bit_picture_id_and_partial_fields() -> None:
    d = parse_descriptor(vp8(0x55, bits=7, tid=1))
    assert d is not None
    assert (d.picture_id, d.picture_id_bits, d.tl0picidx) == (0x55, 7, None)
    assert (d.temporal_id, d.key_idx, d.size) == (1, None, 4)
    d = parse_descriptor(vp8(key_idx=5))
    assert d is not None
    assert (d.picture_id, d.temporal_id, d.key_idx, d.size) == (None, None, 5, 3)


def test_parse_extension_byte_without_fields() -> None:
    d = parse_descriptor(b"\x90\x00" + DATA)
    assert d is not None
    assert d.size == 2 and d.picture_id is None and d.tl0picidx is None


def test_parse_truncated_is_none() -> None:
    full = vp8(0x1234, tl0=7, tid=0, key_idx=0, data=b"")
    assert parse_descriptor(full) is not None
    for n in range(len(full)):
        assert parse_descriptor(full[:n]) is None, n
    assert parse_descriptor(b"") is None
    assert parse_descriptor(vp8(0x12, bits=7, data=b"")[:2]) is None


# Vp8Rewriter


def test_first_source_unchanged_same_object() -> None:
    r = Vp8Rewriter()
    for i in range(5):
        p = vp8(1000 + i, tl0=50 + i, tid=0)
        assert r.rewrite(p) is p


def test_switch_before_any_packet_keeps_offset_zero() -> None:
    r = Vp8Rewriter()
    r.switch()
    p = vp8(3000, tl0=9)
    assert r.rewrite(p) is p


def test_switch_continues_ids() -> None:
    r = Vp8Rewriter()
    for i in range(10):
        r.rewrite(vp8(100 + i, tl0=20 + i))  # last emitted: 109, 29
    r.switch()
    out = [ids(r.rewrite(vp8(5000 + i, tl0=200 + i))) for i in range(3)]
    assert out == [(110, 30), (111, 31), (112, 32)]


def test_offset_fixed_on_first_packet_of_frame() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(10, tl0=1))
    r.switch()
    # Three packets of one frame, then the next frame.
    frame = [vp8(700, tl0=40, start=(i == 0)) for i in range(3)]
    assert [ids(r.rewrite(p)) for p in frame] == [(11, 2)] * 3
    assert ids(r.rewrite(vp8(701, tl0=40))) == (12, 2)
    assert ids(r.rewrite(vp8(702, tl0=41))) == (13, 3)


def test_rewrite_keeps_length_and_other_bytes() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(10, tl0=1))
    r.switch()
    p = vp8(700, tl0=40, tid=2, key_idx=9, start=False, pid=2)
    q = r.rewrite(p)
    assert isinstance(q, bytes) and len(q) == len(p)
    d = parse_descriptor(q)
    assert d is not None
    assert (d.picture_id, d.picture_id_bits, d.tl0picidx) == (11, 15, 2)
    assert (d.temporal_id, d.key_idx, d.start_of_partition, d.partition_id) == (2, 9, False, 2)
    assert q[:2] == p[:2] and q[d.size :] == p[d.size :]
    assert q[5] == p[5]  # TID|Y|KEYIDX byte


def test_15bit_wraparound_of_last_emitted() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(32766, tl0=254))
    r.rewrite(vp8(32767, tl0=255))
    r.switch()
    assert ids(r.rewrite(vp8(0, tl0=0))) == (0, 0)  # offset happens to be zero
    r.switch()
    assert ids(r.rewrite(vp8(500, tl0=77))) == (1, 1)
    assert ids(r.rewrite(vp8(501, tl0=78))) == (2, 2)


def test_wraparound_of_incoming_ids_after_switch() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(40, tl0=3))
    r.switch()
    assert ids(r.rewrite(vp8(32766, tl0=254))) == (41, 4)
    assert ids(r.rewrite(vp8(32767, tl0=255))) == (42, 5)
    assert ids(r.rewrite(vp8(0, tl0=0))) == (43, 6)
    assert ids(r.rewrite(vp8(1, tl0=1))) == (44, 7)


def test_output_wraps_to_zero() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(32760, tl0=250))
    r.switch()
    out = [ids(r.rewrite(vp8(9 + i, tl0=100 + i))) for i in range(9)]
    assert [o[0] for o in out] == [32761, 32762, 32763, 32764, 32765, 32766, 32767, 0, 1]
    assert [o[1] for o in out] == [251, 252, 253, 254, 255, 0, 1, 2, 3]
    r.switch()
    assert ids(r.rewrite(vp8(12345, tl0=12))) == (2, 4)


def test_7bit_picture_ids() -> None:
    r = Vp8Rewriter()
    for i in range(120, 131):  # incoming 7-bit ids wrap: 120..127, 0..2
        p = vp8(i & 0x7F, bits=7)
        assert r.rewrite(p) is p
    r.switch()
    q = r.rewrite(vp8(60, bits=7))
    d = parse_descriptor(q)
    assert d is not None and (d.picture_id, d.picture_id_bits) == (3, 7)
    assert len(q) == len(vp8(60, bits=7))
    assert ids(r.rewrite(vp8(61, bits=7)))[0] == 4


def test_7bit_source_then_15bit_source() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(32700, tl0=0))  # 15-bit source, last emitted 32700
    r.switch()
    # A 7-bit source continues the 15-bit numbering in its own width...
    assert ids(r.rewrite(vp8(5, bits=7)))[0] == 32701 & 0x7F
    for i in range(6, 80):  # ...and its progress is tracked in 15-bit space
        r.rewrite(vp8(i & 0x7F, bits=7))
    # last emitted: 32701 + 74 = 32775 -> 7 (mod 2**15)
    r.switch()
    assert ids(r.rewrite(vp8(20000, tl0=0)))[0] == 8


def test_late_packet_does_not_move_last_back() -> None:
    r = Vp8Rewriter()
    for i in range(10, 20):
        r.rewrite(vp8(i, tl0=i))
    r.switch()
    assert ids(r.rewrite(vp8(1000, tl0=100))) == (20, 20)
    assert ids(r.rewrite(vp8(1001, tl0=101))) == (21, 21)
    # A late packet of the new source, older than its first one: same offset.
    assert ids(r.rewrite(vp8(998, tl0=98))) == (18, 18)
    r.switch()
    assert ids(r.rewrite(vp8(7, tl0=7))) == (22, 22)


def test_retransmission_of_older_picture_keeps_offset() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(10, tl0=1))
    r.switch()
    assert ids(r.rewrite(vp8(500, tl0=9))) == (11, 2)
    assert ids(r.rewrite(vp8(503, tl0=10))) == (14, 3)
    assert ids(r.rewrite(vp8(501, tl0=9))) == (12, 2)  # retransmitted
    r.switch()
    assert ids(r.rewrite(vp8(0, tl0=0))) == (15, 4)


def test_switch_twice_in_a_row() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(100, tl0=10))
    r.switch()
    r.switch()
    assert ids(r.rewrite(vp8(9000, tl0=90))) == (101, 11)
    assert ids(r.rewrite(vp8(9001, tl0=91))) == (102, 12)


def test_packets_without_ids_pass_through() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(100, tl0=10))
    r.switch()
    for p in (vp8(), vp8(tid=1, key_idx=3), b"\x90\x00" + DATA):
        assert r.rewrite(p) is p
    # The offset is fixed by the first packet that carries the field.
    assert ids(r.rewrite(vp8(9000, tl0=90))) == (101, 11)


def test_fields_get_their_offsets_independently() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(100, tl0=10))
    r.switch()
    # The new source's first packet has no TL0PICIDX: only PictureID is fixed.
    q = r.rewrite(vp8(9000))
    assert ids(q) == (101, None)
    assert ids(r.rewrite(vp8(9001, tl0=50))) == (102, 11)
    assert ids(r.rewrite(vp8(9002, tl0=51))) == (103, 12)


def test_field_never_emitted_gets_offset_zero() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(100))  # no TL0PICIDX emitted yet
    r.switch()
    assert ids(r.rewrite(vp8(9000, tl0=77))) == (101, 77)


def test_truncated_and_malformed_returned_as_is() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(100, tl0=10))
    r.switch()
    full = vp8(9000, tl0=90, tid=1, data=b"")
    for n in range(len(full)):
        p = full[:n]
        assert r.rewrite(p) is p
    # None of them fixed the offset.
    assert ids(r.rewrite(vp8(9000, tl0=90))) == (101, 11)


def test_descriptor_only_payload_is_rewritten() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(100, tl0=10))
    r.switch()
    assert r.rewrite(vp8(9000, tl0=90, data=b"")) == vp8(101, tl0=11, data=b"")


def test_offset_zero_after_switch_returns_same_object() -> None:
    r = Vp8Rewriter()
    r.rewrite(vp8(100, tl0=10))
    r.switch()
    p = vp8(101, tl0=11)
    assert r.rewrite(p) is p


def test_random_switches_keep_ids_continuous() -> None:
    rng = random.Random(7741)
    r = Vp8Rewriter()
    prev: tuple[int, int] | None = None
    for _source in range(50):
        pid = rng.randrange(1 << 15)
        tl0 = rng.randrange(256)
        first = True
        for _frame in range(rng.randrange(1, 40)):
            base_layer = rng.random() < 0.5
            for _packet in range(rng.randrange(1, 4)):
                out = ids(r.rewrite(vp8(pid, tl0=tl0, tid=0 if base_layer else 1)))
                assert out[0] is not None and out[1] is not None
                if prev is not None:
                    dp = (out[0] - prev[0]) % (1 << 15)
                    dt = (out[1] - prev[1]) % 256
                    if first:
                        assert (dp, dt) == (1, 1)
                    else:
                        assert dp in (0, 1) and dt in (0, 1)
                prev = (out[0], out[1])
                first = False
            pid = (pid + 1) % (1 << 15)
            if base_layer:
                tl0 = (tl0 + 1) % 256
        r.switch()
