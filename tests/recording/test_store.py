"""The recordings directory: safe paths, signing, verify and prune (CLI included)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conference.recording.manifest import FORMAT, iso, write_manifest
from conference.recording.signing import load_or_create_key, public_key_path
from conference.recording.store import (
    PathError,
    inside,
    meeting_directory,
    prune,
    safe_component,
    seal,
)
from conference.recording.writer import TrackWriter
from conference.tools.testmedia import cached_clip, load_packets


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conference", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "hostile",
    [
        "..",
        ".",
        "../../etc",
        "/etc/passwd",
        "a/../../b",
        "..%2F..%2Fx",
        "x\x00y",
        "~root",
        "",
        "a" * 300,
    ],
)
def test_hostile_names_become_one_safe_component(hostile: str, tmp_path: Path) -> None:
    name = safe_component(hostile)
    assert name and len(name) <= 64
    assert all(c.isalnum() or c in "._-" for c in name)
    assert not name.startswith(".")
    directory = meeting_directory(tmp_path, hostile, time.time())
    assert directory.parent.parent.parent == tmp_path.resolve()
    assert directory.name == name


def test_distinct_names_stay_distinct() -> None:
    assert safe_component("a/b") != safe_component("a_b")
    assert safe_component("hop-huyen_2026.11") == "hop-huyen_2026.11"


def test_inside_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "rec").mkdir()
    os.symlink("/tmp", tmp_path / "rec" / "link")
    for bad in ("../x", "/etc/passwd", "link/x", "."):
        with pytest.raises(PathError):
            inside(tmp_path / "rec", tmp_path / "rec" / bad)
    assert (
        inside(tmp_path / "rec", tmp_path / "rec" / "2026" / "x")
        == (tmp_path / "rec" / "2026" / "x").resolve()
    )


def test_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "recording.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_path(path).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    again = load_or_create_key(path)
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def _recording(root: Path, key_path: Path, meeting: str = "m1", age_days: float = 0) -> Path:
    """A sealed recording with one real VP8 file (muxed here, no server)."""
    when = time.time() - age_days * 86400
    directory = meeting_directory(root, meeting, when)
    directory.mkdir(parents=True)
    writer = TrackWriter(directory / "20261130T080000Z-xa1-camera-1.webm", "vp8", 90000)
    for packet in load_packets(cached_clip("vp8", width=320, height=240, fps=15, seconds=2)):
        size = (320, 240) if packet.keyframe else None
        writer.write(packet.data, int(packet.pts * packet.time_base * 90000), packet.keyframe, size)
    writer.close()
    manifest = {
        "format": FORMAT,
        "meeting": meeting,
        "state": "recording",
        "started_at": iso(when),
        "stopped_at": iso(when + 60),
        "tracks": [{"file": writer.path.name, "kind": "video", "identity": "xa1"}],
        "minutes_final": False,
    }
    path = directory / "20261130T080000Z.manifest.json"
    write_manifest(path, manifest)
    seal(path, manifest, load_or_create_key(key_path), "complete")
    return path


def test_verify_detects_a_modified_file_and_a_modified_manifest(tmp_path: Path) -> None:
    key_path = tmp_path / "data" / "recording.key"
    manifest = _recording(tmp_path / "recordings", key_path)
    directory = manifest.parent
    args = ("recordings", "verify", str(directory), "--data-dir", str(tmp_path / "data"))
    good = _cli(*args, cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "signature valid (server key)" in good.stdout and "verified" in good.stdout

    video = directory / "20261130T080000Z-xa1-camera-1.webm"
    data = bytearray(video.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    video.write_bytes(bytes(data))
    bad = _cli(*args, cwd=tmp_path)
    assert bad.returncode == 1
    assert "SHA-256 mismatch" in bad.stdout and "verification FAILED" in bad.stdout

    data[len(data) // 2] ^= 0x01
    video.write_bytes(bytes(data))
    assert _cli(*args, cwd=tmp_path).returncode == 0
    content = json.loads(manifest.read_text())
    content["tracks"][0]["identity"] = "xa2"  # who spoke is rewritten
    manifest.write_text(json.dumps(content))
    tampered = _cli(*args, cwd=tmp_path)
    assert tampered.returncode == 1
    assert "signature does not match" in tampered.stdout

    # another server's key: refused even though the manifest is self-consistent
    other = tmp_path / "other" / "recording.key"
    seal(manifest, content, load_or_create_key(other), "complete")
    foreign = _cli(*args, cwd=tmp_path)
    assert foreign.returncode == 1 and "another key" in foreign.stdout


def test_verify_of_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = _cli("recordings", "verify", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 1
    assert "no such directory" in result.stdout
    assert "Traceback" not in result.stderr


def test_prune_keeps_recordings_whose_minutes_are_not_final(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    key_path = tmp_path / "data" / "recording.key"
    old_final = _recording(root, key_path, "old-final", age_days=100)
    old_draft = _recording(root, key_path, "old-draft", age_days=100)
    young = _recording(root, key_path, "young", age_days=1)
    for path in (old_final, young):
        content = json.loads(path.read_text())
        content["minutes_final"] = True  # what the minutes feature will set
        write_manifest(path, content)

    args = ("recordings", "prune", "--older-than-days", "30", "--recordings-dir", str(root))
    dry = _cli(*args, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "would delete" in dry.stdout and "old-final" in dry.stdout
    assert "kept" in dry.stdout and "minutes not final" in dry.stdout
    assert "young" not in dry.stdout
    assert old_final.exists() and old_draft.exists()  # dry run: nothing deleted

    actions = prune(root, 30, dry_run=False)
    assert [a.manifest.parent.name for a in actions if a.delete] == ["old-final"]
    assert not old_final.parent.exists()
    assert old_draft.exists() and young.exists()
    # minutes_final is outside the signature: setting it keeps the recording verifiable
    verified = _cli(
        "recordings",
        "verify",
        str(young.parent),
        "--data-dir",
        str(tmp_path / "data"),
        cwd=tmp_path,
    )
    assert verified.returncode == 0, verified.stdout


def test_prune_never_deletes_a_recording_still_running(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    directory = meeting_directory(root, "live", time.time() - 90 * 86400)
    directory.mkdir(parents=True)
    path = directory / "x.manifest.json"
    write_manifest(
        path,
        {
            "format": FORMAT,
            "state": "recording",
            "started_at": iso(time.time() - 90 * 86400),
            "tracks": [],
            "minutes_final": True,
        },
    )
    actions = prune(root, 30, dry_run=False)
    assert [(a.delete, a.reason) for a in actions] == [(False, "still recording")]
    assert path.exists()


@pytest.mark.parametrize(
    "named",
    [
        {"directory": "../../etc", "recording": "20261130T080000Z"},
        {"directory": "2026/11/..", "recording": "20261130T080000Z"},
        {"directory": "2026/11/m1/../../..", "recording": "20261130T080000Z"},
        {"directory": "2026/11/m 1", "recording": "20261130T080000Z"},
        {"directory": "2026/11/m1", "recording": "../../20261130T080000Z"},
        {"directory": "2026/11/m1", "recording": "20261130T080000Z.manifest.json/.."},
        {"directory": "/tmp/m1", "recording": "20261130T080000Z"},
        {},
    ],
)
async def test_another_node_s_names_for_its_recording_are_checked(
    named: dict[str, str], tmp_path: Path
) -> None:
    """`seal_orphan` takes a recording's folder and stamp from Redis (another node):
    anything but ``YYYY/MM/<safe meeting>`` and a stamp never reaches the filesystem."""
    from conference.recording import recorder

    root = tmp_path / "recordings"
    recorder.configure(root, tmp_path / "recording.key", seal=False)
    recorder.seal_orphan(named | {"node": "n2", "reason": "node-failure"})
    assert not recorder._finishing  # nothing was read or sealed
