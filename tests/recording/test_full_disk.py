"""A full recordings disk (issue 14, item 1): the recording stops, never the meeting.

Each test gives the server a real tmpfs of a few MB as its recordings folder (a
fault test: the tests run as root, as CI does) and fills it from here with a
plain file, as another program would.  Checked: the chair is told why the
recording stopped and everyone sees it stopped, the meeting goes on, a recording
the disk will not let be sealed is kept and sealed once there is room (or by the
next start), the server starts with a full disk, and nothing recorded is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conference.recording.store import verify_directory
from conference.tools.client import Client
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack

from ..conftest import ServerProcess, check_clean_exit, start_server
from .files import manifests

pytestmark = pytest.mark.media  # real-time media: shares the machine (tests/conftest.py)

MB = 1024 * 1024


@contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``path`` for the test's duration."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the full-disk tests run as root): {mounted.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """A file taking the free space of ``directory``'s file system but ``leave`` bytes
    (0: until the file system refuses one more byte)."""
    filler = directory / f"filler-{len(list(directory.glob('filler-*')))}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        want = shutil.disk_usage(directory).free - leave
        block = b"\0" * 65536
        while want > 0 or leave == 0:
            try:
                want -= os.write(fd, block[: max(4096, min(len(block), want))])
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


async def publisher(server: ServerProcess, identity: str, role: str = "point") -> Client:
    client = Client(server.url, "disk", server.token(meeting="disk", identity=identity, role=role))
    await client.connect(auto_subscribe=False)
    await client.publish(
        {"camera": BarcodeVideoTrack(320, 240, fps=15), "microphone": ToneAudioTrack(440.0)}
    )
    return client


async def publishing(client: Client, count: int) -> None:
    def ready() -> bool:
        publications = [p for q in client.room.get("participants", []) for p in q["publications"]]
        return len(publications) >= count

    await client.wait_for(ready, 15)


def health(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
        assert response.status == 200
        data: dict[str, Any] = json.load(response)
        return data


async def healthy_again(server: ServerProcess, timeout: float = 30.0) -> dict[str, Any]:
    """/healthz once it says ``ok`` (the recorder seals what it kept every 10 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        report = await asyncio.to_thread(health, server)
        if report["status"] == "ok" or loop.time() > deadline:
            return report
        await asyncio.sleep(0.5)


def the_manifest(recordings: Path) -> tuple[Path, dict[str, Any]]:
    [(path, manifest)] = manifests(recordings)
    return path, manifest


async def test_a_full_disk_stops_the_recording_not_the_meeting(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "recordings", 3) as recordings:
        server = start_server(tmp_path, env={"CONFERENCE_RECORDING_MIN_FREE_MB": "0"})
        chair = point = None
        try:
            chair = await publisher(server, "chu-tri", role="chair")
            point = await publisher(server, "xa-a")
            await publishing(chair, 4)
            await chair.request({"type": "record-start"}, "recording")
            await asyncio.sleep(2.0)
            since = len(chair.messages), len(point.messages)
            filler = fill(recordings)  # another program takes the rest of the disk

            failed = await chair.wait_message("recording-failed", 20, since=since[0])
            assert failed["reason"] == "disk-full", failed
            assert "full" in failed["message"]
            await point.wait_for(lambda: point.room.get("recording") is False, 5)
            assert point.room["recording_failed"]["reason"] == "disk-full"
            stopped = next(m for m in point.messages[since[1] :] if m.get("type") == "recording")
            assert stopped == {"type": "recording", "recording": False, "failed": "disk-full"}
            assert not any(m.get("type") == "recording-failed" for m in point.messages)
            # the meeting goes on: both are still there, publishing, and answered
            assert len(point.room["participants"]) == 2
            assert await point.request({"type": "ping", "id": 7}, "pong")
            # the manifest could not be sealed on the full disk: kept, and reported
            report = health(server)
            assert report["status"] == "degraded", report
            assert len(report["recordings"]["unsealed"]) == 1, report
            assert any("not sealed" in problem for problem in report["problems"])
            # a new recording on the full disk: refused with the reason, nothing attached
            refused = await chair.request({"type": "record-start"}, "error")
            assert refused["code"] == "recording-no-space", refused
            assert chair.room["recording"] is False

            filler.unlink()  # the IT officer frees space: the kept manifest is sealed
            report = await healthy_again(server)
            assert report["status"] == "ok" and report["recordings"]["unsealed"] == [], report
            path, manifest = the_manifest(recordings)
            assert manifest["state"] == "complete" and manifest["stop_reason"] == "disk-full"
            assert "full" in manifest["error"]
            ok, problems = verify_directory(path.parent)
            assert not problems, problems
            recorded = [t for t in manifest["tracks"] if t.get("size")]
            assert len(recorded) == 4, manifest["tracks"]  # what was written is kept
            # and recording works again with room to write
            await chair.request({"type": "record-start"}, "recording")
            await chair.wait_for(lambda: chair.room.get("recording_failed") is None, 5)
            await chair.request({"type": "record-stop"}, "recording")
        finally:
            for client in (chair, point):
                if client is not None:
                    await client.leave()
            check_clean_exit(server)


async def test_the_server_starts_on_a_full_disk_and_seals_later(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "recordings", 3) as recordings:
        env = {"CONFERENCE_RECORDING_MIN_FREE_MB": "0"}
        first = start_server(tmp_path, env=env)
        chair = await publisher(first, "chu-tri", role="chair")
        try:
            await publishing(chair, 2)
            await chair.request({"type": "record-start"}, "recording")
            await asyncio.sleep(3.0)
            first.process.kill()  # a power cut: the manifest still says "recording"
            first.process.wait()
        finally:
            await chair.close()
        _, before = the_manifest(recordings)
        assert before["state"] == "recording"
        filler = fill(recordings)

        server = start_server(tmp_path, env=env)  # it exited with Errno 28 before
        try:
            report = health(server)
            assert report["status"] == "degraded", report
            assert len(report["recordings"]["unsealed"]) == 1, report
            assert "cannot seal" in server.log()
            point = await publisher(server, "xa-a")  # meetings run meanwhile
            await publishing(point, 2)
            await point.leave()

            filler.unlink()
            report = await healthy_again(server)
            assert report["status"] == "ok", report
            path, manifest = the_manifest(recordings)
            assert manifest["state"] == "interrupted"
            ok, problems = verify_directory(path.parent)
            assert not problems, problems
            assert sum(1 for t in manifest["tracks"] if t.get("size")) == 2
        finally:
            check_clean_exit(server)


async def test_low_space_refuses_a_recording_and_stops_one_in_time(tmp_path: Path) -> None:
    """``recording_min_free_mb`` = 8: a start needs 8 MB free; a running recording
    stops below 2 MB (a quarter), while it can still seal its manifest."""
    with tmpfs(tmp_path / "recordings", 12) as recordings:
        server = start_server(tmp_path, env={"CONFERENCE_RECORDING_MIN_FREE_MB": "8"})
        chair = None
        try:
            chair = await publisher(server, "chu-tri", role="chair")
            await publishing(chair, 2)
            filler = fill(recordings, leave=6 * MB)
            refused = await chair.request({"type": "record-start"}, "error")
            assert refused["code"] == "recording-no-space", refused
            assert "recording_min_free_mb" in refused["message"]
            report = health(server)
            assert report["status"] == "degraded"
            assert any("recording is refused" in p for p in report["problems"]), report
            assert manifests(recordings) == []

            filler.unlink()
            await chair.request({"type": "record-start"}, "recording")
            await asyncio.sleep(1.0)
            since = len(chair.messages)
            fill(recordings, leave=MB)
            failed = await chair.wait_message("recording-failed", 10, since=since)
            assert failed["reason"] == "disk-low", failed

            def sealed() -> bool:
                found = manifests(recordings)
                return bool(found) and found[0][1]["state"] == "complete"

            await chair.wait_for(sealed, 10)  # sealed at once: the space was kept for it
            path, manifest = the_manifest(recordings)
            assert manifest["stop_reason"] == "disk-low"
            ok, problems = verify_directory(path.parent)
            assert not problems, problems
            assert health(server)["recordings"]["unsealed"] == []
        finally:
            if chair is not None:
                await chair.leave()
            check_clean_exit(server)
