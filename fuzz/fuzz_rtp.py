"""Fuzz the SFU's RTP ingress (conference/sfu/bridge.py `parse_rtp`) against aiortc.

`parse_rtp` replaces aiortc's ``RtpPacket.parse`` on the ingress path and promises the
same packet and header extensions (MID, RID, repaired RID, abs-send-time, toffset, audio
level, transport-wide sequence number) or a ValueError where aiortc refuses.  On any bytes:

* parse_rtp raises nothing but ValueError;
* where aiortc parses the packet, parse_rtp gives the same fields, except where RFC 8285
  says otherwise (ID 15 ends the one-byte elements; aiortc reads on) and where aiortc
  itself fails on a value of the wrong length (struct.error: parse_rtp ignores the value);
* where aiortc refuses the packet with ValueError, so does parse_rtp (same exceptions);
* the payload parsed back out of `rtpwire.build_rtp` (and RTX: `build_rtx`/`unwrap_rtx`)
  is the payload put in, with the same header fields;
* RED (conference/sfu/red.py): `parse` returns None or blocks that fit the payload, and
  what `build` makes parses back.
"""

from __future__ import annotations

import struct

import atheris
import common

with common.instrumented():
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import RtpPacket

    from conference.sfu import red
    from conference.sfu.bridge import LeanExtensionsMap, parse_rtp
    from conference.sfu.rtpwire import build_rtp, build_rtx, unwrap_rtx

URIS = [
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "urn:ietf:params:rtp-hdrext:toffset",
]


def _map(ids: list[int]) -> LeanExtensionsMap:
    extension_map = LeanExtensionsMap()
    extension_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uri)
                for i, uri in zip(ids, URIS, strict=True)
            ]
        )
    )
    return extension_map


# the IDs browsers negotiate, IDs in another order, and two-byte IDs (above 14)
MAPS = [
    _map([1, 2, 3, 4, 5, 6, 7]),
    _map([9, 10, 11, 3, 1, 5, 14]),
    _map([4, 200, 17, 1, 255, 2, 16]),
]


def _fields(packet: RtpPacket) -> tuple[object, ...]:
    return (
        packet.version,
        packet.marker,
        packet.payload_type,
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
        packet.csrc,
        packet.extensions,
        packet.payload,
        packet.padding_size,
    )


def _stops_early(data: bytes) -> bool:
    """Whether the packet's one-byte extension block holds an element with ID 15 (where
    RFC 8285 stops reading and aiortc does not), as aiortc walks the block."""
    if len(data) < 16 or not data[0] & 0x10:
        return False
    pos = 12 + 4 * (data[0] & 0x0F)
    if len(data) < pos + 4:
        return False
    profile, words = struct.unpack_from("!HH", data, pos)
    if profile != 0xBEDE:
        return False
    pos += 4
    end = min(pos + 4 * words, len(data))
    while pos < end:
        byte = data[pos]
        if byte == 0:
            pos += 1
            continue
        if byte >> 4 == 15:
            return True
        pos += 1 + (byte & 0x0F) + 1
    return False


def check_parse(data: bytes, which: int) -> None:
    extension_map = MAPS[which % len(MAPS)]
    try:
        ours: RtpPacket | None = parse_rtp(data, extension_map.table)
    except ValueError:
        ours = None
    try:
        theirs: RtpPacket | None = RtpPacket.parse(data, extension_map)
    except ValueError:
        theirs = None
    except struct.error:  # aiortc on an extension value of the wrong length
        return
    if _stops_early(data):
        return
    if theirs is None:
        assert ours is None, "parse_rtp accepts a packet aiortc refuses"
        return
    assert ours is not None, "parse_rtp refuses a packet aiortc parses"
    assert type(ours) is RtpPacket
    assert _fields(ours) == _fields(theirs), (_fields(ours), _fields(theirs))


def check_build(fdp: atheris.FuzzedDataProvider) -> None:
    extensions: list[tuple[int, bytes]] = []
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        x_id = fdp.ConsumeIntInRange(1, 255) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(1, 14)
        extensions.append((x_id, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 20))))
    pt = fdp.ConsumeIntInRange(0, 127)
    marker = fdp.ConsumeBool()
    seq = fdp.ConsumeIntInRange(0, 1 << 20)
    ts = fdp.ConsumeIntInRange(0, 1 << 40)
    ssrc = fdp.ConsumeIntInRange(0, 0xFFFFFFFF)
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    packet = build_rtp(pt, marker, seq, ts, ssrc, payload, tuple(extensions))
    table: dict[int, int] = {}  # extensions not read: their values need not be text
    parsed = parse_rtp(packet, table)
    assert (parsed.payload_type, parsed.marker, parsed.sequence_number, parsed.timestamp) == (
        pt,
        int(marker),
        seq & 0xFFFF,
        ts & 0xFFFFFFFF,
    )
    assert parsed.ssrc == ssrc and parsed.payload == payload and parsed.padding_size == 0
    check_parse(packet, 0)
    rtx = build_rtx(pt, seq + 1, ts, ssrc, marker, seq, payload, tuple(extensions))
    original, inner = unwrap_rtx(parse_rtp(rtx, table).payload)
    assert (original, inner) == (seq & 0xFFFF, payload)


def check_red(fdp: atheris.FuzzedDataProvider) -> None:
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    parsed = red.parse(payload)
    if parsed is not None:
        pt, blocks, primary = parsed
        assert 0 <= pt < 128
        assert sum(len(b) for _, _, b in blocks) + len(primary) <= len(payload)
        assert payload.endswith(primary)
    pt = fdp.ConsumeIntInRange(0, 127)
    offset = fdp.ConsumeIntInRange(0, 1 << 15)
    previous = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1100))
    built = red.build(pt, payload, (offset, previous) if fdp.ConsumeBool() else None)
    back = red.parse(built)
    assert back is not None and back[0] == pt and back[2] == payload, "RED round trip"
    for block_pt, block_offset, block in back[1]:
        assert (block_pt, block_offset, block) == (pt, offset, previous)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind = data[0] % 8
    if kind < 6:
        check_parse(data[1:], kind)
    elif kind == 6:
        check_build(atheris.FuzzedDataProvider(data[1:]))
    else:
        check_red(atheris.FuzzedDataProvider(data[1:]))


_HEADER = bytes([0x90, 0xE0, 0x12, 0x34, 0, 0, 0x10, 0, 0xDE, 0xAD, 0xBE, 0xEF])
SEEDS = [
    b"\x00" + _HEADER + b"\xbe\xde\x00\x03\x10\x30\x21\x68\x32\x11\x22\x33\x40\x85\x00" + b"vp8",
    b"\x01" + _HEADER + b"\x10\x00\x00\x02\xc8\x03abc\x01\x01\x00" + b"payload",
    b"\x02" + bytes([0xA1]) + _HEADER[1:] + b"\x00\x00\x00\x07" + b"data\x00\x00\x03",
    b"\x03" + bytes([0x80]) + _HEADER[1:] + b"opus",
    b"\x06" + bytes(range(40)),
    b"\x07\x00\x20" + b"\xef\x00\x14\x05\x6f" + bytes(5) + b"primary",
]

if __name__ == "__main__":
    common.run("rtp", test_one_input, SEEDS)
