"""The recordings library (pages, media with Range, API, access, audit) against the real server.

Recordings are made here as the recorder lays them out: real VP8 and Opus files muxed by
``TrackWriter`` from PyAV-encoded test clips, and a sealed manifest, in the server's
recordings directory (``<tmp>/recordings``, tests/conftest.py).
"""

# ruff: noqa: F811 - the fixtures imported from test_webauth are parameters here

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from conference.recording.audit import read as read_audit
from conference.recording.manifest import FORMAT, iso, read_manifest, write_manifest
from conference.recording.signing import load_or_create_key
from conference.recording.store import meeting_directory, recording_id, seal
from conference.recording.writer import TrackWriter
from conference.tools.testmedia import cached_clip, load_packets

from .test_api import client
from .test_browser import wait_js
from .test_meeting_pages import district, schedule, signed_in
from .test_webauth import Browser, Site, any_site, browsers, site  # noqa: F401

START = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)  # 08:00 in Hanoi


def _track(directory: Path, name: str, kind: str) -> TrackWriter:
    codec, rate = ("vp8", 90000) if kind == "video" else ("opus", 48000)
    clip = (
        cached_clip("vp8", width=320, height=240, fps=15, seconds=2)
        if kind == "video"
        else cached_clip("opus", seconds=2)
    )
    writer = TrackWriter(directory / name, codec, rate)
    for packet in load_packets(clip):
        size = (320, 240) if kind == "video" and packet.keyframe else None
        writer.write(packet.data, int(packet.pts * packet.time_base * rate), packet.keyframe, size)
    writer.close()
    return writer


def record(
    site: Site,
    meeting: str,
    start: datetime = START,
    state: str = "complete",
    camera: float = 30,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A recording of ``meeting`` started at ``start``: two tracks (the camera's from
    ``camera`` s to 2 s later, the microphone's from 1 s to 3 s), speakers, events
    (``extra``: more fields of its manifest)."""
    root = recordings_root(site)
    when = start.timestamp()
    directory = meeting_directory(root, meeting, when)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = start.strftime("%Y%m%dT%H%M%SZ")
    video_writer = _track(directory, f"{stamp}-xa-a1-camera-1.webm", "video")
    audio_writer = _track(directory, f"{stamp}-chair-microphone-1.webm", "audio")
    video, audio = video_writer.path, audio_writer.path
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "meeting": meeting,
        "state": "recording",
        "started_at": iso(when),
        "stopped_at": iso(when + 95),
        "tracks": [
            {
                "file": video.name,
                "kind": "video",
                "source": "camera",
                "identity": "xa-a1",
                "name": "UBND xã A Một",
                "first_media_utc": iso(when + camera),
                "last_media_utc": iso(when + camera + 2),
                "duration": 2.0,
                "frames": video_writer.frames,
                "codec": "vp8",
            },
            {
                "file": audio.name,
                "kind": "audio",
                "source": "microphone",
                "identity": "chair",
                "name": "Chủ tịch A",
                "first_media_utc": iso(when + 1),
                "last_media_utc": iso(when + 3),
                "duration": 2.0,
                "frames": audio_writer.frames,
                "codec": "opus",
            },
        ],
        "speakers": [
            {"at": iso(when + 5), "participant": "p1", "identity": "chair"},
            {"at": iso(when + 40), "participant": "p2", "identity": "xa-a1"},
            {"at": iso(when + 70), "participant": None, "identity": None},
        ],
        "events": [
            {"at": iso(when), "type": "recording-start"},
            {"at": iso(when), "type": "present", "identity": "chair", "name": "Chủ tịch A"},
            {"at": iso(when + 30), "type": "join", "identity": "xa-a1", "name": "UBND xã A Một"},
            {
                "at": iso(when + 80),
                "type": "leave",
                "identity": "xa-a1",
                "name": "UBND xã A Một",
                "reason": "left",
            },
            {"at": iso(when + 95), "type": "recording-stop", "reason": "stopped"},
        ],
        "minutes_final": False,
        "directory": directory.relative_to(root.resolve()).as_posix(),
        "recording": stamp,
    } | (extra or {})
    path = directory / f"{stamp}.manifest.json"
    write_manifest(path, manifest)
    if state != "recording":
        seal(path, manifest, load_or_create_key(site.server.data_dir / "test-recording.key"), state)
    return path


def recordings_root(site: Site) -> Path:
    return site.server.data_dir.parent / "recordings"


def rid(site: Site, manifest: Path) -> str:
    return recording_id(manifest.relative_to(recordings_root(site)).as_posix())


def audit(site: Site) -> list[dict[str, Any]]:
    return list(read_audit(site.server.data_dir / "audit.log"))


def ids_in(html: str) -> set[str]:
    import re

    return set(re.findall(r'data-recording="([0-9a-f]{16})"', html.split("<tbody>")[-1]))


async def test_list_filters_page_and_access(site: Site, browsers: list[Browser]) -> None:
    district(site)
    meeting_a = schedule(site, "Giao ban tuần UBND huyện A", START, chair="ct-a")
    meeting_b = schedule(site, "Họp huyện B", START, chair="ct-b", points=("p-b1",), unit="huyen-b")
    rec_a = rid(site, record(site, str(meeting_a)))
    rec_a2 = rid(site, record(site, str(meeting_a), START + timedelta(days=3), "interrupted"))
    rec_b = rid(site, record(site, str(meeting_b)))
    rec_adhoc = rid(site, record(site, "phong-nhanh", START + timedelta(days=1), "recording"))

    # a secretary of A: A's two recordings, newest first, not B's nor the ad-hoc room
    secretary = await signed_in(site, browsers, "tk-a")
    status, html, _ = await secretary.get("/recordings")
    assert status == 200 and "Thư viện bản ghi hình" in html
    assert ids_in(html) == {rec_a, rec_a2}
    assert html.index(rec_a2) < html.index(rec_a)
    assert "Giao ban tuần UBND huyện A" in html and "Chủ tịch A" in html and "Huyện A" in html
    assert "08:00 30/11/2026" in html and "1:35" in html  # local time, duration
    assert 'data-state="interrupted"' in html and "Bị gián đoạn" in html
    assert 'data-compose="none"' in html or 'data-compose="' in html
    assert 'href="/recordings"' in html  # navigation link
    # filters: dates (local), title, chair, unit
    for query, expected in [
        ("?from=2026-12-01", {rec_a2}),
        ("?to=2026-11-30", {rec_a}),
        ("?from=2026-11-30&to=2026-11-30", {rec_a}),
        ("?q=giao+ban", {rec_a, rec_a2}),
        ("?q=khong+co", set()),
        ("?chair=ch%E1%BB%A7+t%E1%BB%8Bch+a", {rec_a, rec_a2}),
        ("?chair=ct-b", set()),
        ("?unit=huyen-a", {rec_a, rec_a2}),
        ("?unit=xa-a1", set()),
    ]:
        status, html, _ = await secretary.get("/recordings" + query)
        assert status == 200 and ids_in(html) == expected, query
    status, html, _ = await secretary.get("/recordings?from=30-11-2026")
    assert status == 400 and 'data-field="from"' in html

    # the recording page: player, agenda, timeline, attendance, downloads, minutes slot
    status, html, _ = await secretary.get(f"/recordings/{rec_a}")
    assert status == 200, html[-500:]
    assert "<video" in html and f"/recordings/{rec_a}/files/" in html
    assert "Báo cáo tình hình" in html and "Văn phòng" in html  # agenda from the database
    assert 'data-offset="5.0"' in html and 'data-offset="40.0"' in html  # timeline
    assert "0:35" in html and "0:30" in html  # chair spoke 35 s, xa-a1 30 s
    assert "UBND xã A Một" in html and 'data-type="join"' in html and 'data-type="leave"' in html
    # the leave's reason in words, not the code (issue 15 item 4: "(left)" on a Vietnamese page)
    assert '<span class="muted" data-reason="left">(tự rời phòng)</span>' in html
    assert f'href="/meetings/{meeting_a}/minutes"' in html and "Biên bản" in html
    assert html.count("?download=1") == 2 and "Video tổng hợp chưa sẵn sàng" in html
    assert '<script src="/static/library.js">' in html

    # the chair of the meeting sees it; another chair of the same unit does not
    chair = await signed_in(site, browsers, "ct-a")
    assert (await chair.get(f"/recordings/{rec_a}"))[0] == 200
    other_chair = await signed_in(site, browsers, "ct-a2")
    status, html, _ = await other_chair.get(f"/recordings/{rec_a}")
    assert status == 404 and "Không tìm thấy bản ghi hình" in html
    assert ids_in((await other_chair.get("/recordings"))[1]) == set()
    # another district's secretary: the same 404 as an unknown id, and not in the list
    other = await signed_in(site, browsers, "tk-b")
    unknown = await other.get("/recordings/0123456789abcdef")
    refused = await other.get(f"/recordings/{rec_a}")
    assert refused[0] == unknown[0] == 404
    assert refused[1] == unknown[1].replace("0123456789abcdef", rec_a)
    assert ids_in((await other.get("/recordings"))[1]) == {rec_b}
    assert (await other.get(f"/recordings/{rec_a}/files/x.webm"))[0] == 404
    # a point operator: 403; anonymous: the login page
    operator = await signed_in(site, browsers, "vh-a1")
    assert (await operator.get("/recordings"))[0] == 403
    assert (await operator.get(f"/recordings/{rec_a}"))[0] == 403
    anonymous = site.browser()
    browsers.append(anonymous)
    status, _, response = await anonymous.get(f"/recordings/{rec_a}")
    assert status == 303 and response.headers["Location"] == f"/login?next=/recordings/{rec_a}"
    status, _, response = await anonymous.get(f"/recordings/{rec_a}/files/x.webm")
    assert status == 303 and response.headers["Location"].startswith("/login")
    # ad-hoc rooms: the server-wide admin only, not a district's admin
    admin = site.browser()
    browsers.append(admin)
    await admin.signed_in("admin", site.admin_password)
    status, html, _ = await admin.get("/recordings")
    assert ids_in(html) == {rec_a, rec_a2, rec_b, rec_adhoc}
    status, html, _ = await admin.get(f"/recordings/{rec_adhoc}")
    assert status == 200 and "phong-nhanh" in html and 'data-state="recording"' in html
    district_admin = await signed_in(site, browsers, "qt-a")
    assert ids_in((await district_admin.get("/recordings"))[1]) == {rec_a, rec_a2}
    assert (await district_admin.get(f"/recordings/{rec_adhoc}"))[0] == 404

    # every page view is in the audit log, refusals are not
    views = [r for r in audit(site) if r["action"] == "view"]
    assert [(r["username"], r["recording"]) for r in views] == [
        ("tk-a", rec_a),
        ("ct-a", rec_a),
        ("admin", rec_adhoc),
    ]
    assert all(r["client"] == "127.0.0.1" and r["at"].endswith("Z") for r in views)
    assert views[0]["manifest"].startswith("2026/11/") and views[0]["meeting"] == str(meeting_a)


async def test_parent_unit_secretary_sees_a_commune_meeting(
    site: Site, browsers: list[Browser]
) -> None:
    district(site)
    site.add_user("tk-xa", "secretary", unit="xa-a1")
    meeting = schedule(site, "Họp xã A Một", START, chair="ct-a", unit="xa-a1")
    rec = rid(site, record(site, str(meeting)))
    district_secretary = await signed_in(site, browsers, "tk-a")  # huyen-a, the parent
    assert (await district_secretary.get(f"/recordings/{rec}"))[0] == 200
    commune_secretary = await signed_in(site, browsers, "tk-xa")
    assert (await commune_secretary.get(f"/recordings/{rec}"))[0] == 200
    status, html, _ = await district_secretary.get("/recordings?unit=xa-a1")
    assert ids_in(html) == {rec}
    other = await signed_in(site, browsers, "tk-b")
    assert (await other.get(f"/recordings/{rec}"))[0] == 404


async def test_media_range_download_and_audit(site: Site, browsers: list[Browser]) -> None:
    district(site)
    meeting = schedule(site, "Giao ban", START)
    manifest = record(site, str(meeting))
    rec = rid(site, manifest)
    video = manifest.parent / read_manifest(manifest)["tracks"][0]["file"]
    audio = manifest.parent / read_manifest(manifest)["tracks"][1]["file"]
    data = video.read_bytes()
    assert len(data) > 2000
    secretary = await signed_in(site, browsers, "tk-a")
    url = f"{site.url}/recordings/{rec}/files/{video.name}"
    http = secretary.http
    async with http.get(url) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "video/webm"
        assert r.headers["Accept-Ranges"] == "bytes"
        assert r.headers["Content-Disposition"] == f'inline; filename="{video.name}"'
        assert await r.read() == data
    async with http.get(url, headers={"Range": "bytes=100-1099"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
        assert await r.read() == data[100:1100]
    async with http.get(url, headers={"Range": f"bytes={len(data) - 10}-"}) as r:
        assert r.status == 206 and await r.read() == data[-10:]
    async with http.get(url, headers={"Range": f"bytes={len(data) + 10}-"}) as r:
        assert r.status == 416
    async with http.get(url + "?download=1") as r:
        assert r.status == 200
        assert r.headers["Content-Disposition"] == f'attachment; filename="{video.name}"'
        assert await r.read() == data
    async with http.get(f"{site.url}/recordings/{rec}/files/{audio.name}?download=1") as r:
        assert r.status == 200 and r.headers["Content-Type"] == "audio/webm"
        assert await r.read() == audio.read_bytes()
    # the files the manifest does not list are not served, even next to it
    for name in (manifest.name, "other.webm"):
        async with http.get(f"{site.url}/recordings/{rec}/files/{name}") as r:
            assert r.status == 404
    media = [r for r in audit(site) if r["action"] in ("play", "download")]
    assert [(r["action"], r["file"], r["range"], r["first"]) for r in media] == [
        ("play", video.name, None, True),
        ("play", video.name, "bytes=100-1099", False),
        ("play", video.name, f"bytes={len(data) - 10}-", False),
        ("play", video.name, f"bytes={len(data) + 10}-", False),
        ("download", video.name, None, True),
        ("download", audio.name, None, True),
    ]
    assert all(r["username"] == "tk-a" and r["recording"] == rec for r in media)
    assert all(r["client"] == "127.0.0.1" for r in media)
    assert oct(os.stat(site.server.data_dir / "audit.log").st_mode & 0o777) == "0o600"


async def test_path_tricks_are_refused(site: Site, browsers: list[Browser], tmp_path: Path) -> None:
    district(site)
    meeting = schedule(site, "Giao ban", START)
    manifest = record(site, str(meeting))
    rec = rid(site, manifest)
    root = recordings_root(site)
    secret = tmp_path / "secret.webm"
    secret.write_bytes(b"root:x:0:0 SECRET OUTSIDE")
    # a symlink next to the tracks, listed in the manifest, pointing out of the directory
    (manifest.parent / "evil.webm").symlink_to(secret)
    doctored = read_manifest(manifest)
    doctored["tracks"] += [
        {"file": "evil.webm", "kind": "video"},
        {"file": "../../../../secret.webm", "kind": "video"},
        {"file": str(secret), "kind": "video"},
    ]
    write_manifest(manifest, doctored)
    # a meeting directory that is a symlink to a folder outside the recordings
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "20261130T010000Z.manifest.json").write_text(
        json.dumps({"format": FORMAT, "meeting": "phong-ngoai", "state": "complete"})
    )
    (root / "2026" / "11" / "phong-ngoai").symlink_to(outside)
    outside_id = recording_id("2026/11/phong-ngoai/20261130T010000Z.manifest.json")

    admin = site.browser()
    browsers.append(admin)
    await admin.signed_in("admin", site.admin_password)
    status, html, _ = await admin.get("/recordings")
    assert status == 200 and outside_id not in html and rec in html
    status, html, _ = await admin.get(f"/recordings/{rec}")
    assert status == 200 and "evil.webm" not in html and "secret" not in html

    base = f"{site.url}/recordings/{rec}/files/"
    tricks = [
        f"{site.url}/recordings/{outside_id}",
        f"{site.url}/recordings/..%2F..%2Fetc%2Fpasswd",
        f"{site.url}/recordings/%2e%2e/%2e%2e/etc/passwd",
        f"{site.url}/recordings/{rec}%2F..%2F..",
        f"{site.url}/recordings/{rec}%00",
        base + "evil.webm",
        base + "..%2F..%2F..%2F..%2Fsecret.webm",
        base + "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.webm",
        base + "%2e%2e",
        base + "%2F" + str(secret).replace("/", "%2F"),
        base + "%2Fetc%2Fpasswd",
        base + "..%5C..%5Csecret.webm",
        base + manifest.name.replace(".", "%2e"),
        base + "x%00.webm",
        base + "%00",
        f"{site.url}/recordings/{rec}/files/../../../../secret.webm",
        f"{site.url}/recordings/{rec}/files//{secret}",
    ]
    for raw in tricks:
        async with admin.http.get(URL(raw, encoded=True), allow_redirects=False) as r:
            body = await r.read()
            assert r.status in (400, 404), (raw, r.status)
            assert b"SECRET OUTSIDE" not in body and b"root:" not in body, raw
    # the server is fine afterwards and wrote no traceback (checked at exit by the fixture)
    assert (await admin.get(f"/recordings/{rec}"))[0] == 200
    assert not any(r.get("file") in ("evil.webm", "secret.webm") for r in audit(site))


async def test_api_list_detail_and_refusals(any_site: Site, browsers: list[Any]) -> None:
    site = any_site
    district(site)
    meeting_a = schedule(site, "Giao ban tuần", START)
    meeting_b = schedule(site, "Họp B", START, chair="ct-b", points=("p-b1",), unit="huyen-b")
    rec_a = rid(site, record(site, str(meeting_a)))
    rec_b = rid(site, record(site, str(meeting_b), START + timedelta(days=1)))
    secretary = await client(site, browsers, "tk-a")
    status, data, _ = await secretary.call("GET", "/recordings")
    assert status == 200 and [r["id"] for r in data["recordings"]] == [rec_a]
    row = data["recordings"][0]
    assert row["title"] == "Giao ban tuần" and row["unit"] == "huyen-a" and row["chair"] == "ct-a"
    assert row["meeting_id"] == meeting_a and row["duration"] == 95.0 and row["tracks"] == 2
    assert row["local_start"] == "2026-11-30T08:00:00+07:00" and row["state"] == "complete"
    assert "composition" in row
    status, data, _ = await secretary.call("GET", "/recordings?q=khong&chair=ct-a")
    assert status == 200 and data["recordings"] == []
    status, data, _ = await secretary.call("GET", "/recordings?from=hom-nay")
    assert status == 422 and data["error"] == "invalid"
    status, data, _ = await secretary.call("GET", f"/recordings/{rec_a}")
    assert status == 200, data
    assert [f["kind"] for f in data["files"]] == ["video", "audio"]
    assert data["files"][0]["url"] == f"/recordings/{rec_a}/files/" + data["files"][0]["name"]
    assert data["agenda"] == [{"title": "Báo cáo tình hình", "presenter": "Văn phòng"}]
    assert [(s["identity"], s["offset"]) for s in data["speakers"]] == [
        ("chair", 5.0),
        ("xa-a1", 40.0),
    ]
    assert [e["type"] for e in data["attendance"]] == ["present", "join", "leave"]
    assert data["signed"] is True and data["minutes_final"] is False
    # refusals: other district 404 (as unknown), operator 403, no token 401
    for path in (f"/recordings/{rec_b}", "/recordings/0123456789abcdef", "/recordings/..%2Fx"):
        status, data, _ = await secretary.call("GET", path)
        assert status == 404, (path, status)
    operator = await client(site, browsers, "vh-a1")
    assert (await operator.call("GET", "/recordings"))[0] == 403
    anonymous = await client(site, browsers)
    status, data, response = await anonymous.call("GET", f"/recordings/{rec_a}")
    assert status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    # the OpenAPI document declares both operations
    status, document, _ = await anonymous.call("GET", "/openapi.json")
    assert status == 200
    assert "get" in document["paths"]["/recordings"]
    assert "get" in document["paths"]["/recordings/{recording_id}"]
    assert "Recording" in document["components"]["schemas"]
    records = [r for r in audit(site) if r["action"] == "api"]
    assert [(r["username"], r["recording"]) for r in records] == [("tk-a", rec_a)]


def _mp4(path: Path) -> None:
    """A real 1 s H.264 MP4 (what the composer would have written)."""
    import av

    from conference.tools.testmedia import draw_barcode

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for n in range(15):
            frame = draw_barcode(n, 160, 120).reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


async def live(browser: Browser, rec: str) -> tuple[int, dict[str, Any]]:
    """What the recording page's script asks every few seconds."""
    status, text, response = await browser.get(f"/recordings/{rec}/composition")
    assert response.headers["Content-Type"].startswith("application/json"), text[:200]
    assert response.headers["Cache-Control"] == "no-store"
    return status, json.loads(text)


async def test_composition_progress_and_composed_mp4(site: Site, browsers: list[Browser]) -> None:
    """The job state file of conference.recording.jobs drives the status, the MP4 offer and
    the JSON the page follows live; while a composition again runs, and after it failed,
    the earlier MP4 stays offered (issue 15 item 7)."""
    district(site)
    manifest = record(site, str(schedule(site, "Giao ban", START)))
    rec = rid(site, manifest)
    stem = manifest.name.removesuffix(".manifest.json")
    state = manifest.with_name(stem + ".compose.json")
    mp4 = manifest.with_name(stem + ".mp4")
    secretary = await signed_in(site, browsers, "tk-a")
    status, html, _ = await secretary.get("/recordings")
    assert 'data-compose="none"' in html and "Chưa dựng video" in html
    status, body = await live(secretary, rec)
    assert status == 200 and body["state"] == "none" and body["composed"] is None, body
    # the first composition runs: its file is still .mp4.part, nothing is offered
    state.write_text(json.dumps({"state": "running", "progress": 42, "output": None}))
    _mp4(mp4)
    mp4.rename(mp4.with_name(mp4.name + ".part"))
    status, html, _ = await secretary.get("/recordings")
    assert 'data-compose="running" data-progress="42.0"' in html and "42%" in html
    assert "Đang dựng video" in html
    status, html, _ = await secretary.get(f"/recordings/{rec}")
    assert status == 200 and mp4.name not in html and 'value="42.0"' in html
    assert 'data-follow="1"' in html and 'id="compose-form" hidden' in html  # followed live
    status, body = await live(secretary, rec)
    assert (body["state"], body["progress"], body["previous"]) == ("running", 42.0, False)
    assert body["composed"] is None and "42%" in body["html"] and "Đang dựng video" in body["html"]
    api = await client(site, browsers, "tk-a")
    status, data, _ = await api.call("GET", f"/recordings/{rec}")
    assert data["recording"]["composition"]["progress"] == 42.0
    assert data["recording"]["composition"]["state"] == "running"
    # done: compose() renamed the finished file
    mp4.with_name(mp4.name + ".part").rename(mp4)
    state.write_text(json.dumps({"state": "done", "progress": 100, "output": str(mp4)}))
    status, html, _ = await secretary.get(f"/recordings/{rec}")
    assert status == 200 and "Video tổng hợp chưa sẵn sàng" not in html
    assert f'src="/recordings/{rec}/files/{mp4.name}"' in html  # the player starts on it
    assert html.count("?download=1") == 3 and "data-follow" not in html
    assert "Đã dựng xong" in html and 'id="compose-form" hidden' not in html
    status, body = await live(secretary, rec)
    assert body["state"] == "done" and body["progress"] == 100.0, body
    done = body["composed"]
    assert done["name"] == mp4.name and done["url"] == f"/recordings/{rec}/files/{mp4.name}"
    assert done["size"] == mp4.stat().st_size and done["version"]
    data_bytes = mp4.read_bytes()
    url = f"{site.url}/recordings/{rec}/files/{mp4.name}"
    async with secretary.http.get(url, headers={"Range": "bytes=10-"}) as r:
        assert r.status == 206 and r.headers["Content-Type"] == "video/mp4"
        assert r.headers["Content-Range"] == f"bytes 10-{len(data_bytes) - 1}/{len(data_bytes)}"
        assert await r.read() == data_bytes[10:]
    status, data, _ = await api.call("GET", f"/recordings/{rec}")
    assert data["files"][0]["kind"] == "composed" and data["files"][0]["name"] == mp4.name
    assert data["recording"]["composition"]["progress"] == 100.0
    # composing again: the earlier MP4 is still offered and played, "đang dựng lại"
    state.write_text(json.dumps({"state": "running", "progress": 10, "output": None}))
    status, html, _ = await secretary.get(f"/recordings/{rec}")
    assert f'src="/recordings/{rec}/files/{mp4.name}"' in html and "Đang dựng lại" in html
    assert '<p class="muted" id="recomposing">' in html and 'data-follow="1"' in html
    status, body = await live(secretary, rec)
    assert body["previous"] is True and body["composed"]["name"] == mp4.name, body
    assert "Đang dựng lại" in body["html"]
    status, data, _ = await api.call("GET", f"/recordings/{rec}")
    assert data["recording"]["composition"]["previous"] is True
    assert data["files"][0]["kind"] == "composed"
    # a composition again that failed: marked, and the earlier MP4 kept and offered
    state.write_text(json.dumps({"state": "failed", "progress": 60, "error": "disk full"}))
    status, html, _ = await secretary.get(f"/recordings/{rec}")
    assert 'data-compose="failed"' in html and f"files/{mp4.name}" in html
    assert "vẫn giữ video đã dựng trước" in html and "data-follow" not in html
    status, body = await live(secretary, rec)
    assert (body["state"], body["previous"], body["error"]) == ("failed", True, "disk full")
    assert body["composed"]["name"] == mp4.name


async def test_composition_status_is_checked_like_the_page(
    site: Site, browsers: list[Browser]
) -> None:
    """GET /recordings/{id}/composition: the page's session, roles and units; not audited."""
    district(site)
    manifest = record(site, str(schedule(site, "Giao ban", START)))
    rec = rid(site, manifest)
    path = f"/recordings/{rec}/composition"
    anonymous = site.browser()
    browsers.append(anonymous)
    status, _, response = await anonymous.get(path)
    assert status in (302, 303) and response.headers["Location"].startswith("/login")
    operator = await signed_in(site, browsers, "vh-a1")
    status, html, _ = await operator.get(path)
    assert status == 403 and "<html" in html  # the page's refusal: a role without the library
    other = await signed_in(site, browsers, "tk-b")  # another district
    status, body = await live(other, rec)
    assert status == 404 and body["error"] == "not-found"
    status, body = await live(other, "0" * 16)
    assert status == 404
    chair = await signed_in(site, browsers, "ct-a")  # the meeting's chair: like the page
    status, body = await live(chair, rec)
    assert status == 200 and body["state"] == "none"
    assert [r for r in audit(site) if r["recording"] == rec] == []  # polling is not audited


async def test_compose_button_queues_the_job(site: Site, browsers: list[Browser]) -> None:
    """The page's button queues conference.recording.jobs; the result is then offered."""
    import asyncio
    import re

    district(site)
    manifest = record(site, str(schedule(site, "Giao ban", START)))
    rec = rid(site, manifest)
    chair = await signed_in(site, browsers, "ct-a")  # sees it, may not start jobs
    status, html, _ = await chair.get(f"/recordings/{rec}")
    assert status == 200 and "compose-form" not in html
    token = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert token
    status, _, _ = await chair.post(f"/recordings/{rec}/compose", {"csrf_token": token.group(1)})
    assert status == 403
    secretary = await signed_in(site, browsers, "tk-a")
    status, html, _ = await secretary.get(f"/recordings/{rec}")
    assert 'id="compose-form"' in html and "Dựng video tổng hợp" in html
    status, _, _ = await secretary.post(f"/recordings/{rec}/compose", {"csrf_token": "wrong"})
    assert status == 403
    other = await signed_in(site, browsers, "tk-b")
    token_b = await other.csrf("/recordings")
    status, _, _ = await other.post(f"/recordings/{rec}/compose", {"csrf_token": token_b})
    assert status == 404
    token = await secretary.csrf(f"/recordings/{rec}")
    status, _, response = await secretary.post(f"/recordings/{rec}/compose", {"csrf_token": token})
    assert status == 303 and response.headers["Location"] == f"/recordings/{rec}"
    state = manifest.with_name(manifest.name.removesuffix(".manifest.json") + ".compose.json")
    assert json.loads(state.read_text())["state"] in ("queued", "running", "done")
    assert [r["username"] for r in audit(site) if r["action"] == "compose"] == ["tk-a"]
    for _ in range(240):  # the 2 s recording composes in a few seconds
        if json.loads(state.read_text())["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.25)
    assert json.loads(state.read_text())["state"] == "done", state.read_text()
    status, html, _ = await secretary.get(f"/recordings/{rec}")
    assert 'data-kind="composed"' in html and "Video tổng hợp chưa sẵn sàng" not in html


async def test_a_recording_carried_on_by_another_node_links_to_its_earlier_part(
    site: Site, browsers: list[Browser]
) -> None:
    """A node that died recording (left ``recording``, sealed ``interrupted`` later) and
    the recording another node carried on: each page links to the other."""
    district(site)
    meeting = schedule(site, "Giao ban", START)
    first = record(site, str(meeting), state="interrupted")
    earlier = read_manifest(first)
    continues = {
        "directory": earlier["directory"],
        "recording": earlier["recording"],
        "node": "may-chu-2",
        "reason": "node-failure",
    }
    second = record(
        site, str(meeting), START + timedelta(seconds=100), extra={"continues": continues}
    )
    unrelated = record(site, str(meeting), START + timedelta(hours=2))
    secretary = await signed_in(site, browsers, "tk-a")
    async with secretary.http.get(f"{site.url}/recordings/{rid(site, second)}") as r:
        assert r.status == 200
        html = await r.text()
    assert "nút máy chủ may-chu-2" in html and "ngừng đột ngột" in html
    assert f'id="earlier" href="/recordings/{rid(site, first)}"' in html
    assert "08:00 30/11/2026" in html  # the earlier part's start, Hanoi time
    async with secretary.http.get(f"{site.url}/recordings/{rid(site, first)}?lang=en") as r:
        html = await r.text()
    assert f'class="later" href="/recordings/{rid(site, second)}"' in html
    assert "Continued (from 08:01 30/11/2026) on another node" in html
    async with secretary.http.get(f"{site.url}/recordings/{rid(site, unrelated)}") as r:
        assert 'id="continuation"' not in await r.text()
    # the earlier part lost: said, not linked
    first.unlink()
    async with secretary.http.get(f"{site.url}/recordings/{rid(site, second)}?lang=vi") as r:
        html = await r.text()
    assert 'id="earlier"' not in html and "thư mục bản ghi của nút đó" in html


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-99"])
async def test_first_range_request_counts_as_one_play(
    site: Site, browsers: list[Browser], header: str
) -> None:
    district(site)
    manifest = record(site, str(schedule(site, "Giao ban", START)))
    rec = rid(site, manifest)
    name = read_manifest(manifest)["tracks"][0]["file"]
    secretary = await signed_in(site, browsers, "tk-a")
    async with secretary.http.get(
        f"{site.url}/recordings/{rec}/files/{name}", headers={"Range": header}
    ) as r:
        assert r.status == 206
    assert [r["first"] for r in audit(site) if r["action"] == "play"] == [True]


def test_audit_lines_are_appended_whole(tmp_path: Path) -> None:
    """Concurrent writers (threads) never interleave or lose a line."""
    from concurrent.futures import ThreadPoolExecutor

    from conference.recording.audit import append

    path = tmp_path / "audit.log"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: append(path, {"n": i, "pad": "x" * 3000}), range(400)))
    lines = path.read_text().splitlines()
    assert sorted(json.loads(line)["n"] for line in lines) == list(range(400))


_ = aiohttp  # the raw requests above use the browser's aiohttp session


def test_player_jumps_on_timeline_click_in_chromium(site: Site, tmp_path: Path) -> None:
    """Debian's chromium plays a raw track; a timeline click seeks (Range requests)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path("/usr/bin/chromium").exists():  # pragma: no cover - .ci/run installs it
        pytest.skip("Debian's chromium is not installed")
    district(site)
    manifest = record(site, str(schedule(site, "Giao ban", START)))
    rec = rid(site, manifest)
    doctored = read_manifest(manifest)
    when = START.timestamp()
    doctored["speakers"] = [
        {"at": iso(when + 30.2), "identity": "chair"},
        {"at": iso(when + 31.5), "identity": "xa-a1"},
    ]
    write_manifest(manifest, doctored)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page()
            page.goto(f"{site.url}/login?next=/recordings/{rec}")
            page.fill("input[name=username]", "tk-a")
            page.fill("input[name=password]", "mat-khau-1")
            page.click("button[type=submit]")
            page.wait_for_url(f"**/recordings/{rec}")
            wait_js(page, "document.getElementById('player').readyState >= 1")
            duration = page.evaluate("document.getElementById('player').duration")
            assert 1.5 < duration < 3, duration
            page.click("#timeline button[data-identity=xa-a1]")
            wait_js(
                page,
                "Math.abs(document.getElementById('player').currentTime - 1.5) < 0.3"
                " || document.getElementById('player').currentTime > 1.5",
                timeout=10,
            )
            page.click("#timeline button[data-identity=chair]")
            wait_js(page, "document.getElementById('player').currentTime < 1.0", timeout=10)
            page.screenshot(path=str(tmp_path / "library.png"), full_page=True)
            page.goto(f"{site.url}/recordings?lang=vi")
            assert "Thư viện bản ghi hình" in page.content()
            page.screenshot(path=str(tmp_path / "library-list.png"), full_page=True)
        finally:
            browser.close()
    plays = [r for r in audit(site) if r["action"] == "play"]
    assert plays and plays[0]["first"] is True and plays[0]["username"] == "tk-a"
    assert any(r["range"] for r in plays)  # the browser asked with Range


def following(page: Any, errors: list[str], manifest: Path) -> None:
    """Wait until the page saw the composition end; if not, say what it saw."""
    try:
        wait_js(page, "window.library && window.library.done", timeout=60)
    except AssertionError as error:
        state = manifest.with_name(manifest.name.removesuffix(".manifest.json") + ".compose.json")
        raise AssertionError(
            f"{error}\nseen: {page.evaluate('window.library && window.library.seen')}"
            f"\nerrors: {errors}\njob: {state.read_text() if state.exists() else None}"
        ) from None


def test_the_page_follows_the_composition_live_in_chromium(site: Site, tmp_path: Path) -> None:
    """Issue 15 item 7: the secretary starts the composition and watches its progress on
    the recording's page, which then plays the composed MP4, without a reload; composing
    again, the earlier MP4 plays meanwhile and the new one takes its place when done."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path("/usr/bin/chromium").exists():  # pragma: no cover - .ci/run installs it
        pytest.skip("Debian's chromium is not installed")
    district(site)
    # the camera and the microphone together: a composition of 2 s, done in a second or two
    manifest = record(site, str(schedule(site, "Giao ban", START)), camera=1)
    rec = rid(site, manifest)
    mp4 = manifest.with_name(manifest.name.removesuffix(".manifest.json") + ".mp4")
    player = "document.getElementById('player')"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu"],
        )
        try:
            context = browser.new_context()
            context.add_init_script("window.libraryPollMs = 250")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{site.url}/login?next=/recordings/{rec}")
            page.fill("input[name=username]", "tk-a")
            page.fill("input[name=password]", "mat-khau-1")
            page.click("button[type=submit]")
            page.wait_for_url(f"**/recordings/{rec}")
            assert page.is_visible("#not-composed") and "webm" in page.get_attribute(
                "#player", "src"
            )
            page.click("#compose-form button")  # a form: the page comes back, followed live
            page.wait_for_selector(
                "#composition [data-compose=queued], #composition [data-compose=running], #composition [data-compose=done]"
            )
            page.evaluate("window.stayed = true")  # gone if the page reloaded
            following(page, errors, manifest)
            seen = page.evaluate("window.library.seen")
            assert page.evaluate("window.library.done") == "done", seen
            assert any(s["state"] in ("queued", "running") for s in seen), seen
            assert page.evaluate("window.stayed") is True
            sync_api.expect(page.locator("#composition")).to_have_text("Đã dựng xong")
            first = page.get_attribute("#player", "src")
            assert first.startswith(f"/recordings/{rec}/files/{mp4.name}?v="), first
            wait_js(page, f"{player}.readyState >= 1 && {player}.duration > 1.5", timeout=20)
            assert page.is_hidden("#not-composed") and page.is_visible("#composed-ready")
            assert page.input_value("#source") == first
            link = page.get_attribute('#downloads li[data-kind="composed"] a', "href")
            assert link.startswith(f"/recordings/{rec}/files/{mp4.name}?download=1")
            sync_api.expect(page.locator("#compose-form button")).to_have_text(
                "Dựng lại video tổng hợp"
            )
            earlier = mp4.stat().st_ino
            # composing again: the earlier MP4 in the player, "đang dựng lại", then the new one
            page.click("#compose-form button")
            page.wait_for_selector("#composition [data-compose]")
            # as the server rendered it, the job just queued (its process starts in a second)
            text = page.inner_text("#composition")
            assert "Đang dựng lại" in text and page.is_visible("#recomposing"), text
            assert page.get_attribute("#player", "src") == f"/recordings/{rec}/files/{mp4.name}"
            page.evaluate("window.stayed = true")
            wait_js(page, f"{player}.readyState >= 1", timeout=20)  # the earlier one plays
            following(page, errors, manifest)
            assert page.evaluate("window.library.done") == "done"
            assert page.evaluate("window.stayed") is True
            assert mp4.stat().st_ino != earlier  # replaced
            again = page.get_attribute("#player", "src")
            assert again.startswith(f"/recordings/{rec}/files/{mp4.name}?v=") and again != first
            wait_js(page, f"{player}.readyState >= 1 && {player}.duration > 1.5", timeout=20)
            page.screenshot(path=str(tmp_path / "library-composed.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()


def test_a_manifest_says_whether_it_recorded_a_scheduled_meeting(tmp_path: Path) -> None:
    """Issue 14 item 8: an ad-hoc room's recording is never shown as the scheduled meeting
    with the same number; a manifest older than the ``scheduled`` field is judged by its id."""
    from conference.recording.library import Recording

    def number(**manifest: Any) -> int | None:
        return Recording("x", "r", tmp_path / "r.manifest.json", manifest).number

    assert number(meeting="4", scheduled=True) == 4
    assert number(meeting="4", scheduled=False) is None
    assert number(meeting="4") == 4  # written before the field existed
    assert number(meeting="giao-ban", scheduled=False) is None
