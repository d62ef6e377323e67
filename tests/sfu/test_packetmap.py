import random

import pytest

from conference.sfu.packetmap import PacketMap


def test_first_packet_and_in_order() -> None:
    m = PacketMap(1000, 5)
    assert m.last_out == 5
    assert m.map(1000) == 5
    assert [m.map(s) for s in range(1001, 1006)] == [6, 7, 8, 9, 10]
    assert m.last_out == 10


def test_gap_stays_visible() -> None:
    m = PacketMap(10, 100)
    assert m.map(11) == 101
    assert m.map(15) == 105  # 12..14 lost upstream: 102..104 missing downstream
    assert m.last_out == 105
    # The lost packets, if they arrive late, fill their own slots.
    assert m.map(13) == 103
    assert m.map(12) == 102
    assert m.map(14) == 104
    assert m.last_out == 105


def test_duplicates_get_same_answer() -> None:
    m = PacketMap(0, 0)
    assert m.map(1) == 1
    assert m.map(2) == 2
    assert m.map(2) == 2
    assert m.map(1) == 1
    assert m.map(3) == 3
    assert m.map(3) == 3
    assert m.last_out == 3


def test_16bit_wraparound_incoming_and_outgoing() -> None:
    m = PacketMap(65530, 65533)
    out = [m.map(s & 0xFFFF) for s in range(65530, 65545)]
    assert out == [s & 0xFFFF for s in range(65533, 65548)]
    assert m.last_out == 65547 & 0xFFFF
    # Late packet from before the incoming wrap.
    assert m.map(65534) == 1
    assert m.reverse(1) == 65534
    assert m.reverse(65535) == 65532


def test_before_first_is_none() -> None:
    m = PacketMap(500, 0)
    assert m.map(499) is None
    assert m.map(400) is None
    assert m.map(500) == 0
    assert m.map(501) == 1
    assert m.map(499) is None


def test_window_limits_late_packets() -> None:
    m = PacketMap(0, 0)
    for s in range(1, 2001):
        assert m.map(s) == s
    assert m.map(2000 - 1024) == 2000 - 1024
    assert m.map(2000 - 1025) is None
    assert m.reverse(2000 - 1024) == 2000 - 1024
    assert m.reverse(2000 - 1025) is None


def test_drop_newest_closes_gap() -> None:
    m = PacketMap(0, 0)
    assert m.map(1) == 1
    assert m.map(2) == 2
    m.drop(2)  # padding
    assert m.last_out == 1
    assert m.map(2) is None
    assert m.map(3) == 2
    assert m.map(4) == 3
    assert m.map(1) == 1
    assert m.map(2) is None
    assert m.map(3) == 2


def test_drop_before_map_and_consecutive_drops() -> None:
    m = PacketMap(100, 100)
    m.drop(101)  # never mapped: becomes newest, then dropped
    m.drop(102)
    m.drop(103)
    assert m.last_out == 100
    assert m.map(104) == 101
    for s in (101, 102, 103):
        assert m.map(s) is None
    assert m.map(100) == 100
    # Dropping twice is harmless.
    m.drop(104)
    m.drop(104)
    assert m.map(105) == 101
    assert m.map(104) is None


def test_drop_old_packet_is_ignored() -> None:
    m = PacketMap(0, 0)
    for s in range(1, 6):
        m.map(s)
    m.drop(3)
    assert m.map(3) == 3
    assert m.map(6) == 6


def test_drop_first_packet() -> None:
    m = PacketMap(7, 20)
    m.drop(7)
    assert m.map(7) is None
    assert m.last_out == 19
    assert m.map(8) == 20
    assert m.map(6) is None


def test_drop_with_gap_before_it() -> None:
    m = PacketMap(0, 0)
    assert m.map(1) == 1
    assert m.map(4) == 4  # 2, 3 lost
    m.drop(4)
    assert m.map(5) == 4
    assert m.map(2) == 2
    assert m.map(3) == 3
    assert m.reverse(4) == 5
    assert m.reverse(3) == 3


def test_reverse() -> None:
    m = PacketMap(1000, 0)
    for s in range(1001, 1011):
        m.map(s)
    m.drop(1010)
    m.map(1011)  # -> 10
    m.map(1015)  # -> 14, 1012..1014 lost
    assert m.reverse(0) == 1000
    assert m.reverse(9) == 1009
    assert m.reverse(10) == 1011
    assert m.reverse(12) == 1013  # lost upstream, still translated
    assert m.reverse(14) == 1015
    assert m.reverse(15) is None  # not sent yet
    assert m.reverse(65535) is None  # before the first outgoing number


def test_reverse_after_drop_of_newest() -> None:
    m = PacketMap(0, 0)
    m.map(1)
    m.map(2)
    m.drop(2)
    assert m.last_out == 1
    assert m.reverse(1) == 1
    assert m.reverse(2) is None


def test_forward_jump_is_restart() -> None:
    m = PacketMap(0, 50)
    for s in range(1, 11):
        m.map(s)
    assert m.last_out == 60
    assert m.map(10 + 2999) == 60 + 2999  # large loss, not a restart
    assert m.last_out == 3059
    assert m.map(3009 + 3001) == 3060  # restart: continues numbering
    assert m.map(6011) == 3061
    # Packets of the old numbering are forgotten.
    assert m.map(3009) is None
    assert m.map(6009) is None
    assert m.reverse(3060) == 6010
    assert m.reverse(3059) is None


def test_backward_jump_far_is_restart() -> None:
    m = PacketMap(40000, 0)
    for s in range(40001, 40011):
        m.map(s)
    assert m.map(40000 - 1025) is None  # just too late
    assert m.map(1234) == 11  # 38776 behind: restart
    assert m.map(1235) == 12
    assert m.map(1200) is None  # before the restart point
    # A straggler of the old numbering is itself far away, hence yet another
    # restart; the output numbering stays contiguous either way.
    assert m.map(40010) == 13
    assert m.map(1236) == 14


def test_restart_across_wrap() -> None:
    m = PacketMap(65000, 65530)
    assert m.map(65001) == 65531
    assert m.map(20000) == 65532  # forward jump of 20535 (wraps)
    assert m.map(20001) == 65533
    assert m.map(20004) == 0
    assert m.reverse(0) == 20004
    assert m.reverse(65532) == 20000


def test_drop_after_restart() -> None:
    m = PacketMap(0, 0)
    m.map(1)
    m.map(5000)  # restart -> 2
    m.drop(5000)
    assert m.last_out == 1
    assert m.map(5001) == 2
    assert m.map(5000) is None


def test_many_drops_stay_bounded() -> None:
    m = PacketMap(0, 0)
    out = 0
    for s in range(1, 200_000):
        if s % 3 == 0:
            m.drop(s)
        else:
            out += 1
            assert m.map(s) == out & 0xFFFF
    assert len(m._starts) <= 2 * 1024 // 3 + 4
    # Late packets inside the window still map correctly.
    s = 199_999 - 500
    assert s % 3 != 0
    assert m.map(s & 0xFFFF) == (s - s // 3) & 0xFFFF
    assert m.reverse((s - s // 3) & 0xFFFF) == s & 0xFFFF


@pytest.mark.parametrize("seed", range(8))
def test_randomised_against_model(seed: int) -> None:
    """Loss, reordering, duplicates and padding drops, across wraparound."""
    rng = random.Random(seed)
    first_in = rng.randrange(65536)
    first_out = rng.randrange(65536)
    m = PacketMap(first_in, first_out)
    dropped: set[int] = set()
    expected: dict[int, int] = {0: first_out}
    delayed: list[int] = []
    n_dropped = 0
    high = 0
    for i in range(1, 20_000):
        if rng.random() < 0.03:
            continue  # lost upstream
        if rng.random() < 0.05:
            delayed.append(i)
            continue
        seq = (first_in + i) & 0xFFFF
        high = i
        if rng.random() < 0.05:
            m.drop(seq)
            dropped.add(i)
            n_dropped += 1
            assert m.map(seq) is None
        else:
            out = m.map(seq)
            assert out == (first_out + i - n_dropped) & 0xFFFF
            expected[i] = out
            if rng.random() < 0.05:
                assert m.map(seq) == out  # duplicate
        if delayed and rng.random() < 0.3:
            j = delayed.pop(rng.randrange(len(delayed)))
            late = m.map((first_in + j) & 0xFFFF)
            if high - j > 1024:
                assert late is None
            else:
                n_before = sum(1 for k in dropped if k < j)
                assert late == (first_out + j - n_before) & 0xFFFF
                expected[j] = late
    assert m.last_out == (first_out + high - n_dropped) & 0xFFFF
    for i, out in expected.items():
        if high - i <= 1024:
            assert m.reverse(out) == (first_in + i) & 0xFFFF
            assert m.map((first_in + i) & 0xFFFF) == out
