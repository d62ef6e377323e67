"""Synthetic recordings for the composition's tests and benchmark.

:func:`write_recording` writes what the recorder would: one VP8 WebM per
camera/screen and one Opus WebM per microphone, plus a sealed, signed
manifest, with machine-checkable content (``conference.tools.testmedia``): each
participant's pictures carry barcode numbers ``1000 * (k + 1) + frame``
(``k`` its index; 1000 frames at most per track, screens add 500), its
microphone a distinct tone, on only while the participant speaks in the given
speaker timeline.  Much faster than recording through the server and exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..recording.manifest import FORMAT, MANIFEST_SUFFIX, iso
from ..recording.signing import load_or_create_key
from ..recording.store import seal
from .testmedia import draw_barcode

__all__ = ["Participant", "write_recording"]


@dataclass
class Participant:
    identity: str
    role: str = "point"
    tone: float = 440.0
    start: float = 0.0  # seconds after the recording's origin
    length: float = 4.0
    camera: bool = True
    screen: tuple[float, float] | None = None  # (start, length) of a screen share
    size: tuple[int, int] = (640, 360)
    extra: dict[str, Any] = field(default_factory=dict)


def _video(path: Path, base: int, seconds: float, size: tuple[int, int], fps: int) -> int:
    frames = round(seconds * fps)
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8", "b": "1500k"}
        stream.codec_context.thread_count = 2
        for i in range(frames):
            frame = draw_barcode((base + i) % 65536, size[0], size[1])
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return frames


def _audio(
    path: Path, tone: float, seconds: float, talk: list[tuple[float, float]], rate: int = 48000
) -> int:
    total = round(seconds * rate)
    t = np.arange(total) / rate
    on = np.zeros(total, dtype=bool)
    for start, end in talk:
        on |= (t >= start) & (t < end)
    samples = np.where(on, 0.3 * np.sin(2 * np.pi * tone * t), 0.0).astype(np.float32)
    frames = 0
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=rate, layout="mono")
        for start in range(0, total, 960):
            chunk = samples[start : start + 960]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            frames += 1
        for packet in stream.encode(None):
            out.mux(packet)
    return frames


def write_recording(
    directory: Path,
    participants: list[Participant],
    speakers: list[tuple[float, str | None]],
    key_path: Path,
    *,
    fps: int = 30,
    origin: float | None = None,
    stamp: str = "20261130T080000Z",
) -> Path:
    """Write the files and the sealed manifest; return the manifest's path.

    ``speakers`` is the timeline ``[(seconds after origin, identity or None)]``;
    a participant's tone sounds exactly while it is the speaker.
    """
    origin = time.time() - 3600 if origin is None else origin
    directory.mkdir(parents=True, exist_ok=True)
    tracks: list[dict[str, Any]] = []
    for k, person in enumerate(participants):
        talk = []
        for i, (at, who) in enumerate(speakers):
            if who == person.identity:
                until = speakers[i + 1][0] if i + 1 < len(speakers) else 1e9
                talk.append((at - person.start, until - person.start))
        common = {
            "identity": person.identity,
            "name": person.identity,
            "role": person.role,
            "point": person.identity,
        }
        mic = directory / f"{stamp}-{person.identity}-microphone-1.webm"
        count = _audio(mic, person.tone, person.length, talk)
        tracks.append(
            common
            | _track(mic.name, "audio", "microphone", "opus", origin + person.start, person.length)
            | {"frames": count}
        )
        shares: list[tuple[str, float, float, int]] = []
        if person.camera:
            shares.append(("camera", person.start, person.length, 1000 * (k + 1)))
        if person.screen is not None:
            shares.append(("screen", person.screen[0], person.screen[1], 1000 * (k + 1) + 500))
        for source, start, length, base in shares:
            file = directory / f"{stamp}-{person.identity}-{source}-1.webm"
            count = _video(file, base, length, person.size, fps)
            tracks.append(
                common
                | _track(file.name, "video", source, "vp8", origin + start, length)
                | {"frames": count, "sizes": [[*person.size, 0.0]]}
            )
    manifest = {
        "format": FORMAT,
        "meeting": "synthetic",
        "directory": directory.name,
        "recording": stamp,
        "state": "finalizing",
        "started_at": iso(origin),
        "stopped_at": iso(origin + max(p.start + p.length for p in participants)),
        "stop_reason": "stopped",
        "tracks": tracks,
        "speakers": [
            {"at": iso(origin + at), "participant": who, "identity": who} for at, who in speakers
        ],
        "events": [],
        "minutes_final": False,
    }
    path = directory / f"{stamp}{MANIFEST_SUFFIX}"
    seal(path, manifest, load_or_create_key(key_path), "complete")
    return path


def _track(
    name: str, kind: str, source: str, codec: str, first: float, length: float
) -> dict[str, Any]:
    return {
        "file": name,
        "kind": kind,
        "source": source,
        "codec": codec,
        "first_media_utc": iso(first),
        "last_media_utc": iso(first + length),
        "first_media_unix": round(first, 4),
        "clock": "rtcp-sr",
        "duration": length,
        "state": "ended",
    }
