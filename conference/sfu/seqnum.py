"""Modular arithmetic on RTP sequence numbers and timestamps.

RTP sequence numbers are 16-bit and RTP timestamps are 32-bit counters
that wrap around.  Comparisons are only meaningful over short distances,
so every difference computed here is the signed shortest distance in the
modular space (serial number arithmetic, RFC 1982): ``seq_diff(1, 65535)``
is ``2``, not ``-65534``.

At exactly half the modulus the distance is ambiguous; by convention it is
reported as the most negative value (-32768 or -2**31), so that neither
number is considered greater than the other by `seq_gt`.

All functions accept any Python int and reduce their result modulo the
field size; they are plain functions so that callers on the per-packet
path pay for one call and a couple of integer operations.
"""

SEQ_MOD = 0x10000
SEQ_MASK = 0xFFFF
TS_MOD = 0x100000000
TS_MASK = 0xFFFFFFFF


def seq_add(a: int, n: int) -> int:
    """Return the 16-bit sequence number ``a + n`` (``n`` may be negative)."""
    return (a + n) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """Return the signed shortest distance ``a - b`` in 16-bit space.

    The result lies in -32768..32767.  It is positive when ``a`` comes
    after ``b``, negative when it comes before, zero when they are equal.
    """
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= 0x8000 else d


def seq_gt(a: int, b: int) -> bool:
    """Return True if sequence number ``a`` comes strictly after ``b``.

    Numbers exactly 32768 apart are incomparable: neither is greater.
    """
    return 0 < ((a - b) & SEQ_MASK) < 0x8000


def ts_add(a: int, n: int) -> int:
    """Return the 32-bit RTP timestamp ``a + n`` (``n`` may be negative)."""
    return (a + n) & TS_MASK


def ts_diff(a: int, b: int) -> int:
    """Return the signed shortest distance ``a - b`` in 32-bit space.

    The result lies in -2**31..2**31-1; see `seq_diff`.
    """
    d = (a - b) & TS_MASK
    return d - TS_MOD if d >= 0x80000000 else d
