import random

import pytest

from conference.sfu.nack import NackTracker, pack_nack_items, unpack_nack_items


def test_in_order_no_loss() -> None:
    t = NackTracker()
    for i in range(100):
        assert t.received(i, i * 0.02) == []
    assert t.missing == []
    assert t.due(10.0) == []


def test_first_packet_initialises() -> None:
    t = NackTracker()
    assert t.received(5000, 0.0) == []
    assert t.missing == []
    assert t.received(5003, 0.01) == [5001, 5002]


def test_first_packet_zero() -> None:
    t = NackTracker()
    assert t.received(0, 0.0) == []
    assert t.received(2, 0.0) == [1]


def test_gap_then_late_arrival() -> None:
    t = NackTracker(retry_interval=0.125)
    t.received(10, 0.0)
    assert t.received(14, 0.0) == [11, 12, 13]
    assert t.missing == [11, 12, 13]
    assert t.received(12, 0.0625) == []
    assert t.missing == [11, 13]
    assert t.received(15, 0.0625) == []
    assert t.due(0.0625) == []  # retry_interval not elapsed
    assert t.due(0.125) == [11, 13]
    assert t.received(11, 0.1875) == []
    assert t.due(0.25) == [13]


def test_duplicates_are_ignored() -> None:
    t = NackTracker()
    t.received(1, 0.0)
    t.received(3, 0.0)
    assert t.received(3, 0.0) == []
    assert t.received(1, 0.0) == []
    assert t.missing == [2]


def test_retries_then_give_up() -> None:
    t = NackTracker(max_age=10.0, retry_interval=0.125, max_retries=3)
    t.received(0, 0.0)
    assert t.received(2, 0.0) == [1]
    assert t.due(0.0625) == []
    assert t.due(0.125) == [1]
    assert t.due(0.1875) == []
    assert t.due(0.25) == [1]
    assert t.due(0.375) == [1]
    assert t.missing == [1]
    assert t.due(0.5) == []  # three retries done: given up
    assert t.missing == []
    assert t.due(1.0) == []


def test_max_age() -> None:
    t = NackTracker(max_age=0.3, retry_interval=0.125, max_retries=100)
    t.received(0, 0.0)
    t.received(2, 0.0)
    assert t.due(0.125) == [1]
    assert t.due(0.25) == [1]
    assert t.due(0.375) == []
    assert t.missing == []


def test_retry_schedule_is_per_seq() -> None:
    t = NackTracker(retry_interval=0.125)
    t.received(0, 0.0)
    t.received(2, 0.0)  # 1 missing at 0.0
    t.received(4, 0.0625)  # 3 missing at 0.0625
    assert t.due(0.125) == [1]
    assert t.due(0.1875) == [3]
    assert t.due(0.25) == [1]


def test_16bit_wraparound() -> None:
    t = NackTracker()
    t.received(65533, 0.0)
    assert t.received(2, 0.0) == [65534, 65535, 0, 1]
    assert t.missing == [65534, 65535, 0, 1]
    assert t.received(65535, 0.0) == []
    assert t.missing == [65534, 0, 1]
    assert t.due(0.05) == [65534, 0, 1]


def test_gap_cap_is_restart() -> None:
    t = NackTracker()
    t.received(0, 0.0)
    assert len(t.received(101, 0.0)) == 100  # a gap of 100 is still loss
    assert t.received(203, 0.0) == []  # 101 missing: restart
    assert t.missing == []
    assert t.received(205, 0.0) == [204]


def test_backward_restart() -> None:
    t = NackTracker(window=512)
    t.received(10000, 0.0)
    t.received(10002, 0.0)
    assert t.received(10002 - 512, 0.0) == []  # late, within window
    assert t.missing == [10001]
    assert t.received(300, 0.0) == []  # far behind: restart
    assert t.missing == []
    assert t.received(302, 0.0) == [301]


def test_window_prunes_old_missing() -> None:
    t = NackTracker(window=150, max_age=100.0, max_retries=100)
    t.received(0, 0.0)
    t.received(2, 0.0)  # 1 missing
    t.received(100, 0.0)  # 3..99 missing
    assert t.missing[0] == 1
    for s in range(101, 151):
        assert t.received(s, 0.0) == []
    assert t.received(152, 0.0) == [151]  # 152 - 1 > 150: 1 pruned
    assert t.missing[:2] == [3, 4]
    # Packets advancing in order do not prune, but due() does.
    for s in range(153, 200):
        t.received(s, 0.0)
    assert 3 not in t.due(1.0)
    assert t.missing[0] == 49


def test_reset() -> None:
    t = NackTracker()
    t.received(1, 0.0)
    t.received(5, 0.0)
    t.reset()
    assert t.missing == []
    assert t.received(9, 0.0) == []


def test_a_gap_made_on_purpose_is_not_missing() -> None:
    """Another node's audio gate held packets back (conference/sfu/relay.py): the packet
    after them is `skip`ped to; a real loss before them stays missing."""
    t = NackTracker()
    for seq in (10, 11, 13):  # 12 lost
        t.received(seq, 0.0)
    t.skip(40)  # 14..39 held back
    assert t.missing == [12]
    assert t.received(41, 0.1) == []
    assert t.received(43, 0.1) == [42]  # a loss after the run is a loss
    assert t.missing == [12, 42]
    # 50 flagged, but 45..49 were taken for loss first (51 overtook it)
    assert t.received(51, 0.2) == [44, 45, 46, 47, 48, 49, 50]
    t.skip(50)
    assert t.missing == [12, 42]  # the run just before 50 is forgotten, no more
    t.skip(51 + 5000)  # a run longer than the gap cap: a restart, as in `received`
    assert t.received(5052, 0.3) == []
    fresh = NackTracker()
    fresh.skip(7)  # the first packet
    assert fresh.received(8, 0.0) == []


def test_randomised_loss_and_reorder() -> None:
    rng = random.Random(4)
    t = NackTracker(max_age=100.0, max_retries=1000, window=1000)
    delivered: set[int] = set()
    held: list[int] = []
    for i in range(60000, 60000 + 6000):
        if rng.random() < 0.05:
            continue
        if rng.random() < 0.05:
            held.append(i)
            continue
        t.received(i & 0xFFFF, 0.0)
        delivered.add(i)
        if held and rng.random() < 0.5:
            j = held.pop(0)
            t.received(j & 0xFFFF, 0.0)
            delivered.add(j)
    last = max(delivered)
    expected = [s & 0xFFFF for s in range(last - 1000, last) if s not in delivered]
    assert t.due(1.0) == expected


@pytest.mark.parametrize(
    ("seqs", "items"),
    [
        ([], []),
        ([7], [(7, 0)]),
        ([7, 8], [(7, 1)]),
        ([7, 23], [(7, 1 << 15)]),
        ([7, 24], [(7, 0), (24, 0)]),
        ([1, 2, 3, 5, 17, 18], [(1, 0b1000000000001011), (18, 0)]),
        ([65535, 0, 1], [(65535, 0b11)]),
        ([3, 1, 2, 2, 1], [(1, 0b11)]),
        ([0, 65530], [(65530, 1 << 5)]),
    ],
)
def test_pack_nack_items(seqs: list[int], items: list[tuple[int, int]]) -> None:
    assert pack_nack_items(seqs) == items


def test_unpack_nack_items() -> None:
    assert unpack_nack_items([(65534, 0b101)]) == [65534, 65535, 1]
    assert unpack_nack_items([(10, 0xFFFF)]) == list(range(10, 27))
    assert unpack_nack_items([(1, 0), (100, 1)]) == [1, 100, 101]
    assert unpack_nack_items([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_nack_items_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    base = rng.randrange(65536)
    offsets = sorted(rng.sample(range(300), rng.randrange(1, 120)))
    seqs = [(base + o) & 0xFFFF for o in offsets]
    shuffled = seqs[:]
    rng.shuffle(shuffled)
    items = pack_nack_items(shuffled + shuffled[:5])
    assert unpack_nack_items(items) == seqs
    for pid, blp in items:
        assert 0 <= pid <= 0xFFFF
        assert 0 <= blp <= 0xFFFF
    # Consecutive PIDs are more than 16 apart: the greedy packing is tight.
    for (a, _), (b, _) in zip(items, items[1:], strict=False):
        assert (b - a) & 0xFFFF > 16
