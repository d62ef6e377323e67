"""Fast RTP serialisation for the forwarding path.

The SFU rewrites the header of every packet it forwards, for every
subscriber; building an `aiortc.rtp.RtpPacket` and calling its
``serialize`` for that is several times slower than necessary.  The
functions here build the wire format directly with precompiled structs:

- `build_rtp`: an RFC 3550 packet (version 2, no padding, no CSRC), with an
  optional RFC 8285 header extension block.  The one-byte form (profile
  0xBEDE) is used when every extension id is in 1..14 and every value is
  1..16 bytes long, otherwise the two-byte form (profile 0x1000, ids
  1..255, values 0..255 bytes).  Extensions are written in the order
  given, and the block is padded with zero bytes to a multiple of 32 bits;
  this is byte-for-byte what aiortc produces for the same extensions.
- `build_rtx` / `unwrap_rtx`: RFC 4588 retransmission packets, whose
  payload is the original sequence number followed by the original
  payload.
- `abs_send_time` and `audio_level`: values of the abs-send-time and
  RFC 6464 client-to-mixer audio level extensions.

Invalid extensions (id 0, an id above 255, a value over 255 bytes) raise
ValueError.  Sequence numbers and timestamps are reduced modulo their
field size; other fields must fit their width (struct.error otherwise).

Cost, measured with timeit (best of 7 x 300k calls) on CPython 3.11 for a
1100-byte payload: `build_rtp` takes about 360 ns without extensions and
about 1.4 us with three (mid, abs-send-time, audio level), against about
1.8 us and 5 us for building an aiortc ``RtpPacket`` and calling
``serialize`` with the same content.
"""

import struct
from typing import cast

_HEADER = struct.Struct("!BBHII")
_HEADER_NO_EXT = 0x80  # V=2, P=0, X=0, CC=0
_HEADER_EXT = 0x90  # V=2, P=0, X=1, CC=0
_U16 = struct.Struct("!H")

# Every single-byte bytes object, to return without allocating.
_BYTE = [bytes((i,)) for i in range(256)]
_PADDING = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")

Extensions = tuple[tuple[int, bytes], ...]


def _extension_block(extensions: Extensions) -> bytearray:
    """Return the RFC 8285 extension block: profile, length in 32-bit
    words, elements, zero padding."""
    # One-byte form, optimistically: by far the common case.
    block = bytearray(b"\xbe\xde\x00\x00")
    for x_id, value in extensions:
        n = len(value)
        if not (0 < x_id < 15 and 0 < n < 17):
            if x_id < 1:
                raise ValueError(f"invalid RTP header extension id {x_id}")
            return _two_byte_block(extensions)
        block.append((x_id << 4) | (n - 1))
        block += value
    size = len(block) - 4
    pad = -size & 3
    if pad:
        block += _PADDING[pad]
    # At most 14 elements of 17 bytes: the length fits in the low byte.
    block[3] = (size + pad) >> 2
    return block


def _two_byte_block(extensions: Extensions) -> bytearray:
    block = bytearray(b"\x10\x00\x00\x00")
    for x_id, value in extensions:
        n = len(value)
        if not 0 < x_id < 256:
            raise ValueError(f"invalid RTP header extension id {x_id}")
        if n > 255:
            raise ValueError("RTP header extension value longer than 255 bytes")
        block.append(x_id)
        block.append(n)
        block += value
    size = len(block) - 4
    pad = -size & 3
    if pad:
        block += _PADDING[pad]
    _U16.pack_into(block, 2, (size + pad) >> 2)
    return block


def build_rtp(
    payload_type: int,
    marker: bool,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    extensions: Extensions = (),
) -> bytes:
    """Serialise an RTP packet.

    ``extensions`` is a tuple of (id, value) pairs for the RFC 8285
    extension block; no block is written when it is empty.  ``seq`` and
    ``timestamp`` are taken modulo their field size, so callers may pass
    unwrapped counters.
    """
    m_pt = (0x80 | payload_type) if marker else payload_type
    if not extensions:
        return (
            _HEADER.pack(_HEADER_NO_EXT, m_pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload
        )
    return b"".join(
        (
            _HEADER.pack(_HEADER_EXT, m_pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc),
            _extension_block(extensions),
            payload,
        )
    )


def extension_block(extensions: Extensions) -> bytes:
    """The RFC 8285 header-extension block for ``extensions`` (empty: ``b""``).

    For the fan-out: subscribers that share extension IDs share the block,
    so it is built once per incoming packet, then given to
    :func:`build_rtp_with_block`.
    """
    return bytes(_extension_block(extensions)) if extensions else b""


def build_rtp_with_block(
    payload_type: int,
    marker: int,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    block: bytes,
) -> bytes:
    """Like :func:`build_rtp`, with a block made by :func:`extension_block`."""
    m_pt = (0x80 | payload_type) if marker else payload_type
    first = _HEADER_EXT if block else _HEADER_NO_EXT
    return b"".join(
        (_HEADER.pack(first, m_pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc), block, payload)
    )


def build_rtx(
    rtx_payload_type: int,
    rtx_seq: int,
    timestamp: int,
    ssrc: int,
    marker: bool,
    original_seq: int,
    payload: bytes,
    extensions: Extensions = (),
) -> bytes:
    """Serialise an RFC 4588 retransmission of a packet.

    ``rtx_payload_type``, ``rtx_seq`` and ``ssrc`` are those of the RTX
    stream; ``timestamp`` and ``marker`` are copied from the original
    packet, whose sequence number ``original_seq`` is prepended to its
    ``payload``.
    """
    m_pt = (0x80 | rtx_payload_type) if marker else rtx_payload_type
    if extensions:
        head = _HEADER.pack(_HEADER_EXT, m_pt, rtx_seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        block: bytes | bytearray = _extension_block(extensions)
    else:
        head = _HEADER.pack(_HEADER_NO_EXT, m_pt, rtx_seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        block = b""
    return b"".join((head, block, _U16.pack(original_seq & 0xFFFF), payload))


def unwrap_rtx(payload: bytes) -> tuple[int, bytes]:
    """Split an RTX payload into (original sequence number, original
    payload).  Raises ValueError if it is shorter than two bytes."""
    if len(payload) < 2:
        raise ValueError("RTX payload too short")
    return (payload[0] << 8) | payload[1], payload[2:]


def abs_send_time(seconds: float) -> bytes:
    """Return the 3-byte abs-send-time extension value for a time.

    The value is the time in seconds as unsigned 6.18 fixed point,
    truncated to 24 bits: it wraps every 64 s, so any clock will do
    (NTP time in seconds, or a monotonic clock) as long as it is the same
    for all packets of a session.
    """
    return (int(seconds * 262144.0) & 0xFFFFFF).to_bytes(3, "big")


def audio_level(vad: bool, level: int) -> bytes:
    """Return the 1-byte RFC 6464 audio level extension value.

    ``level`` is in -dBov, 0 (loudest) to 127 (silence), and is clamped to
    that range; ``vad`` is the voice activity flag.
    """
    if level < 0:
        level = 0
    elif level > 127:
        level = 127
    return _BYTE[(0x80 | level) if vad else level]


class BlockTemplate:
    """The header-extension block of one subscriber's forwarded packets: its MID, the
    packet's audio level, the abs-send-time of now, in that order (each one only if
    negotiated, the level only if the packet has one).  Byte for byte
    `extension_block` of the same extensions, from pieces built once: a few
    concatenations per packet instead of a tuple of pairs and a loop over it."""

    __slots__ = ("_mid", "_level_id", "_abs_id", "_one_byte", "_plain", "_leveled")

    def __init__(self, mid: tuple[int, bytes] | None, level_id: int | None, abs_id: int | None):
        self._mid = mid
        self._level_id = level_id
        self._abs_id = abs_id
        sizes = [len(mid[1])] if mid is not None else []
        ids = [mid[0]] if mid is not None else []
        ids += [x for x in (level_id, abs_id) if x is not None]
        # the one-byte form for every combination (else `extension_block` each time)
        self._one_byte = all(0 < x < 15 for x in ids) and all(0 < n < 17 for n in sizes)
        #: without a level: (before the abs-send-time value, after it); with one:
        #: (before the level byte, between it and the abs-send-time value, after)
        self._plain: tuple[bytes, ...] = ()
        self._leveled: tuple[bytes, ...] = ()
        if self._one_byte:
            self._plain = self._pieces(False)
            if level_id is not None:
                self._leveled = self._pieces(True)

    def _pieces(self, level: bool) -> tuple[bytes, ...]:
        """The block around its variable parts: (before the level byte if ``level``,
        before the abs-send-time value if negotiated, after both)."""
        elements = bytearray()
        if self._mid is not None:
            x_id, value = self._mid
            elements.append((x_id << 4) | (len(value) - 1))
            elements += value
        size = len(elements) + (2 if level else 0) + (4 if self._abs_id is not None else 0)
        if not size:
            return (b"", b"", b"")
        pad = -size & 3
        head = b"\xbe\xde" + ((size + pad) >> 2).to_bytes(2, "big") + bytes(elements)
        abs_head = bytes([(self._abs_id << 4) | 2]) if self._abs_id is not None else b""
        if level:
            return (head + bytes([cast(int, self._level_id) << 4]), abs_head, bytes(pad))
        return (b"", head + abs_head, bytes(pad))

    def block(self, level: tuple[bool, int] | None, now: float) -> bytes:
        """The block for a packet with audio level ``level`` (None: none), sent at
        ``now`` (seconds, any clock: `abs_send_time`)."""
        if not self._one_byte:
            extensions: list[tuple[int, bytes]] = []
            if self._mid is not None:
                extensions.append(self._mid)
            if self._level_id is not None and level is not None:
                extensions.append((self._level_id, audio_level(level[0], level[1])))
            if self._abs_id is not None:
                extensions.append((self._abs_id, abs_send_time(now)))
            return extension_block(tuple(extensions))
        if level is not None and self._level_id is not None:
            before, middle, after = self._leveled
            before += audio_level(level[0], level[1])
        else:
            before, middle, after = self._plain
        if self._abs_id is None:
            return before + middle + after
        return b"".join(
            (before, middle, (int(now * 262144.0) & 0xFFFFFF).to_bytes(3, "big"), after)
        )
