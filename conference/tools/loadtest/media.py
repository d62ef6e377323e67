"""Pre-encoded media for simulated points: cheap to send, realistic to forward.

A simulated point must not encode: 40 of them in one process would need
several cores.  Both tracks here replay packets demuxed once from cached clips
(:mod:`conference.tools.testmedia`), and aiortc only packetizes them:

* :class:`ClipTrack` (camera): a VP8 or H.264 clip of barcode frames.  Unlike
  :class:`conference.tools.testmedia.PacketTrack` it honours keyframe requests: when
  the server asks for a keyframe (PLI/FIR from a new subscriber or a speaker
  switch), the replay jumps to the clip's next keyframe, as a browser's encoder
  would produce one.  Timestamps follow the real-time frame clock, never the
  clip position, so a jump leaves no gap.
* :class:`SpeechTrack` (microphone): Opus packets of a tone gated by a talk and
  pause pattern while the point "has the floor", and of a faint tone (room
  noise, about -57 dBov) otherwise.  It knows the RFC 6464 level of every
  packet (:attr:`SpeechTrack.level`), which
  :func:`conference.sfu.bridge.attach_audio_levels` puts in the
  ``ssrc-audio-level`` header extension: aiortc computes that level only for
  frames it encodes itself, never for pre-encoded packets.

:func:`prepare_media` encodes the clips on first use (into the test-media cache)
and loads them; it runs in every load-test process, so concurrent processes
share the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..testmedia import (
    EncodedPacket,
    SpeechPattern,
    audio_level_dbov,
    cached_clip,
    default_cache_dir,
    encode_opus_clip,
    load_packets,
    tone_frames,
)

__all__ = [
    "RESOLUTIONS",
    "SPEECH_PATTERN",
    "ClipTrack",
    "MediaSet",
    "SpeechTrack",
    "prepare_media",
]

#: Camera sizes a point can send.
RESOLUTIONS = {"360p": (640, 360), "720p": (1280, 720)}
#: Talk and pause durations (seconds) of someone holding the floor: pauses
#: stay short enough that the speaker detector keeps them as the speaker.
SPEECH_PATTERN: SpeechPattern = ((2.6, 0.35), (1.7, 0.5), (3.2, 0.3), (0.9, 0.45), (2.2, 0.4))
SPEECH_AMPLITUDE = 0.3  # about -13 dBov RMS: a close microphone
NOISE_AMPLITUDE = 0.002  # about -57 dBov: a quiet hall, below the detector's -50 dBov
CLIP_SECONDS = 12.0
VIDEO_GOP_SECONDS = 4.0
AUDIO_CLOCK = 48000


@dataclass(frozen=True)
class MediaSet:
    """The demuxed clips every simulated publisher replays."""

    video_codec: str
    video: list[EncodedPacket]
    fps: int
    talk: list[EncodedPacket]
    talk_levels: list[int]
    quiet: list[EncodedPacket]
    quiet_levels: list[int]


def _levels(amplitude: float, pattern: SpeechPattern | None, count: int) -> list[int]:
    """RFC 6464 levels (0 loudest .. 127 silence) of the 20 ms frames of a tone clip."""
    frames = tone_frames(
        440.0, count * 0.02, AUDIO_CLOCK, "stereo", 20, amplitude, speech_pattern=pattern
    )
    return [audio_level_dbov(frame) for frame in frames]


def _opus_clip(amplitude: float, pattern: SpeechPattern | None, cache: Path) -> Path:
    """An Opus tone clip in the cache (encoded atomically on first use)."""
    key = repr((1, CLIP_SECONDS, amplitude, tuple(pattern) if pattern else None))
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    target = cache / f"loadtest-opus-{amplitude:g}-{digest}.ogg"
    if target.exists() and target.stat().st_size > 0:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    temporary = cache / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        encode_opus_clip(
            temporary, CLIP_SECONDS, 440.0, amplitude=amplitude, speech_pattern=pattern
        )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def prepare_media(
    video_codec: str,
    resolution: str,
    bitrate_kbps: int,
    fps: int = 30,
    cache_dir: Path | None = None,
) -> MediaSet:
    """Encode (first time only) and load the clips for one load-test configuration."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    if video_codec not in ("vp8", "h264"):
        raise ValueError("video codec must be vp8 or h264")
    width, height = RESOLUTIONS[resolution]
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    video_path = cached_clip(
        "vp8" if video_codec == "vp8" else "h264",
        width=width,
        height=height,
        fps=fps,
        seconds=CLIP_SECONDS,
        bitrate=bitrate_kbps * 1000,
        gop=round(VIDEO_GOP_SECONDS * fps),
        cache_dir=cache,
    )
    video = load_packets(video_path, fps=fps)
    talk = load_packets(_opus_clip(SPEECH_AMPLITUDE, SPEECH_PATTERN, cache))
    quiet = load_packets(_opus_clip(NOISE_AMPLITUDE, None, cache))
    return MediaSet(
        video_codec=video_codec,
        video=video,
        fps=fps,
        talk=talk,
        talk_levels=_levels(SPEECH_AMPLITUDE, SPEECH_PATTERN, len(talk)),
        quiet=quiet,
        quiet_levels=_levels(NOISE_AMPLITUDE, None, len(quiet)),
    )


class _Clock:
    """Real-time pacing: sleep until a media time (seconds) after the first call."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def wait(self, media_seconds: float) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = now - media_seconds
            return
        delay = self.start + media_seconds - now
        if delay > 0:
            await asyncio.sleep(delay)


class ClipTrack(MediaStreamTrack):
    """Replays a pre-encoded video clip in a loop; a keyframe request jumps to a keyframe."""

    kind = "video"

    def __init__(self, packets: Sequence[EncodedPacket], fps: int, start_index: int = 0) -> None:
        super().__init__()
        if not packets:
            raise ValueError("packets must not be empty")
        self.packets = list(packets)
        self.keyframe_indexes = [i for i, p in enumerate(self.packets) if p.keyframe]
        if not self.keyframe_indexes:
            raise ValueError("the clip has no keyframe")
        self.frame_ticks = round(90000 / fps)
        self.time_base = Fraction(1, 90000)
        # start on a keyframe, at a point of the clip that differs between publishers
        first = start_index % len(self.packets)
        self._index = next((k for k in self.keyframe_indexes if k >= first), 0)
        self._frames = 0
        self._clock = _Clock()
        self._keyframe_wanted = False
        self.keyframes_requested = 0
        self.keyframes_sent = 0

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (called on PLI/FIR)."""
        self.keyframes_requested += 1
        self._keyframe_wanted = True

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        pts = self._frames * self.frame_ticks
        await self._clock.wait(pts / 90000)
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            if not self.packets[self._index].keyframe:
                self._index = next(
                    (k for k in self.keyframe_indexes if k > self._index), self.keyframe_indexes[0]
                )
        record = self.packets[self._index]
        if record.keyframe:
            self.keyframes_sent += 1
        self._index = (self._index + 1) % len(self.packets)
        self._frames += 1
        packet = av.Packet(record.data)
        packet.pts = pts
        packet.time_base = self.time_base
        packet.is_keyframe = record.keyframe
        return packet


class SpeechTrack(MediaStreamTrack):
    """Opus packets of speech while :attr:`speaking`, of room noise otherwise.

    :attr:`level` is the RFC 6464 level of the packet returned last.  Taking
    the floor restarts the talk pattern at the start of a sentence.
    """

    kind = "audio"

    def __init__(self, media: MediaSet, offset: int = 0) -> None:
        super().__init__()
        self.talk = media.talk
        self.talk_levels = media.talk_levels
        self.quiet = media.quiet
        self.quiet_levels = media.quiet_levels
        self.time_base = Fraction(1, AUDIO_CLOCK)
        # packet durations in 48 kHz samples, computed once (Fraction arithmetic is slow)
        self._talk_samples = [self._samples_of(p) for p in self.talk]
        self._quiet_samples = [self._samples_of(p) for p in self.quiet]
        self.speaking = False
        self.level = 127
        self._was_speaking = False
        self._talk_index = 0
        self._quiet_index = offset % len(self.quiet)
        self._samples = 0
        self._clock = _Clock()

    def _samples_of(self, record: EncodedPacket) -> int:
        return round(record.duration * record.time_base * AUDIO_CLOCK) or 960

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self._clock.wait(self._samples / AUDIO_CLOCK)
        if self.speaking:
            if not self._was_speaking:
                self._talk_index = 0
            index = self._talk_index % len(self.talk)
            record = self.talk[index]
            self.level = self.talk_levels[index % len(self.talk_levels)]
            duration = self._talk_samples[index]
            self._talk_index += 1
        else:
            index = self._quiet_index % len(self.quiet)
            record = self.quiet[index]
            self.level = self.quiet_levels[index % len(self.quiet_levels)]
            duration = self._quiet_samples[index]
            self._quiet_index += 1
        self._was_speaking = self.speaking
        packet = av.Packet(record.data)
        packet.pts = self._samples
        packet.time_base = self.time_base
        self._samples += duration
        return packet
