import pytest

from conference.sfu.history import PacketHistory


def test_store_and_get() -> None:
    h: PacketHistory[bytes] = PacketHistory(8)
    h.store(10, b"a")
    h.store(11, b"b")
    assert h.get(10) == b"a"
    assert h.get(11) == b"b"
    assert h.get(12) is None
    assert h.get(2) is None  # same slot as 10, different seq


def test_overwritten_entries_are_gone() -> None:
    h: PacketHistory[int] = PacketHistory(4)
    for seq in range(10):
        h.store(seq, seq * 100)
    assert [h.get(s) for s in range(10)] == [None] * 6 + [600, 700, 800, 900]


def test_wraparound() -> None:
    h: PacketHistory[int] = PacketHistory(512)
    for i in range(65000, 66000):
        h.store(i & 0xFFFF, i)
    for i in range(66000 - 512, 66000):
        assert h.get(i & 0xFFFF) == i
    assert h.get((66000 - 513) & 0xFFFF) is None
    assert h.get(65535) == 65535
    assert h.get(0) == 65536


def test_seq_is_taken_modulo_65536() -> None:
    h: PacketHistory[str] = PacketHistory(16)
    h.store(65536 + 3, "x")
    assert h.get(3) == "x"
    assert h.get(65539) == "x"


def test_duplicate_store_replaces() -> None:
    h: PacketHistory[str] = PacketHistory(16)
    h.store(5, "first")
    h.store(5, "second")
    assert h.get(5) == "second"


def test_non_power_of_two_capacity() -> None:
    h: PacketHistory[int] = PacketHistory(100)
    for i in range(65000, 65436):
        h.store(i, i)
    for i in range(65336, 65436):
        assert h.get(i) == i
    assert h.get(65335) is None
    # Across the wrap, slots are no longer recycled in order: 65535 shares
    # slot 35 with 35, which evicts it early, while the older 65499 (slot
    # 99) survives; nothing is ever confused with another item.
    for i in range(65436, 65536 + 36):
        h.store(i & 0xFFFF, i)
    for i in range(65536, 65536 + 36):
        assert h.get(i & 0xFFFF) == i
    assert h.get(65535) is None
    assert h.get(65500) is None
    assert h.get(65499) == 65499


def test_clear() -> None:
    h: PacketHistory[int] = PacketHistory(4)
    h.store(1, 1)
    h.clear()
    assert h.get(1) is None
    h.store(1, 2)
    assert h.get(1) == 2


def test_seq_zero_before_any_store() -> None:
    h: PacketHistory[int] = PacketHistory(4)
    assert h.get(0) is None


def test_invalid_capacity() -> None:
    with pytest.raises(ValueError):
        PacketHistory(0)
