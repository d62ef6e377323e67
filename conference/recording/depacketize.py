"""RTP packets to whole encoded frames: VP8 (RFC 7741), H.264 (RFC 6184), Opus.

Pure code, no I/O.  The recorder hands every forwarded packet (after the
publisher's RTX unwrap and NACK repair) to a :class:`VideoAssembler` or an
:class:`AudioSequencer` and writes the frames they return.

Video: packets are buffered by (extended) sequence number and a frame is
released only when every packet from its first to its marker bit is there,
in order, directly after the previous released frame.  A frame that cannot
be completed within ``max_wait`` seconds (the NACK repair gave up) is a
loss: everything up to the next *complete keyframe* is dropped and
``needs_keyframe`` asks the caller to request one.  So no frame with a
missing packet, and no frame that depends on a missing one, is ever
released.

* VP8: the payload descriptor is stripped; a frame starts at S=1, PID=0;
  a keyframe has P=0 in its first byte and carries its size.
* H.264: single NAL units, STAP-A and FU-A become an Annex B access unit
  (start codes; the Matroska muxer converts it to length-prefixed NAL units
  and takes SPS/PPS for the codec private data from the first keyframe).
  Other packetizations (STAP-B, MTAP, FU-B) are refused as corrupt.
* Opus: one packet is one frame; late (reordered) packets are dropped, lost
  ones leave a gap in time, which is what a mute does too.

Timestamps are returned *extended* (unwrapped past 2**32), in the RTP clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sfu.keyframe import is_keyframe

__all__ = [
    "AudioSequencer",
    "Frame",
    "Unwrapper",
    "VideoAssembler",
    "h264_annexb",
    "h264_frame_size",
    "h264_sps_size",
    "vp8_keyframe_size",
    "vp8_payload",
]

_START_CODE = b"\x00\x00\x00\x01"
#: Packets kept while waiting for a keyframe or a repair, at most.
MAX_BUFFERED = 4096


class Unwrapper:
    """Extends a wrapping counter (16-bit sequence numbers, 32-bit timestamps).

    Values may arrive out of order: each one is placed within half a period
    of the highest value seen so far.
    """

    __slots__ = ("_mod", "_half", "_highest")

    def __init__(self, bits: int) -> None:
        self._mod = 1 << bits
        self._half = self._mod >> 1
        self._highest: int | None = None

    def __call__(self, value: int) -> int:
        highest = self._highest
        if highest is None:
            # start one period up, so values just before the first stay positive
            self._highest = value + self._mod
            return value + self._mod
        delta = ((value - highest) + self._half) % self._mod - self._half
        extended = highest + delta
        if extended > highest:
            self._highest = extended
        return extended


@dataclass(slots=True)
class Frame:
    """One encoded frame ready for the muxer."""

    data: bytes
    timestamp: int  # extended RTP timestamp
    keyframe: bool
    size: tuple[int, int] | None = None  # (width, height) from a VP8 keyframe


def vp8_payload(payload: bytes) -> tuple[bytes, bool] | None:
    """(VP8 data after the payload descriptor, whether it starts a frame), or None.

    A frame starts with S=1 and PID=0.  None for a truncated descriptor.
    """
    n = len(payload)
    if n < 1:
        return None
    b0 = payload[0]
    pos = 1
    if b0 & 0x80:  # X
        if n < 2:
            return None
        x = payload[1]
        pos = 2
        if x & 0x80:  # I: PictureID, 7 or 15 bits
            if n <= pos:
                return None
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K
            pos += 1
    if pos > n:
        return None
    return payload[pos:], (b0 & 0x17) == 0x10


def vp8_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe (RFC 6386, 9.1), or None."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = (frame[6] | (frame[7] << 8)) & 0x3FFF
    height = (frame[8] | (frame[9] << 8)) & 0x3FFF
    return width, height


def h264_annexb(payloads: list[bytes]) -> tuple[bytes, bool] | None:
    """An access unit's RTP payloads as Annex B, and whether it holds an IDR slice.

    None if the packets do not form whole NAL units (an FU-A without its
    start or end, a truncated aggregate, an unsupported packet type).
    """
    out: list[bytes] = []
    idr = False
    fragment: list[bytes] | None = None
    for payload in payloads:
        if not payload:
            continue
        nal_type = payload[0] & 0x1F
        if fragment is not None and nal_type != 28:
            return None  # an FU-A without its end
        if 1 <= nal_type <= 23:
            out.append(_START_CODE)
            out.append(payload)
            idr = idr or nal_type == 5
        elif nal_type == 24:  # STAP-A
            pos, n = 1, len(payload)
            while pos < n:
                if pos + 2 > n:
                    return None
                size = (payload[pos] << 8) | payload[pos + 1]
                pos += 2
                if size == 0 or pos + size > n:
                    return None
                out.append(_START_CODE)
                out.append(payload[pos : pos + size])
                idr = idr or payload[pos] & 0x1F == 5
                pos += size
        elif nal_type == 28:  # FU-A
            if len(payload) < 3:
                return None
            header = payload[1]
            start, end = bool(header & 0x80), bool(header & 0x40)
            if start:
                if fragment is not None:
                    return None
                fragment = [_START_CODE, bytes(((payload[0] & 0xE0) | (header & 0x1F),))]
                idr = idr or header & 0x1F == 5
            elif fragment is None:
                return None
            fragment.append(payload[2:])
            if end:
                out.extend(fragment)
                fragment = None
        else:
            return None
    if fragment is not None or not out:
        return None
    return b"".join(out), idr


class _Bits:
    """Exp-Golomb reader over an RBSP (emulation prevention bytes removed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def bit(self) -> int:
        byte = self.data[self.pos >> 3]  # IndexError past the end
        value = (byte >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def h264_sps_size(sps: bytes) -> tuple[int, int] | None:
    """(width, height) from an H.264 sequence parameter set NAL unit, or None."""
    try:
        bits = _Bits(sps[1:])
        profile = bits.bits(8)
        bits.bits(16)  # constraint flags, level
        bits.ue()  # seq_parameter_set_id
        chroma_format = 1
        if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
            chroma_format = bits.ue()
            if chroma_format == 3:
                bits.bit()  # separate_colour_plane_flag
            bits.ue()  # bit_depth_luma
            bits.ue()  # bit_depth_chroma
            bits.bit()  # qpprime_y_zero_transform_bypass
            if bits.bit():  # seq_scaling_matrix_present
                for index in range(8 if chroma_format != 3 else 12):
                    if bits.bit():
                        last, following = 8, 8
                        for _ in range(16 if index < 6 else 64):
                            if following:
                                following = (last + bits.se() + 256) % 256
                            last = following or last
        bits.ue()  # log2_max_frame_num
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()
        elif poc_type == 1:
            bits.bit()
            bits.se()
            bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.bit()  # gaps_in_frame_num_allowed
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.bit()
        if not frame_mbs_only:
            bits.bit()  # mb_adaptive_frame_field
        bits.bit()  # direct_8x8_inference
        width = width_mbs * 16
        height = height_units * 16 * (2 - frame_mbs_only)
        if bits.bit():  # frame_cropping
            left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
            crop_x = 2 if chroma_format in (1, 2) else 1
            crop_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
            width -= (left + right) * crop_x
            height -= (top + bottom) * crop_y
    except (IndexError, ValueError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def h264_frame_size(unit: bytes) -> tuple[int, int] | None:
    """The size in the first SPS of an Annex B access unit, or None."""
    for nal in unit.split(_START_CODE):
        if nal and nal[0] & 0x1F == 7:
            return h264_sps_size(nal)
    return None


@dataclass(slots=True)
class _Packet:
    timestamp: int
    marker: bool
    payload: bytes
    arrival: float


class VideoAssembler:
    """Reorders a video publication's packets and releases only whole, decodable frames."""

    def __init__(self, codec: str, max_wait: float = 1.0) -> None:
        if codec not in ("vp8", "h264"):
            raise ValueError(f"cannot record video codec {codec!r}")
        self.codec = codec
        self.max_wait = max_wait
        self.synced = False
        #: True while the assembler waits for a keyframe (the caller requests one).
        self.needs_keyframe = True
        self.frames = 0
        self.losses = 0  # times a loss forced a wait for the next keyframe
        self.dropped_packets = 0
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._buffer: dict[int, _Packet] = {}
        self._next_seq = 0
        self._previous_ts: dict[int, int] = {}  # recent seq -> timestamp (frame starts)
        self._resynced = False  # synced on a keyframe, no frame released since

    # -- input --------------------------------------------------------------------
    def push(
        self, sequence_number: int, timestamp: int, marker: bool, payload: bytes, now: float
    ) -> list[Frame]:
        """Add one packet; returns the frames it completes (usually none or one)."""
        seq = self._seq(sequence_number)
        ts = self._ts(timestamp)
        if (self.synced and seq < self._next_seq) or seq in self._buffer:
            return []  # late duplicate (a repair after the frame was written or dropped)
        self._buffer[seq] = _Packet(ts, marker, payload, now)
        seen = self._previous_ts
        seen[seq] = ts
        if len(seen) > 2 * MAX_BUFFERED:
            for old in sorted(seen)[:MAX_BUFFERED]:
                del seen[old]
        if len(self._buffer) > MAX_BUFFERED:
            self._declare_loss(drop_oldest=True)
        return self._drain(now)

    def poll(self, now: float) -> list[Frame]:
        """Give up on frames that waited too long for a repair (call periodically)."""
        if not self._buffer:
            return []
        return self._drain(now)

    # -- assembly -----------------------------------------------------------------
    def _drain(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        while self._buffer:
            if not self.synced:
                start = self._find_keyframe(now)
                if start is None:
                    break
                self._next_seq = start
                self.synced = True
                self.needs_keyframe = False
                self._resynced = True
            first = self._next_seq
            result = self._take(first)
            if result is None:
                if self._expired(now):
                    self._declare_loss()
                    continue
                break
            frame, end = result
            self._next_seq = end + 1
            if frame is None:  # padding between frames
                continue
            if not frame.data:
                self._declare_loss()
                continue
            if self._resynced and not frame.keyframe:
                # an H.264 access unit of parameter sets without an IDR slice: what
                # follows it would depend on a picture the assembler never had
                self.synced = False
                self.needs_keyframe = True
                self.dropped_packets += end - first + 1
                continue
            self._resynced = False
            self.frames += 1
            out.append(frame)
        return out

    def _take(self, start: int) -> tuple[Frame | None, int] | None:
        """The frame starting at ``start`` and its last sequence number, or None.

        ``(None, start)`` for a padding-only packet at a frame boundary.  A frame
        with undecodable content comes back with empty ``data``.
        """
        buffer = self._buffer
        first = buffer.get(start)
        if first is None:
            return None
        if not first.payload:
            del buffer[start]
            return None, start
        seq = start
        packets = [first]
        if not first.marker:
            while True:
                packet = buffer.get(seq + 1)
                if packet is None:
                    return None
                if packet.timestamp != first.timestamp:
                    break  # the frame ended without a marker bit
                seq += 1
                packets.append(packet)
                if packet.marker:
                    break
        for s in range(start, seq + 1):
            del buffer[s]
        return self._frame(packets), seq

    def _frame(self, packets: list[_Packet]) -> Frame:
        timestamp = packets[0].timestamp
        if self.codec == "vp8":
            parts = []
            for index, packet in enumerate(packets):
                parsed = vp8_payload(packet.payload)
                if parsed is None or parsed[1] != (index == 0):
                    return Frame(b"", timestamp, False)
                parts.append(parsed[0])
            data = b"".join(parts)
            keyframe = bool(data) and not data[0] & 0x01
            return Frame(data, timestamp, keyframe, vp8_keyframe_size(data) if keyframe else None)
        unit = h264_annexb([p.payload for p in packets])
        if unit is None:
            return Frame(b"", timestamp, False)
        size = h264_frame_size(unit[0]) if unit[1] else None
        return Frame(unit[0], timestamp, unit[1], size)

    def _keyframe_start(self, seq: int) -> int | None:
        """The first sequence number of the keyframe ``seq`` belongs to, or None."""
        buffer = self._buffer
        packet = buffer[seq]
        if not packet.payload or not is_keyframe(self.codec, packet.payload):
            return None
        if self.codec == "vp8":
            return seq  # S=1, PID=0 and P=0: the first packet of a keyframe
        # H.264: SPS, PPS and the IDR slices share the access unit's timestamp
        start = seq
        while start - 1 in buffer and buffer[start - 1].timestamp == packet.timestamp:
            start -= 1
        previous = self._previous_ts.get(start - 1)
        if previous is not None:
            return start if previous != packet.timestamp else None
        # the packet before is unknown: start only at an SPS (no missing parameter sets)
        first = buffer[start].payload
        if first and (
            first[0] & 0x1F == 7 or (first[0] & 0x1F == 24 and first[3:4] and first[3] & 0x1F == 7)
        ):
            return start
        return None

    def _find_keyframe(self, now: float) -> int | None:
        buffer = self._buffer
        for seq in sorted(buffer):
            packet = buffer.get(seq)
            if packet is None:
                continue
            start = self._keyframe_start(seq)
            if start is None:
                if now - packet.arrival > self.max_wait:
                    del buffer[seq]
                    self.dropped_packets += 1
                continue
            for old in [s for s in buffer if s < start]:
                del buffer[old]
                self.dropped_packets += 1
            return start
        return None

    def _expired(self, now: float) -> bool:
        oldest = min(p.arrival for p in self._buffer.values())
        return now - oldest > self.max_wait

    def _declare_loss(self, drop_oldest: bool = False) -> None:
        """A packet will not come: drop until the next complete keyframe."""
        if self.synced:
            self.losses += 1
        self.synced = False
        self.needs_keyframe = True
        buffer = self._buffer
        if not buffer:
            return
        # the frame that cannot complete goes; a later keyframe may already be here
        first = min(buffer)
        stale = buffer[first].timestamp
        for seq in [s for s, p in buffer.items() if p.timestamp == stale]:
            del buffer[seq]
            self.dropped_packets += 1
        if drop_oldest:
            while len(buffer) > MAX_BUFFERED // 2:
                del buffer[min(buffer)]
                self.dropped_packets += 1


class AudioSequencer:
    """Opus (or any one-packet-per-frame codec): drops duplicates and late packets."""

    def __init__(self) -> None:
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._last: int | None = None
        self.frames = 0
        self.dropped_packets = 0

    def push(self, sequence_number: int, timestamp: int, payload: bytes) -> Frame | None:
        seq = self._seq(sequence_number)
        ts = self._ts(timestamp)
        if not payload or (self._last is not None and seq <= self._last):
            self.dropped_packets += 1
            return None
        self._last = seq
        self.frames += 1
        return Frame(payload, ts, True)
