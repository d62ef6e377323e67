"""Keyframe detection on RTP payloads, and keyframe request throttling.

An SFU needs to know where keyframes are without decoding anything: a new
subscriber, or one switching layers, can only start forwarding at a
keyframe.  The functions here look at the RTP payload alone (the bytes
after the RTP header and its extensions) and never raise on malformed
input: anything that cannot be parsed is simply not a keyframe.

Codec names are the lower-case encoding names of the SDP: ``"vp8"``,
``"h264"``, and the audio codecs ``"opus"``, ``"pcmu"``, ``"pcma"`` and
``"g722"``, every packet of which is a keyframe.  Unknown codecs are never
keyframes.

VP8 (RFC 7741): a keyframe starts with a packet whose payload descriptor
has S=1 and PID=0 and whose VP8 payload header has the inverse keyframe
bit P=0.  Only that first packet is reported.

H.264 (RFC 6184): a packet is reported as a keyframe if it carries the
beginning of an IDR slice (NAL unit type 5) or a sequence parameter set
(type 7), as a single NAL unit, inside a STAP-A aggregate, or as the first
fragment of an FU-A.  Encoders usually send SPS and PPS in front of the
IDR picture and may split the picture into several slices, so more than
one packet of a keyframe access unit can be reported; all of them belong
to the keyframe, and any of them is a valid point to start forwarding
from provided the subscriber also gets the SPS/PPS (which come first).
"""

_AUDIO_CODECS = frozenset(("opus", "pcmu", "pcma", "g722"))

_NAL_IDR = 5
_NAL_SPS = 7
_NAL_STAP_A = 24
_NAL_FU_A = 28


def _vp8_header_offset(payload: bytes) -> int:
    """Return the offset of the VP8 payload header in a packet whose
    descriptor has S=1 and PID=0, or -1 if it has not or is truncated."""
    n = len(payload)
    if n < 1:
        return -1
    b0 = payload[0]
    if b0 & 0x17 != 0x10:  # S=1, PID=0
        return -1
    pos = 1
    if b0 & 0x80:  # X: extension byte
        if n < 2:
            return -1
        x = payload[1]
        pos = 2
        if x & 0x80:  # I: PictureID
            if n <= pos:
                return -1
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    return pos if pos < n else -1


def _h264_is_keyframe(payload: bytes) -> bool:
    n = len(payload)
    if n < 1:
        return False
    nal = payload[0] & 0x1F
    if nal == _NAL_IDR or nal == _NAL_SPS:
        return True
    if nal == _NAL_FU_A:
        if n < 2:
            return False
        fu = payload[1]
        return bool(fu & 0x80) and (fu & 0x1F) in (_NAL_IDR, _NAL_SPS)
    if nal == _NAL_STAP_A:
        pos = 1
        while pos + 2 < n:
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > n:
                return False
            if payload[pos] & 0x1F in (_NAL_IDR, _NAL_SPS):
                return True
            pos += size
    return False


def is_keyframe(codec: str, payload: bytes) -> bool:
    """Return True if the RTP ``payload`` starts (or is part of) a keyframe.

    See the module documentation for what exactly is reported per codec.
    ``codec`` must be lower-case.  Malformed or truncated payloads return
    False.
    """
    if codec == "vp8":
        pos = _vp8_header_offset(payload)
        return pos >= 0 and not payload[pos] & 0x01
    if codec == "h264":
        return _h264_is_keyframe(payload)
    return codec in _AUDIO_CODECS


def is_frame_start(codec: str, payload: bytes) -> bool:
    """Return True if the RTP ``payload`` may start a new frame.

    VP8: the packet starts partition 0 (S=1, PID=0), which is the start of
    a frame.  H.264: the packet starts a NAL unit, that is, it is not the
    continuation of an FU-A; this is a necessary but not sufficient
    condition (a frame may have several slices).  Audio: always True.
    Unknown codecs and malformed payloads: False.
    """
    if codec == "vp8":
        return _vp8_header_offset(payload) >= 0
    if codec == "h264":
        if not payload:
            return False
        if payload[0] & 0x1F == _NAL_FU_A:
            return len(payload) >= 2 and bool(payload[1] & 0x80)
        return True
    return codec in _AUDIO_CODECS


class KeyframeThrottle:
    """Rate-limit keyframe requests (PLI/FIR) sent to a source.

    Every subscriber that joins or loses packets wants a keyframe, and a
    keyframe is expensive; `allow` returns True at most once every
    ``min_interval`` seconds, and True on the first call (or the first
    call after `reset`).  Times are those of a monotonic clock, in seconds.
    """

    __slots__ = ("min_interval", "_last")

    def __init__(self, min_interval: float = 0.5) -> None:
        self.min_interval = min_interval
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        """Return True, and start a new interval, if a request may be sent."""
        last = self._last
        if last is not None and now - last < self.min_interval:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """Forget the last request: the next `allow` returns True."""
        self._last = None
