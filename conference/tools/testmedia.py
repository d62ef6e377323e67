"""Synthetic, machine-checkable media for tests, benchmarks and load tests.

The module provides four groups of helpers:

* **Frame barcodes** -- :func:`draw_barcode` renders a ``yuv420p`` picture
  whose middle band encodes a 16-bit frame number as large black/white cells
  (framed by start/stop guards and a 4-bit check nibble); the rest of the
  picture is a moving diagonal texture so that encoders have real work to do.
  :func:`read_barcode` recovers the number from a decoded frame, or returns
  ``None`` for pictures that do not carry a clean barcode (grey/green/corrupt).
* **Tones** -- :func:`tone_frames` generates ``s16`` audio frames of a sine
  tone (optionally gated by a talk/silence *speech pattern*);
  :func:`audio_samples`, :func:`dominant_frequency` and
  :func:`audio_level_dbov` analyse received audio.
* **Live tracks** -- :class:`BarcodeVideoTrack` and :class:`ToneAudioTrack`
  are real-time paced aiortc tracks; aiortc encodes them when they are added
  to an :class:`aiortc.RTCPeerConnection`.
* **Pre-encoded media** -- :func:`encode_clip` / :func:`encode_opus_clip`
  write VP8 (IVF), H.264 (Annex-B) and Opus (Ogg) clips, :func:`cached_clip`
  keeps them in a cache directory, :func:`load_packets` demuxes them into
  :class:`EncodedPacket` records and :class:`PacketTrack` replays those
  packets in real time: aiortc packetizes :class:`av.Packet` objects without
  re-encoding, so a single process can feed many senders cheaply.

Size: over 600 lines: four kinds of test media that share their framing and clocks; it is a
test tool (never imported by the server) and leaves the server's package with the tools.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

__all__ = [
    "BARCODE_MAX",
    "VIDEO_CLOCK_RATE",
    "BarcodeVideoTrack",
    "EncodedPacket",
    "PacketTrack",
    "ToneAudioTrack",
    "audio_level_dbov",
    "audio_samples",
    "cached_clip",
    "default_cache_dir",
    "dominant_frequency",
    "draw_barcode",
    "encode_clip",
    "encode_opus_clip",
    "load_packets",
    "prefer_codec",
    "read_barcode",
    "tone_frames",
]

AudioLayout = Literal["mono", "stereo"]
VideoCodec = Literal["vp8", "h264"]
ClipKind = Literal["vp8", "h264", "opus"]
MediaKind = Literal["video", "audio"]
SpeechPattern = Sequence[tuple[float, float]]

#: Frame numbers are encoded modulo this value (16 bits).
BARCODE_MAX = 1 << 16
#: RTP clock rate of video streams (used for video frame timestamps).
VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)

# --------------------------------------------------------------------------
# Frame barcodes
# --------------------------------------------------------------------------

_DATA_BITS = 16
_CHECK_BITS = 4
_START_GUARD = (1, 0)  # white, black
_STOP_GUARD = (0, 1)  # black, white
_N_CELLS = len(_START_GUARD) + _DATA_BITS + _CHECK_BITS + len(_STOP_GUARD)

# Proportional layout: the barcode band spans these fractions of the picture.
_BAND_TOP = 0.30
_BAND_BOTTOM = 0.70
_CODE_LEFT = 0.04
_CODE_RIGHT = 0.96

_Y_BLACK = 16
_Y_WHITE = 235
_Y_GREY = 128
_TEXTURE_PERIOD = 96  # pixels per texture cycle (diagonal)
_TEXTURE_SPEED = 5  # pixels the texture moves per frame
_MIN_CONTRAST = 64.0  # minimum white-black luma difference of the guards

_LUMA_FIRST_FORMATS = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)

# Full-scale values used to normalise integer samples (as aiortc: 32767).
_INT_FULL_SCALE = {"i2": 32767.0, "i4": 2147483647.0}

_U8Array = npt.NDArray[np.uint8]
_FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Layout:
    """Pixel geometry and static image parts for one picture size."""

    width: int
    height: int
    band_top: int
    band_bottom: int
    cell_edges: tuple[int, ...]  # _N_CELLS + 1 x coordinates
    template: _U8Array  # (height * 3 // 2, width) yuv420p with grey band
    texture: _U8Array  # (height + _TEXTURE_PERIOD, width) sliding view rows


def _cell_edges(width: int) -> tuple[int, ...]:
    """X coordinates of the barcode cell boundaries for a picture width."""
    left = _CODE_LEFT * width
    step = (_CODE_RIGHT - _CODE_LEFT) * width / _N_CELLS
    return tuple(round(left + i * step) for i in range(_N_CELLS + 1))


def _band_rows(height: int) -> tuple[int, int]:
    """First and end row of the barcode band for a picture height."""
    return round(_BAND_TOP * height), round(_BAND_BOTTOM * height)


@functools.lru_cache(maxsize=16)
def _layout(width: int, height: int) -> _Layout:
    """Build (and cache) the static parts of a barcode picture."""
    band_top, band_bottom = _band_rows(height)

    # Diagonal texture: row y of the picture for shift s is
    # base[y + s : y + s + width], i.e. a function of x + y + s.
    k = np.arange(height + width + _TEXTURE_PERIOD, dtype=np.float64)
    phase = 2 * np.pi * k / _TEXTURE_PERIOD
    base = _Y_GREY + 55 * np.sin(phase) + 18 * np.sin(3 * phase + 1.0)
    base_u8 = np.clip(np.round(base), 0, 255).astype(np.uint8)
    texture = np.lib.stride_tricks.sliding_window_view(base_u8, width)
    texture.setflags(write=False)

    # Static template: grey band, colourful (static) chroma gradients elsewhere.
    template = np.full((height * 3 // 2, width), _Y_GREY, dtype=np.uint8)
    ch, cw = height // 2, width // 2
    u = np.clip(np.round(128 + 48 * np.linspace(-1, 1, cw)), 0, 255)
    v = np.clip(np.round(128 + 48 * np.linspace(1, -1, ch)), 0, 255)
    u_plane = np.broadcast_to(u.astype(np.uint8)[None, :], (ch, cw)).copy()
    v_plane = np.broadcast_to(v.astype(np.uint8)[:, None], (ch, cw)).copy()
    c_top, c_bottom = band_top // 2, (band_bottom + 1) // 2
    u_plane[c_top:c_bottom] = 128
    v_plane[c_top:c_bottom] = 128
    # yuv420p as a single array: the Y plane, then the U and V planes.
    flat = template.reshape(-1)
    luma_size = height * width
    flat[luma_size : luma_size + ch * cw] = u_plane.ravel()
    flat[luma_size + ch * cw :] = v_plane.ravel()
    template.setflags(write=False)

    return _Layout(
        width=width,
        height=height,
        band_top=band_top,
        band_bottom=band_bottom,
        cell_edges=_cell_edges(width),
        template=template,
        texture=texture,
    )


def _check_nibble(value: int) -> int:
    """XOR of the four nibbles of a 16-bit value."""
    return (value ^ (value >> 4) ^ (value >> 8) ^ (value >> 12)) & 0xF


def _cell_bits(frame_number: int) -> list[int]:
    """Cell colours (1 = white) for ``frame_number``: guards, data, check."""
    data = [(frame_number >> (_DATA_BITS - 1 - i)) & 1 for i in range(_DATA_BITS)]
    check = _check_nibble(frame_number)
    check_bits = [(check >> (_CHECK_BITS - 1 - i)) & 1 for i in range(_CHECK_BITS)]
    return [*_START_GUARD, *data, *check_bits, *_STOP_GUARD]


def draw_barcode(frame_number: int, width: int, height: int) -> av.VideoFrame:
    """Render a ``yuv420p`` frame whose barcode encodes ``frame_number``.

    The middle band (30 %..70 % of the height) holds 24 equal cells between
    4 % and 96 % of the width: a white/black start guard, the 16 data bits
    (MSB first), a 4-bit check nibble and a black/white stop guard, on a
    mid-grey background.  The rest of the picture is a diagonal texture that
    moves by a few pixels per frame.  ``pts``/``time_base`` are left unset.

    :param frame_number: value to encode, ``0 <= frame_number < 2**16``.
    :param width: picture width in pixels (even, >= 48).
    :param height: picture height in pixels (even, >= 16).
    """
    if not 0 <= frame_number < BARCODE_MAX:
        raise ValueError(f"frame_number must be in [0, {BARCODE_MAX}), got {frame_number}")
    if width < 48 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"invalid barcode picture size {width}x{height}")
    layout = _layout(width, height)
    image = layout.template.copy()

    shift = (frame_number * _TEXTURE_SPEED) % _TEXTURE_PERIOD
    top, bottom = layout.band_top, layout.band_bottom
    image[:top] = layout.texture[shift : shift + top]
    image[bottom:height] = layout.texture[shift + bottom : shift + height]

    row = np.full(width, _Y_GREY, dtype=np.uint8)
    edges = layout.cell_edges
    for i, bit in enumerate(_cell_bits(frame_number)):
        row[edges[i] : edges[i + 1]] = _Y_WHITE if bit else _Y_BLACK
    image[top:bottom] = row
    return av.VideoFrame.from_ndarray(image, format="yuv420p")


def _luma(frame: av.VideoFrame) -> _U8Array:
    """Return the luma plane of ``frame`` as a ``(height, width)`` array."""
    if frame.format.name not in _LUMA_FIRST_FORMATS:
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    data = np.frombuffer(bytes(plane), dtype=np.uint8)
    return data.reshape(-1, plane.line_size)[: frame.height, : frame.width]


def read_barcode(frame: av.VideoFrame) -> int | None:
    """Read the frame number drawn by :func:`draw_barcode` from a (decoded) frame.

    The layout is located proportionally, so the frame may have any size.
    Each cell is sampled in its central area; the guards give the black and
    white reference levels.  Returns ``None`` when the guards do not match,
    the contrast is too low, a cell is ambiguous or the check nibble fails
    (e.g. a green/grey or badly corrupted picture).
    """
    if frame.width < 24 or frame.height < 8:
        return None
    luma = _luma(frame)
    height, width = luma.shape
    top, bottom = _band_rows(height)
    margin_y = (bottom - top) // 4
    profile = luma[top + margin_y : bottom - margin_y].mean(axis=0)

    edges = _cell_edges(width)
    levels: list[float] = []
    for i in range(_N_CELLS):
        left, right = edges[i], edges[i + 1]
        margin_x = (right - left) // 4
        levels.append(float(profile[left + margin_x : right - margin_x].mean()))

    n_start = len(_START_GUARD)
    guards = list(zip(_START_GUARD, levels[:n_start], strict=True)) + list(
        zip(_STOP_GUARD, levels[-len(_STOP_GUARD) :], strict=True)
    )
    white = [level for bit, level in guards if bit]
    black = [level for bit, level in guards if not bit]
    white_ref = sum(white) / len(white)
    black_ref = sum(black) / len(black)
    contrast = white_ref - black_ref
    if contrast < _MIN_CONTRAST:
        return None
    threshold = (white_ref + black_ref) / 2
    dead_zone = contrast / 4
    if min(white) < threshold + dead_zone or max(black) > threshold - dead_zone:
        return None

    bits: list[int] = []
    for level in levels[n_start : n_start + _DATA_BITS + _CHECK_BITS]:
        if abs(level - threshold) < dead_zone:
            return None
        bits.append(1 if level > threshold else 0)
    value = 0
    for bit in bits[:_DATA_BITS]:
        value = (value << 1) | bit
    check = 0
    for bit in bits[_DATA_BITS:]:
        check = (check << 1) | bit
    if check != _check_nibble(value):
        return None
    return value


# --------------------------------------------------------------------------
# Tones and audio analysis
# --------------------------------------------------------------------------


def _validate_speech_pattern(pattern: SpeechPattern | None) -> None:
    """Raise ``ValueError`` for an unusable talk/silence pattern."""
    if pattern is None:
        return
    if not pattern:
        raise ValueError("speech_pattern must not be empty")
    for talk, silence in pattern:
        if talk < 0 or silence < 0:
            raise ValueError("speech_pattern durations must be >= 0")
    if sum(talk + silence for talk, silence in pattern) <= 0:
        raise ValueError("speech_pattern cycle must be longer than 0 s")


def _tone_samples(
    frequency: float,
    start: int,
    count: int,
    sample_rate: int,
    amplitude: float,
    speech_pattern: SpeechPattern | None,
) -> _FloatArray:
    """Samples ``start .. start+count-1`` of a gated sine tone, in [-1, 1]."""
    index = np.arange(start, start + count, dtype=np.float64)
    cycles = frequency * index / sample_rate
    cycles -= np.floor(cycles)  # keep the phase precise for long streams
    samples: _FloatArray = amplitude * np.sin(2 * np.pi * cycles)
    if speech_pattern is not None:
        period = sum(talk + silence for talk, silence in speech_pattern)
        position = np.mod(index / sample_rate, period)
        talking = np.zeros(count, dtype=bool)
        offset = 0.0
        for talk, silence in speech_pattern:
            talking |= (position >= offset) & (position < offset + talk)
            offset += talk + silence
        samples = np.where(talking, samples, 0.0)
    return samples


def _s16_frame(
    samples: _FloatArray, start: int, sample_rate: int, layout: AudioLayout
) -> av.AudioFrame:
    """Pack float samples into a ``s16`` frame starting at sample ``start``."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    channels = 2 if layout == "stereo" else 1
    packed = np.repeat(pcm, channels).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, sample_rate)
    return frame


def tone_frames(
    frequency: float,
    seconds: float,
    sample_rate: int = 48000,
    layout: AudioLayout = "stereo",
    frame_ms: int = 20,
    amplitude: float = 0.3,
    *,
    speech_pattern: SpeechPattern | None = None,
) -> Iterator[av.AudioFrame]:
    """Yield packed ``s16`` frames of a sine tone.

    Frames hold ``frame_ms`` worth of samples (the last one may be shorter),
    ``pts`` counts samples from 0 and ``time_base`` is ``1/sample_rate``.

    :param amplitude: peak amplitude relative to full scale (0..1).
    :param speech_pattern: optional ``[(talk_s, silence_s), ...]`` cycle that
        is repeated; during silences the samples are zero.
    """
    if layout not in ("mono", "stereo"):
        raise ValueError(f"unsupported layout {layout!r}")
    _validate_speech_pattern(speech_pattern)
    total = round(seconds * sample_rate)
    per_frame = sample_rate * frame_ms // 1000
    if per_frame <= 0:
        raise ValueError("frame_ms too small for sample_rate")
    for start in range(0, total, per_frame):
        count = min(per_frame, total - start)
        samples = _tone_samples(frequency, start, count, sample_rate, amplitude, speech_pattern)
        yield _s16_frame(samples, start, sample_rate, layout)


def _normalised(frame: av.AudioFrame) -> _FloatArray:
    """All samples of ``frame`` as floats in [-1, 1] (shape as ``to_ndarray``)."""
    array = frame.to_ndarray()
    if array.dtype == np.uint8:  # offset binary
        return (array.astype(np.float64) - 128.0) / 127.0
    scale = _INT_FULL_SCALE.get(array.dtype.str[1:], 1.0)
    return array.astype(np.float64) / scale


def audio_samples(frame: av.AudioFrame) -> _FloatArray:
    """Return a frame's samples as a 1-D float array (channels averaged)."""
    array = _normalised(frame)
    channels = frame.layout.nb_channels
    if frame.format.is_planar:
        mono: _FloatArray = array.mean(axis=0)
    else:
        mono = array.reshape(-1, channels).mean(axis=1)
    return mono


def dominant_frequency(samples: npt.ArrayLike, sample_rate: int) -> float:
    """Return the strongest frequency (Hz) in ``samples`` using a Hann-windowed FFT.

    ``samples`` is a 1-D signal (e.g. from :func:`audio_samples`, concatenated)
    or a planar ``(channels, n)`` array, whose channels are averaged.  The
    peak bin is refined by parabolic interpolation.  Returns ``0.0`` for
    silence or signals shorter than 4 samples.
    """
    signal = np.asarray(samples, dtype=np.float64)
    if signal.ndim == 2:
        signal = signal.mean(axis=0)
    signal = signal.ravel()
    if signal.size < 4:
        return 0.0
    signal = signal - signal.mean()
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if spectrum[peak] <= 0.0:
        return 0.0
    offset = 0.0
    if 0 < peak < spectrum.size - 1:
        a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        denominator = a - 2 * b + c
        if denominator != 0:
            offset = 0.5 * (a - c) / denominator
    return float((peak + offset) * sample_rate / signal.size)


def audio_level_dbov(frame: av.AudioFrame) -> int:
    """Return the RFC 6464 audio level of ``frame``: ``-dBov`` in 0..127.

    0 is the loudest (full-scale RMS) and 127 silence.  The RMS is taken over
    all samples of all channels, normalised like aiortc (``32767`` for
    ``s16``); for mono frames the result equals
    ``-aiortc.rtp.compute_audio_level_dbov(frame)`` (which over-estimates
    the level of multi-channel packed frames and is pure Python).
    """
    array = _normalised(frame)
    if array.size == 0:
        return 127
    rms = math.sqrt(float(np.mean(np.square(array))))
    if rms <= 0.0:
        return 127
    dbov = max(-127.0, min(0.0, 20 * math.log10(rms)))
    return -round(dbov)


# --------------------------------------------------------------------------
# Live tracks
# --------------------------------------------------------------------------


class _Pacer:
    """Real-time pacing from media time, like aiortc's ``next_timestamp``."""

    def __init__(self) -> None:
        """Start pacing at the first call of :meth:`wait`."""
        self._start: float | None = None

    async def wait(self, media_seconds: float) -> None:
        """Sleep until ``media_seconds`` after the first call."""
        now = time.monotonic()
        if self._start is None:
            self._start = now - media_seconds
            return
        delay = self._start + media_seconds - now
        if delay > 0:
            await asyncio.sleep(delay)


class BarcodeVideoTrack(MediaStreamTrack):
    """Real-time video track of barcode frames numbered 0, 1, 2, ... (mod 2**16).

    Frames carry 90 kHz ``pts``; aiortc encodes them (VP8/H.264) when the
    track is added to a peer connection.  ``frames_sent`` counts returned
    frames.
    """

    kind = "video"

    def __init__(
        self, width: int = 640, height: int = 360, fps: float = 30.0, start: int = 0
    ) -> None:
        """Create the track; ``start`` is the first frame number."""
        super().__init__()
        if fps <= 0:
            raise ValueError("fps must be > 0")
        draw_barcode(start % BARCODE_MAX, width, height)  # validates the size
        self.width = width
        self.height = height
        self.fps = fps
        self.start = start
        self.frames_sent = 0
        self._pacer = _Pacer()

    async def recv(self) -> av.VideoFrame:
        """Return the next barcode frame, waiting until it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        index = self.frames_sent
        await self._pacer.wait(index / self.fps)
        frame = draw_barcode((self.start + index) % BARCODE_MAX, self.width, self.height)
        frame.pts = round(index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """Real-time audio track of a sine tone in 20 ms ``s16`` frames.

    aiortc's Opus encoder accepts ``s16`` mono or stereo at any rate and
    resamples to 48 kHz stereo itself; mono (the default) halves the work
    and keeps aiortc's RTP audio-level extension exact.  With
    ``speech_pattern`` (``[(talk_s, silence_s), ...]``, repeated) the tone is
    gated to zero samples during silences so the audio level varies like
    speech.  ``frames_sent`` counts returned frames.
    """

    kind = "audio"

    def __init__(
        self,
        frequency: float = 440.0,
        sample_rate: int = 48000,
        layout: AudioLayout = "mono",
        amplitude: float = 0.3,
        speech_pattern: SpeechPattern | None = None,
        frame_ms: int = 20,
    ) -> None:
        """Create the track (see the class docstring)."""
        super().__init__()
        if layout not in ("mono", "stereo"):
            raise ValueError(f"unsupported layout {layout!r}")
        _validate_speech_pattern(speech_pattern)
        self.frequency = frequency
        self.sample_rate = sample_rate
        self.layout: AudioLayout = layout
        self.amplitude = amplitude
        self.speech_pattern = list(speech_pattern) if speech_pattern else None
        self.samples_per_frame = sample_rate * frame_ms // 1000
        if self.samples_per_frame <= 0:
            raise ValueError("frame_ms too small for sample_rate")
        self.frames_sent = 0
        self._pacer = _Pacer()

    async def recv(self) -> av.AudioFrame:
        """Return the next audio frame, waiting until it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        start = self.frames_sent * self.samples_per_frame
        await self._pacer.wait(start / self.sample_rate)
        samples = _tone_samples(
            self.frequency,
            start,
            self.samples_per_frame,
            self.sample_rate,
            self.amplitude,
            self.speech_pattern,
        )
        self.frames_sent += 1
        return _s16_frame(samples, start, self.sample_rate, self.layout)


# --------------------------------------------------------------------------
# Pre-encoded media
# --------------------------------------------------------------------------

_CLIP_FORMAT_VERSION = 1  # bump when the encoded output changes
_CONTAINER = {"vp8": "ivf", "h264": "h264", "opus": "ogg"}
_SUFFIX = {"vp8": ".ivf", "h264": ".h264", "opus": ".ogg"}


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One demuxed, still-encoded frame.

    ``pts`` and ``duration`` are in ``time_base`` units; ``pts`` of the first
    packet of a file is 0.
    """

    data: bytes
    pts: int
    time_base: Fraction
    keyframe: bool
    duration: int

    @property
    def seconds(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


def encode_clip(
    path: Path,
    *,
    codec: VideoCodec,
    width: int,
    height: int,
    fps: int,
    seconds: float,
    bitrate: int,
    gop: int,
) -> Path:
    """Encode ``seconds`` of barcode frames (numbers 0, 1, ...) to ``path``.

    * ``vp8``: IVF file, libvpx realtime CBR, no alt-ref frames.
    * ``h264``: Annex-B byte stream, libx264 ``tune=zerolatency``,
      constrained baseline (no B-frames), SPS/PPS repeated on every keyframe.

    A keyframe is written every ``gop`` frames.  Returns ``path``.
    """
    if codec not in ("vp8", "h264"):
        raise ValueError(f"unsupported video codec {codec!r}")
    frame_count = max(1, round(seconds * fps))
    rate = Fraction(fps)
    with av.open(str(path), mode="w", format=_CONTAINER[codec]) as container:
        if codec == "vp8":
            stream = container.add_stream("libvpx", rate=rate)
            stream.options = {
                "deadline": "realtime",
                "cpu-used": "-8",  # negative: fixed speed (deterministic output)
                "lag-in-frames": "0",
                "auto-alt-ref": "0",
                "keyint_min": str(gop),
                "minrate": str(bitrate),
                "maxrate": str(bitrate),
                "bufsize": str(bitrate),
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "static-thresh": "1",
                "qmin": "2",
                "qmax": "56",
            }
        else:
            stream = container.add_stream("libx264", rate=rate)
            x264_params = (
                f"bframes=0:repeat-headers=1:keyint={gop}:min-keyint={gop}:scenecut=0:aud=0"
            )
            options: dict[str, object] = {
                "preset": "veryfast",
                "tune": "zerolatency",
                "profile": "baseline",
                "maxrate": str(bitrate),
                "bufsize": str(bitrate),
                "x264-params": x264_params,
            }
            if width * height <= 1280 * 720 and fps <= 30:
                options["level"] = "3.1"  # matches aiortc's profile-level-id
            stream.options = options
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bitrate
        stream.gop_size = gop
        stream.codec_context.thread_count = min(8, os.cpu_count() or 1)
        time_base = Fraction(1, fps)
        for index in range(frame_count):
            frame = draw_barcode(index % BARCODE_MAX, width, height)
            frame.pts = index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def encode_opus_clip(
    path: Path,
    seconds: float,
    frequency: float = 440.0,
    *,
    bitrate: int = 32000,
    amplitude: float = 0.3,
    speech_pattern: SpeechPattern | None = None,
) -> Path:
    """Encode a tone to an Ogg/Opus file: 48 kHz stereo, 20 ms packets.

    ``seconds`` is rounded up to whole 20 ms frames.  Returns ``path``.
    """
    sample_rate = 48000
    frames = max(1, math.ceil(round(seconds * 1000, 6) / 20))
    with av.open(str(path), mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=sample_rate)
        stream.layout = "stereo"
        stream.format = "s16"
        stream.bit_rate = bitrate
        stream.options = {
            "frame_duration": "20",
            "application": "audio",
            "vbr": "constrained",
        }
        for frame in tone_frames(
            frequency,
            frames * 0.02,
            sample_rate,
            "stereo",
            20,
            amplitude,
            speech_pattern=speech_pattern,
        ):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def default_cache_dir() -> Path:
    """``$CONFERENCE_MEDIA_CACHE`` or ``~/.cache/conference-testmedia``."""
    env = os.environ.get("CONFERENCE_MEDIA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "conference-testmedia"


def cached_clip(
    kind: ClipKind,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    seconds: float = 10.0,
    bitrate: int | None = None,
    gop: int | None = None,
    frequency: float = 440.0,
    speech_pattern: SpeechPattern | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Return a clip file from the cache, encoding it on first use.

    ``kind`` is ``"vp8"``/``"h264"`` (barcode video, see :func:`encode_clip`;
    ``bitrate`` defaults to 1 Mbps, ``gop`` to 2 s) or ``"opus"`` (tone,
    see :func:`encode_opus_clip`; ``bitrate`` defaults to 32 kbps).  Files
    are keyed by all relevant parameters and written atomically, so
    concurrent processes may share the cache directory.
    """
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "opus":
        rate = bitrate if bitrate is not None else 32000
        pattern = tuple((float(t), float(s)) for t, s in speech_pattern) if speech_pattern else None
        key = repr((_CLIP_FORMAT_VERSION, kind, float(seconds), float(frequency), rate, pattern))
        label = f"opus-{seconds:g}s-{frequency:g}hz-{rate // 1000}k"
    elif kind in ("vp8", "h264"):
        rate = bitrate if bitrate is not None else 1_000_000
        keyint = gop if gop is not None else 2 * fps
        key = repr((_CLIP_FORMAT_VERSION, kind, width, height, fps, float(seconds), rate, keyint))
        label = f"{kind}-{width}x{height}-{fps}fps-{seconds:g}s-{rate // 1000}k-g{keyint}"
    else:
        raise ValueError(f"unsupported clip kind {kind!r}")
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    target = directory / f"{label}-{digest}{_SUFFIX[kind]}"
    if target.exists() and target.stat().st_size > 0:
        return target

    temporary = directory / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        if kind == "opus":
            encode_opus_clip(
                temporary, seconds, frequency, bitrate=rate, speech_pattern=speech_pattern
            )
        else:
            encode_clip(
                temporary,
                codec=kind,
                width=width,
                height=height,
                fps=fps,
                seconds=seconds,
                bitrate=rate,
                gop=keyint,
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _is_keyframe(codec_name: str, data: bytes, flagged: bool) -> bool:
    """Keyframe flag from the demuxer, confirmed from the bitstream if possible."""
    if codec_name == "vp8" and data:
        return (data[0] & 0x01) == 0
    if codec_name == "h264":
        # Any IDR NAL unit (type 5) in the Annex-B access unit.
        position = data.find(b"\x00\x00\x01")
        while position != -1 and position + 3 < len(data):
            if data[position + 3] & 0x1F == 5:
                return True
            position = data.find(b"\x00\x00\x01", position + 3)
        return False
    return flagged


def _opus_packet_samples(data: bytes) -> int:
    """Number of 48 kHz samples in an Opus packet, from its TOC byte (RFC 6716)."""
    if not data:
        return 0
    toc = data[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config % 4]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = data[1] & 0x3F if len(data) > 1 else 0
    return frame * count


def load_packets(path: Path, *, fps: float | None = None) -> list[EncodedPacket]:
    """Demux the first stream of ``path`` (no decoding) into :class:`EncodedPacket` s.

    Timestamps are rebased so that the first packet has ``pts`` 0.  Raw
    Annex-B H.264 has no timestamps: packets are numbered in units of
    ``1/fps``, with ``fps`` taken from the argument or from the stream's
    VUI timing information.  Opus packet durations come from the TOC byte
    (the container trims the last one).  Audio packets are all keyframes.
    """
    packets: list[EncodedPacket] = []
    with av.open(str(path)) as container:
        stream = container.streams[0]
        codec_name = stream.codec_context.name
        is_audio = stream.type == "audio"
        raw: list[tuple[bytes, int | None, int | None, bool]] = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            raw.append((bytes(packet), packet.pts, packet.duration, packet.is_keyframe))
        if not raw:
            return []
        if any(pts is None for _, pts, _, _ in raw):
            rate = fps
            if rate is None and isinstance(stream, av.VideoStream):
                guessed = stream.codec_context.framerate or stream.guessed_rate
                rate = float(guessed) if guessed else None
            if not rate:
                raise ValueError(f"{path}: no timestamps; pass fps=")
            time_base = 1 / Fraction(rate).limit_denominator(1001)
            raw = [(data, i, 1, key) for i, (data, _, _, key) in enumerate(raw)]
        else:
            tb = stream.time_base
            if tb is None:
                raise ValueError(f"{path}: stream has no time base")
            time_base = Fraction(tb.numerator, tb.denominator)

    first = raw[0][1] or 0
    pts_list = [(pts or 0) - first for _, pts, _, _ in raw]
    opus_48k = codec_name == "opus" and time_base == Fraction(1, 48000)
    for i, (data, _, duration, flagged) in enumerate(raw):
        if opus_48k:
            # The container trims the last packet (end padding); RTP replay
            # needs the real packet duration so that loops stay contiguous.
            duration = _opus_packet_samples(data) or duration
        if duration is None or duration <= 0:
            if i + 1 < len(raw):
                duration = pts_list[i + 1] - pts_list[i]
            elif packets:
                duration = packets[-1].duration
            else:
                duration = 1
        keyframe = True if is_audio else _is_keyframe(codec_name, data, flagged)
        packets.append(EncodedPacket(data, pts_list[i], time_base, keyframe, duration))
    return packets


class PacketTrack(MediaStreamTrack):
    """Replay pre-encoded packets as a real-time track, without re-encoding.

    ``recv()`` returns :class:`av.Packet` objects paced by their ``pts``;
    aiortc's ``RTCRtpSender`` only packetizes them (the negotiated codec must
    match the packets, see :func:`prefer_codec`).  With ``loop=True`` the
    clip repeats and ``pts`` keeps increasing by the clip duration each
    loop; otherwise the track ends after the last packet.  Keyframe requests
    (PLI/FIR) cannot be honoured: use a clip with a short ``gop``.
    """

    def __init__(
        self, packets: Sequence[EncodedPacket], kind: MediaKind, loop: bool = True
    ) -> None:
        """Create the track for ``packets`` of media ``kind``."""
        super().__init__()
        if kind not in ("video", "audio"):
            raise ValueError(f"unsupported kind {kind!r}")
        if not packets:
            raise ValueError("packets must not be empty")
        self.kind = kind
        self.packets = list(packets)
        self.loop = loop
        first, last = self.packets[0], self.packets[-1]
        self.time_base = first.time_base
        self.clip_duration = last.pts + last.duration - first.pts
        self.packets_sent = 0
        self.loops = 0
        self._index = 0
        self._pacer = _Pacer()

    async def recv(self) -> av.Packet:
        """Return the next packet, waiting until it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._index >= len(self.packets):
            if not self.loop:
                self.stop()
                raise MediaStreamError
            self._index = 0
            self.loops += 1
        record = self.packets[self._index]
        pts = record.pts - self.packets[0].pts + self.loops * self.clip_duration
        await self._pacer.wait(float(pts * self.time_base))
        packet = av.Packet(record.data)
        packet.pts = pts
        packet.time_base = self.time_base
        packet.is_keyframe = record.keyframe
        self._index += 1
        self.packets_sent += 1
        return packet


def prefer_codec(transceiver: RTCRtpTransceiver, mime_type: str) -> None:
    """Restrict ``transceiver`` to ``mime_type`` (e.g. ``"video/H264"``), keeping RTX.

    Needed before the offer/answer when a :class:`PacketTrack` sends a
    pre-encoded codec that is not the default first choice (VP8, Opus).
    """
    capabilities = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in capabilities if c.mimeType.lower() == mime_type.lower()]
    if not chosen:
        raise ValueError(f"codec {mime_type} not supported by aiortc")
    rtx = [c for c in capabilities if c.mimeType.lower().endswith("/rtx")]
    transceiver.setCodecPreferences(chosen + rtx)
