import pytest

from conference.sfu.seqnum import seq_add, seq_diff, seq_gt, ts_add, ts_diff


def test_seq_add_wraps() -> None:
    assert seq_add(65535, 1) == 0
    assert seq_add(65530, 10) == 4
    assert seq_add(0, -1) == 65535
    assert seq_add(100, 0) == 100
    assert seq_add(1, 65536) == 1


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (5, 3, 2),
        (3, 5, -2),
        (0, 65535, 1),
        (65535, 0, -1),
        (1, 65535, 2),
        (10, 10, 0),
        (32767, 0, 32767),
        (32768, 0, -32768),
        (0, 32768, -32768),
        (0, 32769, 32767),
        (40000, 7233, 32767),
    ],
)
def test_seq_diff(a: int, b: int, expected: int) -> None:
    assert seq_diff(a, b) == expected


def test_seq_diff_range_and_consistency() -> None:
    for a in range(0, 65536, 251):
        for b in range(0, 65536, 509):
            d = seq_diff(a, b)
            assert -32768 <= d <= 32767
            assert seq_add(b, d) == a


def test_seq_gt() -> None:
    assert seq_gt(1, 0)
    assert not seq_gt(0, 1)
    assert seq_gt(0, 65535)
    assert not seq_gt(65535, 0)
    assert not seq_gt(7, 7)
    assert seq_gt(32767, 0)
    # Exactly half-way: incomparable in both directions.
    assert not seq_gt(32768, 0)
    assert not seq_gt(0, 32768)


def test_ts_add_wraps() -> None:
    assert ts_add(0xFFFFFFFF, 1) == 0
    assert ts_add(0xFFFFFF00, 0x200) == 0x100
    assert ts_add(0, -3000) == 0xFFFFFFFF - 2999


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (3000, 0, 3000),
        (0, 3000, -3000),
        (100, 0xFFFFFF00, 356),
        (0xFFFFFF00, 100, -356),
        (0x7FFFFFFF, 0, 0x7FFFFFFF),
        (0x80000000, 0, -0x80000000),
        (5, 5, 0),
    ],
)
def test_ts_diff(a: int, b: int, expected: int) -> None:
    assert ts_diff(a, b) == expected
