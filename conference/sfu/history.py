"""A ring buffer of recently sent packets, for retransmission.

When a subscriber NACKs an outgoing sequence number, the SFU looks the
packet up here and resends it.  The buffer holds the last `capacity`
packets stored, indexed by their 16-bit outgoing sequence number modulo
the capacity; each slot remembers the sequence number it was stored
under, so a lookup never returns a packet that has been overwritten by a
later one sharing the slot.  Storing and looking up are O(1) and allocate
nothing.

What an item is (raw bytes, or bytes with a timestamp and marker) is up to
the caller: the buffer is generic.
"""

from typing import Generic, TypeVar

T = TypeVar("T")


class PacketHistory(Generic[T]):
    """Remember the last ``capacity`` items, keyed by 16-bit sequence number.

    A power-of-two capacity (the default, 512) divides 65536, so slots are
    recycled in strict sequence order across wraparound: `get` then finds
    exactly the items whose sequence number is among the last ``capacity``
    stored, provided sequence numbers are stored in increasing order.
    Storing out of order, or with gaps, merely evicts items early; so does
    the wraparound with a capacity that is not a power of two.  In every
    case an evicted item is reported as missing, never confused with
    another one.
    """

    __slots__ = ("capacity", "_seqs", "_items")

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._seqs: list[int] = [-1] * capacity
        self._items: list[T | None] = [None] * capacity

    def store(self, seq: int, item: T) -> None:
        """Store ``item`` under sequence number ``seq``, evicting whatever
        occupied its slot."""
        seq &= 0xFFFF
        i = seq % self.capacity
        self._seqs[i] = seq
        self._items[i] = item

    def get(self, seq: int) -> T | None:
        """Return the item stored under ``seq``, or None if it was never
        stored or has been evicted."""
        seq &= 0xFFFF
        i = seq % self.capacity
        if self._seqs[i] != seq:
            return None
        return self._items[i]

    def clear(self) -> None:
        """Forget every item."""
        n = self.capacity
        self._seqs = [-1] * n
        self._items = [None] * n
