"""WHIP ingest and WHEP egress with real peers."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from conference.sfu.bridge import ForwardingReceiver
from conference.tools.client import Client, StreamCounter
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack
from conference.tools.whipclient import whep_watch, whip_publish

from .mediacheck import audio_frequency, increasing, video_numbers, wait_track, wait_tracks

pytestmark = pytest.mark.media  # real-time media: shares the machine (tests/conftest.py)


async def test_whip_publisher_reaches_websocket_subscriber(server):
    encoder = await whip_publish(
        f"{server.url}/whip/m1",
        server.token(identity="obs-hall", role="chair", name="Hội trường huyện"),
        [BarcodeVideoTrack(320, 240, fps=15, start=500), ToneAudioTrack(880.0)],
    )
    assert encoder.location.startswith(f"{server.url}/whip/m1/")
    viewer = Client(server.url, "m1", server.token(identity="xa-tan-thinh"))
    await viewer.connect()
    try:
        await wait_tracks(viewer, 2)
        whip_id = encoder.location.rsplit("/", 1)[1]
        numbers = await video_numbers(await wait_track(viewer, whip_id, "camera"), 2.5)
        decoded = [n for n in numbers if n is not None]
        assert len(decoded) >= 15 and increasing(numbers) and min(decoded) >= 500, numbers
        freq = await audio_frequency(await wait_track(viewer, whip_id, "microphone"), 1.0)
        assert abs(freq - 880.0) < 15, freq
        names = [p["name"] for p in viewer.room["participants"]]
        assert "Hội trường huyện" in names
        assert await encoder.delete() == 200
        await viewer.wait_for(lambda: len(viewer.room["participants"]) == 1)
    finally:
        await viewer.leave()


async def test_whep_viewer_of_one_participant(server):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    await chair.publish(
        {
            "camera": BarcodeVideoTrack(320, 240, fps=15, start=100),
            "microphone": ToneAudioTrack(550.0),
        }
    )
    await asyncio.sleep(0.3)
    watcher = await whep_watch(
        f"{server.url}/whep/m1/chair", server.token(identity="radio", role="viewer")
    )
    try:
        numbers = await video_numbers(watcher.tracks["video"], 2.5)
        decoded = [n for n in numbers if n is not None]
        assert len(decoded) >= 15 and increasing(numbers) and min(decoded) >= 100, numbers
        freq = await audio_frequency(watcher.tracks["audio"], 1.0)
        assert abs(freq - 550.0) < 15, freq
    finally:
        assert await watcher.delete() == 200
        await chair.leave()


async def test_program_feed_follows_the_speaker(server):
    """Two speakers take turns; the program feed switches on keyframes, continuously."""
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    point = Client(server.url, "m1", server.token(identity="xa-a"))
    await chair.connect()
    await point.connect(auto_subscribe=False)
    # the chair speaks for 3 s out of every 6, the point for the other 3
    await chair.publish(
        {
            "camera": BarcodeVideoTrack(320, 240, fps=15, start=0),
            "microphone": ToneAudioTrack(440.0, speech_pattern=[(3.0, 3.0)]),
        }
    )
    await asyncio.sleep(3.0)
    await point.publish(
        {
            "camera": BarcodeVideoTrack(320, 240, fps=15, start=30000),
            "microphone": ToneAudioTrack(660.0, speech_pattern=[(3.0, 3.0)]),
        }
    )
    watcher = await whep_watch(f"{server.url}/whep/m1", server.token(identity="tv", role="viewer"))
    counter_session = await whep_watch(
        f"{server.url}/whep/m1", server.token(identity="tv2", role="viewer"), decode=False
    )
    seqs: list[tuple[int, int, float]] = []
    counter = StreamCounter(kind="video", codec="vp8")
    counter.on_packet = lambda packet, now: seqs.append(
        (packet.sequence_number, packet.timestamp, now)
    )
    for transceiver in counter_session.pc.getTransceivers():
        if transceiver.kind == "video":
            receiver = transceiver.receiver
            assert isinstance(receiver, ForwardingReceiver)
            receiver.sink = counter
    try:
        numbers = await video_numbers(watcher.tracks["video"], 9.0)
        decoded = [n for n in numbers if n is not None]
        # no corrupt picture: nearly every decoded frame carries a readable barcode
        assert len(decoded) >= 0.9 * len(numbers) and len(decoded) > 60, numbers
        sources = ["chair" if n < 30000 else "point" for n in decoded]
        switches = sum(1 for a, b in zip(sources, sources[1:], strict=False) if a != b)
        assert switches >= 2, sources
        assert {"chair", "point"} <= set(sources)
        # each run of one source shows increasing frame numbers
        runs: list[list[int]] = [[decoded[0]]]
        for prev_source, source, n in zip(sources, sources[1:], decoded[1:], strict=False):
            if source != prev_source:
                runs.append([])
            runs[-1].append(n)
        assert all(increasing(list(run)) for run in runs), runs
        # the outgoing stream stays continuous across switches: no sequence jump
        assert len(seqs) > 100
        jumps = [(b[0] - a[0]) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)]
        assert max(j for j in jumps if j < 0x8000) <= 3, sorted(jumps)[-5:]
        ts_steps = [((b[1] - a[1]) & 0xFFFFFFFF) for a, b in zip(seqs, seqs[1:], strict=False)]
        assert max(t for t in ts_steps if t < 0x80000000) < 90000, sorted(ts_steps)[-5:]
        assert len(chair.speaker_changes) >= 2
    finally:
        await watcher.delete()
        await counter_session.delete()
        await chair.leave()
        await point.leave()


async def test_whip_delete_needs_the_owner(server):
    encoder = await whip_publish(
        f"{server.url}/whip/m1", server.token(identity="enc", role="point"), [ToneAudioTrack()]
    )
    try:
        async with aiohttp.ClientSession() as http:
            other = server.token(identity="someone-else", role="point")
            async with http.delete(
                encoder.location, headers={"Authorization": f"Bearer {other}"}
            ) as response:
                assert response.status == 403
                assert (await response.json())["error"] == "forbidden"
            async with http.get(f"{server.url}/healthz") as response:
                assert (await response.json())["participants"] == 1
    finally:
        start = time.monotonic()
        assert await encoder.delete() == 200
        assert time.monotonic() - start < 5


async def test_silent_whip_and_whep_sessions_are_removed(tmp_path):
    from .conftest import check_clean_exit, start_server

    proc = start_server(tmp_path, env={"CONFERENCE_MEDIA_TIMEOUT": "3"})
    try:
        encoder = await whip_publish(
            f"{proc.url}/whip/m1",
            proc.token(identity="enc", role="chair"),
            [BarcodeVideoTrack(320, 240, fps=15), ToneAudioTrack()],
        )
        watcher = await whep_watch(
            f"{proc.url}/whep/m1", proc.token(identity="tv", role="viewer"), decode=False
        )
        viewer = Client(proc.url, "m1", proc.token(identity="xa"))
        await viewer.connect()
        await viewer.wait_for(lambda: len(viewer.room["participants"]) == 3)
        await asyncio.sleep(4.0)  # healthy sessions outlive the timeout
        assert len(viewer.room["participants"]) == 3

        # the encoder and the viewer vanish without a word (power cut, cable pulled):
        # nothing leaves their sockets any more (media, RTCP, STUN)
        for pc in (encoder.pc, watcher.pc):
            for transceiver in pc.getTransceivers():
                for protocol in transceiver.sender.transport.transport._connection._protocols:
                    protocol.transport.close()
        await viewer.wait_for(lambda: len(viewer.room["participants"]) == 1, timeout=10)
        assert "media-timeout" in proc.log()
        await viewer.leave()
        await encoder.pc.close()
        await watcher.pc.close()
    finally:
        check_clean_exit(proc)
