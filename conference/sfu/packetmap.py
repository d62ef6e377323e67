"""Remapping of RTP sequence numbers for one forwarded stream.

An SFU rewrites the sequence numbers of the packets it forwards: the
subscriber must see a single continuous numbering even when the SFU drops
packets (padding-only packets used as bandwidth probes) or when the source
restarts its numbering.  Gaps caused by *loss* must, on the other hand,
stay visible, so that the subscriber NACKs them and the SFU can translate
the NACK back to the source numbering with `PacketMap.reverse`.

A `PacketMap` is piecewise linear: outgoing = incoming + offset, where the
offset only changes at a dropped packet (it decreases by one) or at a
restart (it is chosen so that numbering continues).  Internally incoming
sequence numbers are unwrapped to unbounded integers relative to the
highest one seen, and the offset changes are kept in a short sorted list of
``(first incoming number, offset)`` segments; a dropped packet is a segment
whose offset is None.  Segments that end more than `window` packets behind
the newest packet are pruned, so memory is bounded by the number of drops
within one window.  Mapping an in-order packet is O(1) and touches neither
the list nor any allocation; late packets cost one bisection.
"""

from bisect import bisect_right

#: Late packets at most this many behind the newest one are still mapped.
DEFAULT_WINDOW = 1024

#: A forward jump larger than this is a stream restart, not loss.
DEFAULT_RESTART_THRESHOLD = 3000

#: A backward jump larger than this is a restart too: no real packet is
#: that late, while a source that restarts its numbering at a random value
#: lands behind us half of the time.
BACKWARD_RESTART_THRESHOLD = 8192


class PacketMap:
    """Map the incoming sequence numbers of one stream to outgoing ones.

    The incoming number ``first_in`` maps to ``first_out``; later numbers
    map to the same distance from ``first_out``, minus the number of
    packets dropped in between (see `drop`).  The map answers:

    - new packets: a packet ahead of the newest one maps to the next
      numbers, preserving any gap so that loss stays visible downstream;
    - late, reordered or duplicated packets up to `window` behind the
      newest one: they map to the number they would have had had they
      arrived in order (and duplicates get the same answer again);
    - a forward jump of more than `restart_threshold`, or a backward jump
      of more than 8192, is taken as a restart of the source numbering:
      the map is re-anchored so that the packet maps to ``last_out + 1``
      and everything before it is forgotten.  (A straggler of the old
      numbering arriving afterwards is then usually far away too, and
      causes another re-anchoring; the output numbering stays contiguous.)

    `map` returns None for packets that were dropped, that precede
    ``first_in`` (or the latest restart), or that are older than the
    window.

    Not thread-safe; all numbers are 16-bit.
    """

    __slots__ = ("_high", "_offset", "_starts", "_offsets", "_window", "_restart")

    def __init__(
        self,
        first_in: int,
        first_out: int,
        *,
        window: int = DEFAULT_WINDOW,
        restart_threshold: int = DEFAULT_RESTART_THRESHOLD,
    ) -> None:
        first_in &= 0xFFFF
        first_out &= 0xFFFF
        # Highest incoming number seen, unwrapped (unbounded int).
        self._high = first_in
        # Offset applying to incoming numbers after the last segment start.
        self._offset = first_out - first_in
        # Segments: _offsets[i] applies to unwrapped incoming numbers in
        # [_starts[i], _starts[i + 1]); None marks dropped packets.  The
        # first start is the lowest number that may be mapped, and the last
        # offset is always equal to _offset.
        self._starts: list[int] = [first_in]
        self._offsets: list[int | None] = [self._offset]
        self._window = window
        self._restart = restart_threshold

    @property
    def last_out(self) -> int:
        """The outgoing number of the newest packet not dropped.

        The next new packet maps to ``last_out + 1`` (plus any gap).
        """
        return (self._high + self._offset) & 0xFFFF

    def map(self, seq: int) -> int | None:
        """Return the outgoing number for incoming ``seq``, or None.

        None means the packet must not be forwarded: it was dropped, or it
        is too old to be mapped reliably.  A packet ahead of every packet
        seen so far becomes the newest one.
        """
        high = self._high
        d = (seq - high) & 0xFFFF
        if d < 0x8000:
            if d == 0:
                return self._lookup(high)
            if d <= self._restart:
                high += d
                self._high = high
                return (high + self._offset) & 0xFFFF
            return self._reanchor(high + d)
        d -= 0x10000
        if d < -self._window:
            if d < -BACKWARD_RESTART_THRESHOLD:
                return self._reanchor(high + d)
            return None
        return self._lookup(high + d)

    def _lookup(self, ext: int) -> int | None:
        starts = self._starts
        if ext >= starts[-1]:
            off = self._offsets[-1]
        else:
            i = bisect_right(starts, ext) - 1
            if i < 0:
                return None
            off = self._offsets[i]
        if off is None:
            return None
        return (ext + off) & 0xFFFF

    def _reanchor(self, ext: int) -> int:
        out = self._high + self._offset + 1
        # Renormalise so that unwrapped numbers stay small.
        ext &= 0xFFFF
        self._high = ext
        self._offset = out - ext
        self._starts = [ext]
        self._offsets = [self._offset]
        return out & 0xFFFF

    def resume(self, seq: int) -> int:
        """The packets before incoming ``seq`` were held back on purpose (a microphone
        the audio gate closed): ``seq`` continues the outgoing numbering at
        ``last_out + 1``, without a gap, and what came before is forgotten."""
        return self._reanchor(seq)

    def drop(self, seq: int) -> None:
        """Declare that incoming ``seq`` will not be forwarded.

        Every later incoming number is shifted down by one, so that the
        output has no hole where the packet would have been, and
        ``map(seq)`` returns None from now on.  Only the newest packet can
        be dropped: ``seq`` is either the newest packet seen, or a packet
        ahead of it that has not been mapped yet (it then becomes the
        newest one, as if it had been mapped first).  Dropping an older
        packet is ignored: it keeps its number and simply leaves a gap,
        which the receiver will NACK in vain.  Dropping the same packet
        twice is harmless.
        """
        d = (seq - self._high) & 0xFFFF
        if d != 0:
            if d >= 0x8000:
                return
            self.map(seq)
        ext = self._high
        starts = self._starts
        offsets = self._offsets
        if starts[-1] > ext:
            # Already dropped: the segment after the drop is pending.
            return
        if starts[-1] == ext:
            # A segment starts exactly here (previous drop, or anchor).
            starts.pop()
            offsets.pop()
        if not offsets or offsets[-1] is not None:
            starts.append(ext)
            offsets.append(None)
        self._offset -= 1
        starts.append(ext + 1)
        offsets.append(self._offset)
        # Prune segments that end before the window.
        limit = ext - self._window
        n = 0
        while n + 1 < len(starts) and starts[n + 1] <= limit:
            n += 1
        if n:
            del starts[:n]
            del offsets[:n]

    def reverse(self, out_seq: int) -> int | None:
        """Return the incoming number that maps to outgoing ``out_seq``.

        Used to translate a subscriber's NACK into a request to the source.
        Returns None if ``out_seq`` is after `last_out`, before the first
        outgoing number (or the latest restart), or maps to an incoming
        number older than the window.  Outgoing numbers that correspond to
        packets lost upstream do map back: the caller decides whether it
        still has the packet.
        """
        high = self._high
        last = high + self._offset
        d = (out_seq - last) & 0xFFFF
        if d:
            if d < 0x8000:
                return None
            d -= 0x10000
        out = last + d
        starts = self._starts
        offsets = self._offsets
        end = high + 1
        for i in range(len(starts) - 1, -1, -1):
            off = offsets[i]
            start = starts[i]
            if off is not None:
                ext = out - off
                if ext >= start:
                    if ext >= end or high - ext > self._window:
                        return None
                    return ext & 0xFFFF
            end = start
        return None
