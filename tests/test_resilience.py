"""Late joiners, packet loss, publishers coming and going, reconnection."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import is_rtcp

from conference.tokens import Grants
from conference.tools.client import Client
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack, read_barcode

from .conftest import check_clean_exit, start_server
from .mediacheck import (
    audio_frequency,
    frames_for,
    increasing,
    video_numbers,
    video_numbers_no_drain,
    wait_track,
    wait_tracks,
)

pytestmark = pytest.mark.media  # real-time media: shares the machine (tests/conftest.py)


async def test_late_subscriber_gets_a_picture_within_one_second(server):
    # aiortc's VP8 encoder makes a keyframe only at start and on request
    # (gop 3000), so a late joiner sees a picture only if its keyframe
    # request crossed the server to the publisher.
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    await chair.publish({"camera": BarcodeVideoTrack(320, 240, fps=15)})
    await asyncio.sleep(3.0)
    late = Client(server.url, "m1", server.token(identity="late"))
    await late.connect()
    try:
        await wait_tracks(late, 1)
        track = await wait_track(late, chair.id, "camera")
        start = time.monotonic()
        frame = await asyncio.wait_for(track.recv(), 5.0)
        elapsed = time.monotonic() - start
        assert frame is not None
        assert elapsed < 1.0, f"first picture after {elapsed:.2f} s"
    finally:
        await late.leave()
        await chair.leave()


async def fresh_numbers(track, low: int, seconds: float = 2.0) -> list[int]:
    """Frame numbers of ``track`` from its first frame numbered ``low`` or more.

    A reused receiver may still hand out a frame decoded before the switch,
    and the new source's first picture waits for its keyframe: wait (up to
    10 s) for the first new frame, then every later frame must be new too.
    """
    deadline = asyncio.get_running_loop().time() + 10
    first = None
    while first is None or first < low:
        assert asyncio.get_running_loop().time() < deadline, f"no frame >= {low} (last {first})"
        first = read_barcode(await asyncio.wait_for(track.recv(), 10))
    numbers = [first] + [n for n in await video_numbers_no_drain(track, seconds) if n is not None]
    assert all(n >= low for n in numbers), numbers
    return numbers


@pytest.fixture
def lossy_links(monkeypatch):
    """Drop 5% of RTP packets sent and received by the test's peers."""
    rng = random.Random(1234)
    dropped = {"sent": 0, "received": 0}
    send_rtp = RTCDtlsTransport._send_rtp
    handle_rtp = RTCDtlsTransport._handle_rtp_data

    async def lossy_send(self, data: bytes) -> None:
        if not is_rtcp(data) and rng.random() < 0.05:
            dropped["sent"] += 1
            return
        await send_rtp(self, data)

    async def lossy_handle(self, data: bytes, arrival_time_ms: int) -> None:
        if rng.random() < 0.05:
            dropped["received"] += 1
            return
        await handle_rtp(self, data, arrival_time_ms)

    monkeypatch.setattr(RTCDtlsTransport, "_send_rtp", lossy_send)
    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", lossy_handle)
    return dropped


async def test_five_percent_loss_each_way_is_repaired(server, lossy_links):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    viewer = Client(server.url, "m1", server.token(identity="xa"))
    await chair.connect()
    await chair.publish({"camera": BarcodeVideoTrack(640, 360, fps=15)})
    await viewer.connect()
    try:
        await wait_tracks(viewer, 1)
        track = await wait_track(viewer, chair.id, "camera")
        # the first picture may take a few repairs (its keyframe is many packets); on a
        # loaded machine ICE, DTLS and those repairs take seconds: measure from there
        await asyncio.wait_for(track.recv(), 15)
        numbers = await video_numbers(track, 6.0)
        decoded = [n for n in numbers if n is not None]
        # about 15 each way are expected; at least 5 proves both directions lost packets
        assert lossy_links["sent"] >= 5 and lossy_links["received"] >= 5, lossy_links
        # the picture keeps coming, in order, and is not corrupted for long
        assert len(decoded) >= 50, numbers
        assert increasing(numbers)
        assert len(decoded) >= 0.9 * len(numbers), numbers
        tail = numbers[-10:]
        assert all(n is not None for n in tail), tail
    finally:
        await viewer.leave()
        await chair.leave()


async def test_two_publishers_unpublish_leave_and_reconnect(server):
    a = Client(server.url, "m1", server.token(identity="a", role="chair"))
    b = Client(server.url, "m1", server.token(identity="b"))
    c = Client(server.url, "m1", server.token(identity="c"))
    for client in (a, b, c):
        await client.connect()
    await a.publish({"camera": BarcodeVideoTrack(320, 240, fps=15, start=0)})
    await b.publish(
        {"camera": BarcodeVideoTrack(320, 240, fps=15, start=20000), "microphone": ToneAudioTrack()}
    )
    try:
        await wait_tracks(c, 3)
        for who, low in ((a, 0), (b, 20000)):
            numbers = await video_numbers(await wait_track(c, who.id, "camera"), 1.5)
            decoded = [n for n in numbers if n is not None]
            assert decoded and min(decoded) >= low and increasing(numbers)

        # b stops its camera: c sees it go, b's microphone stays
        await b.unpublish("camera")
        await c.wait_for(lambda: len(c.publications()) == 2)
        assert {p["source"] for p in c.publications() if p["participant"] == b.id} == {"microphone"}

        # b shares its camera again: c receives the new publication
        await b.publish({"camera": BarcodeVideoTrack(320, 240, fps=15, start=40000)})
        await c.wait_for(lambda: len(c.publications()) == 3)
        decoded = await fresh_numbers(await wait_track(c, b.id, "camera"), 40000)
        assert len(decoded) >= 10 and increasing(decoded), decoded

        # a leaves, then comes back with the same token: c sees it again
        old_id = a.id
        await a.leave()
        await c.wait_for(lambda: all(p["id"] != old_id for p in c.room["participants"]))
        a = Client(server.url, "m1", a.token)
        await a.connect()
        await a.publish({"camera": BarcodeVideoTrack(320, 240, fps=15, start=10000)})
        decoded = await fresh_numbers(await wait_track(c, a.id, "camera"), 10000)
        assert len(decoded) >= 10 and increasing(decoded), decoded
    finally:
        for client in (a, b, c):
            await client.leave()


async def test_second_session_of_an_identity_replaces_the_first(server):
    token = server.token(identity="xa-b")
    first = Client(server.url, "m1", token)
    await first.connect()
    second = Client(server.url, "m1", token)
    await second.connect()
    try:
        await first.wait_for(lambda: first.left_reason == "replaced")
        await first.closed.wait()
        await second.wait_for(lambda: len(second.room["participants"]) == 1)
    finally:
        await first.close()
        await second.leave()


async def test_subscriber_connection_closed_by_the_client_ends_the_session(server):
    """A client whose receiving connection closes (its ICE consent expired, say) is
    told to rejoin: the server does not keep offering on a closed connection."""
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"), decode=False)
    await chair.connect()
    await chair.publish({"camera": BarcodeVideoTrack(320, 240, fps=15)})
    point = Client(server.url, "m1", server.token(identity="xa-c"), decode=False)
    await point.connect()
    try:
        await point.wait_for(lambda: bool(point.counters), timeout=15)
        await point.wait_for(
            lambda: (
                point.subscriber is not None and point.subscriber.connectionState == "connected"
            ),
            timeout=15,
        )
        await point.subscriber.close()  # DTLS close_notify reaches the server
        await point.wait_for(lambda: point.left_reason == "connection-failed", timeout=10)
        await asyncio.wait_for(point.closed.wait(), 10)
        assert point.ws.close_code == 4410
        # the room carries on for the others, and the point may join again
        await chair.wait_for(lambda: len(chair.room["participants"]) == 1, timeout=10)
        again = Client(server.url, "m1", server.token(identity="xa-c"), decode=False)
        await again.connect()
        await again.wait_for(lambda: bool(again.counters), timeout=15)
        await again.leave()
    finally:
        await point.close()
        await chair.leave()


def network_gone(client: Client) -> None:
    """The client's network changed under it (Wi-Fi to 4G): nothing it sends on its
    current ICE paths arrives, nothing reaches it there any more."""
    for pc in (client.publisher, client.subscriber):
        if pc is None:
            continue
        connection = pc.getTransceivers()[0].receiver.transport.transport._connection
        for protocol in connection._protocols:
            protocol.datagram_received = lambda *args, **kwargs: None
            protocol.transport.sendto = lambda *args, **kwargs: None


async def test_a_point_whose_network_changed_restarts_ice_on_the_same_session(server):
    """ICE restart instead of rejoin (issue 15 item 10): both connections of a point find
    a new path under their DTLS sessions; the point stays the same participant (no leave,
    no join, no renegotiation of its tracks), media flows both ways again."""
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    await chair.publish({"camera": BarcodeVideoTrack(320, 240, fps=15)})
    point = Client(server.url, "m1", server.token(identity="xa-d"))
    await point.connect()
    await point.publish({"microphone": ToneAudioTrack(frequency=880)})
    try:
        camera = await wait_track(point, chair.id, "camera")
        microphone = await wait_track(chair, point.id, "microphone")
        assert increasing(await video_numbers(camera, 1.0))
        assert abs(await audio_frequency(microphone, 1.0) - 880) < 30
        participant_id = point.id
        dtls = [
            pc.getTransceivers()[0].receiver.transport for pc in (point.publisher, point.subscriber)
        ]

        network_gone(point)
        await asyncio.sleep(0.3)
        assert await frames_for(camera, 1.0) == []  # the old path carries nothing
        assert await point.restart_ice()

        # the chair's camera reaches the point again, and the point's voice the chair
        numbers = await fresh_numbers(camera, 0, seconds=2.0)
        assert len(numbers) >= 15 and increasing(numbers), numbers
        assert abs(await audio_frequency(microphone, 1.0) - 880) < 30
        # the same session: same participant, same DTLS transports, nobody left or joined
        assert point.id == participant_id and point.left_reason is None
        assert [
            pc.getTransceivers()[0].receiver.transport for pc in (point.publisher, point.subscriber)
        ] == dtls
        assert {p["id"] for p in chair.room["participants"]} == {chair.id, participant_id}
        log = server.log()
        assert f"{participant_id} left" not in log
        assert "publisher ICE restart" in log and "subscriber ICE restart" in log
        assert not point.errors, point.errors
    finally:
        await point.leave()
        await chair.leave()


async def test_a_point_whose_socket_dropped_resumes_its_session(server):
    """The page's WebSocket dropped with its network: within `resume_timeout` a new
    socket takes the same session over (same participant, connections, publications),
    then ICE restarts; the others see no leave and no join."""
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    await chair.publish({"camera": BarcodeVideoTrack(320, 240, fps=15)})
    point = Client(server.url, "m1", server.token(identity="xa-e"))
    joined = await point.connect(resume=True)
    await point.publish({"microphone": ToneAudioTrack(frequency=660)})
    try:
        assert joined["resumed"] is False and len(joined["resume"]) >= 20
        camera = await wait_track(point, chair.id, "camera")
        microphone = await wait_track(chair, point.id, "microphone")
        assert abs(await audio_frequency(microphone, 1.0) - 660) < 30
        participant_id, publications = point.id, point.room["participants"]
        room_messages = len([m for m in chair.messages if m["type"] == "room"])

        network_gone(point)
        await point.drop_signaling()
        await asyncio.sleep(1.5)
        assert {p["id"] for p in chair.room["participants"]} == {chair.id, participant_id}
        again = await point.resume()
        assert again["resumed"] is True and again["participant"]["id"] == participant_id
        assert again["resume"] != joined["resume"]  # a secret is used once
        assert await point.restart_ice()

        numbers = await fresh_numbers(camera, 0, seconds=2.0)
        assert len(numbers) >= 15 and increasing(numbers), numbers
        assert abs(await audio_frequency(microphone, 1.0) - 660) < 30
        log = server.log()
        assert f"{participant_id} left" not in log and f"{participant_id} joined" in log
        assert log.count(f"{participant_id} joined") == 1
        assert "resumed on a new connection" in log
        # the chair's page saw the point all along: every room state since listed it
        states = [m for m in chair.messages if m["type"] == "room"][room_messages:]
        assert all(participant_id in {p["id"] for p in s["participants"]} for s in states)
        assert publications and not point.errors, point.errors
    finally:
        await point.leave()
        await chair.leave()


async def test_a_session_not_resumed_in_time_leaves_and_a_secret_is_one_identitys(tmp_path):
    """After `resume_timeout` the dropped session leaves as before (the room shows it
    gone, attendance records the leave); a late resume joins afresh.  A resume secret
    presented with another identity's token takes nothing over."""
    server = start_server(tmp_path, env={"CONFERENCE_RESUME_TIMEOUT": "1"})
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"), decode=False)
    point = Client(server.url, "m1", server.token(identity="xa-f"), decode=False)
    other = Client(server.url, "m1", server.token(identity="xa-g"), decode=False)
    try:
        await chair.connect()
        first = await point.connect(resume=True)
        await chair.wait_for(lambda: len(chair.room["participants"]) == 2)
        # another point's token with this point's secret: its own new session
        await other.connect(resume=first["resume"])
        assert other.id != point.id
        await chair.wait_for(lambda: len(chair.room["participants"]) == 3)

        await point.drop_signaling()
        await chair.wait_for(lambda: len(chair.room["participants"]) == 2, timeout=10)
        assert point.id not in {p["id"] for p in chair.room["participants"]}
        late = await point.resume()
        assert late["resumed"] is False and late["participant"]["id"] != first["participant"]["id"]

        # the same identity's token with other rights (it may no longer publish): the
        # secret takes nothing over, the join is an ordinary one with the new rights
        weaker = Client(
            server.url,
            "m1",
            server.token(identity="xa-f", grants=Grants(subscribe=True)),
            decode=False,
        )
        downgraded = await weaker.connect(resume=late["resume"])
        assert downgraded["resumed"] is False
        assert downgraded["participant"]["grants"]["publish"] is False
        assert downgraded["participant"]["id"] != late["participant"]["id"]
        await weaker.leave()
        log = server.log()
        assert f"{first['participant']['id']} left (left)" in log
        assert "connection lost, kept 1 s for a resume" in log
    finally:
        for client in (point, other, chair):
            await client.leave()
        check_clean_exit(server)
