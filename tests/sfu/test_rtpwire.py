import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unpack_header_extensions

from conference.sfu.rtpwire import (
    abs_send_time,
    audio_level,
    build_rtp,
    build_rtx,
    unwrap_rtx,
)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def ext_map(mid: int, abs_time: int, level: int) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=mid, uri=MID_URI),
                RTCRtpHeaderExtensionParameters(id=abs_time, uri=ABS_SEND_TIME_URI),
                RTCRtpHeaderExtensionParameters(id=level, uri=AUDIO_LEVEL_URI),
            ]
        )
    )
    return m


def split_extensions(data: bytes) -> tuple[int, list[tuple[int, bytes]], int]:
    """Return (profile, elements, header length) of a packet without CSRC."""
    assert data[0] & 0x10
    profile, words = struct.unpack_from("!HH", data, 12)
    block = data[16 : 16 + 4 * words]
    return profile, unpack_header_extensions(profile, block), 16 + 4 * words


def test_plain_packet_matches_aiortc() -> None:
    payload = bytes(range(200))
    data = build_rtp(96, True, 1234, 0xDEADBEEF, 0x12345678, payload)
    assert len(data) == 12 + 200
    assert data[0] == 0x80
    p = RtpPacket.parse(data)
    assert p.version == 2
    assert p.payload_type == 96
    assert p.marker == 1
    assert p.sequence_number == 1234
    assert p.timestamp == 0xDEADBEEF
    assert p.ssrc == 0x12345678
    assert p.csrc == []
    assert p.padding_size == 0
    assert p.payload == payload
    ref = RtpPacket(
        payload_type=96,
        marker=1,
        sequence_number=1234,
        timestamp=0xDEADBEEF,
        ssrc=0x12345678,
        payload=payload,
    )
    assert data == ref.serialize()


def test_marker_false_and_masking() -> None:
    data = build_rtp(111, False, 65536 + 7, (1 << 32) + 9, 1, b"x")
    p = RtpPacket.parse(data)
    assert p.marker == 0
    assert p.payload_type == 111
    assert p.sequence_number == 7
    assert p.timestamp == 9
    assert p.payload == b"x"


def test_empty_payload() -> None:
    data = build_rtp(96, False, 1, 2, 3, b"")
    assert len(data) == 12
    assert RtpPacket.parse(data).payload == b""


@pytest.mark.parametrize(("mid_id", "abs_id", "level_id"), [(1, 3, 4), (14, 2, 9)])
def test_one_byte_extensions_match_aiortc(mid_id: int, abs_id: int, level_id: int) -> None:
    m = ext_map(mid_id, abs_id, level_id)
    t = 12.5 + 3 / 262144
    ext = (
        (mid_id, b"video0"),
        (abs_id, abs_send_time(t)),
        (level_id, audio_level(True, 42)),
    )
    payload = b"\x90\x80\x05hello"
    data = build_rtp(96, True, 65535, 3000, 0xCAFEBABE, payload, ext)
    profile, elements, header_len = split_extensions(data)
    assert profile == 0xBEDE
    assert elements == list(ext)
    assert (header_len - 16) % 4 == 0
    assert data[header_len:] == payload

    p = RtpPacket.parse(data, m)
    assert p.sequence_number == 65535
    assert p.timestamp == 3000
    assert p.ssrc == 0xCAFEBABE
    assert p.marker == 1
    assert p.payload == payload
    assert p.extensions.mid == "video0"
    assert p.extensions.abs_send_time == 12 * 262144 + 131072 + 3
    assert p.extensions.audio_level == (True, 42)

    # aiortc serialises its known extensions in the order mid, abs-send-time,
    # audio level, which is the order used above: the bytes must agree.
    ref = RtpPacket(
        payload_type=96,
        marker=1,
        sequence_number=65535,
        timestamp=3000,
        ssrc=0xCAFEBABE,
        payload=payload,
    )
    ref.extensions.mid = "video0"
    ref.extensions.abs_send_time = 12 * 262144 + 131072 + 3
    ref.extensions.audio_level = (True, 42)
    assert data == ref.serialize(m)


@pytest.mark.parametrize("mid", ["", "a", "ab", "abc", "abcd", "x" * 16])
def test_padding_for_every_length(mid: str) -> None:
    m = ext_map(1, 2, 3)
    ref = RtpPacket(payload_type=100, sequence_number=5, timestamp=6, ssrc=7)
    ref.payload = b"\x01\x02\x03"
    ref.extensions.mid = mid
    ext = ((1, mid.encode()),)
    data = build_rtp(100, False, 5, 6, 7, b"\x01\x02\x03", ext)
    assert data == ref.serialize(m)
    assert (len(data) - 12 - 3) % 4 == 0
    assert RtpPacket.parse(data, m).extensions.mid == mid


def test_two_byte_extensions_for_large_id() -> None:
    m = ext_map(15, 2, 200)
    ext = ((15, b"m1"), (2, abs_send_time(1.0)), (200, audio_level(False, 127)))
    data = build_rtp(96, False, 10, 20, 30, b"pay", ext)
    profile, elements, header_len = split_extensions(data)
    assert profile == 0x1000
    assert elements == list(ext)
    assert data[header_len:] == b"pay"
    p = RtpPacket.parse(data, m)
    assert p.extensions.mid == "m1"
    assert p.extensions.abs_send_time == 262144
    assert p.extensions.audio_level == (False, 127)
    ref = RtpPacket(payload_type=96, sequence_number=10, timestamp=20, ssrc=30)
    ref.payload = b"pay"
    ref.extensions.mid = "m1"
    ref.extensions.abs_send_time = 262144
    ref.extensions.audio_level = (False, 127)
    assert data == ref.serialize(m)


def test_two_byte_extensions_for_long_or_empty_value() -> None:
    long_value = bytes(range(17))
    data = build_rtp(96, False, 1, 2, 3, b"p", ((1, long_value), (2, b"ab")))
    profile, elements, header_len = split_extensions(data)
    assert profile == 0x1000
    assert elements == [(1, long_value), (2, b"ab")]
    assert data[header_len:] == b"p"

    data = build_rtp(96, False, 1, 2, 3, b"p", ((5, b""), (6, b"z")))
    profile, elements, header_len = split_extensions(data)
    assert profile == 0x1000
    assert elements == [(5, b""), (6, b"z")]
    assert data[header_len:] == b"p"


def test_many_one_byte_extensions() -> None:
    ext = tuple((i, bytes([i]) * 16) for i in range(1, 15))
    data = build_rtp(96, False, 1, 2, 3, b"end", ext)
    profile, elements, header_len = split_extensions(data)
    assert profile == 0xBEDE
    assert elements == list(ext)
    assert header_len == 16 + 14 * 17 + 2  # 238 bytes padded to 240
    assert data[header_len:] == b"end"


@pytest.mark.parametrize(
    "ext",
    [((0, b"a"),), ((256, b"a"),), ((20, bytes(256)),), ((1, b"a"), (0, b"b"))],
)
def test_invalid_extensions(ext: tuple[tuple[int, bytes], ...]) -> None:
    with pytest.raises(ValueError):
        build_rtp(96, False, 1, 2, 3, b"", ext)


def test_rtx_round_trip() -> None:
    m = ext_map(1, 2, 3)
    original = b"\x10\x02\x00\x9d\x01\x2a" + bytes(50)
    data = build_rtx(97, 65535, 90000, 0xABCDEF01, True, 4321, original, ((1, b"0"),))
    p = RtpPacket.parse(data, m)
    assert p.payload_type == 97
    assert p.sequence_number == 65535
    assert p.timestamp == 90000
    assert p.ssrc == 0xABCDEF01
    assert p.marker == 1
    assert p.extensions.mid == "0"
    assert p.payload[:2] == b"\x10\xe1"
    assert unwrap_rtx(p.payload) == (4321, original)


def test_rtx_matches_aiortc_wrap_rtx() -> None:
    from aiortc.rtp import wrap_rtx

    packet = RtpPacket(payload_type=96, marker=0, sequence_number=65000, timestamp=77, ssrc=1)
    packet.payload = b"abcdef"
    rtx = wrap_rtx(packet, payload_type=97, sequence_number=12, ssrc=2)
    data = build_rtx(97, 12, 77, 2, False, 65000, b"abcdef")
    assert data == rtx.serialize()


def test_unwrap_rtx() -> None:
    assert unwrap_rtx(b"\xff\xfe") == (65534, b"")
    assert unwrap_rtx(b"\x00\x01xyz") == (1, b"xyz")
    with pytest.raises(ValueError):
        unwrap_rtx(b"\x01")


def test_abs_send_time() -> None:
    assert abs_send_time(0.0) == b"\x00\x00\x00"
    assert abs_send_time(1.0) == b"\x04\x00\x00"
    assert abs_send_time(0.5) == b"\x02\x00\x00"
    assert abs_send_time(1 / 262144) == b"\x00\x00\x01"
    assert abs_send_time(63.99999999) == b"\xff\xff\xff"
    assert abs_send_time(64.0) == b"\x00\x00\x00"  # wraps every 64 s
    assert abs_send_time(3_900_000_000.25) == abs_send_time(3_900_000_000.25 % 64)


def test_audio_level() -> None:
    assert audio_level(True, 0) == b"\x80"
    assert audio_level(False, 0) == b"\x00"
    assert audio_level(True, 127) == b"\xff"
    assert audio_level(False, 30) == bytes([30])
    assert audio_level(False, 200) == b"\x7f"
    assert audio_level(True, -3) == b"\x80"


def test_build_rtp_with_a_prebuilt_block_matches_build_rtp():
    from conference.sfu.rtpwire import build_rtp, build_rtp_with_block, extension_block

    for extensions in ((), ((1, b"0"),), ((1, b"12"), (2, b"\x85"), (3, b"\x01\x02\x03"))):
        block = extension_block(extensions)
        assert build_rtp_with_block(96, True, 70000, 2**33 + 5, 0xDEADBEEF, b"xyz", block) == (
            build_rtp(96, True, 70000, 2**33 + 5, 0xDEADBEEF, b"xyz", extensions)
        )


def test_block_template_gives_extension_blocks_bytes() -> None:
    """A subscriber's block from prebuilt pieces is extension_block's, for every mix of
    MID, audio level and abs-send-time, one-byte and two-byte forms."""
    import random

    from conference.sfu.rtpwire import BlockTemplate, abs_send_time, audio_level, extension_block

    rng = random.Random(5)
    checked = 0
    for _ in range(3000):
        mid = (
            None
            if rng.random() < 0.2
            else (rng.choice([1, 3, 9, 14, 15, 200]), b"m" * rng.randint(1, 20))
        )
        level_id = rng.choice([None, 1, 4, 14, 15, 100])
        abs_id = rng.choice([None, 2, 3, 13, 16])
        ids = [x for x in (mid[0] if mid else None, level_id, abs_id) if x is not None]
        if len(set(ids)) != len(ids):
            continue
        template = BlockTemplate(mid, level_id, abs_id)
        for level in (None, (True, rng.randint(0, 127)), (False, rng.randint(-5, 140))):
            now = rng.random() * 1000
            extensions: list[tuple[int, bytes]] = [mid] if mid else []
            if level_id is not None and level is not None:
                extensions.append((level_id, audio_level(*level)))
            if abs_id is not None:
                extensions.append((abs_id, abs_send_time(now)))
            assert template.block(level, now) == extension_block(tuple(extensions))
            checked += 1
    assert checked > 5000
