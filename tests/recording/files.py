"""Reading recorded files in tests: decode with PyAV (here, never in the server)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from conference.tools.testmedia import audio_samples, dominant_frequency, read_barcode


@dataclass
class VideoFile:
    numbers: list[int | None]
    pts: list[float]  # seconds
    duration: float  # container duration, seconds
    errors: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)


@dataclass
class AudioFile:
    samples: np.ndarray
    rate: int
    first_pts: float
    duration: float
    frames: int
    errors: list[str] = field(default_factory=list)


def decode_video(path: Path) -> VideoFile:
    """Every frame's barcode number and time; decoding errors are collected, not raised."""
    numbers: list[int | None] = []
    pts: list[float] = []
    errors: list[str] = []
    size = (0, 0)
    with av.open(str(path)) as container:
        duration = (container.duration or 0) / 1_000_000
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                try:
                    for frame in packet.decode():
                        numbers.append(read_barcode(frame))
                        pts.append(float(frame.time))
                        size = (frame.width, frame.height)
                except av.FFmpegError as exc:
                    errors.append(repr(exc))
        except av.FFmpegError as exc:  # a truncated file ends with a demuxing error
            errors.append("demux: " + repr(exc))
    return VideoFile(numbers, pts, duration, errors, size)


def decode_audio(path: Path) -> AudioFile:
    chunks = []
    first = None
    rate = 48000
    frames = 0
    errors: list[str] = []
    with av.open(str(path)) as container:
        duration = (container.duration or 0) / 1_000_000
        stream = container.streams.audio[0]
        try:
            for packet in container.demux(stream):
                try:
                    for frame in packet.decode():
                        if first is None:
                            first = float(frame.time)
                        rate = frame.sample_rate
                        chunks.append(audio_samples(frame))
                        frames += 1
                except av.FFmpegError as exc:
                    errors.append(repr(exc))
        except av.FFmpegError as exc:
            errors.append("demux: " + repr(exc))
    samples = np.concatenate(chunks) if chunks else np.zeros(0)
    return AudioFile(samples, rate, first or 0.0, duration, frames, errors)


def frequency(audio: AudioFile) -> float:
    return dominant_frequency(audio.samples, audio.rate)


def onsets(audio: AudioFile, window: float = 0.01) -> list[float]:
    """File times (s) where the gated tone switches on (after at least 0.3 s of silence)."""
    n = int(audio.rate * window)
    count = audio.samples.size // n
    if count == 0:
        return []
    rms = np.sqrt((audio.samples[: count * n].reshape(count, n) ** 2).mean(axis=1))
    loud = rms > 0.05
    found = []
    quiet_run = 0
    for i, on in enumerate(loud):
        if on and quiet_run >= int(0.3 / window):
            found.append(audio.first_pts + i * window)
        quiet_run = 0 if on else quiet_run + 1
    return found


def manifests(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text())) for path in sorted(root.rglob("*.manifest.json"))]


def consecutive(numbers: list[int | None]) -> bool:
    return all(n is not None for n in numbers) and all(
        b == a + 1
        for a, b in zip(numbers, numbers[1:], strict=False)  # type: ignore[operator]
    )
