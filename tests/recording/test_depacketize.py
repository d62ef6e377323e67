"""RTP -> frames: real encoded media packetized by aiortc's own packetizers, then mangled."""

from __future__ import annotations

import fractions
import random

import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from conference.recording.depacketize import (
    AudioSequencer,
    Unwrapper,
    VideoAssembler,
    h264_annexb,
    h264_frame_size,
    vp8_keyframe_size,
)
from conference.tools.testmedia import draw_barcode

Packet = tuple[int, int, bool, bytes]  # seq, timestamp, marker, payload


def _encode(codec: str, frames: int, keyframes: tuple[int, ...] = (0,)) -> list[list[Packet]]:
    """Packets of each frame (the encoder runs here, in the test)."""
    encoder = Vp8Encoder() if codec == "vp8" else H264Encoder()
    encoder.target_bitrate = 1_500_000
    seq = 65500  # wraps during the clip
    out = []
    for index in range(frames):
        frame = draw_barcode(index, 320, 240)
        frame.pts = index * 6000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=index in keyframes)
        packets = []
        for payload in payloads:
            packets.append((seq & 0xFFFF, (timestamp + 0xFFFF0000) & 0xFFFFFFFF, False, payload))
            seq += 1
        packets[-1] = (*packets[-1][:2], True, packets[-1][3])
        out.append(packets)
    return out


def _run(assembler: VideoAssembler, packets: list[Packet], step: float = 1 / 15) -> list:
    frames = []
    now = 0.0
    for seq, ts, marker, payload in packets:
        frames += assembler.push(seq, ts, marker, payload, now)
        if marker:
            now += step  # the packets of a frame come together
    frames += assembler.poll(now + 5)
    return frames


def _numbers(codec: str, frames: list) -> list[int | None]:
    """Decode the assembled frames (in the test) and read their barcodes."""
    import av

    from conference.tools.testmedia import read_barcode

    decoder = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
    numbers = []
    for frame in frames:
        for picture in decoder.decode(av.Packet(frame.data)):
            numbers.append(read_barcode(picture))
    return numbers


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_in_order_frames_come_out_whole(codec: str) -> None:
    encoded = _encode(codec, 20)
    assembler = VideoAssembler(codec)
    frames = _run(assembler, [p for frame in encoded for p in frame])
    assert len(frames) == 20
    assert frames[0].keyframe and not any(f.keyframe for f in frames[1:])
    assert frames[0].size == (320, 240)
    assert all(b.timestamp > a.timestamp for a, b in zip(frames, frames[1:], strict=False))
    assert _numbers(codec, frames) == list(range(20))


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_reordered_packets_are_put_back_in_order(codec: str) -> None:
    encoded = _encode(codec, 20)
    packets = [p for frame in encoded for p in frame]
    rng = random.Random(3)
    for i in range(0, len(packets) - 3, 4):  # swap neighbours, like a repair arriving late
        j = i + rng.randrange(1, 3)
        packets[i], packets[j] = packets[j], packets[i]
    frames = _run(VideoAssembler(codec), packets)
    assert _numbers(codec, frames) == list(range(20))


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_lost_packet_drops_until_the_next_keyframe(codec: str) -> None:
    encoded = _encode(codec, 30, keyframes=(0, 20))
    lost = encoded[8][0]
    packets = [p for frame in encoded for p in frame if p is not lost]
    assembler = VideoAssembler(codec, max_wait=0.2)
    frames = _run(assembler, packets)
    numbers = _numbers(codec, frames)
    assert numbers == list(range(8)) + list(range(20, 30))
    assert assembler.losses == 1
    assert not assembler.needs_keyframe


def test_waits_for_a_keyframe_and_asks_for_one() -> None:
    encoded = _encode("vp8", 12, keyframes=(0, 6))
    assembler = VideoAssembler("vp8")
    packets = [p for frame in encoded[2:] for p in frame]  # joined mid-stream
    frames = []
    asked = []
    for seq, ts, marker, payload in packets:
        frames += assembler.push(seq, ts, marker, payload, 0.0)
        asked.append(assembler.needs_keyframe)
    assert asked[0] and not asked[-1]
    assert _numbers("vp8", frames) == list(range(6, 12))


def test_padding_and_duplicates_are_ignored() -> None:
    encoded = _encode("vp8", 6)
    packets = [p for frame in encoded for p in frame]
    # a padding-only packet between frames takes a sequence number
    shifted: list[Packet] = []
    seq = packets[0][0]
    for index, (_, ts, marker, payload) in enumerate(packets):
        shifted.append((seq & 0xFFFF, ts, marker, payload))
        seq += 1
        if marker and index == 2:
            shifted.append((seq & 0xFFFF, ts, False, b""))
            seq += 1
    shifted.insert(4, shifted[3])  # a duplicate (a needless repair)
    frames = _run(VideoAssembler("vp8"), shifted)
    assert _numbers("vp8", frames) == list(range(6))


def test_h264_depacketization_refuses_broken_fragments() -> None:
    nal = bytes([0x65]) + bytes(range(200))
    fu_start = bytes([0x7C, 0x85]) + nal[1:100]
    fu_end = bytes([0x7C, 0x45]) + nal[100:]
    assert h264_annexb([fu_start, fu_end]) == (b"\x00\x00\x00\x01" + nal, True)
    assert h264_annexb([fu_start]) is None  # no end
    assert h264_annexb([fu_end]) is None  # no start
    stap = bytes([0x18, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE])
    assert h264_annexb([stap]) == (b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68\xce", False)
    assert h264_annexb([bytes([0x18, 0, 9, 0x67])]) is None  # truncated aggregate
    assert h264_annexb([bytes([0x19, 1, 2])]) is None  # STAP-B: unsupported
    assert h264_frame_size(b"\x00\x00\x00\x01\x65\x00") is None


def test_h264_parameter_sets_without_an_idr_slice_are_not_a_start() -> None:
    """Found by fuzz/fuzz_depacketize.py: an access unit of an SPS alone (marker set)
    looked like a keyframe start, so the assembler synced on it and released it and
    the predicted frames after it, which depend on an IDR picture it never had."""
    sps = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA, 0x02, 0x80, 0xF6, 0x84, 0, 0, 0, 4])
    idr = bytes([0x65, 0x88, 0x84, 0x00])
    assembler = VideoAssembler("h264")
    frames = assembler.push(1000, 3000, True, sps, 0.0)  # an SPS alone in its access unit
    frames += assembler.push(1001, 6000, True, bytes([0x41, 0x9A, 0x02]), 0.0)  # P slice
    frames += assembler.push(1002, 9000, True, bytes([0x41, 0x9A, 0x04]), 0.0)
    assert frames == [] and assembler.needs_keyframe and assembler.dropped_packets >= 1
    # the next IDR access unit (SPS first) starts the stream
    frames = assembler.push(1003, 12000, False, sps, 0.0)
    frames += assembler.push(1004, 12000, True, idr, 0.0)
    assert [f.keyframe for f in frames] == [True] and not assembler.needs_keyframe
    assert frames[0].data == b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + idr


def test_vp8_size_only_from_keyframes() -> None:
    assert vp8_keyframe_size(b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00") == (320, 240)
    assert vp8_keyframe_size(b"\x11\x02\x00\x9d\x01\x2a\x40\x01\xf0\x00") is None
    assert vp8_keyframe_size(b"\x10\x02") is None


def test_unwrapper_and_audio_sequencer() -> None:
    unwrap = Unwrapper(16)
    values = [unwrap(v) for v in (65534, 65535, 0, 65533, 1)]
    assert values == [131070, 131071, 131072, 131069, 131073]
    audio = AudioSequencer()
    assert audio.push(10, 960, b"a") is not None
    assert audio.push(12, 2880, b"c") is not None
    assert audio.push(11, 1920, b"b") is None  # late: Matroska needs increasing times
    assert audio.push(12, 2880, b"c") is None
    assert audio.push(13, 3840, b"") is None
    assert audio.frames == 2 and audio.dropped_packets == 3


def test_resolution_change_and_mute_gap_in_one_file(tmp_path) -> None:
    """A VP8 keyframe with a new size, then a 2 s pause (mute): one file, times kept."""
    import av

    from conference.recording.writer import TrackWriter
    from conference.tools.testmedia import read_barcode

    encoder = Vp8Encoder()
    assembler = VideoAssembler("vp8")
    writer = TrackWriter(tmp_path / "v.webm", "vp8", 90000)
    seq = 100
    sizes = [(320, 240)] * 10 + [(640, 360)] * 10
    for index, (width, height) in enumerate(sizes):
        frame = draw_barcode(index, width, height)
        pause = 2 * 90000 if index >= 15 else 0  # nothing sent for 2 s after frame 14
        frame.pts = index * 6000 + pause
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=index in (0, 10))
        for i, payload in enumerate(payloads):
            marker = i == len(payloads) - 1
            for out in assembler.push(seq & 0xFFFF, timestamp, marker, payload, 0.0):
                assert writer.write(out.data, out.timestamp, out.keyframe, out.size)
            seq += 1
    writer.close()
    with av.open(str(tmp_path / "v.webm")) as container:
        pictures = list(container.decode(video=0))
    assert [read_barcode(p) for p in pictures] == list(range(20))
    assert [(p.width, p.height) for p in pictures] == sizes
    times = [round(float(p.time), 3) for p in pictures]
    assert times[14] == round(14 / 15, 3) and times[15] == round(15 / 15 + 2, 3)


def test_a_failing_track_ends_its_file_only(tmp_path) -> None:
    """TrackRecorder: an error while writing is logged, ends that track, never raises."""
    from aiortc.rtp import RtpPacket

    from conference.recording.recorder import TrackRecorder

    class Owner:
        dirty = False

    class Publication:  # the attributes TrackRecorder uses
        kind = "video"
        codec_name = "vp8"
        clock_rate = 90000
        sender_report = None

        def __init__(self) -> None:
            self.taps: list = []
            self.keyframes = 0

        def request_keyframe(self) -> bool:
            self.keyframes += 1
            return True

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    publication = Publication()
    owner = Owner()
    track = TrackRecorder(owner, publication, blocker / "x.webm")  # type: ignore[arg-type]
    assert publication.taps == [track.on_packet]
    for packets in _encode("vp8", 3):
        for seq, ts, marker, payload in packets:
            packet = RtpPacket(sequence_number=seq, timestamp=ts, marker=marker, payload=payload)
            for tap in list(publication.taps):
                tap(publication, packet, False)  # type: ignore[arg-type]
    assert track.closed and track.error and "Error" in track.error
    assert publication.taps == [] and owner.dirty
    assert track.describe()["state"] == "error"
