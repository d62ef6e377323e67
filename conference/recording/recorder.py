"""The in-server recorder: a room observer that muxes every publication's packets to files.

No network hop and no peer connection: a :class:`TrackRecorder` is a tap on a
:class:`~conference.sfu.publication.Publication` (``Publication.taps``), so it
gets each packet after the publisher's RTX unwrap and NACK repair, exactly as
the subscriptions do, without any RTP bytes being built for it.  It
depacketizes (``depacketize``), waits for a keyframe (requesting one through
the publication's throttled keyframe request), drops everything after a loss
until the next keyframe, and writes whole frames (``writer``).  Nothing is
decoded or encoded.

A :class:`MeetingRecorder` observes its :class:`~conference.sfu.room.Room`
(``Room.observers``): a new file per publication, join/leave events, the
active-speaker timeline, and a manifest (``manifest``) saved atomically every
couple of seconds and sealed (SHA-256 of every file, Ed25519 signature) when
the recording stops.  ``Room.recording`` is true meanwhile, so every page can
show that the meeting is being recorded.

Decisions:

* Files are named ``<start-utc>-<identity>-<source>-<n>.webm`` (``.mkv`` for
  H.264), the identity's kind and subject joined by ``-`` (``pt-xa-a``: a point
  and an account of the same name never share a file name); ``source`` is
  microphone, camera or screen and ``n`` counts that
  participant's publications of that source in this recording.
* A resolution change (a VP8 keyframe with a new size) stays in the same file:
  Matroska and every player handle in-band size changes; the manifest lists
  the sizes with their media times.
* Mute (no packets) leaves a gap in the timestamps: no frames are invented.
* An exception in a track's recording is logged and ends that track's file
  only (``error`` in the manifest); the room and the other tracks go on.
* A full disk ends the whole recording, never the meeting: a write that fails
  with ENOSPC/EDQUOT, or free space falling below a quarter of
  ``recording_min_free_mb`` (checked every ``SAVE_INTERVAL``, so that the
  manifest can still be sealed), stops it with the reason (``disk-full`` or
  ``disk-low``), sets ``Room.recording_failure`` and tells the
  :data:`failure_listeners` (the briefing tells the chair: ``recording-failed``).
  Recording refuses to start with less than ``recording_min_free_mb`` free
  (``recording-no-space``).
* A manifest that cannot be sealed (the disk is full) is kept in memory and
  sealed again every ``RESEAL_INTERVAL`` until it works; :func:`health` lists
  it (``/healthz``).  The same holds at start for the recordings a previous
  run left unfinished: the server starts whatever the disk says.

Size: over 600 lines: a track's file, the meeting's recording and the module API that
the room's chair drives share one state (the recorders, their configuration); the
disk-space rules that needed state of their own live in ``space``.

Module API: :func:`configure` (the server, at start), :func:`start` and
:func:`stop` (the chair's ``record-start``/``record-stop``, later a meeting's
recording policy), :func:`shutdown` (the server, before closing rooms).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..core import events
from ..sfu.bridge import NTP_EPOCH_OFFSET, RtpPacket
from ..sfu.publication import Publication
from . import jobs
from .depacketize import AudioSequencer, Frame, VideoAssembler
from .manifest import FORMAT, MANIFEST_SUFFIX, iso, read_manifest, write_manifest
from .signing import KEY_FILE, load_or_create_key
from .space import MB, SealQueue, disk_full, free_bytes, reason
from .store import (
    PathError,
    inside,
    mark_interrupted,
    meeting_directory,
    safe_component,
    seal,
    seal_interrupted,
)
from .writer import TrackWriter

if TYPE_CHECKING:
    from ..settings import Settings
    from ..sfu.participant import Participant
    from ..sfu.room import Room

__all__ = [
    "MeetingRecorder",
    "RecordingError",
    "TrackRecorder",
    "configure",
    "configure_from",
    "failure_listeners",
    "health",
    "shutdown",
    "start",
    "stop",
]

logger = logging.getLogger(__name__)

TICK = 0.25  # assembler timeouts
SAVE_INTERVAL = 2.0  # manifest saves while recording
EXTENSIONS = {"vp8": ".webm", "opus": ".webm", "h264": ".mkv"}
RESEAL_INTERVAL = 10.0  # a manifest the disk refused is sealed again this often


class RecordingError(Exception):
    """Recording cannot start or stop; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _stamp(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


class TrackRecorder:
    """One publication to one file."""

    def __init__(self, owner: MeetingRecorder, publication: Publication, path: Path) -> None:
        self.owner = owner
        self.publication = publication
        self.path = path
        self.kind = publication.kind
        self.codec = publication.codec_name
        self.clock_rate = publication.clock_rate
        self.video: VideoAssembler | None = None
        self.audio: AudioSequencer | None = None
        if self.kind == "video":
            self.video = VideoAssembler(self.codec)
        else:
            self.audio = AudioSequencer()
        self.writer = TrackWriter(path, self.codec, self.clock_rate)
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.first_arrival: float | None = None  # wall clock of the first frame written
        self.last_arrival: float | None = None
        self.last_timestamp: int | None = None
        self.sizes: list[tuple[int, int, float]] = []
        self._start_utc: float | None = None  # from sender reports, see sample_clock
        self._last_report: tuple[int, int] | None = None
        self.error: str | None = None
        self.closed = False
        publication.taps.append(self.on_packet)

    # -- packets ---------------------------------------------------------------------
    def on_packet(self, publication: Publication, packet: RtpPacket, keyframe: bool) -> None:
        if self.closed:
            return
        try:
            now = time.monotonic()
            if self.video is not None:
                frames = self.video.push(
                    packet.sequence_number,
                    packet.timestamp,
                    bool(packet.marker),
                    packet.payload,
                    now,
                )
                if self.video.needs_keyframe:
                    publication.request_keyframe()
                for frame in frames:
                    self._write(frame)
            elif self.audio is not None:
                audio = self.audio.push(packet.sequence_number, packet.timestamp, packet.payload)
                if audio is not None:
                    self._write(audio)
        except Exception as exc:
            self.fail(exc)

    def poll(self, now: float) -> None:
        """Release or give up on frames waiting for a repair (every ``TICK``)."""
        if self.closed or self.video is None:
            return
        try:
            for frame in self.video.poll(now):
                self._write(frame)
            if self.video.needs_keyframe:
                self.publication.request_keyframe()
        except Exception as exc:
            self.fail(exc)

    def _write(self, frame: Frame) -> None:
        if frame.size is not None and (not self.sizes or self.sizes[-1][:2] != frame.size):
            if self.writer.first_timestamp is None:
                at = 0.0
            else:
                at = (frame.timestamp - self.writer.first_timestamp) / self.clock_rate
            self.sizes.append((frame.size[0], frame.size[1], round(at, 3)))
        if self.writer.write(frame.data, frame.timestamp, frame.keyframe, frame.size):
            arrival = time.time()
            if self.first_arrival is None:
                self.first_arrival = arrival
            self.last_arrival = arrival
            self.last_timestamp = frame.timestamp

    # -- times -----------------------------------------------------------------------
    def media_utc(self, timestamp: int) -> tuple[float, str] | None:
        """Wall-clock time of an RTP timestamp: (Unix time, "rtcp-sr" or "arrival")."""
        report = self.publication.sender_report
        if report is not None:
            ntp, rtp = report
            delta = ((timestamp - rtp + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            seconds = (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)
            return seconds + delta / self.clock_rate, "rtcp-sr"
        if self.first_arrival is not None and self.writer.first_timestamp is not None:
            offset = (timestamp - self.writer.first_timestamp) / self.clock_rate
            return self.first_arrival + offset, "arrival"
        return None

    def sample_clock(self) -> None:
        """Refine the file's start time with the publisher's latest sender report.

        Each report maps an RTP time to the publisher's wall clock; a sender that
        reports the timestamp of its last packet against "now" (aiortc does) is
        late by up to a frame interval, never early, so the earliest estimate of
        the start over all reports is the best.  The estimate goes through the
        last written frame (close to the report: no 32-bit wrap ambiguity) and
        back to the first by RTP time, the file's own clock.
        """
        report = self.publication.sender_report
        first, last = self.writer.first_timestamp, self.last_timestamp
        if report is None or report == self._last_report or first is None or last is None:
            return
        self._last_report = report
        mapped = self.media_utc(last)
        if mapped is None or mapped[1] != "rtcp-sr":
            return
        start = mapped[0] - (last - first) / self.clock_rate
        if self._start_utc is None or start < self._start_utc:
            self._start_utc = start

    def describe(self) -> dict[str, Any]:
        self.sample_clock()
        first = last = None
        clock = None
        first_ts, last_ts = self.writer.first_timestamp, self.last_timestamp
        if first_ts is not None and last_ts is not None:
            if self._start_utc is not None:
                first, clock = self._start_utc, "rtcp-sr"
            elif self.first_arrival is not None:
                first, clock = self.first_arrival, "arrival"
            if first is not None:
                last = first + (last_ts - first_ts) / self.clock_rate
        video = self.video
        dropped = video.dropped_packets if video is not None else 0
        if self.audio is not None:
            dropped = self.audio.dropped_packets
        return {
            "first_media_utc": iso(first),
            "last_media_utc": iso(last),
            "first_media_unix": round(first, 4) if first is not None else None,
            "clock": clock,
            "duration": round(self.writer.duration, 3),
            "frames": self.writer.frames,
            "bytes": self.writer.bytes,
            "losses": video.losses if video is not None else 0,
            "dropped_packets": dropped,
            "sizes": [list(size) for size in self.sizes],
            "state": "error" if self.error else ("ended" if self.closed else "recording"),
            "ended_at": iso(self.ended_at),
            "error": self.error,
        }

    # -- end -------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        logger.error(
            "recording %s: track %s failed, its file ends here: %r", self.path.name, self.kind, exc
        )
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        self.close()
        self.owner.dirty = True
        if disk_full(exc):  # every other file would fail next: the recording ends
            self.owner.storage_failed("disk-full", reason(exc))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ended_at = time.time()
        try:
            self.publication.taps.remove(self.on_packet)
        except ValueError:
            pass
        try:
            self.writer.close()
        except Exception as exc:  # a full disk must not take the room down
            logger.error("recording %s: closing failed: %r", self.path.name, exc)
            self.error = self.error or f"{type(exc).__name__}: {exc}"[:300]
            if disk_full(exc):
                self.owner.storage_failed("disk-full", reason(exc))


class MeetingRecorder:
    """One recording of one room: its tracks, events and manifest."""

    def __init__(
        self,
        room: Room,
        root: Path,
        key: Ed25519PrivateKey,
        started_by: dict[str, Any] | None = None,
        min_free: int = 0,
        continues: dict[str, Any] | None = None,
    ) -> None:
        self.room = room
        #: the recording this one carries on, made on a node that died or shut down
        #: (``directory``, ``recording``, ``node``, ``reason``; see `start`)
        self.continues = continues
        self.root = root
        self.key = key
        #: below this many free bytes the recording stops itself (while it can still seal)
        self.stop_below = min_free // 4
        self.started_at = time.time()
        self.stamp = _stamp(self.started_at)
        self.directory = meeting_directory(root, room.meeting_id, self.started_at)
        self.manifest_path = inside(root, self.directory / f"{self.stamp}{MANIFEST_SUFFIX}")
        self.tracks: dict[str, TrackRecorder] = {}  # by publication id
        self.ended_tracks: list[tuple[dict[str, Any], TrackRecorder]] = []
        self.track_info: dict[int, dict[str, Any]] = {}  # id(TrackRecorder) -> static part
        self.counters: dict[tuple[str, str], int] = {}
        self.skipped: list[dict[str, Any]] = []  # publications of a codec we cannot record
        self.events: list[dict[str, Any]] = []
        self.speakers: list[dict[str, Any]] = []
        self.started_by = started_by
        self.stopped_at: float | None = None
        self.stop_reason: str | None = None
        self.error: str | None = None  # why it stopped by itself (a full disk)
        self.scheduled = False  # a meeting of the database (else an ad-hoc room)
        self.dirty = True
        self.stopped = False
        self.failing = False
        self._task: asyncio.Task[None] | None = None
        self._last_save = 0.0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Begin; OSError (a full disk) leaves nothing attached to the room."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._event("recording-start", by=self.started_by)
        for participant in list(self.room.participants.values()):
            self._event("present", participant=participant)
        for publication in self.room.publications():
            self._add(publication)
        try:
            write_manifest(self.manifest_path, self.build("recording"))
        except OSError:
            for track in self.tracks.values():
                track.close()
            raise
        self._last_save = time.monotonic()
        self.dirty = False
        self.room.observers.append(self.on_room_event)
        self.room.recording = True
        self._task = asyncio.ensure_future(self._run())
        logger.info("room %s: recording to %s", self.room.meeting_id, self.directory)

    def stop(self, reason: str = "stopped") -> asyncio.Future[Any]:
        """Close every file now; hash and sign in a worker thread (returned future)."""
        if self.stopped:
            return _done()
        self.stopped = True
        self.stopped_at = time.time()
        self.stop_reason = reason
        if self._task is not None:
            self._task.cancel()
        try:
            self.room.observers.remove(self.on_room_event)
        except ValueError:
            pass
        for publication_id in list(self.tracks):
            self._end(publication_id)
        self._event("recording-stop", reason=reason)
        self.room.recording = False
        if not self.room.closed:
            self.room.changed()
        manifest = self.build("finalizing")
        try:
            write_manifest(self.manifest_path, manifest)
        except OSError as exc:  # sealing below tries again
            logger.error("room %s: cannot write the manifest: %r", self.room.meeting_id, exc)
        logger.info("room %s: recording stopped (%s)", self.room.meeting_id, reason)
        future = asyncio.ensure_future(
            asyncio.to_thread(seal, self.manifest_path, manifest, self.key, "complete")
        )
        future.add_done_callback(functools.partial(_keep_unsealed, self.manifest_path, manifest))
        return future

    def storage_failed(self, reason: str, detail: str) -> None:
        """The disk is full (``disk-full``) or nearly (``disk-low``): end the recording
        soon (not inside the packet or file call that found it)."""
        if self.stopped or self.failing:
            return
        self.failing = True
        asyncio.get_running_loop().call_soon(_fail, self.room, reason, detail)

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(TICK)
                now = time.monotonic()
                for track in list(self.tracks.values()):
                    track.poll(now)
                    track.sample_clock()
                if time.monotonic() - self._last_save >= SAVE_INTERVAL:
                    self.save()
                    free = free_bytes(self.directory) if self.stop_below else None
                    if free is not None and free < self.stop_below:
                        self.storage_failed(
                            "disk-low",
                            f"{free // MB} MB free, below {self.stop_below // MB} MB",
                        )
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("room %s: recorder loop failed", self.room.meeting_id)

    # -- room events -----------------------------------------------------------------
    def on_room_event(self, event: str, subject: Any, detail: str | None) -> None:
        if event == "publication-added":
            self._add(subject)
        elif event == "publication-removed":
            self._end(subject.id)
        elif event == "joined":
            self._event("join", participant=subject)
        elif event == "left":
            self._event("leave", participant=subject, reason=detail)
        elif event == "speaker":
            self.speakers.append(self._speaker(subject))
        elif event == "closed":
            stop(self.room, "room-closed")
            return
        self.dirty = True
        if event in ("publication-added", "publication-removed"):
            self.save()

    def _speaker(self, participant_id: str | None) -> dict[str, Any]:
        participant = self.room.participants.get(participant_id) if participant_id else None
        identity = participant.who.identity if participant is not None else None
        if participant_id and participant is None:  # a speaker on another node
            remote = self.room.remote_member(participant_id)
            identity = remote.get("identity") if remote is not None else None
        return {"at": iso(time.time()), "participant": participant_id, "identity": identity}

    def _event(self, kind: str, participant: Participant | None = None, **extra: Any) -> None:
        event: dict[str, Any] = {"at": iso(time.time()), "type": kind}
        if participant is not None:
            event |= {
                "participant": participant.id,
                "identity": participant.who.identity,
                "name": participant.who.name,
                "role": participant.who.role,
            }
        event |= {k: v for k, v in extra.items() if v is not None}
        self.events.append(event)
        self.dirty = True

    # -- tracks ----------------------------------------------------------------------
    def _add(self, publication: Publication) -> None:
        if publication.id in self.tracks or publication.closed:
            return
        owner = self.room.participants.get(publication.participant_id)
        remote = self.room.remote_member(publication.participant_id) if owner is None else None
        name: str | None
        role: str | None
        if owner is not None:
            identity, name, role = owner.who.identity, owner.who.name, owner.who.role
        elif remote is not None:  # relayed from another node of the meeting
            identity = str(remote.get("identity") or publication.participant_id)
            name, role = remote.get("name"), remote.get("role")
        else:
            identity, name, role = publication.participant_id, None, None
        counter_key = (identity, publication.source)
        number = self.counters.get(counter_key, 0) + 1
        self.counters[counter_key] = number
        extension = EXTENSIONS.get(publication.codec_name)
        info: dict[str, Any] = {
            "publication_id": publication.id,
            "participant_id": publication.participant_id,
            "identity": identity,
            "name": name,
            "role": role,
            "point": identity,
            "kind": publication.kind,
            "source": publication.source,
            "codec": publication.codec_name,
            "clock_rate": publication.clock_rate,
            "added_at": iso(time.time()),
        }
        if extension is None:
            logger.warning(
                "room %s: cannot record codec %s of %s",
                self.room.meeting_id,
                publication.codec_name,
                publication.id,
            )
            info |= {"file": None, "state": "error", "error": "codec not recordable"}
            self.skipped.append(info)
            return
        name = (
            # "pt:xa-a" -> "pt-xa-a": one kind's files never take another's name
            f"{_stamp(time.time())}-{safe_component(identity.replace(':', '-', 1), 40)}-"
            f"{safe_component(publication.source, 16)}-{number}{extension}"
        )
        path = inside(self.root, self.directory / name)
        info["file"] = name
        track = TrackRecorder(self, publication, path)
        self.tracks[publication.id] = track
        self.track_info[id(track)] = info
        self.dirty = True

    def _end(self, publication_id: str) -> None:
        track = self.tracks.pop(publication_id, None)
        if track is None:
            return
        track.close()
        self.ended_tracks.append((self.track_info[id(track)], track))
        self.dirty = True

    # -- manifest --------------------------------------------------------------------
    def build(self, state: str) -> dict[str, Any]:
        tracks = [info | track.describe() for info, track in self.ended_tracks]
        tracks += [self.track_info[id(t)] | t.describe() for t in self.tracks.values()]
        tracks += self.skipped
        tracks.sort(key=lambda t: str(t.get("added_at")))
        return (
            {
                "format": FORMAT,
                "meeting": self.room.meeting_id,
                "scheduled": self.scheduled,
                "directory": str(self.directory.relative_to(self.root.resolve())),
                "recording": self.stamp,
                "state": state,
                "started_at": iso(self.started_at),
                "stopped_at": iso(self.stopped_at),
                "stop_reason": self.stop_reason,
                "updated_at": iso(time.time()),
                "clock": "UTC wall clock; media times from the publisher's RTCP sender reports",
                "tracks": tracks,
                "speakers": self.speakers,
                "events": self.events,
                "minutes_final": False,
            }
            | ({"error": self.error} if self.error else {})
            | ({"continues": self.continues} if self.continues else {})
        )

    def save(self) -> None:
        self._last_save = time.monotonic()
        try:
            write_manifest(self.manifest_path, self.build("recording"))
            self.dirty = False
        except OSError as exc:
            logger.error("room %s: cannot write the manifest: %r", self.room.meeting_id, exc)
            if disk_full(exc):
                self.storage_failed("disk-full", reason(exc))


def _done() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


# -- module API ------------------------------------------------------------------------
@dataclass
class _Config:
    root: Path
    key: Ed25519PrivateKey
    min_free: int = 0  # bytes; recording_min_free_mb


_config: _Config | None = None
_recorders: dict[Room, MeetingRecorder] = {}
_finishing: set[asyncio.Future[Any]] = set()
#: manifests the disk refused to seal, sealed again later
_unsealed = SealQueue(RESEAL_INTERVAL)
#: told ``(room, reason, message)`` when a recording stops by itself (a full disk)
failure_listeners: list[Callable[[Room, str, str], None]] = []


def configure(
    recordings_dir: Path, key_path: Path, seal: bool = True, min_free_mb: int = 0
) -> list[Path]:
    """Set where recordings go and the signing key (created on first use).

    Seals as ``interrupted`` the recordings a previous run left unfinished and
    returns their manifests; with ``seal`` false, leaves them (a worker of several
    starting while the others record: the supervisor sealed them before any started).
    A manifest the disk refuses to seal is left for later (:func:`health`), never
    an error: the server starts whatever the recordings disk says.
    """
    global _config
    recordings_dir.mkdir(parents=True, exist_ok=True)
    key = load_or_create_key(key_path)
    _config = _Config(recordings_dir, key, min_free_mb * MB)
    _unsealed.clear()  # a new start: what an earlier one left is on disk, unfinished
    _unsealed.key = key
    _unsealed.on_sealed = _resealed
    if not seal:
        return []
    refused: list[tuple[Path, dict[str, Any]]] = []
    marked = mark_interrupted(recordings_dir, key, refused)
    for path, manifest in refused:
        _unsealed.keep(path, manifest, "interrupted", "the disk is full")
    return marked


def configure_from(settings: Settings, seal: bool = True) -> list[Path]:
    """:func:`configure` with the server's settings (``recording_key`` or the data dir)."""
    key_path = settings.recording_key or settings.data_dir / KEY_FILE
    return configure(settings.recordings_dir, key_path, seal, settings.recording_min_free_mb)


def start(
    room: Room,
    started_by: dict[str, Any] | None = None,
    scheduled: bool = False,
    continues: dict[str, Any] | None = None,
) -> MeetingRecorder:
    """Start recording ``room`` (``scheduled``: a meeting of the database, not an ad-hoc
    room: the manifest says which); :class:`RecordingError` if it cannot.

    ``continues``: this recording carries on one that another node of the meeting was
    making when it died or shut down (`current` of that node: its ``directory`` and
    ``recording``, with the ``node`` and the ``reason``); the manifest keeps it and the
    library links the two."""
    if _config is None:
        raise RecordingError("recording-unavailable", "recording is not configured")
    if room.closed:
        raise RecordingError("room-closed", "the meeting room is closed")
    if room in _recorders:
        raise RecordingError("already-recording", "the meeting is already being recorded")
    free = free_bytes(_config.root)
    if free is not None and free < _config.min_free:
        raise RecordingError(
            "recording-no-space",
            f"only {free // MB} MB free where recordings are kept; recording needs "
            f"{_config.min_free // MB} MB (recording_min_free_mb)",
        )
    recorder = MeetingRecorder(
        room, _config.root, _config.key, started_by, _config.min_free, continues
    )
    recorder.scheduled = scheduled
    try:
        recorder.start()
    except OSError as exc:
        code = "recording-no-space" if disk_full(exc) else "recording-failed"
        raise RecordingError(code, f"cannot write the recording: {exc}") from exc
    _recorders[room] = recorder
    room.recording_failure = None
    room.changed()
    return recorder


def current(room: Room) -> dict[str, str] | None:
    """Which recording of ``room`` this server is making (None: none): its ``directory``
    under the recordings folder and its ``recording`` stamp, as its manifest says."""
    recorder = _recorders.get(room)
    if recorder is None or recorder.stopped:
        return None
    return {
        "directory": str(recorder.directory.relative_to(recorder.root.resolve())),
        "recording": recorder.stamp,
    }


#: a recording's ``directory`` and stamp as another node names them (`seal_orphan`)
_ORPHAN_DIRECTORY = re.compile(r"[0-9]{4}/[0-9]{2}/[^/]{1,200}")
_ORPHAN_STAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")


def seal_orphan(recorded: dict[str, str]) -> None:
    """The part of a recording that a node of the meeting left when it died
    (``recorded``: its ``directory`` and ``recording`` stamp, as that node said in Redis):
    if this server's recordings folder holds it (one folder shared by the nodes:
    ``--workers``, a network folder), sealed ``interrupted`` now, in a thread, and its
    composition queued, rather than at that node's next start.  The names are checked:
    they come from another process."""
    directory, stamp = recorded.get("directory", ""), recorded.get("recording", "")
    if _config is None or not _ORPHAN_DIRECTORY.fullmatch(directory):
        return
    meeting = directory.rsplit("/", 1)[1]
    if not _ORPHAN_STAMP.fullmatch(stamp) or safe_component(meeting) != meeting:
        return
    root, key = _config.root, _config.key
    try:
        path = inside(root, root / directory / f"{stamp}{MANIFEST_SUFFIX}")
    except PathError:
        return

    def run() -> bool:
        try:
            manifest = read_manifest(path)
        except (OSError, ValueError):
            return False  # not here (another machine's folder) or unreadable
        if not seal_interrupted(path, manifest, key):
            return False
        jobs.enqueue(path)
        return True

    future = asyncio.ensure_future(asyncio.to_thread(run))
    _finishing.add(future)
    future.add_done_callback(_orphan_sealed)


def _orphan_sealed(future: asyncio.Future[Any]) -> None:
    _finishing.discard(future)
    if not future.cancelled() and future.exception() is not None:
        logger.error("recording: sealing a dead node's recording failed: %r", future.exception())


def _fail(room: Room, reason: str, detail: str) -> None:
    """End ``room``'s recording by itself (see the module doc: a full disk)."""
    recorder = _recorders.get(room)
    if recorder is None or recorder.stopped:
        return
    state = "full" if reason == "disk-full" else "nearly full"
    message = f"the recording stopped: the recordings disk is {state} ({detail})"
    logger.error("room %s: %s", room.meeting_id, message)
    events.count("recording_failures")
    recorder.error = message
    stop(room, reason)
    room.recording_failure = {
        "reason": reason,
        "message": message,
        "at": iso(time.time()) or "",
    }
    for listener in list(failure_listeners):
        try:
            listener(room, reason, message)
        except Exception:
            logger.exception("a recording failure listener failed")


def _keep_unsealed(path: Path, manifest: dict[str, Any], future: asyncio.Future[Any]) -> None:
    """A seal the disk refused: kept to be sealed again (`SealQueue`)."""
    if not future.cancelled() and isinstance(future.exception(), OSError):
        _unsealed.keep(path, manifest, "complete", reason(future.exception()))  # type: ignore[arg-type]


def _resealed(path: Path, manifest: dict[str, Any], state: str) -> None:
    """A kept manifest is sealed at last: compose it, as any other."""
    if _config is None:
        return
    announce_sealed(manifest)
    if state == "complete":
        jobs.enqueue_sealed(_config.root, manifest)
    else:
        jobs.resume_jobs(_config.root, [path])


def health() -> dict[str, Any]:
    """What ``/healthz`` says of recording: manifests left unsealed, free space."""
    if _config is None:
        return {}
    free = free_bytes(_config.root)
    report: dict[str, Any] = {
        "recording": len(_recorders),
        "unsealed": sorted(str(p.relative_to(_config.root.resolve())) for p in _unsealed.waiting),
        "free_mb": free // MB if free is not None else None,
        "min_free_mb": _config.min_free // MB,
    }
    problems = []
    if _unsealed.waiting:
        count = len(_unsealed.waiting)
        problems.append(f"{count} recording(s) not sealed: the recordings disk is full?")
    if free is not None and free < _config.min_free:
        problems.append(
            f"recordings disk: {free // MB} MB free, below {_config.min_free // MB} MB: "
            "recording is refused"
        )
    report["problems"] = problems
    return report


def stop(room: Room, reason: str = "stopped") -> asyncio.Future[Any] | None:
    """Stop recording ``room`` (None if it was not recording)."""
    recorder = _recorders.pop(room, None)
    if recorder is None:
        return None
    future = recorder.stop(reason)
    _finishing.add(future)
    future.add_done_callback(_sealed)
    return future


def _sealed(future: asyncio.Future[Any]) -> None:
    _finishing.discard(future)
    if not future.cancelled() and future.exception() is not None:
        if not isinstance(future.exception(), OSError):  # an OSError is kept: _keep_unsealed
            logger.error("recording: sealing the manifest failed: %r", future.exception())
    elif not future.cancelled() and _config is not None:  # compose the MP4 in the background
        announce_sealed(future.result())
        jobs.enqueue_sealed(_config.root, future.result())


def announce_sealed(manifest: dict[str, Any]) -> None:
    """``recording.sealed`` (webhooks, conference/ops) and its count (``/metrics``)."""
    state = str(manifest.get("state"))
    events.count(f"recordings_sealed:{state}")
    events.emit(
        "recording.sealed",
        {
            key: manifest.get(key)
            for key in (
                "meeting",
                "scheduled",
                "recording",
                "directory",
                "state",
                "started_at",
                "stopped_at",
                "stop_reason",
                "sealed_at",
            )
        }
        | {"tracks": len(manifest.get("tracks") or [])},
    )


async def shutdown() -> None:
    """Stop every recording and wait until their manifests are sealed."""
    for room in list(_recorders):
        stop(room, "server-shutdown")
    if _finishing:
        results = await asyncio.gather(*list(_finishing), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.error("recording: sealing failed: %r", result)
    _unsealed.stop()  # the next start seals what is left (still "recording" on disk)
