"""Tests for :mod:`conference.tools.testmedia` (real encoders and peer connections)."""

from __future__ import annotations

import asyncio
import fractions
import random
import time
from pathlib import Path
from typing import Literal

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import compute_audio_level_dbov

from conference.tools.testmedia import (
    BARCODE_MAX,
    BarcodeVideoTrack,
    EncodedPacket,
    PacketTrack,
    ToneAudioTrack,
    audio_level_dbov,
    audio_samples,
    cached_clip,
    dominant_frequency,
    draw_barcode,
    load_packets,
    prefer_codec,
    read_barcode,
    tone_frames,
)

# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session-wide clip cache, so each clip is encoded once per run."""
    return tmp_path_factory.mktemp("clips")


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make aioice gather only 127.0.0.1 host candidates (it skips it by default)."""

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        """Only the loopback address."""
        return ["127.0.0.1"]

    monkeypatch.setattr(aioice.ice, "get_host_addresses", host_addresses)


def _interesting_numbers(count: int, seed: int = 1) -> list[int]:
    """Edge cases, walking ones/zeros and random values covering every bit."""
    numbers = [0, BARCODE_MAX - 1, 0xAAAA, 0x5555, 0x00FF, 0xFF00, 1, 2]
    numbers += [1 << k for k in range(16)]
    numbers += [(BARCODE_MAX - 1) ^ (1 << k) for k in range(16)]
    rng = random.Random(seed)
    numbers += [rng.randrange(BARCODE_MAX) for _ in range(max(0, count - len(numbers)))]
    return numbers[:count]


def _flat_frame(width: int, height: int, y: int, uv: int) -> av.VideoFrame:
    """A uniform ``yuv420p`` frame."""
    array = np.full((height * 3 // 2, width), uv, dtype=np.uint8)
    array[:height] = y
    return av.VideoFrame.from_ndarray(array, format="yuv420p")


def _encode_decode(
    codec_name: str, numbers: list[int], width: int, height: int, bitrate: int
) -> list[int | None]:
    """Encode barcode frames with ``codec_name`` and decode them again."""
    encoder = av.CodecContext.create(codec_name, "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuv420p"
    encoder.bit_rate = bitrate
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.framerate = fractions.Fraction(30)
    encoder.gop_size = 60
    if codec_name == "libvpx":
        encoder.options = {
            "deadline": "realtime",
            "cpu-used": "-8",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
        decoder = av.CodecContext.create("vp8", "r")
    else:
        encoder.options = {
            "tune": "zerolatency",
            "preset": "veryfast",
            "profile": "baseline",
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
        decoder = av.CodecContext.create("h264", "r")
    packets: list[av.Packet] = []
    for index, number in enumerate(numbers):
        frame = draw_barcode(number, width, height)
        frame.pts = index
        frame.time_base = encoder.time_base
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoded: list[int | None] = []
    for packet in [*packets, None]:
        for frame in decoder.decode(packet):
            assert isinstance(frame, av.VideoFrame)
            decoded.append(read_barcode(frame))
    return decoded


async def _connect(
    tracks: list[tuple[MediaStreamTrack, str | None]],
) -> tuple[RTCPeerConnection, RTCPeerConnection, dict[str, MediaStreamTrack]]:
    """Connect a sending and a receiving peer connection over loopback."""
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received: dict[str, MediaStreamTrack] = {}

    @receiver.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        """Remember the received track by kind."""
        received[track.kind] = track

    for track, mime_type in tracks:
        transceiver = sender.addTransceiver(track, direction="sendonly")
        if mime_type is not None:
            prefer_codec(transceiver, mime_type)
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    assert set(received) == {track.kind for track, _ in tracks}
    return sender, receiver, received


def _negotiated_codec(sdp: str, kind: str) -> str:
    """Encoding name of the first (chosen) payload type of the ``kind`` section."""
    lines = sdp.splitlines()
    media = next(line for line in lines if line.startswith(f"m={kind} "))
    payload_type = media.split()[3]
    rtpmap = next(line for line in lines if line.startswith(f"a=rtpmap:{payload_type} "))
    return rtpmap.split()[1].split("/")[0]


async def _collect_video(track: MediaStreamTrack, seconds: float) -> list[int | None]:
    """Barcodes of the frames received during ``seconds`` after the first one."""
    numbers: list[int | None] = []
    deadline: float | None = None
    while deadline is None or time.monotonic() < deadline:
        frame = await asyncio.wait_for(track.recv(), timeout=10)
        assert isinstance(frame, av.VideoFrame)
        if deadline is None:
            deadline = time.monotonic() + seconds
        numbers.append(read_barcode(frame))
    return numbers


async def _collect_audio(track: MediaStreamTrack, seconds: float) -> list[av.AudioFrame]:
    """Audio frames received during ``seconds`` after the first one."""
    frames: list[av.AudioFrame] = []
    deadline: float | None = None
    while deadline is None or time.monotonic() < deadline:
        frame = await asyncio.wait_for(track.recv(), timeout=10)
        assert isinstance(frame, av.AudioFrame)
        if deadline is None:
            deadline = time.monotonic() + seconds
        frames.append(frame)
    return frames


def _assert_increasing(numbers: list[int | None], expected: int) -> None:
    """Readable numbers strictly increase and more than 80 % arrived."""
    valid = [n for n in numbers if n is not None]
    assert valid, "no barcode could be read"
    assert all(b > a for a, b in zip(valid, valid[1:], strict=False)), valid
    assert len(valid) > 0.8 * expected, (len(valid), expected)


# --------------------------------------------------------------------------
# Barcodes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"), [(320, 240), (640, 360), (1280, 720), (96, 64), (48, 16)]
)
def test_barcode_roundtrip_uncompressed(width: int, height: int) -> None:
    """draw -> read returns the number at several sizes."""
    for number in _interesting_numbers(300):
        frame = draw_barcode(number, width, height)
        assert (frame.width, frame.height, frame.format.name) == (
            width,
            height,
            "yuv420p",
        )
        assert read_barcode(frame) == number


def test_barcode_all_numbers_small_picture() -> None:
    """Every 7th 16-bit value round-trips (a tiny picture keeps this fast)."""
    for number in range(0, BARCODE_MAX, 7):
        assert read_barcode(draw_barcode(number, 48, 16)) == number


def test_barcode_scaled_and_converted() -> None:
    """Proportional layout survives scaling and RGB conversion."""
    frame = draw_barcode(0xBEEF, 640, 360)
    assert read_barcode(frame.reformat(width=320, height=180)) == 0xBEEF
    assert read_barcode(frame.reformat(width=1280, height=720)) == 0xBEEF
    assert read_barcode(frame.reformat(format="rgb24")) == 0xBEEF


def test_barcode_rejects_blank_and_corrupt_frames() -> None:
    """Flat pictures and flipped cells give ``None``."""
    assert read_barcode(_flat_frame(320, 240, 0, 0)) is None  # green
    assert read_barcode(_flat_frame(320, 240, 128, 128)) is None  # grey
    assert read_barcode(_flat_frame(320, 240, 235, 128)) is None  # white
    assert read_barcode(_flat_frame(320, 240, 16, 128)) is None  # black

    good = draw_barcode(0x1234, 320, 240).to_ndarray()
    cell = (0.92 * 320) / 24
    for index in (0, 5, 20, 23):  # a guard, a data bit, a check bit, a guard
        corrupt = good.copy()
        left, right = round(0.04 * 320 + index * cell), round(0.04 * 320 + (index + 1) * cell)
        band = slice(round(0.3 * 240), round(0.7 * 240))
        corrupt[band, left:right] = 251 - corrupt[band, left:right]  # invert the cell
        assert read_barcode(av.VideoFrame.from_ndarray(corrupt, format="yuv420p")) is None


def test_barcode_texture_moves_and_is_fast() -> None:
    """The background moves, input is validated, drawing is fast."""
    first = draw_barcode(10, 640, 360).to_ndarray()
    second = draw_barcode(11, 640, 360).to_ndarray()
    top = slice(0, 100)
    assert np.mean(first[top] != second[top]) > 0.5  # texture moved
    assert first[:360].std() > 30  # not flat
    with pytest.raises(ValueError):
        draw_barcode(BARCODE_MAX, 320, 240)
    with pytest.raises(ValueError):
        draw_barcode(1, 321, 240)

    start = time.perf_counter()
    for number in range(100):
        draw_barcode(number, 1280, 720)
    assert (time.perf_counter() - start) / 100 < 0.01


@pytest.mark.parametrize("codec_name", ["libvpx", "libx264"])
def test_barcode_survives_low_bitrate_codec(codec_name: str) -> None:
    """Every number survives VP8/H.264 at 300 kbps, 640x360.

    Consecutive frames carry unrelated numbers: the hardest case for the encoder.
    """
    numbers = _interesting_numbers(60)
    assert _encode_decode(codec_name, numbers, 640, 360, 300_000) == numbers


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_encode_clip_roundtrip(codec: str, clip_dir: Path) -> None:
    """Clips decode to 0..N-1 with the requested GOP, bitrate and headers."""
    path = cached_clip(
        "vp8" if codec == "vp8" else "h264",
        width=640,
        height=360,
        fps=30,
        seconds=3,
        bitrate=300_000,
        gop=30,
        cache_dir=clip_dir,
    )
    assert path.suffix == (".ivf" if codec == "vp8" else ".h264")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        if codec == "h264":
            assert stream.codec_context.profile == "Constrained Baseline"
        numbers = [read_barcode(frame) for frame in container.decode(stream)]
    assert numbers == list(range(90))

    packets = load_packets(path)
    assert len(packets) == 90
    assert [p.pts for p in packets] == list(range(90))
    assert {p.time_base for p in packets} == {fractions.Fraction(1, 30)}
    assert {p.duration for p in packets} == {1}
    assert [i for i, p in enumerate(packets) if p.keyframe] == [0, 30, 60]
    kbps = sum(len(p.data) for p in packets) * 8 / 3 / 1000
    assert 150 < kbps < 420, kbps
    if codec == "h264":
        for packet in packets:
            nal_types = {
                packet.data[i + 3] & 0x1F
                for i in range(len(packet.data) - 3)
                if packet.data[i : i + 3] == b"\x00\x00\x01"
            }
            if packet.keyframe:
                assert {5, 7, 8} <= nal_types  # IDR with SPS + PPS
            else:
                assert 5 not in nal_types and 1 in nal_types


def test_cached_clip_reuses_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache honours the env variable and encodes each key once."""
    monkeypatch.setenv("CONFERENCE_MEDIA_CACHE", str(tmp_path / "env-cache"))
    first = cached_clip("vp8", width=96, height=64, seconds=0.2, bitrate=100_000)
    assert first.parent == tmp_path / "env-cache"
    mtime = first.stat().st_mtime_ns
    again = cached_clip("vp8", width=96, height=64, seconds=0.2, bitrate=100_000)
    assert again == first and again.stat().st_mtime_ns == mtime
    other = cached_clip("vp8", width=96, height=64, seconds=0.2, bitrate=120_000)
    assert other != first
    explicit = cached_clip("opus", seconds=0.2, cache_dir=tmp_path / "explicit")
    assert explicit.parent == tmp_path / "explicit" and explicit.suffix == ".ogg"
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_opus_clip_packets(clip_dir: Path) -> None:
    """Opus clip: 20 ms packets, ~32 kbps, the right tone."""
    path = cached_clip("opus", seconds=1.0, frequency=660.0, cache_dir=clip_dir)
    packets = load_packets(path)
    assert len(packets) >= 50
    assert {p.duration for p in packets} == {960}
    assert [p.pts for p in packets] == [960 * i for i in range(len(packets))]
    assert packets[0].time_base == fractions.Fraction(1, 48000)
    kbps = sum(len(p.data) for p in packets) * 8 / (len(packets) * 0.02) / 1000
    assert 20 < kbps < 45, kbps
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.channels == 2
        samples = np.concatenate([audio_samples(f) for f in container.decode(audio=0)])
    assert dominant_frequency(samples, 48000) == pytest.approx(660.0, abs=2.0)


# --------------------------------------------------------------------------
# Tones
# --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_tone_frames(layout: Literal["mono", "stereo"]) -> None:
    """Frame sizes, timestamps, layout, amplitude and RFC 6464 level."""
    frames = list(tone_frames(440.0, 0.05, 48000, layout, 20, 0.3))
    assert [f.samples for f in frames] == [960, 960, 480]
    assert [f.pts for f in frames] == [0, 960, 1920]
    for frame in frames:
        assert frame.format.name == "s16" and frame.layout.name == layout
        assert frame.sample_rate == 48000
        assert frame.time_base == fractions.Fraction(1, 48000)
    if layout == "stereo":
        interleaved = frames[0].to_ndarray().reshape(-1, 2)
        assert np.array_equal(interleaved[:, 0], interleaved[:, 1])
    samples = np.concatenate([audio_samples(f) for f in frames])
    assert np.max(np.abs(samples)) == pytest.approx(0.3, abs=0.01)
    level = audio_level_dbov(frames[0])
    assert level in (13, 14)  # 0.3 peak sine: RMS -13.5 dBov
    if layout == "mono":
        assert level == -compute_audio_level_dbov(frames[0])


@pytest.mark.parametrize("frequency", [100.0, 440.0, 997.0, 3150.0])
def test_dominant_frequency(frequency: float) -> None:
    """The FFT peak finder is accurate to 1 Hz."""
    frames = list(tone_frames(frequency, 0.2, 16000, "stereo", 20, 0.5))
    samples = np.concatenate([audio_samples(f) for f in frames])
    assert dominant_frequency(samples, 16000) == pytest.approx(frequency, abs=1.0)
    assert dominant_frequency(np.zeros(100), 16000) == 0.0
    planar = np.vstack([samples, samples])
    assert dominant_frequency(planar, 16000) == pytest.approx(frequency, abs=1.0)


def test_audio_level_silence_and_speech_pattern() -> None:
    """Speech patterns alternate loud and silent frames."""
    frames = list(tone_frames(440.0, 0.8, 48000, "mono", 20, 0.3, speech_pattern=[(0.1, 0.1)]))
    levels = [audio_level_dbov(f) for f in frames]
    talking = [f.pts // 4800 % 2 == 0 for f in frames if f.pts is not None]
    assert all(level < 20 for level, t in zip(levels, talking, strict=True) if t)
    assert all(level == 127 for level, t in zip(levels, talking, strict=True) if not t)
    loud = next(tone_frames(440.0, 0.02, 48000, "mono", 20, 1.0))
    assert audio_level_dbov(loud) == 3


# --------------------------------------------------------------------------
# Live tracks (no network)
# --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_barcode_video_track_paced() -> None:
    """Barcode track: numbering, wrap-around, 90 kHz pts, pacing."""
    track = BarcodeVideoTrack(320, 240, fps=30, start=BARCODE_MAX - 2)
    start = time.monotonic()
    frames = [await track.recv() for _ in range(7)]
    elapsed = time.monotonic() - start
    assert 0.17 < elapsed < 0.35
    assert [read_barcode(f) for f in frames] == [65534, 65535, 0, 1, 2, 3, 4]
    assert [f.pts for f in frames] == [3000 * i for i in range(7)]
    assert track.frames_sent == 7 and track.kind == "video"
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


@pytest.mark.asyncio
async def test_tone_audio_track_paced_with_speech_pattern() -> None:
    """Tone track: 20 ms frames, pacing, gating."""
    track = ToneAudioTrack(500.0, speech_pattern=[(0.06, 0.04)])
    start = time.monotonic()
    frames = [await track.recv() for _ in range(11)]
    elapsed = time.monotonic() - start
    assert 0.18 < elapsed < 0.35
    assert [f.pts for f in frames] == [960 * i for i in range(11)]
    assert all(f.layout.name == "mono" and f.samples == 960 for f in frames)
    levels = [audio_level_dbov(f) for f in frames]
    assert max(levels[:3]) < 20
    assert levels[3:5] == [127, 127] and max(levels[5:8]) < 20
    assert track.frames_sent == 11 and track.kind == "audio"


def _packets(count: int, step: int, time_base: fractions.Fraction) -> list[EncodedPacket]:
    """Synthetic packets with consecutive timestamps."""
    return [EncodedPacket(bytes([i]), i * step, time_base, i == 0, step) for i in range(count)]


@pytest.mark.asyncio
async def test_packet_track_loops_with_continuing_pts() -> None:
    """Looping keeps pts increasing; loop=False ends."""
    track = PacketTrack(_packets(5, 960, fractions.Fraction(1, 48000)), "audio")
    start = time.monotonic()
    packets = [await track.recv() for _ in range(12)]
    elapsed = time.monotonic() - start
    assert 0.2 < elapsed < 0.35
    assert [p.pts for p in packets] == [960 * i for i in range(12)]
    assert [bytes(p)[0] for p in packets] == [i % 5 for i in range(12)]
    assert all(p.time_base == fractions.Fraction(1, 48000) for p in packets)
    assert track.loops == 2 and track.packets_sent == 12 and track.kind == "audio"

    once = PacketTrack(_packets(2, 1, fractions.Fraction(1, 100)), "video", loop=False)
    assert [(await once.recv()).pts for _ in range(2)] == [0, 1]
    with pytest.raises(MediaStreamError):
        await once.recv()
    assert once.readyState == "ended"


# --------------------------------------------------------------------------
# End to end through aiortc peer connections (loopback)
# --------------------------------------------------------------------------


@pytest.mark.media  # real-time encoding and decoding: shares the machine
@pytest.mark.asyncio
@pytest.mark.parametrize(("codec", "mime_type"), [("vp8", None), ("h264", "video/H264")])
async def test_packet_track_video_end_to_end(
    codec: str, mime_type: str | None, clip_dir: Path, loopback: None
) -> None:
    """Pre-encoded VP8/H.264 packets decode at the receiver."""
    path = cached_clip(
        "vp8" if codec == "vp8" else "h264",
        width=320,
        height=240,
        fps=30,
        seconds=5,
        bitrate=400_000,
        gop=30,
        cache_dir=clip_dir,
    )
    track = PacketTrack(load_packets(path), "video")
    sender, receiver, received = await _connect([(track, mime_type)])
    try:
        sdp = receiver.localDescription.sdp
        assert _negotiated_codec(sdp, "video") == ("H264" if codec == "h264" else "VP8")
        numbers = await _collect_video(received["video"], 3.0)
    finally:
        await sender.close()
        await receiver.close()
    _assert_increasing(numbers, 90)
    assert next(n for n in numbers if n is not None) < 15
    assert track.packets_sent >= 90


@pytest.mark.media  # real-time encoding and decoding: shares the machine
@pytest.mark.asyncio
async def test_packet_track_opus_end_to_end(clip_dir: Path, loopback: None) -> None:
    """Pre-encoded Opus packets decode to the right tone."""
    path = cached_clip("opus", seconds=1.0, frequency=750.0, cache_dir=clip_dir)
    track = PacketTrack(load_packets(path), "audio")  # loops after 1 s
    sender, receiver, received = await _connect([(track, None)])
    try:
        frames = await _collect_audio(received["audio"], 2.0)
    finally:
        await sender.close()
        await receiver.close()
    assert len(frames) > 0.8 * 100
    assert all(f.sample_rate == 48000 for f in frames)
    samples = np.concatenate([audio_samples(f) for f in frames[10:]])
    assert dominant_frequency(samples, 48000) == pytest.approx(750.0, abs=3.0)
    assert track.loops >= 1


@pytest.mark.media  # real-time encoding and decoding: shares the machine
@pytest.mark.asyncio
async def test_live_tracks_end_to_end(loopback: None) -> None:
    """Live barcode and tone tracks survive aiortc encoding."""
    video = BarcodeVideoTrack(320, 240, fps=30)
    audio = ToneAudioTrack(1000.0)
    sender, receiver, received = await _connect([(video, None), (audio, None)])
    try:
        numbers, frames = await asyncio.gather(
            _collect_video(received["video"], 2.5),
            _collect_audio(received["audio"], 2.5),
        )
    finally:
        await sender.close()
        await receiver.close()
    _assert_increasing(numbers, 75)
    assert next(n for n in numbers if n is not None) < 15
    assert len(frames) > 0.8 * 125
    samples = np.concatenate([audio_samples(f) for f in frames[10:]])
    assert dominant_frequency(samples, 48000) == pytest.approx(1000.0, abs=3.0)
    assert video.frames_sent >= 75 and audio.frames_sent >= 125
