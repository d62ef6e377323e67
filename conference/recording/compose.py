"""Composing one playable MP4 (H.264 + AAC) from a recording's per-track files.

Input: a sealed manifest (``complete`` or ``interrupted``) and the track files
next to it.  Output: ``<start-utc>.mp4`` beside the manifest, 1280x720 at
25 fps, ``yuv420p``, ``+faststart`` (the index first, so it plays while it
downloads), written as ``.mp4.part``, flushed and renamed when finished: composing
again leaves the earlier MP4 whole (and offered) until then, or if it fails.

Timeline: every track's frames are placed on the manifest's common UTC clock
(``first_media_unix`` + the frame's time in its file); the composition starts
at the earliest track and ends with the latest.  Layout at each output frame:

* a screen share, when one is active, fills the large area and the active
  speaker (else the chair) moves to an inset;
* otherwise the active speaker (the manifest's ``speakers`` timeline) is
  large; when nobody speaks, or the speaker has no camera, the chair is large;
* the chair (the track whose ``role`` is ``chair``) is an inset in the
  bottom-right corner unless it is the large picture;
* pictures keep their aspect ratio (letterboxed on a dark grey background).

A camera that stops sending (mute, loss) keeps its last frame until its track
ends; a place with no picture shows the background.  Nothing waits on a
track: every source is a decoder that is only advanced to the output time.

Audio: every microphone/screen audio track is decoded, resampled to 48 kHz
mono, placed by its sample time on the same clock (gaps are silence) and
summed; peaks above 0.8 are compressed smoothly toward 1.0 (no hard clipping).
Output audio and video timestamps come from the same origin, so the A/V
offset is the recorder's clock error (tested: under 100 ms).

Speed: only the pictures shown are scaled (``VideoFrame.reformat``), the
canvas is assembled in numpy, and libx264 runs ``superfast`` with its own
threads; decoders use frame threads.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from .manifest import flush, read_manifest, sha256_file
from .store import PathError, inside

__all__ = [
    "FPS",
    "HEIGHT",
    "SAMPLE_RATE",
    "WIDTH",
    "CompositionError",
    "Layout",
    "compose",
    "output_path",
    "plan",
]

WIDTH = 1280
HEIGHT = 720
FPS = 25
SAMPLE_RATE = 48000
#: superfast: 2.3x real time on one busy core (veryfast: 1.5-1.8x, half the file size);
#: docs/BENCHMARKS.md, "Composition".
PRESET = "superfast"
CRF = 23
BACKGROUND = (40, 128, 128)  # dark grey, Y U V
INSET_SCALE = 4  # an inset is 1/4 of the canvas width
MARGIN = 16

Progress = Callable[[float], None]
_Planes = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


class CompositionError(Exception):
    """The recording cannot be composed (bad manifest, missing or damaged file)."""


def output_path(manifest_path: Path) -> Path:
    """``<start>.mp4`` beside ``<start>.manifest.json``."""
    name = manifest_path.name.removesuffix(".manifest.json")
    return manifest_path.with_name(f"{name}.mp4")


def _unix(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- the plan: tracks on the common clock ------------------------------------------------
@dataclass
class Track:
    path: Path
    identity: str
    kind: str  # audio | video
    source: str  # microphone | camera | screen
    start: float  # common-clock seconds from the composition's origin of the file's 0 s
    end: float  # common-clock seconds of its last media
    chair: bool


@dataclass
class Layout:
    """Everything :func:`compose` needs, derived from the manifest."""

    tracks: list[Track]
    duration: float
    origin: float  # Unix time of the composition's 0 s
    speakers: list[tuple[float, str | None]] = field(default_factory=list)
    chair: str | None = None

    def speaker_at(self, t: float) -> str | None:
        current: str | None = None
        for at, identity in self.speakers:
            if at > t:
                break
            current = identity
        return current


def plan(manifest_path: Path, check_hashes: bool = True) -> Layout:
    """Read and check a sealed manifest; the tracks placed on the common clock."""
    try:
        manifest = read_manifest(manifest_path)
    except ValueError as exc:
        raise CompositionError(str(exc)) from None
    if manifest.get("state") not in ("complete", "interrupted"):
        raise CompositionError(
            f"{manifest_path.name}: state {manifest.get('state')!r}, not sealed yet"
        )
    directory = manifest_path.parent
    raw: list[tuple[Path, dict[str, Any], float, float]] = []
    for info in manifest.get("tracks", []):
        name = info.get("file")
        first = info.get("first_media_unix")
        if first is None:
            first = _unix(info.get("first_media_utc"))
        if not name or first is None or not info.get("frames"):
            continue  # nothing was written for this publication
        try:
            path = inside(directory, directory / str(name))
        except PathError as exc:
            raise CompositionError(str(exc)) from None
        if not path.is_file():
            raise CompositionError(f"{name}: missing")
        expected = info.get("sha256")
        if check_hashes and expected and sha256_file(path) != expected:
            raise CompositionError(f"{name}: SHA-256 mismatch (file modified or damaged)")
        last = _unix(info.get("last_media_utc"))
        duration = float(info.get("duration") or 0.0)
        end = max(last or 0.0, first + duration)
        raw.append((path, info, float(first), end))
    if not raw:
        raise CompositionError(f"{manifest_path.name}: no recorded media to compose")
    origin = min(first for _, _, first, _ in raw)
    tracks = [
        Track(
            path=path,
            identity=str(info.get("identity")),
            kind=str(info.get("kind")),
            source=str(info.get("source")),
            start=first - origin,
            end=end - origin,
            chair=info.get("role") == "chair",
        )
        for path, info, first, end in raw
    ]
    duration = max(track.end for track in tracks)
    chair = next((t.identity for t in tracks if t.chair), None)
    speakers = []
    for entry in manifest.get("speakers", []):
        at = _unix(entry.get("at"))
        if at is not None:
            identity = entry.get("identity")
            speakers.append((at - origin, str(identity) if identity else None))
    speakers.sort(key=lambda item: item[0])
    return Layout(tracks, duration, origin, speakers, chair)


# -- sources -------------------------------------------------------------------------------
def _open(path: Path) -> Any:
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise CompositionError(f"{path.name}: cannot be read ({exc})") from None


def _decoded(container: Any, stream: Any) -> Iterator[Any]:
    """Every frame of ``stream``; a damaged packet is skipped, not fatal."""
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.InvalidDataError:
                continue
    except av.FFmpegError:
        return  # a truncated file (interrupted recording) ends here
    try:
        yield from stream.codec_context.decode(None)  # drain
    except av.FFmpegError:
        return


class _Prefetch:
    """Iterate ``items`` in a worker thread, a few items ahead (decoding in parallel).

    PyAV releases the GIL while FFmpeg decodes, so the video decoders run on
    the other core while the main thread composes and encodes.
    """

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int = 4) -> None:
        self.items = items
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="compose-decode", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        try:
            for item in self.items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(exc)
            return
        self._put(self._END)

    def _put(self, item: Any) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = self.queue.get()
        if item is self._END:
            self.queue.put(item)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


class VideoSource:
    """A video track, advanced to the output time; holds its last frame."""

    def __init__(self, track: Track) -> None:
        self.track = track
        self.container = _open(track.path)
        if not self.container.streams.video:
            raise CompositionError(f"{track.path.name}: no video stream")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.frames = _Prefetch(_decoded(self.container, stream))
        self.current: Any = None
        try:
            self.pending: Any = next(self.frames, None)
            if self.pending is None:
                raise CompositionError(f"{track.path.name}: no decodable video")
        except BaseException:
            self.close()
            raise
        self.serial = 0
        self._scaled: tuple[int, int, int, _Planes] | None = None

    def active(self, t: float) -> bool:
        return self.track.start <= t <= self.track.end

    def frame_at(self, t: float) -> Any:
        """The frame shown at common time ``t`` (the last one at or before it)."""
        local = t - self.track.start + 1e-6
        while self.pending is not None and (self.pending.time or 0.0) <= local:
            self.current = self.pending
            self.serial += 1
            self.pending = next(self.frames, None)
        return self.current

    def scaled(self, t: float, width: int, height: int) -> _Planes | None:
        frame = self.frame_at(t)
        if frame is None:
            return None
        cached = self._scaled
        if cached is not None and cached[:3] == (self.serial, width, height):
            return cached[3]
        picture = frame.reformat(width=width, height=height, format="yuv420p")
        planes = _planes(picture)
        self._scaled = (self.serial, width, height, planes)
        return planes

    def close(self) -> None:
        self.frames.close()
        self.container.close()


class AudioSource:
    """An audio track as 48 kHz mono float samples on the common sample clock."""

    def __init__(self, track: Track) -> None:
        self.track = track
        self.container = _open(track.path)
        if not self.container.streams.audio:
            raise CompositionError(f"{track.path.name}: no audio stream")
        self.frames = _decoded(self.container, self.container.streams.audio[0])
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self.buffer = np.zeros(0, dtype=np.float32)
        self.start = 0  # sample index of buffer[0]
        self.cursor: int | None = None  # where the next resampled sample goes
        self.done = False

    def _pull(self) -> None:
        frame = next(self.frames, None)
        if frame is None:
            self.done = True
            resampled = self.resampler.resample(None)
        else:
            at = round((self.track.start + float(frame.time or 0.0)) * SAMPLE_RATE)
            if self.cursor is None or abs(at - self.cursor) > SAMPLE_RATE * 0.03:
                self.cursor = at  # first frame, or a gap (mute) / jump in the file
            resampled = self.resampler.resample(frame)
        for piece in resampled:
            samples = piece.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            self._append(self.cursor or 0, samples)
            self.cursor = (self.cursor or 0) + samples.size

    def _append(self, at: int, samples: npt.NDArray[np.float32]) -> None:
        end = self.start + self.buffer.size
        if self.buffer.size == 0:
            self.start, self.buffer = at, samples
            return
        if at > end:
            samples = np.concatenate([np.zeros(at - end, dtype=np.float32), samples])
        elif at < end:
            samples = samples[end - at :]  # overlap: keep what is there
        self.buffer = np.concatenate([self.buffer, samples])

    def take(self, start: int, count: int) -> npt.NDArray[np.float32] | None:
        """Samples ``start .. start+count`` (None when silent throughout)."""
        while not self.done and (
            self.buffer.size == 0 or self.start + self.buffer.size < start + count
        ):
            self._pull()
        if self.buffer.size == 0:
            return None
        lo = max(start, self.start)
        hi = min(start + count, self.start + self.buffer.size)
        out = None
        if hi > lo:
            out = np.zeros(count, dtype=np.float32)
            out[lo - start : hi - start] = self.buffer[lo - self.start : hi - self.start]
        drop = min(max(0, start + count - self.start), self.buffer.size)
        self.buffer = self.buffer[drop:]
        self.start += drop
        return out

    def close(self) -> None:
        self.container.close()


# -- pictures ------------------------------------------------------------------------------
def _planes(frame: Any) -> _Planes:
    """The Y, U, V planes of a ``yuv420p`` frame as arrays (line padding removed)."""
    result = []
    for index, plane in enumerate(frame.planes):
        w = frame.width if index == 0 else frame.width // 2
        h = frame.height if index == 0 else frame.height // 2
        data = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        result.append(data[:h, :w])
    return result[0], result[1], result[2]


def _fit(src_w: int, src_h: int, box_w: int, box_h: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a picture fitted into a box, keeping its aspect, even sizes."""
    scale = min(box_w / max(src_w, 1), box_h / max(src_h, 1))
    w = max(2, int(src_w * scale) // 2 * 2)
    h = max(2, int(src_h * scale) // 2 * 2)
    return (box_w - w) // 4 * 2, (box_h - h) // 4 * 2, w, h


class Canvas:
    """A ``yuv420p`` picture assembled in one buffer."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.buffer = np.empty((height * 3 // 2, width), dtype=np.uint8)
        quarter = height // 4
        self.y = self.buffer[:height]
        self.u = self.buffer[height : height + quarter].reshape(height // 2, width // 2)
        self.v = self.buffer[height + quarter :].reshape(height // 2, width // 2)

    def clear(self) -> None:
        self.y.fill(BACKGROUND[0])
        self.u.fill(BACKGROUND[1])
        self.v.fill(BACKGROUND[2])

    def fill(self, x: int, y: int, w: int, h: int, colour: tuple[int, int, int]) -> None:
        self.y[y : y + h, x : x + w] = colour[0]
        self.u[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = colour[1]
        self.v[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = colour[2]

    def paste(self, source: VideoSource, t: float, box: tuple[int, int, int, int]) -> bool:
        """Draw ``source``'s picture at ``t`` fitted into ``box`` (x, y, w, h, all even)."""
        frame = source.frame_at(t)
        if frame is None:
            return False
        bx, by, bw, bh = box
        dx, dy, w, h = _fit(frame.width, frame.height, bw, bh)
        planes = source.scaled(t, w, h)
        if planes is None:
            return False
        x, y = bx + dx, by + dy
        self.y[y : y + h, x : x + w] = planes[0]
        self.u[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = planes[1]
        self.v[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = planes[2]
        return True

    def frame(self, index: int) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(self.buffer, format="yuv420p")
        frame.pts = index
        return frame


def inset_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Inset places, right to left along the bottom edge: (x, y, w, h)."""
    w = width // INSET_SCALE // 2 * 2
    h = w * 9 // 16 // 2 * 2
    y = height - MARGIN - h
    return [(width - (MARGIN + w) * (i + 1), y, w, h) for i in range(2)]


def _choose(
    layout: Layout, sources: list[VideoSource], t: float
) -> tuple[VideoSource | None, list[VideoSource]]:
    """(large picture, insets) at time ``t``."""
    active = [s for s in sources if s.active(t)]

    def camera(identity: str | None) -> VideoSource | None:
        found = [s for s in active if s.track.source != "screen" and s.track.identity == identity]
        return max(found, key=lambda s: s.track.start) if found else None

    screens = [s for s in active if s.track.source == "screen"]
    speaker = layout.speaker_at(t)
    chair = camera(layout.chair)
    talking = camera(speaker) if speaker else None
    if screens:
        shown = [s for s in (chair, talking) if s is not None]
        return max(screens, key=lambda s: s.track.start), list(dict.fromkeys(shown))
    large: VideoSource | None = talking or chair
    if large is None:  # no speaker camera and no chair camera: anyone's camera
        cameras = [s for s in active if s.track.source != "screen"]
        large = min(cameras, key=lambda s: s.track.start) if cameras else None
    insets = [chair] if chair is not None and chair is not large else []
    return large, insets


def _limit(mix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Soft-knee limiter: unchanged below 0.8, compressed toward 1.0 above."""
    peak = np.abs(mix)
    if float(peak.max(initial=0.0)) <= 0.8:
        return mix
    over = peak > 0.8
    knee = 0.8 + 0.2 * np.tanh((peak[over] - 0.8) / 0.2)
    mix = mix.copy()
    mix[over] = np.sign(mix[over]) * knee
    return mix


# -- composition ---------------------------------------------------------------------------
def compose(
    manifest_path: Path,
    output: Path | None = None,
    progress: Progress | None = None,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    fps: int = FPS,
    threads: int = 0,
    preset: str = PRESET,
) -> Path:
    """Compose the recording of ``manifest_path`` into an MP4; return its path.

    ``progress`` is called with a percentage (0-100) about once a second of
    output; raises :class:`CompositionError` for unusable input.
    """
    layout = plan(manifest_path)
    output = output or output_path(manifest_path)
    partial = output.with_name(output.name + ".part")
    video_sources: list[VideoSource] = []
    audio_sources: list[AudioSource] = []
    try:
        for track in layout.tracks:
            if track.kind == "video":
                video_sources.append(VideoSource(track))
            elif track.kind == "audio":
                audio_sources.append(AudioSource(track))
        size = (width, height, fps, threads)
        _encode(layout, video_sources, audio_sources, partial, progress, size, preset)
        flush(partial)  # on the disk before it replaces the earlier MP4
        os.replace(partial, output)  # an earlier MP4 stays whole and offered until here
        flush(output.parent)
    except av.FFmpegError as exc:
        raise CompositionError(f"encoding failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
        for video in video_sources:
            video.close()
        for audio in audio_sources:
            audio.close()
    return output


def _encode(
    layout: Layout,
    video_sources: list[VideoSource],
    audio_sources: list[AudioSource],
    path: Path,
    progress: Progress | None,
    size: tuple[int, int, int, int],
    preset: str,
) -> None:
    width, height, fps, threads = size
    total = max(1, round(layout.duration * fps))
    per_frame = SAMPLE_RATE // fps
    canvas = Canvas(width, height)
    insets = inset_boxes(width, height)
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = out.add_stream(
            "libx264", rate=fps, options={"preset": preset, "crf": str(CRF), "g": str(2 * fps)}
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.codec_context.thread_count = threads
        audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        audio.codec_context.bit_rate = 96000
        last_report = -1
        for index in range(total):
            t = index / fps
            canvas.clear()
            large, small = _choose(layout, video_sources, t)
            if large is not None:
                canvas.paste(large, t, (0, 0, width, height))
            for source, box in zip(small, insets, strict=False):
                x, y, w, h = box
                canvas.fill(x - 2, y - 2, w + 4, h + 4, (200, 128, 128))
                canvas.fill(x, y, w, h, (16, 128, 128))
                canvas.paste(source, t, box)
            for packet in video.encode(canvas.frame(index)):
                out.mux(packet)
            start = index * per_frame
            mix = np.zeros(per_frame, dtype=np.float32)
            for sound_source in audio_sources:
                samples = sound_source.take(start, per_frame)
                if samples is not None:
                    mix += samples
            sound = av.AudioFrame.from_ndarray(
                _limit(mix).reshape(1, -1), format="fltp", layout="mono"
            )
            sound.sample_rate = SAMPLE_RATE
            sound.pts = start
            sound.time_base = Fraction(1, SAMPLE_RATE)
            for packet in audio.encode(sound):
                out.mux(packet)
            percent = index * 100 // total
            if progress is not None and percent != last_report and index % fps == 0:
                last_report = percent
                progress(min(99.0, 100.0 * index / total))
        for packet in video.encode(None):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    if progress is not None:
        progress(100.0)
