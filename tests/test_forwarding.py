"""Real aiortc peers through a real server process on 127.0.0.1.

The server runs under tests/codec_trap.py: if it created any encoder or
decoder while media flows, the ``server`` fixture fails the test.
"""

from __future__ import annotations

import asyncio

import pytest

from conference.tools.client import Client
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack

from .mediacheck import audio_frequency, increasing, video_numbers, wait_track, wait_tracks

pytestmark = pytest.mark.media  # real-time media: shares the machine (tests/conftest.py)


async def test_one_publisher_three_subscribers_decode_content(server):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    video = BarcodeVideoTrack(320, 240, fps=15)
    await chair.publish({"camera": video, "microphone": ToneAudioTrack(660.0)})

    viewers = [Client(server.url, "m1", server.token(identity=f"xa{i}")) for i in range(3)]
    for viewer in viewers:
        await viewer.connect()
    try:
        for viewer in viewers:
            await wait_tracks(viewer, 2)

        async def check(viewer: Client) -> tuple[list[int | None], float]:
            numbers = await video_numbers(await wait_track(viewer, chair.id, "camera"), 3.0)
            freq = await audio_frequency(await wait_track(viewer, chair.id, "microphone"), 1.0)
            return numbers, freq

        results = await asyncio.gather(*(check(v) for v in viewers))
        for numbers, freq in results:
            decoded = [n for n in numbers if n is not None]
            assert len(decoded) >= 20, numbers
            assert increasing(numbers), numbers
            # frames come from the live source, not a stale copy
            assert max(decoded) > video.frames_sent - 30
            assert abs(freq - 660.0) < 15, freq
    finally:
        for client in [chair, *viewers]:
            await client.leave()


async def test_room_state_and_leave(server):
    a = Client(server.url, "m2", server.token(meeting="m2", identity="a", role="chair"))
    b = Client(server.url, "m2", server.token(meeting="m2", identity="b"))
    await a.connect()
    await b.connect()
    await a.publish({"microphone": ToneAudioTrack(440.0)})
    await b.wait_for(lambda: len(b.publications("microphone")) == 1)
    names = {p["name"] for p in b.room["participants"]}
    assert names == {"UBND xã a", "UBND xã b"}
    await a.leave()
    await b.wait_for(lambda: len(b.room["participants"]) == 1)
    await b.leave()


async def test_udp_port_range_and_announced_address(tmp_path):
    from .conftest import check_clean_exit, start_server

    proc = start_server(
        tmp_path,
        env={"CONFERENCE_UDP_PORTS": "41200-41219", "CONFERENCE_PUBLIC_IP": "127.0.0.1"},
    )
    try:
        client = Client(proc.url, "m1", proc.token(identity="chair", role="chair"))
        await client.connect()
        await client.publish({"microphone": ToneAudioTrack(440.0)})
        answer = client.publisher.remoteDescription.sdp
        ports = [
            int(line.split()[5]) for line in answer.splitlines() if line.startswith("a=candidate:")
        ]
        assert ports and all(41200 <= p <= 41219 for p in ports), ports
        await client.wait_for(lambda: client.publisher.connectionState == "connected")
        await client.leave()
    finally:
        check_clean_exit(proc)


async def test_caps_on_participants_and_rooms(tmp_path):
    from conference.tools.client import ClientError

    from .conftest import check_clean_exit, start_server

    proc = start_server(
        tmp_path, env={"CONFERENCE_MAX_PARTICIPANTS": "2", "CONFERENCE_MAX_ROOMS": "1"}
    )
    try:
        first = Client(proc.url, "m1", proc.token(identity="a", role="chair"))
        second = Client(proc.url, "m1", proc.token(identity="b"))
        await first.connect()
        await second.connect()
        third = Client(proc.url, "m1", proc.token(identity="c"))
        with pytest.raises(ClientError) as full:
            await third.connect()
        assert full.value.code == "room-full"
        other = Client(proc.url, "m2", proc.token(meeting="m2", identity="d"))
        with pytest.raises(ClientError) as busy:
            await other.connect()
        assert busy.value.code == "server-full"
        # the same identity may still come back (it replaces its own session)
        again = Client(proc.url, "m1", proc.token(identity="b"))
        await again.connect()
        await first.wait_for(lambda: len(first.room["participants"]) == 2)
        for client in (first, again):
            await client.leave()
        await second.close()
    finally:
        check_clean_exit(proc)


async def test_first_video_publisher_decides_the_room_codec(server):
    # an H.264-only encoder (like FFmpeg's WHIP muxer) starts the room...
    encoder = Client(server.url, "m1", server.token(identity="encoder", role="chair"))
    await encoder.connect()
    await encoder.publish({"camera": BarcodeVideoTrack(320, 240, fps=15)}, codec="H264")
    # ...so a point that could send VP8 or H.264 is answered with H.264
    point = Client(server.url, "m1", server.token(identity="xa"))
    await point.connect()
    await point.publish({"camera": BarcodeVideoTrack(320, 240, fps=15, start=5000)})
    try:
        await point.wait_for(lambda: len(point.publications()) == 1)
        await encoder.wait_for(lambda: len(encoder.publications()) == 1)
        assert point.publications()[0]["codec"] == "h264"
        assert encoder.publications()[0]["codec"] == "h264"
        numbers = await video_numbers(await wait_track(encoder, point.id, "camera"), 2.0)
        assert len([n for n in numbers if n is not None]) >= 10 and increasing(numbers), numbers
    finally:
        await point.leave()
        await encoder.leave()


async def test_camera_and_screen_in_one_offer_and_two_cameras_in_a_first_offer(server):
    """Two m-lines of one kind negotiated at once.

    With aiortc's default bundle policy the second one stayed on a stopped
    transport when the client was Chromium (tests/test_browser.py covers that
    with three browser points); aiortc clients happen not to trigger it.
    """
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    await chair.publish(
        {
            "camera": BarcodeVideoTrack(320, 240, fps=15, start=100),
            "screen": BarcodeVideoTrack(320, 240, fps=15, start=20000),
        }
    )
    point = Client(server.url, "m1", server.token(identity="xa"))
    await point.connect()
    await point.publish({"camera": BarcodeVideoTrack(320, 240, fps=15, start=40000)})
    await asyncio.sleep(0.5)
    # a late joiner's first subscriber offer carries all three videos
    late = Client(server.url, "m1", server.token(identity="late"))
    await late.connect()
    try:
        for who, source, low in (
            (chair, "camera", 100),
            (chair, "screen", 20000),
            (point, "camera", 40000),
        ):
            numbers = await video_numbers(await wait_track(late, who.id, source), 1.5)
            decoded = [n for n in numbers if n is not None]
            assert len(decoded) >= 8 and min(decoded) >= low and increasing(numbers), (
                source,
                numbers,
            )
    finally:
        for client in (late, point, chair):
            await client.leave()
