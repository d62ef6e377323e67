import random
import struct

import pytest
from aiortc.rtp import RtcpPacket, RtcpRtpfbPacket

from conference.sfu.twcc import (
    MAX_PACKET_SIZE,
    TWCC_URI,
    WINDOW,
    Feedback,
    FeedbackRecorder,
    parse_feedback,
)

SENDER = 0x01020304
MEDIA = 0x05060708
WRAP_US = (1 << 24) * 64000


def build(r: FeedbackRecorder) -> list[Feedback]:
    """Build, check each packet against aiortc's parser, and parse it back."""
    out = []
    for data in r.build(SENDER, MEDIA):
        assert len(data) % 4 == 0
        assert len(data) <= MAX_PACKET_SIZE
        parsed = RtcpPacket.parse(data)
        assert len(parsed) == 1
        assert isinstance(parsed[0], RtcpRtpfbPacket)
        assert parsed[0].fmt == 15
        assert parsed[0].ssrc == SENDER
        assert parsed[0].media_ssrc == MEDIA
        fb = parse_feedback(data)
        assert fb.sender_ssrc == SENDER
        assert fb.media_ssrc == MEDIA
        out.append(fb)
    return out


def statuses(feedbacks: list[Feedback]) -> list[tuple[int, int | None]]:
    """(sequence number, absolute arrival time or None) over consecutive feedbacks."""
    out: list[tuple[int, int | None]] = []
    for fb in feedbacks:
        if out:
            assert fb.base_sequence == (out[-1][0] + 1) & 0xFFFF
        assert fb.packets[0][0] == fb.base_sequence
        for seq, t in fb.packets:
            out.append((seq, None if t is None else (fb.reference_time_us + t) % WRAP_US))
    return out


def expected(arrivals: dict[int, int], seqs: list[int]) -> list[tuple[int, int | None]]:
    return [(s, arrivals.get(s)) for s in seqs]


def test_uri() -> None:
    assert TWCC_URI == "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def test_empty() -> None:
    r = FeedbackRecorder()
    assert r.pending == 0
    assert r.build(SENDER, MEDIA) == []


def test_all_received_round_trip() -> None:
    r = FeedbackRecorder()
    arrivals = {s: 1_000_000 + s * 1000 for s in range(100, 150)}
    for s, t in arrivals.items():
        r.received(s, t)
    assert r.pending == 50
    [fb] = build(r)
    assert r.pending == 0
    assert fb.base_sequence == 100
    assert fb.feedback_count == 0
    assert fb.reference_time_us == 1_100_000 // 64000 * 64000
    assert statuses([fb]) == expected(arrivals, list(range(100, 150)))
    assert r.build(SENDER, MEDIA) == []


def test_byte_exact_two_bit_vector() -> None:
    r = FeedbackRecorder()
    r.received(100, 640_250)  # reference 10 x 64 ms, delta +1 (small)
    r.received(102, 704_250)  # 101 lost; delta +256 (large)
    r.received(103, 704_000)  # delta -1 (large, negative)
    [data] = r.build(SENDER, MEDIA)
    assert data == bytes.fromhex(
        "8fcd0006"  # V=2 P=0 FMT=15, PT=205, length 6 (28 bytes)
        "01020304"  # sender SSRC
        "05060708"  # media SSRC
        "0064"  # base sequence number 100
        "0004"  # packet status count 4
        "00000a"  # reference time 10 (x 64 ms)
        "00"  # feedback packet count 0
        "d280"  # 2-bit vector: 1, 0, 2, 2 (then unused zeros)
        "01"  # delta +1
        "0100"  # delta +256
        "ffff"  # delta -1
        "00"  # zero padding
    )
    fb = parse_feedback(data)
    assert fb == Feedback(
        sender_ssrc=SENDER,
        media_ssrc=MEDIA,
        base_sequence=100,
        reference_time_us=640_000,
        feedback_count=0,
        packets=[(100, 250), (101, None), (102, 64_250), (103, 64_000)],
    )


def test_byte_exact_run_lengths() -> None:
    r = FeedbackRecorder()
    r.received(0, 0)
    r.build(SENDER, MEDIA)
    r.received(222, 1000)  # 1..221 lost
    [data] = r.build(SENDER, MEDIA)
    assert data == bytes.fromhex(
        "8fcd0006"
        "01020304"
        "05060708"
        "0001"  # base 1
        "00de"  # 222 statuses
        "000000"  # reference 0
        "01"  # second feedback
        "00dd"  # run length: 221 x not received (the draft's example 1)
        "2001"  # run length: 1 x received small delta
        "04"  # 1000 us = 4 x 250 us
        "000000"
    )


def test_one_bit_vector() -> None:
    r = FeedbackRecorder()
    for s in range(14):
        if s % 3:
            r.received(s, 1000 * s)
    r.received(14, 14_000)
    [data] = r.build(SENDER, MEDIA)
    # Statuses of 1..14: lost first, then received/lost mixed, small deltas.
    (chunk,) = struct.unpack_from("!H", data, 20)
    assert chunk >> 14 == 0b10  # 1-bit status vector
    fb = parse_feedback(data)
    assert [s for s, t in fb.packets if t is None] == [3, 6, 9, 12]
    assert fb.base_sequence == 1


def test_losses() -> None:
    r = FeedbackRecorder()
    arrivals = {s: s * 500 for s in range(0, 200) if s % 7 and s % 11}
    arrivals[200] = 200 * 500
    for s, t in arrivals.items():
        r.received(s, t)
    fbs = build(r)
    assert len(fbs) == 1
    assert statuses(fbs) == expected(arrivals, list(range(1, 201)))


def test_losses_across_feedbacks() -> None:
    r = FeedbackRecorder()
    r.received(10, 0)
    r.received(11, 1000)
    build(r)
    r.received(15, 2000)
    fbs = build(r)
    assert statuses(fbs) == [(12, None), (13, None), (14, None), (15, 2000)]
    assert fbs[0].feedback_count == 1


def test_long_loss_run_is_one_chunk() -> None:
    r = FeedbackRecorder()
    r.received(0, 0)
    build(r)
    r.received(4001, 10_000)
    r.received(4002, 11_000)
    [data] = r.build(SENDER, MEDIA)
    assert len(data) == 28  # 20 + two chunks + two 1-byte deltas, padded
    fb = parse_feedback(data)
    assert fb.packets[:4000] == [(s, None) for s in range(1, 4001)]
    assert statuses([fb])[4000:] == [(4001, 10_000), (4002, 11_000)]


def test_wraparound() -> None:
    r = FeedbackRecorder()
    arrivals = {65534: 100_000, 65535: 101_000, 1: 103_000, 2: 104_000}
    for s, t in arrivals.items():
        r.received(s, t)
    [fb] = build(r)
    assert fb.base_sequence == 65534
    assert statuses([fb]) == expected(arrivals, [65534, 65535, 0, 1, 2])
    r.received(3, 105_000)
    [fb] = build(r)
    assert statuses([fb]) == [(3, 105_000)]


def test_long_stream_wraps_many_times() -> None:
    r = FeedbackRecorder()
    got: list[tuple[int, int | None]] = []
    want: list[tuple[int, int | None]] = []
    rng = random.Random(1)
    t = 0
    for i in range(140_000):
        t += rng.randrange(0, 12) * 250
        if i and rng.random() < 0.05:
            want.append((i & 0xFFFF, None))
        else:
            r.received(i, t)
            want.append((i & 0xFFFF, t))
        if i % 100 == 99 and rng.random() < 0.5:
            got += statuses(build(r))
    r.received(140_000, t)
    want.append((140_000 & 0xFFFF, t))
    got += statuses(build(r))
    assert got == want


def test_reordering_and_duplicates() -> None:
    r = FeedbackRecorder()
    r.received(5, 10_000)
    r.received(3, 11_000)  # earlier number, later: extends the first feedback
    r.received(7, 12_000)
    r.received(6, 13_000)
    r.received(7, 14_000)  # duplicate: first arrival kept
    r.received(3, 15_000)
    assert r.pending == 4
    [fb] = build(r)
    assert statuses([fb]) == [(3, 11_000), (4, None), (5, 10_000), (6, 13_000), (7, 12_000)]
    # Packets already reported (received or not) are ignored from now on.
    r.received(4, 16_000)
    r.received(7, 16_000)
    assert r.pending == 0
    assert r.build(SENDER, MEDIA) == []
    r.received(9, 17_000)
    r.received(8, 16_000)
    assert statuses(build(r)) == [(8, 16_000), (9, 17_000)]


def test_large_and_negative_deltas() -> None:
    r = FeedbackRecorder()
    arrivals = {0: 1_000_000, 1: 1_100_000, 2: 1_050_000, 3: 2_000_000, 4: 1_999_750, 5: 8_000_000}
    for s, t in arrivals.items():
        r.received(s, t)
    [fb] = build(r)
    assert statuses([fb]) == expected(arrivals, list(range(6)))


def test_rounding_to_250us_does_not_accumulate() -> None:
    r = FeedbackRecorder()
    arrivals = {s: 100 * s + 7 for s in range(1000)}  # 100 us apart: deltas 0 or 1 tick
    for s, t in arrivals.items():
        r.received(s, t)
    for s, got in statuses(build(r)):
        assert got is not None
        assert abs(got - arrivals[s]) <= 125


def test_delta_beyond_16_bits_splits() -> None:
    r = FeedbackRecorder()
    arrivals = {0: 0, 1: 1000, 2: 10_000_000, 3: 10_001_000, 4: 1_000_000}
    for s, t in arrivals.items():
        r.received(s, t)
    fbs = build(r)
    # +10 s from 1 to 2, then -9 s from 3 to 4: both beyond +-8.19 s.
    assert [fb.base_sequence for fb in fbs] == [0, 2, 4]
    assert [fb.feedback_count for fb in fbs] == [0, 1, 2]
    assert [fb.reference_time_us for fb in fbs] == [0, 9_984_000, 960_000]
    assert statuses(fbs) == expected(arrivals, list(range(5)))


def test_delta_just_within_16_bits_does_not_split() -> None:
    r = FeedbackRecorder()
    r.received(0, 0)
    r.received(1, 0x7FFF * 250)
    r.received(2, 0)
    [fb] = build(r)
    assert statuses([fb]) == [(0, 0), (1, 0x7FFF * 250), (2, 0)]


def test_size_limit_splits() -> None:
    r = FeedbackRecorder()
    arrivals = {s: s * 1000 for s in range(3000)}
    for s, t in arrivals.items():
        r.received(s, t)
    fbs = build(r)
    assert len(fbs) == 3
    assert [fb.feedback_count for fb in fbs] == [0, 1, 2]
    assert statuses(fbs) == expected(arrivals, list(range(3000)))


def test_size_limit_with_mixed_statuses() -> None:
    rng = random.Random(7)
    r = FeedbackRecorder()
    arrivals: dict[int, int] = {}
    t = 0
    for s in range(4000):
        t += rng.choice([0, 250, 70_000])
        if rng.random() < 0.8 or s in (0, 3999):
            arrivals[s] = t
            r.received(s, t)
    fbs = build(r)
    assert len(fbs) > 1
    assert statuses(fbs) == expected(arrivals, list(range(4000)))


def test_feedback_count_wraps() -> None:
    r = FeedbackRecorder()
    counts = []
    for s in range(300):
        r.received(s, s * 1000)
        counts += [fb.feedback_count for fb in build(r)]
    assert counts == [i & 0xFF for i in range(300)]


def test_reference_time_wraps() -> None:
    r = FeedbackRecorder()
    t0 = WRAP_US // 2 - 32_000  # just below 2**23 x 64 ms: positive reference
    arrivals = {0: t0, 1: t0 + 64_000, 2: t0 + 10_000_000}
    for s, t in arrivals.items():
        r.received(s, t)
    fbs = build(r)
    assert fbs[0].reference_time_us > 0
    assert fbs[1].reference_time_us < 0  # signed 24 bits
    assert statuses(fbs) == [(s, t % WRAP_US) for s, t in arrivals.items()]


def test_memory_is_bounded() -> None:
    r = FeedbackRecorder()
    for s in range(20_000):
        r.received(s, s * 250)
    assert r.pending == WINDOW
    fbs = build(r)
    assert statuses(fbs) == [(s & 0xFFFF, s * 250) for s in range(20_000 - WINDOW, 20_000)]


def test_jump_forward_forgets_old() -> None:
    r = FeedbackRecorder()
    r.received(0, 0)
    r.received(1, 1000)
    r.received(20_000, 2000)
    assert r.pending == 1
    r.received(2, 3000)  # too old now
    assert r.pending == 1
    fbs = build(r)
    got = statuses(fbs)
    assert got[-1] == (20_000, 2000)
    assert len(got) == WINDOW
    assert all(t is None for _, t in got[:-1])


def test_too_old_before_first_build_is_ignored() -> None:
    r = FeedbackRecorder()
    r.received(10_000, 0)
    r.received(10_000 - WINDOW, 1000)
    assert r.pending == 1
    r.received(10_001 - WINDOW, 1000)
    assert r.pending == 2
    assert len(statuses(build(r))) == WINDOW


def test_parse_strips_rtcp_padding() -> None:
    r = FeedbackRecorder()
    r.received(1, 300)
    [data] = r.build(SENDER, MEDIA)
    # Re-pad as libwebrtc does: padding bit, last byte is the padding length.
    unpadded = data[4:23]  # 16 fixed bytes, one chunk, one delta
    pad = 4 - len(unpadded) % 4
    padded = bytes([0xAF, 205]) + struct.pack("!H", (len(unpadded) + pad) // 4)
    padded += unpadded + bytes(pad - 1) + bytes([pad])
    assert parse_feedback(padded) == parse_feedback(data)


def test_parse_ignores_what_follows() -> None:
    r = FeedbackRecorder()
    r.received(1, 300)
    [data] = r.build(SENDER, MEDIA)
    assert parse_feedback(data + b"\x81\xc9\x00\x01\x00\x00\x00\x00") == parse_feedback(data)


def test_parse_two_bit_vector_ignores_unused_symbols() -> None:
    header = bytes.fromhex("8fcd000500000001000000020010000200000003")
    # Two statuses (received small, not received), then reserved symbols.
    data = header + bytes.fromhex("d3ff0800")
    fb = parse_feedback(data)
    assert fb.packets == [(16, 2000), (17, None)]
    assert fb.feedback_count == 3
    assert fb.reference_time_us == 0


def valid_packet() -> bytes:
    r = FeedbackRecorder()
    r.received(1, 300)
    r.received(3, 600)
    [data] = r.build(SENDER, MEDIA)
    return data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        valid_packet()[:19],
        b"\x4f" + valid_packet()[1:],  # version 1
        b"\x8e" + valid_packet()[1:],  # FMT 14
        b"\x8f\xce" + valid_packet()[2:],  # PT 206
        valid_packet()[:-4],  # shorter than its length field
        valid_packet()[:2] + b"\x00\x03" + valid_packet()[4:],  # length too short for the fields
        valid_packet()[:14] + b"\x00\x00" + valid_packet()[16:],  # status count 0
        b"\xaf" + valid_packet()[1:-1] + b"\x00",  # padding bit, zero padding length
        b"\xaf" + valid_packet()[1:-1] + b"\x40",  # padding longer than the packet
        bytes.fromhex("8fcd000400000001000000020000001000000000"),  # no chunk
        bytes.fromhex("8fcd00050000000100000002000000020000000060020100"),
        bytes.fromhex("8fcd00050000000100000002000000020000000040020100"),
        bytes.fromhex("8fcd000500000001000000020000000200000000f0000000"),
        bytes.fromhex("8fcd00050000000100000002000000030000000020030102"),
    ],
)
def test_parse_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_feedback(data)


def test_parse_valid_packet_sanity() -> None:
    fb = parse_feedback(valid_packet())
    assert fb.packets == [(1, 250), (2, None), (3, 500)]


def test_short_builds_give_the_general_paths_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feedback for fewer than FAST_STATUSES numbers takes a shorter path (runs of
    statuses): byte for byte what the general path builds, for streams with losses,
    reordering, duplicates, long gaps, negative and large deltas and long runs."""
    from conference.sfu import twcc

    rng = random.Random(13)
    shapes = 0
    for trial in range(400):
        events: list[tuple[int, int] | None] = []  # (sequence number, arrival) or a build
        seq = rng.randrange(1 << 16)
        now = rng.randrange(1 << 40)
        for _ in range(rng.randrange(1, 600)):
            r = rng.random()
            if r < 0.05:
                events.append(None)
                continue
            seq += 1 if r < 0.8 else rng.choice([2, 3, 7, -1, -3, 0, 40])
            now += (
                rng.choice([0, 10, 250, 1000, 5000, 33000])
                if r < 0.97
                else rng.choice([-20000, 70000, 9_000_000])
            )
            events.append((seq & 0xFFFF, now))
        events.append(None)

        def run(fast: int, events: list[tuple[int, int] | None] = events) -> list[bytes]:
            monkeypatch.setattr(twcc, "FAST_STATUSES", fast)
            recorder = FeedbackRecorder()
            out: list[bytes] = []
            for event in events:
                if event is None:
                    out.extend(recorder.build(SENDER, MEDIA))
                else:
                    recorder.received(*event)
            return out

        general, short = run(0), run(twcc.FAST_STATUSES)
        assert short == general, trial
        shapes += len(general)
    assert shapes > 800
