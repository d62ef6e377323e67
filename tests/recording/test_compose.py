"""Composition of a recording into one MP4, and its background jobs.

Recordings are written directly (``conference.tools.synthetic``: VP8/Opus
WebM files with barcode numbers and distinct tones, and a sealed manifest),
except the last test, which records through the real server and waits for the
server's own background job.  Outputs are decoded here with PyAV.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from conference.recording import jobs
from conference.recording.compose import HEIGHT, WIDTH, compose, inset_boxes, output_path
from conference.recording.library import find
from conference.recording.manifest import read_manifest, write_manifest
from conference.recording.signing import load_or_create_key
from conference.recording.store import recording_id, seal
from conference.tools.synthetic import Participant, write_recording
from conference.tools.testmedia import dominant_frequency, read_barcode

from ..conftest import ServerProcess
from .files import decode_audio, onsets

SOURCE_FPS = 30
# who speaks when (seconds from the start): the chair is large when nobody speaks
SPEAKERS: list[tuple[float, str | None]] = [
    (0.0, None),
    (1.0, "a"),
    (2.0, "b"),
    (3.0, "chair"),
    (4.0, None),
    (5.0, "a"),
]
PEOPLE = [
    Participant("chair", "chair", tone=440.0, start=0.0, length=6.0),
    Participant("a", tone=660.0, start=0.5, length=5.5, screen=(3.0, 1.5)),
    Participant("b", tone=880.0, start=1.0, length=3.0),  # joins late, leaves early
]
STARTS = {"chair": 0.0, "a": 0.5, "b": 1.0, "a-screen": 3.0}
BASES = {"chair": 1000, "a": 2000, "b": 3000, "a-screen": 2500}


def _root_dir(tmp: Path) -> Path:
    return tmp / "recordings"


@pytest.fixture(scope="module")
def meeting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 6 s, 3-person synthetic meeting, composed once by a job run (module-wide)."""
    tmp = tmp_path_factory.mktemp("compose")
    manifest = write_recording(
        _root_dir(tmp) / "2026" / "11" / "m1", PEOPLE, SPEAKERS, tmp / "key", fps=SOURCE_FPS
    )
    status = jobs.run(manifest, nice=0)
    assert status["state"] == "done", status
    return manifest


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s, 2-person meeting (for job tests that compose again)."""
    tmp = tmp_path_factory.mktemp("small")
    people = [
        Participant("chair", "chair", tone=440.0, length=2.0, size=(320, 180)),
        Participant("a", tone=660.0, length=2.0, size=(320, 180)),
    ]
    directory = _root_dir(tmp) / "2026" / "11" / "m2"
    write_recording(directory, people, [(0.0, None), (1.0, "a")], tmp / "key")
    return directory


@pytest.fixture
def small(small_source: Path, tmp_path: Path) -> Path:
    """A fresh copy of the small meeting under ``tmp_path/recordings``: its manifest."""
    directory = _root_dir(tmp_path) / "2026" / "11" / "m2"
    shutil.copytree(small_source, directory)
    shutil.copy(small_source.parents[3] / "key", tmp_path / "key")
    [manifest] = directory.glob("*.manifest.json")
    return manifest


def _wait(
    manifest: Path, states: tuple[str, ...], timeout: float = 60.0, every: float = 0.05
) -> list[dict[str, Any]]:
    """Poll the job's status until it is in ``states``; every status seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.job_status(manifest)
        raw = json.loads(jobs.state_path(manifest).read_text()) if status["state"] != "none" else {}
        seen.append(status | {"pid": raw.get("pid")})
        if status["state"] in states:
            return seen
        time.sleep(every)
    raise AssertionError(f"job still {seen[-1]} after {timeout} s")


def _frames(path: Path, times: list[float]) -> dict[float, av.VideoFrame]:
    """The decoded output frames shown at ``times`` (s)."""
    found: dict[float, av.VideoFrame] = {}
    wanted = sorted(times)
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            while wanted and frame.time >= wanted[0] - 1e-3:
                found[wanted.pop(0)] = frame
            if not wanted:
                break
    return found


def _region(frame: av.VideoFrame, box: tuple[int, int, int, int]) -> av.VideoFrame:
    x, y, w, h = box
    luma = frame.reformat(format="yuv420p").to_ndarray()[: frame.height]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(luma[y : y + h, x : x + w]), "gray")


def _expected(name: str, t: float) -> int:
    return BASES[name] + int((t - STARTS[name]) * SOURCE_FPS + 1e-3)


# -- the composed file ---------------------------------------------------------------------
def test_output_is_a_progressive_h264_aac_mp4_of_the_right_duration(meeting: Path) -> None:
    output = output_path(meeting)
    data = output.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "not faststart: moov after mdat"
    assert not output.with_name(output.name + ".part").exists()
    with av.open(str(output)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert (video.width, video.height) == (WIDTH, HEIGHT)
        assert video.codec_context.pix_fmt == "yuv420p"
        assert audio.sample_rate == 48000
        duration = (container.duration or 0) / 1e6
    assert abs(duration - 6.0) <= 0.02 * 6.0, duration
    count = sum(1 for _ in av.open(str(output)).decode(video=0))
    assert abs(count - 150) <= 2, count  # 6 s at 25 fps, no stall


def test_video_follows_the_speaker_timeline(meeting: Path) -> None:
    # (time, large picture, inset pictures right to left)
    expected: list[tuple[float, str, list[str]]] = [
        (0.6, "chair", []),  # nobody speaks: the chair is large, no inset
        (1.52, "a", ["chair"]),
        (2.52, "b", ["chair"]),
        (3.52, "a-screen", ["chair"]),  # a screen share takes the large area
        (4.2, "a-screen", ["chair"]),
        (4.72, "chair", []),  # the screen share ended, nobody speaks
        (5.52, "a", ["chair"]),
    ]
    frames = _frames(output_path(meeting), [t for t, _, _ in expected])
    boxes = inset_boxes(WIDTH, HEIGHT)
    for t, large, insets in expected:
        frame = frames[t]
        number = read_barcode(frame)  # the band lies above the insets
        assert number is not None, f"{t}: no barcode in the large area"
        assert abs(number - _expected(large, frame.time)) <= 1, (t, large, number)
        for name, box in zip(insets, boxes, strict=False):
            small = read_barcode(_region(frame, box))
            assert small is not None and abs(small - _expected(name, frame.time)) <= 1, (
                t,
                name,
                small,
            )
        for box in boxes[len(insets) :]:
            assert read_barcode(_region(frame, box)) is None, f"{t}: unexpected inset"


def test_audio_is_mixed_on_the_common_clock_and_in_sync(meeting: Path) -> None:
    audio = decode_audio(output_path(meeting))
    assert not audio.errors and audio.rate == 48000
    samples, rate = audio.samples, audio.rate

    def window(start: float, end: float) -> np.ndarray:
        lo = round((start - audio.first_pts) * rate)
        return samples[lo : round((end - audio.first_pts) * rate)]

    for start, tone in ((1.0, 660.0), (2.0, 880.0), (3.0, 440.0), (5.0, 660.0)):
        part = window(start + 0.1, start + 0.9)
        assert abs(dominant_frequency(part, rate) - tone) < 5, (start, tone)
    for start, end in ((0.1, 0.9), (4.1, 4.9)):
        assert np.sqrt(np.mean(window(start, end) ** 2)) < 0.01, "silence expected"
    assert np.max(np.abs(samples)) <= 1.0
    # beep + flash: a speaks at 1.0 and 5.0 (tone onset) and is large from the same time
    found = onsets(audio)
    assert len(found) == 2, found
    switches = []
    previous = None
    with av.open(str(output_path(meeting))) as container:
        for frame in container.decode(video=0):
            number = read_barcode(frame)
            big = None if number is None else ("a" if 2000 <= number < 2500 else "other")
            if big == "a" and previous != "a":
                switches.append(float(frame.time))
            previous = big
    assert len(switches) == 2, switches
    for onset, switch in zip(found, switches, strict=True):
        assert abs(onset - switch) < 0.1, f"A/V offset {onset - switch:.3f} s"


# -- jobs -------------------------------------------------------------------------------------
def test_job_state_file_says_done(meeting: Path) -> None:
    state = json.loads(jobs.state_path(meeting).read_text())
    assert state["state"] == "done" and state["progress"] == 100
    assert state["output"] == str(output_path(meeting).resolve()) and state["error"] is None
    assert state["attempts"] == 1 and state["updated"].endswith("Z")
    assert jobs.job_status(meeting)["state"] == "done"


def test_enqueue_composes_in_another_process_with_progress(small: Path) -> None:
    assert jobs.job_status(small)["state"] == "none"
    jobs.enqueue(small)
    seen = _wait(small, ("done", "failed"))
    assert seen[-1]["state"] == "done", seen[-1]
    assert seen[-1]["progress"] == 100 and Path(seen[-1]["output"]).is_file()
    running = [s for s in seen if s["state"] == "running"]
    assert running, "never saw the job running"
    assert all(s["pid"] != os.getpid() for s in running)  # its own process
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress), progress  # queued 0 -> running ... -> done 100
    jobs.enqueue(small)  # done: nothing happens
    assert jobs.job_status(small)["attempts"] == 1


def test_a_corrupt_file_fails_with_an_error_and_retry_works(small: Path, tmp_path: Path) -> None:
    manifest = read_manifest(small)
    camera = small.parent / next(t["file"] for t in manifest["tracks"] if t["kind"] == "video")
    original = camera.read_bytes()
    camera.write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(4000))  # EBML magic, then garbage
    # sealed again so the hashes match: the decoder, not the hash check, must notice
    seal(small, manifest, load_or_create_key(tmp_path / "key"), "complete")
    status = jobs.run(small, nice=0)
    assert status["state"] == "failed" and camera.name in status["error"], status
    assert not output_path(small).exists()
    jobs.enqueue(small)  # a failed job waits for retry(), not enqueue()
    assert jobs.job_status(small)["state"] == "failed"

    camera.write_bytes(original)
    status = jobs.run(small, nice=0)
    assert status["state"] == "failed" and "SHA-256 mismatch" in status["error"]
    seal(small, manifest, load_or_create_key(tmp_path / "key"), "complete")
    jobs.retry(small)
    seen = _wait(small, ("done", "failed"))
    assert seen[-1]["state"] == "done" and seen[-1]["error"] is None, seen[-1]
    assert output_path(small).is_file()


def _offered(manifest: Path, root: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """What the library offers for ``manifest``: the composition and the composed MP4."""
    found = find(root, recording_id(manifest.relative_to(root).as_posix()))
    assert found is not None
    composition = found.composition()
    composed = [f.path for f in found.files(composition) if f.kind == "composed"]
    return composition, composed[0] if composed else None


def test_composing_again_keeps_the_earlier_mp4_until_the_new_one_is_whole(
    small: Path, tmp_path: Path
) -> None:
    """Issue 15 item 7: the new MP4 is written beside the earlier one (``.mp4.part``) and
    renamed over it at the end; until then the earlier one is whole, and the library offers
    it ("composing again")."""
    assert jobs.run(small, nice=0)["state"] == "done"
    mp4 = output_path(small)
    earlier, inode = mp4.read_bytes(), mp4.stat().st_ino
    root = _root_dir(tmp_path)
    write_manifest(
        jobs.state_path(small),
        {"state": "running", "progress": 0, "output": None, "error": None, "attempts": 1,
         "pid": os.getpid()},
    )  # fmt: skip
    seen: list[dict[str, Any]] = []

    def progress(percent: float) -> None:
        composition, offered = _offered(small, root)
        seen.append(
            {
                "percent": percent,
                "whole": mp4.read_bytes() == earlier and mp4.stat().st_ino == inode,
                "parts": sorted(p.name for p in mp4.parent.glob("*.part")),
                "previous": composition is not None and composition["previous"],
                "offered": offered == mp4.resolve(),
            }
        )

    compose(small, progress=progress)
    assert len(seen) >= 2 and seen[-1]["percent"] == 100.0, seen
    assert all(s["whole"] and s["previous"] and s["offered"] for s in seen), seen
    assert all(s["parts"] == [mp4.name + ".part"] for s in seen[1:]), seen  # beside it
    assert mp4.stat().st_ino != inode and not list(mp4.parent.glob("*.part"))  # replaced
    with av.open(str(mp4)) as container:  # whole and playable
        assert 1.5 < float(container.duration or 0) / 1e6 < 2.5


def test_a_failed_composition_again_leaves_the_earlier_mp4(small: Path, tmp_path: Path) -> None:
    """A composition again that fails (a damaged track) leaves the earlier MP4 as it was,
    offered by the library, and no partial file."""
    assert jobs.run(small, nice=0)["state"] == "done"
    mp4 = output_path(small)
    earlier, inode = mp4.read_bytes(), mp4.stat().st_ino
    manifest = read_manifest(small)
    camera = small.parent / next(t["file"] for t in manifest["tracks"] if t["kind"] == "video")
    camera.write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(4000))  # EBML magic, then garbage
    seal(small, manifest, load_or_create_key(tmp_path / "key"), "complete")
    jobs.retry(small)
    seen = _wait(small, ("done", "failed"))
    assert seen[-1]["state"] == "failed" and camera.name in seen[-1]["error"], seen[-1]
    assert mp4.read_bytes() == earlier and mp4.stat().st_ino == inode
    assert not list(mp4.parent.glob("*.part"))
    composition, offered = _offered(small, _root_dir(tmp_path))
    assert composition is not None and composition["state"] == "failed"
    assert composition["previous"] and offered == mp4.resolve()


def test_composing_again_as_soon_as_it_is_done_runs(small: Path) -> None:
    """The library's button comes back the moment the state file says done, while the
    server still waits for the job's process to exit: a composition again asked then is
    run, not left queued for ever."""
    jobs.enqueue(small)
    _wait(small, ("done", "failed"), every=0.002)
    first = jobs.job_status(small)
    assert first["state"] == "done", first
    inode = output_path(small).stat().st_ino
    jobs.retry(small)  # at once: the worker may not have seen the process exit yet
    seen = _wait(small, ("done", "failed"), timeout=60)
    assert seen[-1]["state"] == "done" and seen[-1]["attempts"] == 1, seen[-1]
    assert any(s["state"] == "running" for s in seen), seen  # it did run again
    assert output_path(small).stat().st_ino != inode
    deadline = time.monotonic() + 10
    while jobs.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.pending() == 0


def test_resume_restarts_a_job_whose_process_is_gone(small: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_manifest(
        jobs.state_path(small),
        {"state": "running", "progress": 40, "output": None, "error": None, "attempts": 1,
         "pid": dead.pid},
    )  # fmt: skip
    resumed = jobs.resume_jobs(_root_dir(tmp_path))
    assert resumed == [small]
    seen = _wait(small, ("done", "failed"))
    assert seen[-1]["state"] == "done", seen[-1]
    assert seen[-1]["attempts"] == 2
    assert jobs.resume_jobs(_root_dir(tmp_path)) == []  # done: nothing to resume


def test_an_interrupted_recording_is_composed_at_start(small: Path, tmp_path: Path) -> None:
    manifest = read_manifest(small)
    seal(small, manifest, load_or_create_key(tmp_path / "key"), "interrupted")
    assert jobs.resume_jobs(_root_dir(tmp_path), [small]) == [small]  # queued once
    seen = _wait(small, ("done", "failed"))
    assert seen[-1]["state"] == "done", seen[-1]
    assert seen[-1]["attempts"] == 1


def test_resume_gives_up_after_too_many_attempts(small: Path, tmp_path: Path) -> None:
    write_manifest(
        jobs.state_path(small),
        {"state": "running", "progress": 5, "output": None, "error": None,
         "attempts": jobs.MAX_ATTEMPTS, "pid": None},
    )  # fmt: skip
    assert jobs.resume_jobs(_root_dir(tmp_path)) == []
    status = jobs.job_status(small)
    assert status["state"] == "failed" and "gave up" in status["error"]


def test_unsealed_recording_is_refused(small: Path) -> None:
    manifest = read_manifest(small)
    manifest["state"] = "recording"
    write_manifest(small, manifest)
    status = jobs.run(small, nice=0)
    assert status["state"] == "failed" and "not sealed" in status["error"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conference", "recordings", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_compose_and_status(small: Path, tmp_path: Path) -> None:
    directory = str(small.parent)
    root = str(_root_dir(tmp_path))
    result = _cli("status", "--recordings-dir", root, cwd=tmp_path)
    assert result.returncode == 0 and " none " in result.stdout, result
    result = _cli("compose", directory, "--recordings-dir", root, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done:" in result.stdout and output_path(small).is_file()
    result = _cli("compose", directory, "--recordings-dir", root, cwd=tmp_path)
    assert result.returncode == 0 and "already composed" in result.stdout
    result = _cli("status", "--recordings-dir", root, "--json", cwd=tmp_path)
    [item] = json.loads(result.stdout)
    assert item["state"] == "done" and item["progress"] == 100
    result = _cli("compose", str(tmp_path / "nowhere"), "--recordings-dir", root, cwd=tmp_path)
    assert result.returncode == 2 and "no such directory" in result.stderr
    assert "Traceback" not in result.stderr


# -- through the server --------------------------------------------------------------------
async def test_server_composes_a_finished_recording_by_itself(server: ServerProcess) -> None:
    from .test_recording import _publisher, _wait_publishing

    chair, _ = await _publisher(server, "m9", "chair", 440.0, role="chair")
    point, _ = await _publisher(server, "m9", "xa1", 660.0)
    try:
        await _wait_publishing(chair, 4)
        await chair.request({"type": "record-start"}, "recording")
        await asyncio.sleep(3.0)
        await chair.request({"type": "record-stop"}, "recording")
    finally:
        await point.leave()
        await chair.leave()
    root = server.data_dir.parent / "recordings"
    deadline = time.monotonic() + 10
    while not list(root.rglob("*.compose.json")) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    [manifest] = root.rglob("*.manifest.json")
    seen = await asyncio.to_thread(_wait, manifest, ("done", "failed"), 90.0)
    assert seen[-1]["state"] == "done", seen[-1]
    with av.open(seen[-1]["output"]) as container:
        duration = (container.duration or 0) / 1e6
        # 320x240 pictures are letterboxed to 960x720 in the middle of the canvas
        numbers = [read_barcode(_region(f, (160, 0, 960, 720))) for f in container.decode(video=0)]
    assert 2.5 < duration < 4.5, duration
    assert sum(n is not None for n in numbers) > 0.8 * len(numbers)
