"""VP8 payload descriptors, and PictureID/TL0PICIDX continuity across source switches.

A VP8 RTP payload (RFC 7741) starts with a payload descriptor that may carry a
PictureID (7 or 15 bits, incremented for every picture) and a TL0PICIDX (8 bits,
incremented for every picture of the base temporal layer).  Each sender numbers
its own stream, so every simulcast layer of a publication, and every speaker,
has an unrelated sequence.

An SFU that switches a subscriber's outgoing stream from one incoming stream to
another (a simulcast layer change, or a different speaker) must hide this:
Chromium's receiver builds its frame references from PictureID and discards
frames whose PictureID goes backwards, so after a switch the subscriber would
drop every frame until the new source's numbering happens to overtake the old
one.  `Vp8Rewriter` therefore offsets the ids of each new source so that its
first PictureID is the last one emitted plus one, and likewise for TL0PICIDX
(this is what LiveKit's "VP8 munger" and Galène's ``RewritePacket`` do).

Rules:

- Arithmetic is modular: 2**15 for 15-bit PictureIDs (M bit set), 2**7 for
  7-bit ones, 2**8 for TL0PICIDX.  Each packet keeps the width of its own
  PictureID, so the payload length never changes.  The offset is kept in
  15-bit space and reduced modulo 2**7 for 7-bit ids; the last emitted id is
  tracked in 15-bit space too (a 7-bit id extends it by its signed 7-bit
  distance), so a source may use either width.
- "Last emitted" is the highest id emitted in modular order (a distance of
  less than half the field size counts as forward): a retransmitted or late
  packet does not move it back.  A gap of half the field size or more (64
  pictures for a 7-bit PictureID) is not seen as progress; this only matters
  if a switch follows it.
- The first source gets offset zero: its packets are returned unchanged.  The
  offset of a new source is fixed by its first packet that carries the field
  (PictureID and TL0PICIDX separately: a source may omit one of them) and then
  applies to every later packet of that source, including the other packets of
  the same frame, which share its PictureID.
- A field that has never been emitted has no "last" value: a switch then
  leaves that field's offset at zero.
- The rewriter cannot tell sources apart: the caller must give it only packets
  of the selected source, and call `Vp8Rewriter.switch` before the first packet
  of a new one (a keyframe, where forwarding may start).  A packet of the new
  source that is older than its first forwarded one gets an id at or before the
  old source's last one; callers normally drop those anyway, as they precede the
  keyframe.
- TID, the layer sync bit and KEYIDX are left alone.  Malformed or truncated
  descriptors are returned as is, and never raise.

Cost, measured with timeit (best of 7 x 300k calls) on CPython 3.11 for a
1100-byte payload with a 15-bit PictureID and a TL0PICIDX, on a machine where
`rtpwire.build_rtp` takes 350 ns for the same payload: `Vp8Rewriter.rewrite`
takes about 0.7 us when the offsets are zero (the ids are still read, to track
the last emitted ones; the payload is returned as is), about 1.4 us when the
ids are rewritten (a bytearray copy written in place, and its conversion back
to bytes), and about 130 ns for a payload without extension byte.
`parse_descriptor` takes about 2.7 us, most of it building the frozen
dataclass: it is meant for inspection, not for the forwarding path.
"""

import struct
from dataclasses import dataclass

_PID_MASK = 0x7FFF
_PID_FORWARD = 0x3FFF  # a is after b when (a - b - 1) % 2**15 < this
_PID7_MASK = 0x7F
_PID7_HALF = 0x40
_TL0_MASK = 0xFF
_TL0_FORWARD = 0x7F

# Bytes 2..4 of a payload descriptor with an extension byte.
_FIELDS = struct.Struct("!HB")


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """The fields of an RFC 7741 VP8 payload descriptor."""

    picture_id: int | None  # None when the I bit is not set
    picture_id_bits: int  # 7 or 15 (0 when absent)
    tl0picidx: int | None  # None when the L bit is not set
    temporal_id: int | None  # None when the T bit is not set
    key_idx: int | None  # None when the K bit is not set
    start_of_partition: bool  # S bit
    partition_id: int
    size: int  # length of the descriptor in bytes


def parse_descriptor(payload: bytes) -> Vp8Descriptor | None:
    """Parse the VP8 payload descriptor at the start of an RTP payload.

    Returns None when the payload is too short or malformed for its flags
    (the descriptor must fit in the payload; VP8 data after it is not
    required).  Reserved bits are ignored, as RFC 7741 asks of receivers.
    """
    n = len(payload)
    if n < 1:
        return None
    b0 = payload[0]
    picture_id: int | None = None
    bits = 0
    tl0: int | None = None
    tid: int | None = None
    key_idx: int | None = None
    pos = 1
    if b0 & 0x80:  # X: extension byte
        if n < 2:
            return None
        x = payload[1]
        pos = 2
        if x & 0x80:  # I: PictureID
            if n <= pos:
                return None
            b = payload[pos]
            if b & 0x80:  # M: 15-bit PictureID
                if n <= pos + 1:
                    return None
                picture_id = ((b & 0x7F) << 8) | payload[pos + 1]
                bits = 15
                pos += 2
            else:
                picture_id = b
                bits = 7
                pos += 1
        if x & 0x40:  # L: TL0PICIDX
            if n <= pos:
                return None
            tl0 = payload[pos]
            pos += 1
        if x & 0x30:  # T or K: TID|Y|KEYIDX
            if n <= pos:
                return None
            t = payload[pos]
            if x & 0x20:
                tid = t >> 6
            if x & 0x10:
                key_idx = t & 0x1F
            pos += 1
    return Vp8Descriptor(
        picture_id=picture_id,
        picture_id_bits=bits,
        tl0picidx=tl0,
        temporal_id=tid,
        key_idx=key_idx,
        start_of_partition=bool(b0 & 0x10),
        partition_id=b0 & 0x07,
        size=pos,
    )


class Vp8Rewriter:
    """Keeps one outgoing VP8 stream's PictureID and TL0PICIDX continuous.

    Give it, in forwarding order, the payload of every packet sent on the
    outgoing stream, and call `switch` whenever the next packet comes from a
    different incoming stream.  Not thread-safe.
    """

    __slots__ = (
        "_pid_offset",
        "_pid_last",
        "_pid_pending",
        "_tl0_offset",
        "_tl0_last",
        "_tl0_pending",
    )

    def __init__(self) -> None:
        # Offsets added to incoming ids (15-bit and 8-bit space).
        self._pid_offset = 0
        self._tl0_offset = 0
        # Highest ids emitted so far (PictureID in 15-bit space); -1 before
        # the first one.
        self._pid_last = -1
        self._tl0_last = -1
        # True until the current source's offset has been fixed by its first
        # packet carrying the field (the very first source included, so that
        # the common path below always has a last value).
        self._pid_pending = True
        self._tl0_pending = True

    def switch(self) -> None:
        """Declare that the next packet given to `rewrite` starts a new source.

        That packet will be a keyframe.  From then on the incoming ids are
        offset so that the new source's first PictureID is the last emitted
        PictureID + 1 and its first TL0PICIDX the last emitted TL0PICIDX + 1.
        Calling it again before any packet changes nothing.
        """
        self._pid_pending = True
        self._tl0_pending = True

    def rewrite(self, payload: bytes) -> bytes:
        """Return the payload with PictureID/TL0PICIDX offset.

        Returns the same object when nothing changes (offsets zero, or no such
        fields).  Never raises on malformed input (returns it as is).
        """
        n = len(payload)
        if n < 3 or payload[0] < 0x80:  # no extension byte, so no ids
            return payload
        x = payload[1]
        if not x & 0xC0:  # neither I nor L
            return payload
        # Bytes 2..4 hold the PictureID and TL0PICIDX in every layout; pad a
        # (degenerate) shorter payload, the length checks below use n.
        w, t = _FIELDS.unpack_from(payload if n > 4 else payload + b"\0\0", 2)
        if x & 0x80:
            if w & 0x8000:  # M: 15-bit PictureID
                pid = w & _PID_MASK
                tl0 = t
                end = 4
            else:
                pid = w >> 8
                tl0 = w & 0xFF
                end = 3
        else:
            pid = -1
            tl0 = w >> 8
            end = 2
        if x & 0x40:
            end += 1
        else:
            tl0 = -1
        # Truncated: a field, or the TID|Y|KEYIDX byte, lies past the end.
        if n < end or (x & 0x30 and n == end):
            return payload

        out_pid = pid
        if pid >= 0:
            if self._pid_pending:
                self._fix_pid_offset(pid)
            if w & 0x8000:
                out_pid = (pid + self._pid_offset) & _PID_MASK
                # Newer when 1..2**14-1 ahead of the last one.
                if (out_pid - self._pid_last - 1) & _PID_MASK < _PID_FORWARD:
                    self._pid_last = out_pid
            else:
                out_pid = (pid + self._pid_offset) & _PID7_MASK
                last = self._pid_last
                d = (out_pid - last) & _PID7_MASK
                if 0 < d < _PID7_HALF:
                    self._pid_last = (last + d) & _PID_MASK
        out_tl0 = tl0
        if tl0 >= 0:
            if self._tl0_pending:
                self._fix_tl0_offset(tl0)
            out_tl0 = (tl0 + self._tl0_offset) & _TL0_MASK
            if (out_tl0 - self._tl0_last - 1) & _TL0_MASK < _TL0_FORWARD:
                self._tl0_last = out_tl0
        if out_pid == pid and out_tl0 == tl0:
            return payload

        buf = bytearray(payload)
        if pid >= 0:
            if w & 0x8000:
                buf[2] = 0x80 | (out_pid >> 8)
                buf[3] = out_pid & 0xFF
            else:
                buf[2] = out_pid
        if tl0 >= 0:
            buf[end - 1] = out_tl0
        return bytes(buf)

    def _fix_pid_offset(self, pid: int) -> None:
        """Fix the PictureID offset on the first packet of a source that has one."""
        self._pid_pending = False
        last = self._pid_last
        if last < 0:
            # Nothing emitted yet: keep the ids as they are.
            self._pid_offset = 0
            self._pid_last = pid
        else:
            # The packet maps to last + 1, in 15-bit space whatever its width.
            self._pid_offset = (last + 1 - pid) & _PID_MASK
            self._pid_last = (last + 1) & _PID_MASK

    def _fix_tl0_offset(self, tl0: int) -> None:
        """Fix the TL0PICIDX offset on the first packet of a source that has one."""
        self._tl0_pending = False
        last = self._tl0_last
        if last < 0:
            self._tl0_offset = 0
            self._tl0_last = tl0
        else:
            self._tl0_offset = (last + 1 - tl0) & _TL0_MASK
            self._tl0_last = (last + 1) & _TL0_MASK
