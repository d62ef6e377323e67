"""The recorder in a real server process, fed by real aiortc publishers.

The server runs under tests/codec_trap.py (no encoder or decoder may be created
there); the files it writes are decoded HERE with PyAV and checked against
what the publishers sent: barcode frame numbers, tone frequencies, timing.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import stat
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conference.recording.store import verify_directory
from conference.tools.client import Client
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack

from ..conftest import ServerProcess, check_clean_exit, start_server
from .files import consecutive, decode_audio, decode_video, frequency, manifests, onsets

pytestmark = pytest.mark.media  # real-time media: shares the machine (tests/conftest.py)

FPS = 15
PATTERN = [(1.0, 1.0)]  # tone 1 s on, 1 s off: onsets at frames 0, 100, 200, ... (20 ms)


class TimedVideo(BarcodeVideoTrack):
    """Remembers the wall-clock time each numbered frame left the track."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times: dict[int, float] = {}

    async def recv(self) -> Any:
        frame = await super().recv()
        self.times[self.start + self.frames_sent - 1] = time.time()
        return frame


class TimedTone(ToneAudioTrack):
    """Remembers the wall-clock time of each tone onset (every 2 s of samples)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.onsets: list[float] = []

    async def recv(self) -> Any:
        frame = await super().recv()
        if (self.frames_sent - 1) % 100 == 0:
            self.onsets.append(time.time())
        return frame


async def _publisher(
    server: ServerProcess,
    meeting: str,
    identity: str,
    tone: float,
    role: str = "point",
    codec: str | None = None,
) -> tuple[Client, TimedVideo]:
    client = Client(
        server.url, meeting, server.token(meeting=meeting, identity=identity, role=role)
    )
    await client.connect(auto_subscribe=False)
    video = TimedVideo(320, 240, fps=FPS)
    audio = TimedTone(tone, speech_pattern=PATTERN)
    await client.publish({"camera": video, "microphone": audio}, codec=codec)
    client.timed_audio = audio  # type: ignore[attr-defined]
    return client, video


async def _wait_publishing(client: Client, count: int) -> None:
    def ready() -> bool:
        publications = [p for q in client.room.get("participants", []) for p in q["publications"]]
        return len(publications) >= count

    await client.wait_for(ready, 15)


def _track(manifest: dict[str, Any], identity: str, kind: str) -> dict[str, Any]:
    found = [t for t in manifest["tracks"] if t["identity"] == identity and t["kind"] == kind]
    assert len(found) == 1, manifest["tracks"]
    return found[0]


def _check_video(directory: Path, track: dict[str, Any]) -> list[int | None]:
    video = decode_video(directory / track["file"])
    assert not video.errors, video.errors
    numbers = video.numbers
    assert len(numbers) >= 3 * FPS, numbers
    assert consecutive(numbers), numbers  # none lost, none corrupt, none repeated
    assert len(numbers) == track["frames"]
    sent = (numbers[-1] - numbers[0]) / FPS  # type: ignore[operator]
    assert abs(video.duration - sent) <= 0.02 * sent, (video.duration, sent)
    assert abs(video.pts[-1] - sent) <= 0.02 * sent
    return numbers


def _clock_errors(
    directory: Path,
    video_track: dict[str, Any],
    audio_track: dict[str, Any],
    video: TimedVideo,
    audio: TimedTone,
) -> tuple[float, float]:
    """(video, audio) error of the manifest's clock: UTC it gives - UTC the publisher sent.

    The test's tracks note the wall-clock time at which each barcode frame and
    each tone onset left them; the manifest's ``first_media_unix`` plus a
    frame's time in the file is when the recording says it happened.  A/V sync
    is the difference of the two errors.
    """
    result = decode_video(directory / video_track["file"])
    video_errors = [
        video_track["first_media_unix"] + pts - video.times[number]
        for number, pts in zip(result.numbers, result.pts, strict=True)
        if number is not None and number in video.times
    ]
    decoded = decode_audio(directory / audio_track["file"])
    audio_errors = []
    for edge in onsets(decoded):
        utc = audio_track["first_media_unix"] + edge
        audio_errors.append(min((utc - sent for sent in audio.onsets), key=abs))
    assert video_errors and audio_errors
    return statistics.median(video_errors), statistics.median(audio_errors)


async def test_record_two_vp8_publishers(server: ServerProcess) -> None:
    chair, chair_video = await _publisher(server, "m1", "chair", 440.0, role="chair")
    point, point_video = await _publisher(server, "m1", "xa1", 660.0)
    publishers = {"chair": (chair, chair_video), "xa1": (point, point_video)}
    try:
        await _wait_publishing(chair, 4)
        assert chair.room.get("recording") is False
        started = await chair.request({"type": "record-start"}, "recording")
        assert started["recording"] is True
        await point.wait_for(lambda: point.room.get("recording") is True, 5)
        await asyncio.sleep(6.0)
        stopped = await chair.request({"type": "record-stop"}, "recording")
        assert stopped["recording"] is False
        await point.wait_for(lambda: point.room.get("recording") is False, 5)
        await asyncio.sleep(0.5)  # sealing runs in a worker thread
    finally:
        await point.leave()
        await chair.leave()

    root = server.data_dir.parent / "recordings"
    [(path, manifest)] = manifests(root)
    directory = path.parent
    assert directory.relative_to(root).parts[2] == "m1"
    assert manifest["state"] == "complete"
    assert len(manifest["tracks"]) == 4
    # issue 14 item 9: nothing the server writes is readable by other users of the host
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for written in directory.iterdir():
        assert stat.S_IMODE(written.stat().st_mode) == 0o600, written
    assert stat.S_IMODE((server.data_dir / "conference.db").stat().st_mode) == 0o600
    ok, problems = verify_directory(directory)
    assert not problems, problems
    types = [e["type"] for e in manifest["events"]]
    assert types[0] == "recording-start" and types[-1] == "recording-stop"
    assert {e.get("identity") for e in manifest["events"] if e["type"] == "present"} == {
        "u:chair",  # identity keys: the chair's token names an account, the point's a point
        "pt:xa1",
    }
    assert manifest["speakers"], "the active-speaker timeline is empty"
    assert {s["identity"] for s in manifest["speakers"]} <= {"u:chair", "pt:xa1", None}

    for identity, key, tone in (("chair", "u:chair", 440.0), ("xa1", "pt:xa1", 660.0)):
        video_track = _track(manifest, key, "video")
        audio_track = _track(manifest, key, "audio")
        assert video_track["file"].endswith(f"-{key.replace(':', '-')}-camera-1.webm")
        assert video_track["codec"] == "vp8" and audio_track["codec"] == "opus"
        assert video_track["clock"] == "rtcp-sr" and audio_track["clock"] == "rtcp-sr"
        assert video_track["sizes"] == [[320, 240, 0.0]]
        # aiortc sends a keyframe every 3000 frames unless asked: the recorder asked
        started = datetime.fromisoformat(manifest["started_at"].replace("Z", "+00:00"))
        assert video_track["first_media_unix"] - started.timestamp() < 1.0
        _check_video(directory, video_track)
        audio = decode_audio(directory / audio_track["file"])
        assert not audio.errors, audio.errors
        assert abs(frequency(audio) - tone) < 5, frequency(audio)
        sent = audio_track["frames"] * 0.02
        assert abs(audio.frames * 0.02 - sent) <= 0.02 * sent
        assert abs(audio.duration - sent) <= 0.02 * sent, (audio.duration, sent)
        client, video = publishers[identity]
        video_error, audio_error = _clock_errors(
            directory, video_track, audio_track, video, client.timed_audio
        )
        offset = audio_error - video_error
        assert abs(offset) < 0.1, f"{identity}: audio/video offset {offset:.3f} s"
        assert abs(video_error) < 0.1 and abs(audio_error) < 0.1, (video_error, audio_error)


async def test_record_h264(server: ServerProcess) -> None:
    chair, _ = await _publisher(server, "h1", "chair", 520.0, role="chair", codec="h264")
    try:
        await _wait_publishing(chair, 2)
        await chair.request({"type": "record-start"}, "recording")
        await asyncio.sleep(4.0)
        await chair.request({"type": "record-stop"}, "recording")
        await asyncio.sleep(0.5)
    finally:
        await chair.leave()
    [(path, manifest)] = manifests(server.data_dir.parent / "recordings")
    video_track = _track(manifest, "u:chair", "video")
    assert video_track["codec"] == "h264"
    assert video_track["file"].endswith(".mkv")
    _check_video(path.parent, video_track)
    audio = decode_audio(path.parent / _track(manifest, "u:chair", "audio")["file"])
    assert abs(frequency(audio) - 520.0) < 5


def _lossy(client: Client, rate: float, seed: int = 7) -> list[int]:
    """Drop ``rate`` of the client's outgoing video packets and all its retransmissions."""
    assert client.publisher is not None
    sender = next(t.sender for t in client.publisher.getTransceivers() if t.kind == "video")
    transport = sender.transport
    video_ssrc = sender._ssrc.to_bytes(4, "big")
    rtx_ssrc = sender._rtx_ssrc.to_bytes(4, "big")
    original = transport._send_rtp
    dropped: list[int] = []
    rng = random.Random(seed)

    async def send_rtp(data: bytes) -> None:
        if not 192 <= data[1] <= 223:  # RTP, not RTCP
            ssrc = data[8:12]
            if ssrc == rtx_ssrc:
                return  # no repair: the loss is final
            if ssrc == video_ssrc and rng.random() < rate:
                dropped.append(int.from_bytes(data[2:4], "big"))
                return
        await original(data)

    transport._send_rtp = send_rtp
    return dropped


async def test_loss_never_writes_a_corrupt_frame(server: ServerProcess) -> None:
    chair, video = await _publisher(server, "l1", "chair", 440.0, role="chair")
    try:
        await _wait_publishing(chair, 2)
        await chair.request({"type": "record-start"}, "recording")
        await asyncio.sleep(1.0)
        dropped = _lossy(chair, 0.03)
        await asyncio.sleep(8.0)
        await chair.request({"type": "record-stop"}, "recording")
        await asyncio.sleep(0.5)
    finally:
        await chair.leave()
    assert len(dropped) >= 3
    [(path, manifest)] = manifests(server.data_dir.parent / "recordings")
    track = _track(manifest, "u:chair", "video")
    assert track["losses"] >= 1, track
    result = decode_video(path.parent / track["file"])
    assert not result.errors, result.errors
    numbers = result.numbers
    assert all(n is not None for n in numbers), numbers  # no corrupt picture
    assert all(b > a for a, b in zip(numbers, numbers[1:], strict=False))  # type: ignore[operator]
    gaps = sum(1 for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1)  # type: ignore[operator]
    assert gaps >= 1, "loss left no gap: the lossy path did not work"
    assert len(numbers) >= 4 * FPS, f"too much dropped: {len(numbers)} of {video.frames_sent}"


async def test_record_start_needs_the_moderate_grant(server: ServerProcess) -> None:
    point = Client(server.url, "g1", server.token(meeting="g1", identity="xa1"))
    await point.connect()
    try:
        reply = await point.request({"type": "record-start"}, "error")
        assert reply["code"] == "forbidden"
        assert point.room.get("recording") is False
        chair = Client(server.url, "g1", server.token(meeting="g1", identity="c", role="chair"))
        await chair.connect()
        reply = await chair.request({"type": "record-stop"}, "error")
        assert reply["code"] == "not-recording"
        await chair.request({"type": "record-start"}, "recording")
        reply = await chair.request({"type": "record-start"}, "error")
        assert reply["code"] == "already-recording"
        reply = await point.request({"type": "record-stop"}, "error")
        assert reply["code"] == "forbidden"
        await chair.leave()  # the chair leaves, the point stays: still recording
        await asyncio.sleep(0.3)
        assert point.room.get("recording") is True
    finally:
        await point.leave()
    await asyncio.sleep(0.5)
    [(_, manifest)] = manifests(server.data_dir.parent / "recordings")
    assert manifest["state"] == "complete"
    assert manifest["stop_reason"] == "room-closed"
    leaves = [e for e in manifest["events"] if e["type"] in ("join", "leave")]
    assert [(e["type"], e["identity"]) for e in leaves] == [("leave", "u:c"), ("leave", "pt:xa1")]


async def test_path_tricks_stay_inside_the_recordings_dir(server: ServerProcess) -> None:
    # tokens allow A-Z a-z 0-9 . _ ~ - only: dots are the tricks that get this far
    # (the store's own checks against "/", "%2F", NUL... are in test_store.py)
    meeting = "..."
    token = server.token(meeting=meeting, identity="..", role="chair")
    chair = Client(server.url, meeting, token)
    await chair.connect()
    try:
        await chair.publish({"microphone": ToneAudioTrack(440.0)})
        await _wait_publishing(chair, 1)
        await chair.request({"type": "record-start"}, "recording")
        await asyncio.sleep(1.5)
        await chair.request({"type": "record-stop"}, "recording")
        await asyncio.sleep(0.3)
    finally:
        await chair.leave()
    tmp = server.data_dir.parent
    root = (tmp / "recordings").resolve()
    [(path, manifest)] = manifests(root)
    assert manifest["meeting"] == meeting
    assert manifest["scheduled"] is False  # an ad-hoc room, never a scheduled meeting
    data = server.data_dir.resolve()
    for file in tmp.rglob("*"):
        if file.is_file() and file.parent != tmp and not file.resolve().is_relative_to(data):
            assert file.resolve().is_relative_to(root), file
    assert not (tmp.parent / "escape").exists()
    name = path.parent.name
    assert all(c.isalnum() or c in "._-" for c in name) and not name.startswith(".")
    [track] = manifest["tracks"]
    assert (path.parent / track["file"]).is_file()
    assert "/" not in track["file"] and not track["file"].startswith(".")


def test_kill_9_leaves_playable_files_and_an_interrupted_manifest(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    killed_at_frame = 0

    async def record() -> None:
        nonlocal killed_at_frame
        chair, video = await _publisher(server, "k1", "chair", 440.0, role="chair")
        try:
            await _wait_publishing(chair, 2)
            await chair.request({"type": "record-start"}, "recording")
            await asyncio.sleep(7.0)
            killed_at_frame = video.frames_sent
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(5)
        finally:
            await chair.close()

    try:
        asyncio.run(record())
    finally:
        if server.process.poll() is None:
            server.process.kill()
    root = tmp_path / "recordings"
    [(path, manifest)] = manifests(root)
    assert manifest["state"] == "recording"  # as the crash left it: valid JSON
    track = _track(manifest, "u:chair", "video")
    result = decode_video(path.parent / track["file"])
    numbers = [n for n in result.numbers]
    assert numbers and all(n is not None for n in numbers), numbers
    assert consecutive(numbers), numbers
    # playable up to within a few seconds of the kill
    assert numbers[-1] >= killed_at_frame - 3 * FPS, (numbers[-1], killed_at_frame)
    assert len(numbers) >= 3 * FPS
    audio = decode_audio(path.parent / _track(manifest, "u:chair", "audio")["file"])
    assert audio.frames * 0.02 >= 4.0
    assert abs(frequency(audio) - 440.0) < 5

    # restart: the recording is sealed as interrupted, not lost
    again = start_server(tmp_path)
    try:
        [(path, manifest)] = manifests(root)
        assert manifest["state"] == "interrupted"
        assert manifest["interrupted"]["detected_at"]
        ok, problems = verify_directory(path.parent)
        assert not problems, problems
        listing = subprocess.run(
            [sys.executable, "-m", "conference", "recordings", "list"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=os.environ | {"CONFERENCE_RECORDINGS_DIR": str(root)},
        )
        assert listing.returncode == 0, listing.stderr
        assert "interrupted" in listing.stdout
    finally:
        check_clean_exit(again)


async def test_tracks_that_come_and_go_get_their_own_files(server: ServerProcess) -> None:
    chair = Client(server.url, "c1", server.token(meeting="c1", identity="chair", role="chair"))
    await chair.connect(auto_subscribe=False)
    await chair.publish({"microphone": ToneAudioTrack(440.0)})
    await _wait_publishing(chair, 1)
    await chair.request({"type": "record-start"}, "recording")
    point = Client(server.url, "c1", server.token(meeting="c1", identity="xa1"))
    try:
        await point.connect(auto_subscribe=False)  # joins a meeting already recording
        assert point.room["recording"] is True
        first = BarcodeVideoTrack(320, 240, fps=FPS)
        await point.publish({"camera": first})
        await _wait_publishing(chair, 2)
        await asyncio.sleep(3.0)
        await point.unpublish("camera")
        await chair.wait_for(lambda: len(chair.publications("camera")) == 0, 10)
        await asyncio.sleep(1.0)  # no camera: nothing is written meanwhile
        second = BarcodeVideoTrack(320, 240, fps=FPS, start=5000)
        await point.publish({"camera": second})
        await chair.wait_for(lambda: len(chair.publications("camera")) == 1, 10)
        await asyncio.sleep(3.0)
    finally:
        await point.leave()
    await asyncio.sleep(0.5)
    await chair.request({"type": "record-stop"}, "recording")
    await chair.leave()
    await asyncio.sleep(0.5)

    [(path, manifest)] = manifests(server.data_dir.parent / "recordings")
    cameras = [t for t in manifest["tracks"] if t["identity"] == "pt:xa1"]
    assert [t["file"].split("-", 1)[1] for t in cameras] == [
        "pt-xa1-camera-1.webm",
        "pt-xa1-camera-2.webm",
    ]
    assert all(t["state"] == "ended" for t in cameras)
    one = decode_video(path.parent / cameras[0]["file"]).numbers
    two = decode_video(path.parent / cameras[1]["file"]).numbers
    assert consecutive(one) and consecutive(two), (one, two)
    assert one[-1] < 5000 <= two[0]  # type: ignore[operator]
    assert len(one) >= 2 * FPS and len(two) >= 2 * FPS
    events = [(e["type"], e.get("identity")) for e in manifest["events"]]
    assert ("join", "pt:xa1") in events and ("leave", "pt:xa1") in events
    assert events.index(("join", "pt:xa1")) < events.index(("leave", "pt:xa1"))
