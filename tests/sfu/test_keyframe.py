import fractions
import struct
from typing import cast

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from av.video.codeccontext import VideoCodecContext

from conference.sfu.keyframe import KeyframeThrottle, is_frame_start, is_keyframe

# VP8 payload header bytes: first byte with P=0 (key) or P=1 (delta).
VP8_KEY = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A])
VP8_DELTA = bytes([0x11, 0x02, 0x00])


# --- VP8, hand-built descriptors ----------------------------------------------


def test_vp8_minimal_descriptor() -> None:
    assert is_keyframe("vp8", bytes([0x10]) + VP8_KEY)
    assert not is_keyframe("vp8", bytes([0x10]) + VP8_DELTA)
    assert is_frame_start("vp8", bytes([0x10]) + VP8_DELTA)


def test_vp8_not_start_of_partition_zero() -> None:
    # S=0: continuation packet, whatever its first byte looks like.
    assert not is_keyframe("vp8", bytes([0x00]) + VP8_KEY)
    assert not is_frame_start("vp8", bytes([0x00]) + VP8_KEY)
    # S=1 but PID=1: start of another partition.
    assert not is_keyframe("vp8", bytes([0x11]) + VP8_KEY)
    assert not is_frame_start("vp8", bytes([0x11]) + VP8_KEY)
    # N bit (non-reference) does not matter.
    assert is_keyframe("vp8", bytes([0x30]) + VP8_KEY)


@pytest.mark.parametrize(
    "descriptor",
    [
        bytes([0x90, 0x00]),  # X with no optional fields
        bytes([0x90, 0x80, 0x05]),  # 7-bit PictureID
        bytes([0x90, 0x80, 0x80 | 0x12, 0x34]),  # 15-bit PictureID
        bytes([0x90, 0x40, 0x07]),  # TL0PICIDX
        bytes([0x90, 0x20, 0x40]),  # TID
        bytes([0x90, 0x10, 0x03]),  # KEYIDX
        bytes([0x90, 0xF0, 0xFF, 0xFF, 0x07, 0xE3]),  # all, 15-bit PictureID
        bytes([0x90, 0xF0, 0x7F, 0x07, 0xE3]),  # all, 7-bit PictureID
    ],
)
def test_vp8_extended_descriptors(descriptor: bytes) -> None:
    assert is_keyframe("vp8", descriptor + VP8_KEY)
    assert not is_keyframe("vp8", descriptor + VP8_DELTA)
    assert is_frame_start("vp8", descriptor + VP8_DELTA)
    # The P bit must be read at the right offset: a descriptor whose
    # optional bytes are odd must not be mistaken for the payload header.
    assert not is_keyframe("vp8", descriptor)


def test_vp8_picture_id_with_odd_low_bit_is_skipped() -> None:
    # PictureID byte 0x01 would read as P=1 if it were not skipped.
    assert is_keyframe("vp8", bytes([0x90, 0x80, 0x01]) + VP8_KEY)
    # PictureID byte 0x00 would read as P=0.
    assert not is_keyframe("vp8", bytes([0x90, 0x80, 0x00]) + VP8_DELTA)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes([0x10]),
        bytes([0x90]),
        bytes([0x90, 0x80]),
        bytes([0x90, 0x80, 0x80]),
        bytes([0x90, 0x80, 0x80, 0x01]),
        bytes([0x90, 0xF0, 0x80, 0x01, 0x00]),
        bytes([0x90, 0x40, 0x00]),
    ],
)
def test_vp8_truncated(payload: bytes) -> None:
    assert not is_keyframe("vp8", payload)
    assert not is_frame_start("vp8", payload)


# --- H.264, hand-built packets ------------------------------------------------


def nal(nal_type: int, size: int = 4) -> bytes:
    return bytes([0x60 | nal_type]) + b"\xab" * (size - 1)


def stap_a(*nals: bytes) -> bytes:
    return bytes([0x78]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu_a(nal_type: int, start: bool, end: bool = False) -> bytes:
    header = (0x80 if start else 0) | (0x40 if end else 0) | nal_type
    return bytes([0x7C, header]) + b"\xcd" * 10


def test_h264_single_nal() -> None:
    assert is_keyframe("h264", nal(5))
    assert is_keyframe("h264", nal(7))
    assert not is_keyframe("h264", nal(1))
    assert not is_keyframe("h264", nal(8))  # PPS alone
    assert not is_keyframe("h264", nal(6))  # SEI
    assert is_keyframe("h264", bytes([0x65]))


def test_h264_stap_a() -> None:
    assert is_keyframe("h264", stap_a(nal(7), nal(8)))
    assert is_keyframe("h264", stap_a(nal(6), nal(8, 3), nal(5)))
    assert not is_keyframe("h264", stap_a(nal(6), nal(1)))
    assert not is_keyframe("h264", stap_a(nal(8)))


@pytest.mark.parametrize(
    "payload",
    [
        bytes([0x78]),
        bytes([0x78, 0x00]),
        bytes([0x78, 0x00, 0x05]),  # size 5 but nothing follows
        bytes([0x78, 0x00, 0x05, 0x67]),  # SPS truncated
        bytes([0x78, 0x00, 0x00, 0x67]),  # zero size
        stap_a(nal(6)) + b"\x00\x09\x65",  # second NAL truncated
    ],
)
def test_h264_malformed_stap_a(payload: bytes) -> None:
    assert not is_keyframe("h264", payload)


def test_h264_fu_a() -> None:
    assert is_keyframe("h264", fu_a(5, start=True))
    assert not is_keyframe("h264", fu_a(5, start=False))
    assert not is_keyframe("h264", fu_a(5, start=False, end=True))
    assert not is_keyframe("h264", fu_a(1, start=True))
    assert is_keyframe("h264", fu_a(7, start=True))
    assert not is_keyframe("h264", bytes([0x7C]))
    assert is_frame_start("h264", fu_a(1, start=True))
    assert not is_frame_start("h264", fu_a(5, start=False))
    assert not is_frame_start("h264", bytes([0x7C]))
    assert is_frame_start("h264", nal(1))
    assert is_frame_start("h264", stap_a(nal(7)))


def test_h264_empty_and_other_types() -> None:
    assert not is_keyframe("h264", b"")
    assert not is_frame_start("h264", b"")
    assert not is_keyframe("h264", bytes([0x79, 0x00, 0x01, 0x00, 0x02, 0x65, 0]))


def test_audio_and_unknown() -> None:
    assert is_keyframe("opus", b"\x00")
    assert is_keyframe("opus", b"")
    assert is_frame_start("opus", b"\x01")
    assert not is_keyframe("vp9", bytes([0x10]) + VP8_KEY)
    assert not is_frame_start("vp9", bytes([0x10]) + VP8_KEY)


# --- real encoder output, packetized by aiortc -------------------------------


def make_frames(count: int) -> list[av.VideoFrame]:
    frames = []
    for i in range(count):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes((i * 7 + j * 3) & 0xFF for j in range(plane.buffer_size)))
        frame.pts = i
        frame.time_base = fractions.Fraction(1, 30)
        frames.append(frame)
    return frames


def encode(codec_name: str, options: dict[str, str]) -> list[tuple[bool, bytes]]:
    codec = cast(VideoCodecContext, av.CodecContext.create(codec_name, "w"))
    codec.width = 320
    codec.height = 240
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.framerate = fractions.Fraction(30, 1)
    codec.bit_rate = 500_000
    codec.gop_size = 300
    codec.options = options
    packets = []
    for frame in make_frames(5):
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    return [(p.is_keyframe, bytes(p)) for p in packets]


def test_real_vp8() -> None:
    frames = encode("libvpx", {"deadline": "realtime", "lag-in-frames": "0"})
    assert len(frames) == 5
    assert [key for key, _ in frames] == [True, False, False, False, False]
    for index, (key, data) in enumerate(frames):
        payloads = Vp8Encoder._packetize(data, 1000 + index)
        assert len(payloads) >= 1
        detected = [is_keyframe("vp8", p) for p in payloads]
        starts = [is_frame_start("vp8", p) for p in payloads]
        assert starts == [True] + [False] * (len(payloads) - 1)
        if key:
            assert len(payloads) > 1
            assert detected == [True] + [False] * (len(payloads) - 1)
        else:
            assert not any(detected)


def test_real_h264() -> None:
    """Every reported packet belongs to the IDR access unit, and the first
    packet of that unit (the one carrying the SPS) is reported."""
    frames = encode("libx264", {"tune": "zerolatency"})
    assert len(frames) == 5
    assert [key for key, _ in frames] == [True, False, False, False, False]
    for key, data in frames:
        payloads = H264Encoder._packetize(list(H264Encoder._split_bitstream(data)))
        detected = [is_keyframe("h264", p) for p in payloads]
        assert is_frame_start("h264", payloads[0])
        if key:
            assert len(payloads) > 1
            assert detected[0]
        else:
            assert not any(detected)


# --- throttle -----------------------------------------------------------------


def test_throttle() -> None:
    t = KeyframeThrottle(0.5)
    assert t.allow(100.0)
    assert not t.allow(100.0)
    assert not t.allow(100.49)
    assert t.allow(100.5)
    assert not t.allow(100.7)
    assert t.allow(101.2)
    t.reset()
    assert t.allow(101.3)
    assert not t.allow(101.4)


def test_throttle_first_call_at_time_zero() -> None:
    t = KeyframeThrottle()
    assert t.allow(0.0)
    assert not t.allow(0.1)
    assert t.allow(0.5)
