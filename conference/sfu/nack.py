"""Upstream loss detection and generic NACK encoding.

A `NackTracker` watches the sequence numbers of one incoming RTP stream
and decides which missing packets to request again from the sender, and
when.  A packet is *missing* once a later one has arrived; it is NACKed at
once, then again every `retry_interval` seconds until it arrives, until it
has been retried `max_retries` times, until it is `max_age` seconds old,
or until it falls more than `window` packets behind the newest packet,
whichever comes first.

A jump forward leaving more than `max_gap` packets missing (100 by
default), or a jump backward by more than `window`, is not loss but a
restart of the sender's numbering: the tracker forgets everything and
starts over from that packet.  Reordered and duplicated packets are
harmless: a late arrival just stops the retries for its sequence number.

`pack_nack_items` and `unpack_nack_items` convert between lists of
sequence numbers and the (PID, BLP) pairs of RFC 4585 generic NACK
feedback messages.

In-order reception, the common case, is O(1) and allocates only the empty
result list; the bookkeeping for missing packets is proportional to the
number of packets currently missing.
"""

from collections.abc import Iterable


class _Missing:
    __slots__ = ("first", "next", "retries")

    def __init__(self, first: float, next_time: float) -> None:
        self.first = first
        self.next = next_time
        self.retries = 0


class NackTracker:
    """Track losses on one incoming stream and schedule their NACKs.

    `received` is called for every incoming packet, with a monotonic time
    in seconds; it returns the sequence numbers found missing by that
    packet, which the caller should NACK immediately.  `due` is called
    periodically and returns those whose next retry time has come.  Each
    missing packet is therefore requested at most ``1 + max_retries``
    times.  Sequence numbers are 16-bit and lists are in sequence order.
    """

    __slots__ = (
        "max_age",
        "retry_interval",
        "max_retries",
        "window",
        "max_gap",
        "_high",
        "_missing",
    )

    def __init__(
        self,
        max_age: float = 1.0,
        retry_interval: float = 0.05,
        max_retries: int = 3,
        window: int = 512,
        max_gap: int = 100,
    ) -> None:
        self.max_age = max_age
        self.retry_interval = retry_interval
        self.max_retries = max_retries
        self.window = window
        self.max_gap = max_gap
        self._high = -1
        # Insertion order is sequence order: entries are only ever added
        # after the newest one, and the dict is emptied on a restart.
        self._missing: dict[int, _Missing] = {}

    def reset(self) -> None:
        """Forget everything; the next packet initialises the tracker."""
        self._high = -1
        self._missing.clear()

    @property
    def missing(self) -> list[int]:
        """The sequence numbers currently missing, in sequence order."""
        high = self._high
        return sorted(self._missing, key=lambda s: (s - high) & 0xFFFF)

    def received(self, seq: int, now: float) -> list[int]:
        """Record the arrival of ``seq``; return the newly missing ones.

        The returned sequence numbers (the gap between the previous newest
        packet and ``seq``) are scheduled for retry and should be NACKed
        now.  The first packet, duplicates, late packets and restarts
        return an empty list.
        """
        seq &= 0xFFFF
        high = self._high
        d = (seq - high) & 0xFFFF
        if d == 1:
            self._high = seq
            return []
        if high < 0:
            self._high = seq
            return []
        if d == 0:
            return []
        missing = self._missing
        if d >= 0x8000:
            if 0x10000 - d > self.window:
                self._restart(seq)
            elif missing:
                missing.pop(seq, None)
            return []
        if d > self.max_gap + 1:
            self._restart(seq)
            return []
        new = [(high + k) & 0xFFFF for k in range(1, d)]
        next_time = now + self.retry_interval
        for s in new:
            missing[s] = _Missing(now, next_time)
        self._high = seq
        self._prune(seq)
        return new

    def skip(self, seq: int) -> None:
        """Record the arrival of ``seq``, the packets between the newest one and it
        having been held back on purpose (another node's audio gate: see
        `conference.sfu.relay`): they are not missing.  Those missing before stay
        missing.  A late ``seq`` (a later packet took the gap for loss already) ends the
        retries of the run of missing packets just before it."""
        seq &= 0xFFFF
        high = self._high
        d = (seq - high) & 0xFFFF
        if high < 0 or (0 < d < 0x8000 and d <= self.max_gap + 1):
            self._high = seq
            if high >= 0:
                self._prune(seq)
            return
        if d == 0:
            return
        if d < 0x8000 or 0x10000 - d > self.window:  # far ahead or far behind: a restart
            self._restart(seq)
            return
        missing = self._missing
        missing.pop(seq, None)
        before = (seq - 1) & 0xFFFF
        while missing.pop(before, None) is not None:
            before = (before - 1) & 0xFFFF

    def repairs(self, seq: int) -> bool:
        """Whether a retransmission of ``seq`` fills a hole (it was missing): it
        is then no longer missing.  False for a copy of a packet already here,
        which is what a publisher's RTX padding is (libwebrtc probes its uplink
        by sending old packets again): such copies must not be forwarded."""
        return self._missing.pop(seq & 0xFFFF, None) is not None

    def _restart(self, seq: int) -> None:
        self._high = seq
        self._missing.clear()

    def _prune(self, high: int) -> None:
        missing = self._missing
        window = self.window
        old = []
        for s in missing:
            if (high - s) & 0xFFFF <= window:
                break
            old.append(s)
        for s in old:
            del missing[s]

    def due(self, now: float) -> list[int]:
        """Return the missing sequence numbers to NACK again now.

        Each one returned counts as a retry and is scheduled again
        `retry_interval` later.  Sequence numbers that have had
        `max_retries` retries, that were found missing `max_age` seconds
        ago or more, or that are more than `window` behind the newest
        packet, are given up instead (and never returned again).
        """
        missing = self._missing
        if not missing:
            return []
        high = self._high
        window = self.window
        max_retries = self.max_retries
        oldest = now - self.max_age
        out: list[int] = []
        dead: list[int] = []
        for s, m in missing.items():
            if m.next > now:
                continue
            if m.retries >= max_retries or m.first <= oldest or (high - s) & 0xFFFF > window:
                dead.append(s)
                continue
            m.retries += 1
            m.next = now + self.retry_interval
            out.append(s)
        for s in dead:
            del missing[s]
        return out


def pack_nack_items(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Encode sequence numbers as RFC 4585 generic NACK (PID, BLP) pairs.

    PID is a lost sequence number and bit i of BLP (0-based) means that
    PID + i + 1 is lost too.  Input may be unordered and contain
    duplicates; it is sorted in sequence order taking 16-bit wraparound
    into account, which assumes it spans less than half the sequence
    space (relative to its first element).  Returns as few pairs as the
    greedy encoding allows, in sequence order.
    """
    values = [s & 0xFFFF for s in seqs]
    if not values:
        return []
    ref = values[0] - 0x8000
    ordered = sorted(set(values), key=lambda s: (s - ref) & 0xFFFF)
    items: list[tuple[int, int]] = []
    pid = ordered[0]
    blp = 0
    for s in ordered[1:]:
        d = (s - pid) & 0xFFFF
        if d <= 16:
            blp |= 1 << (d - 1)
        else:
            items.append((pid, blp))
            pid = s
            blp = 0
    items.append((pid, blp))
    return items


def unpack_nack_items(items: Iterable[tuple[int, int]]) -> list[int]:
    """Decode RFC 4585 generic NACK (PID, BLP) pairs to sequence numbers.

    The result lists, for each pair, PID then the numbers flagged in BLP,
    in increasing order modulo 2**16.
    """
    out: list[int] = []
    for pid, blp in items:
        out.append(pid & 0xFFFF)
        if blp:
            for i in range(16):
                if (blp >> i) & 1:
                    out.append((pid + i + 1) & 0xFFFF)
    return out
