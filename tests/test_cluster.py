"""One meeting on two nodes (conference/cluster, conference/sfu/relay.py).

Two `conference serve` processes share the Redis on 127.0.0.1:6379 (CI runs one;
without it these tests are skipped with the reason).  A point on each node
publishes a camera and a microphone; each receives the other's, relayed between
the nodes, and decodes them.  A second point on the second node costs no
second relay stream.  When a node dies (kill -9), the other stops showing its
publications within seconds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conference.recording.manifest import MANIFEST_SUFFIX
from conference.tools.client import Client, ClientError
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack

from .conftest import ServerProcess, check_clean_exit, start_server
from .mediacheck import audio_frequency, increasing, video_numbers

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.media
REDIS = "redis://127.0.0.1:6379/0"


def redis_reachable() -> str | None:
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError as exc:
        return str(exc)
    return None


def start_node(tmp_path: Path, run: str, n: int, recordings: Path | None = None) -> ServerProcess:
    """Node ``n`` of the cluster ``run`` (its home in ``tmp_path``; its recordings there
    too, or in ``recordings``, shared by the nodes as `--workers` share theirs)."""
    home = tmp_path / f"node{n}"
    home.mkdir()
    shared = {"CONFERENCE_RECORDINGS_DIR": str(recordings)} if recordings else None
    return start_server(
        home,
        "--redis-url",
        REDIS,
        "--node-name",
        f"test-{run}-{n}",
        "--cluster-name",
        f"test-{run}",  # each test's own namespace in the shared Redis
        env=shared,
    )


def started_nodes(
    tmp_path: Path, count: int, recordings: Path | None = None
) -> Iterator[list[ServerProcess]]:
    unreachable = redis_reachable()
    if unreachable:
        pytest.skip(f"no Redis on 127.0.0.1:6379: {unreachable}")
    run = uuid.uuid4().hex[:8]
    started: list[ServerProcess] = []
    try:
        for n in range(1, count + 1):
            started.append(start_node(tmp_path, run, n, recordings))
        yield started
    finally:
        for node in started:
            if node.process.poll() is None:
                check_clean_exit(node)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    yield from started_nodes(tmp_path, 2)


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Three nodes sharing one recordings folder."""
    yield from started_nodes(tmp_path, 3, tmp_path / "recordings")


def health(node: ServerProcess) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{node.url}/healthz", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def own(client: Client) -> dict[str, str]:
    """Source -> id of ``client``'s own publications (from its node's room state)."""
    return {
        publication["source"]: publication["id"]
        for participant in client.room.get("participants", [])
        if participant["id"] == client.id
        for publication in participant["publications"]
    }


def identities(client: Client) -> set[str]:
    return {participant["identity"] for participant in client.room.get("participants", [])}


def received(client: Client, kind: str) -> list[Any]:
    return [track for track in client.tracks.values() if track.kind == kind]


async def test_points_on_two_nodes_see_and_hear_each_other(nodes: list[ServerProcess]) -> None:
    one, two = nodes
    assert health(one)["node"] != health(two)["node"]
    meeting = f"cluster-{uuid.uuid4().hex[:8]}"
    a = Client(one.url, meeting, one.token(meeting=meeting, identity="huyen", role="chair"))
    b = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-a"))
    c = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-b"))
    clients = [a, b, c]
    try:
        for client in clients:
            await client.connect()
        video_a = BarcodeVideoTrack(320, 240, fps=15)
        await b.publish(
            {"camera": BarcodeVideoTrack(320, 240, fps=15), "microphone": ToneAudioTrack(440.0)}
        )
        # (c has b's before a's: with a's relayed tracks first and b's added at once, the
        # test client sometimes never receives one of its two audio streams; see
        # docs/ARCHITECTURE.md, "Nodes")
        await c.wait_for(lambda: len(c.tracks) >= 2, 20)
        await a.publish({"camera": video_a, "microphone": ToneAudioTrack(660.0)})
        # b and c (node 2) receive a's camera and microphone from node 1, c b's too;
        # a receives b's from node 2
        await b.wait_for(lambda: len(b.tracks) >= 2, 20)
        await c.wait_for(lambda: len(c.tracks) >= 4, 20)
        await a.wait_for(lambda: len(a.tracks) >= 2, 20)
        # every page lists the meeting's participants, wherever they are
        everyone = {"u:huyen", "pt:xa-a", "pt:xa-b"}
        for client in clients:
            await client.wait_for(lambda cl=client: identities(cl) == everyone, 10)  # type: ignore[misc]
        remote = {p["identity"] for p in b.room["participants"] if p.get("remote")}
        assert remote == {"u:huyen"}
        await a.wait_for(lambda: len(own(a)) == 2, 10)
        mine = own(a)
        for client in (b, c):
            numbers = await video_numbers(client.tracks[mine["camera"]], 3.0)
            decoded = [n for n in numbers if n is not None]
            assert len(decoded) >= 20 and increasing(numbers), numbers
            assert max(decoded) > video_a.frames_sent - 30  # live, not a stale copy
            heard = await audio_frequency(client.tracks[mine["microphone"]], 1.0)
            assert abs(heard - 660.0) < 15, heard
        (heard,) = [await audio_frequency(t, 1.0) for t in received(a, "audio")]
        assert abs(heard - 440.0) < 15, heard
        (video,) = received(a, "video")
        numbers = await video_numbers(video, 2.0)
        assert len([n for n in numbers if n is not None]) >= 10, numbers
    finally:
        for client in clients:
            await client.leave()
    # one relay stream per publication and node: b and c shared node 1's
    log = one.log()
    relayed = [line for line in log.splitlines() if "relay: stream" in line and " to " in line]
    assert len(relayed) == 2, relayed  # a's camera and microphone, once each


async def test_a_dead_node_s_publications_leave_the_others(nodes: list[ServerProcess]) -> None:
    one, two = nodes
    meeting = f"cluster-{uuid.uuid4().hex[:8]}"
    a = Client(one.url, meeting, one.token(meeting=meeting, identity="huyen", role="chair"))
    b = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-a"))
    try:
        await a.connect()
        await b.connect()
        await a.publish({"microphone": ToneAudioTrack(660.0)})
        await b.wait_for(lambda: len(b.tracks) >= 1, 20)
        await b.wait_for(lambda: identities(b) == {"u:huyen", "pt:xa-a"}, 10)
        frames = await audio_frequency(next(iter(b.tracks.values())), 1.0)
        assert abs(frames - 660.0) < 15
        one.process.send_signal(signal.SIGKILL)
        one.process.wait(10)
        started = time.monotonic()

        def receiving() -> int:
            pc = b.subscriber
            transceivers = pc.getTransceivers() if pc is not None else []
            return sum(t.currentDirection == "recvonly" for t in transceivers)

        await b.wait_for(lambda: receiving() == 0, 15)  # the server renegotiated it away
        await b.wait_for(lambda: identities(b) == {"pt:xa-a"}, 5)
        assert time.monotonic() - started < 10
        assert "node test-" in two.log() and "is gone" in two.log()
    finally:
        for client in (a, b):
            await client.leave()


async def test_chat_and_lock_reach_every_node(nodes: list[ServerProcess]) -> None:
    one, two = nodes
    meeting = f"cluster-{uuid.uuid4().hex[:8]}"
    chair = Client(one.url, meeting, one.token(meeting=meeting, identity="huyen", role="chair"))
    point = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-a"))
    try:
        await chair.connect()
        await point.connect()
        await point.wait_for(lambda: identities(point) == {"u:huyen", "pt:xa-a"}, 10)
        since = len(point.messages)
        await chair.send({"type": "chat", "text": "Xin chào các xã"})
        message = await point.wait_message("chat", since=since)
        assert (message["identity"], message["text"]) == ("u:huyen", "Xin chào các xã")
        since = len(chair.messages)
        await point.send({"type": "chat", "text": "Xã A đã vào"})
        message = await chair.wait_message("chat", since=since)
        assert (message["identity"], message["text"]) == ("pt:xa-a", "Xã A đã vào")

        extra = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-c"))
        await extra.connect()
        # the chair locks the meeting on node 1: node 2 refuses a newcomer too
        await chair.send({"type": "lock", "locked": True})
        await point.wait_for(lambda: point.room.get("locked") is True, 5)
        stranger = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-moi"))
        with pytest.raises(ClientError) as refused:
            await stranger.connect()
        assert refused.value.code == "room-locked"
        # ... but a point that was in the meeting comes back through any node (its
        # reconnection may land on another one): node 1 saw it on node 2
        await asyncio.sleep(2.5)  # the briefing's tick (1 s) learns who is on the other nodes
        await extra.leave()
        back = Client(one.url, meeting, one.token(meeting=meeting, identity="xa-c"))
        await back.connect()
        await back.leave()
        await chair.send({"type": "lock", "locked": False})
        await point.wait_for(lambda: point.room.get("locked") is False, 5)
        # a late joiner on node 2 gets the history its node saw
        late = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-b"))
        joined = await late.connect()
        assert [m["text"] for m in joined["chat"]] == ["Xin chào các xã", "Xã A đã vào"]
        await late.leave()
    finally:
        for client in (chair, point):
            await client.leave()


async def test_the_chair_s_floor_hands_and_end_reach_points_on_another_node(
    nodes: list[ServerProcess],
) -> None:
    one, two = nodes
    meeting = f"cluster-{uuid.uuid4().hex[:8]}"
    chair = Client(one.url, meeting, one.token(meeting=meeting, identity="huyen", role="chair"))
    a = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-a"))
    b = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-b"))
    try:
        for client in (chair, a, b):
            await client.connect()
        await a.publish({"microphone": ToneAudioTrack(440.0)})
        await b.publish({"microphone": ToneAudioTrack(550.0)})
        everyone = {"u:huyen", "pt:xa-a", "pt:xa-b"}
        await chair.wait_for(lambda: identities(chair) == everyone, 10)

        # a point on node 2 raises its hand: the chair on node 1 sees it queued
        await a.send({"type": "raise-hand"})
        await chair.wait_for(lambda: [h["participant"] for h in chair.room["hands"]] == [a.id], 5)
        assert next(p for p in chair.room["participants"] if p["id"] == a.id)["hand"] is True

        # the chair gives it the floor: node 2 releases a and holds b, its pages are told
        since_a, since_b = len(a.messages), len(b.messages)
        await chair.send({"type": "give-floor", "participant": a.id})
        floor = await a.wait_message("floor", since=since_a)
        assert floor["participant"] == a.id
        told = await b.wait_message("muted-by-moderator", since=since_b)
        assert told == {"type": "muted-by-moderator", "source": "microphone", "muted": True}
        await chair.wait_for(lambda: chair.room.get("floor") == a.id, 5)
        assert chair.room["hands"] == []
        await b.wait_for(lambda: b.room.get("floor") == a.id, 5)

        # the chair records on node 1: node 2's pages show it, node 1 records the floor
        await chair.request({"type": "record-start"}, "recording")
        await a.wait_for(lambda: a.room.get("recording") is True, 5)
        await asyncio.sleep(1.5)

        # b cannot lift the hold itself; the chair mutes everyone, a is held too
        refused = await b.request({"type": "mute", "source": "microphone", "muted": False}, "error")
        assert refused["code"] == "muted-by-moderator"
        since_a = len(a.messages)
        await chair.send({"type": "mute-all"})
        told = await a.wait_message("muted-by-moderator", since=since_a)
        assert told["muted"] is True
        await a.wait_for(lambda: a.room.get("floor") is None, 5)
        # node 2 holds the points too: one coming in there later would be held
        await a.wait_for(lambda: a.room.get("holding") is True, 5)

        # commands that need the point's own session are carried out by its node
        since_a = len(a.messages)
        await chair.send({"type": "ask-unmute", "participant": a.id})
        asked = await a.wait_message("unmute-request", since=since_a)
        assert asked == {"type": "unmute-request", "by": chair.id, "name": "UBND xã huyen"}
        since_chair = len(chair.messages)
        await a.send({"type": "unmute-decline"})
        declined = await chair.wait_message("unmute-declined", since=since_chair)
        assert declined["participant"] == a.id
        await chair.send({"type": "set-profile", "participant": a.id, "profile": "low"})
        profile = await a.wait_message("profile", since=since_a)
        assert (profile["profile"], profile["by"]) == ("low", chair.id)
        error = await chair.request({"type": "ask-unmute", "participant": "PA_nobody"}, "error")
        assert error["code"] == "unknown-participant"
        # what the point's node refuses (a camera a does not send) comes back to the chair
        error = await chair.request(
            {"type": "mute-participant", "participant": a.id, "source": "camera", "muted": True},
            "error",
        )
        assert (error["code"], error["request"]) == ("unknown-publication", "mute-participant")
        await chair.send({"type": "remove", "participant": b.id, "reason": "Thử nghiệm"})
        left = await b.wait_message("leave", since=0)
        assert (left["reason"], left.get("message")) == ("removed", "Thử nghiệm")
        await chair.wait_for(lambda: identities(chair) == {"u:huyen", "pt:xa-a"}, 5)
        # its token is refused by every node, not only the one that removed it
        for node in (two, one):
            again = Client(node.url, meeting, b.token)
            with pytest.raises(ClientError) as refused:
                await again.connect()
            assert refused.value.code == "revoked", node

        # the chair ends the meeting: the points on node 2 are told and leave
        await chair.send({"type": "end-meeting"})
        left = await a.wait_message("leave", since=0)
        assert left["reason"] == "meeting-ended"
    finally:
        for client in (chair, a, b):
            await client.leave()
    # the relayed microphone of node 2's floor holder was recorded on node 1
    files = [path.name for path in (one.data_dir.parent / "recordings").rglob("*.webm")]
    assert any("-pt-xa-a-microphone-" in name for name in files), files  # named by identity


def manifests(node: ServerProcess | Path) -> list[dict[str, Any]]:
    """The manifests of ``node``'s recordings (or of a recordings folder), oldest first."""
    folder = node if isinstance(node, Path) else node.data_dir.parent / "recordings"
    found = [json.loads(path.read_text()) for path in folder.rglob(f"*{MANIFEST_SUFFIX}")]
    return sorted(found, key=lambda manifest: str(manifest["started_at"]))


def recording_count(node: ServerProcess) -> int:
    return int(health(node)["recordings"]["recording"])


async def eventually(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def recorded_sources(manifest: dict[str, Any]) -> set[str]:
    """identity/source of every track of ``manifest`` that has media in its file."""
    return {
        f"{track['identity']}/{track['source']}"
        for track in manifest["tracks"]
        if track.get("frames", track.get("packets", 0))
    }


async def test_a_recording_goes_on_elsewhere_when_its_node_dies(
    three_nodes: list[ServerProcess], tmp_path: Path
) -> None:
    """kill -9 of the node that records: one other node of the meeting carries the
    recording on (its manifest names the one it continues) and seals the dead node's
    part (the folder is shared), the chair stops it from a third node, and a second
    start is refused while one node records."""
    one, two, three = three_nodes
    folder = tmp_path / "recordings"
    meeting = f"cluster-{uuid.uuid4().hex[:8]}"
    chair = Client(one.url, meeting, one.token(meeting=meeting, identity="huyen", role="chair"))
    a = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-a"))
    b = Client(three.url, meeting, three.token(meeting=meeting, identity="xa-b"))
    again: Client | None = None
    try:
        for client in (chair, a, b):
            await client.connect()
        await a.publish({"microphone": ToneAudioTrack(440.0)})
        await b.publish({"microphone": ToneAudioTrack(550.0)})
        everyone = {"u:huyen", "pt:xa-a", "pt:xa-b"}
        await chair.wait_for(lambda: identities(chair) == everyone, 10)
        await chair.request({"type": "record-start"}, "recording")
        await a.wait_for(lambda: a.room.get("recording") is True, 5)
        await asyncio.sleep(1.5)
        [first] = manifests(folder)
        assert first["state"] == "recording"
        dead = health(one)["node"]

        one.process.send_signal(signal.SIGKILL)
        one.process.wait(10)
        # node 2 or node 3 (whichever claims it first) records from a few seconds later
        await eventually(lambda: recording_count(two) + recording_count(three) == 1, 15)
        recorder, other = (two, three) if recording_count(two) else (three, two)
        await asyncio.sleep(2.0)
        assert recording_count(other) == 0
        assert "the recording goes on here" in recorder.log()
        await a.wait_for(lambda: a.room.get("recording") is True, 5)
        await b.wait_for(lambda: b.room.get("recording") is True, 5)

        # the chair comes back through the node that does not record, and stops it there
        again = Client(other.url, meeting, chair.token)
        joined = await again.connect()
        assert joined["room"]["recording"] is True
        refused = await again.request({"type": "record-start"}, "error")
        assert refused["code"] == "already-recording"
        stopped = await again.request({"type": "record-stop"}, "recording")
        assert stopped["recording"] is False
        await eventually(lambda: recording_count(recorder) == 0, 5)
        await eventually(lambda: manifests(folder)[-1]["state"] == "complete", 10)
    finally:
        for client in (chair, a, b, *([again] if again else [])):
            await client.leave()
    earlier, continued = manifests(folder)
    assert earlier["recording"] == first["recording"]
    assert earlier["state"] == "interrupted"  # sealed by the node that carried it on
    assert continued["continues"] == {
        "directory": first["directory"],
        "recording": first["recording"],
        "node": dead,
        "reason": "node-failure",
    }
    assert continued["stop_reason"].endswith("on another node")
    # both points' microphones went on being recorded (one of them relayed)
    assert recorded_sources(continued) >= {"pt:xa-a/microphone", "pt:xa-b/microphone"}


async def test_a_node_shutting_down_hands_its_recording_over(nodes: list[ServerProcess]) -> None:
    """SIGTERM of the node that records (an operator's restart): it seals its part and
    the meeting's other node records on at once."""
    one, two = nodes
    meeting = f"cluster-{uuid.uuid4().hex[:8]}"
    chair = Client(one.url, meeting, one.token(meeting=meeting, identity="huyen", role="chair"))
    a = Client(two.url, meeting, two.token(meeting=meeting, identity="xa-a"))
    try:
        for client in (chair, a):
            await client.connect()
        await a.publish({"microphone": ToneAudioTrack(440.0)})
        await chair.wait_for(lambda: identities(chair) == {"u:huyen", "pt:xa-a"}, 10)
        await chair.request({"type": "record-start"}, "recording")
        await a.wait_for(lambda: a.room.get("recording") is True, 5)
        await asyncio.sleep(1.0)
        since = len(a.messages)
        check_clean_exit(one)  # SIGTERM, a clean exit
        told = await a.wait_message("recording", since=since)
        assert told["recording"] is True, told
        assert told["continued"]["reason"] == "node-shutdown"
        assert recording_count(two) == 1
        await asyncio.sleep(1.5)
    finally:
        for client in (chair, a):
            await client.leave()
    [first] = manifests(one)
    assert (first["state"], first["stop_reason"]) == ("complete", "server-shutdown")
    await eventually(lambda: manifests(two) and manifests(two)[0]["state"] == "complete", 10)
    [continued] = manifests(two)
    assert continued["continues"]["recording"] == first["recording"]
    assert continued["continues"]["reason"] == "node-shutdown"
    assert "pt:xa-a/microphone" in recorded_sources(continued)


def relay_counters(node: ServerProcess) -> dict[str, float]:
    """What ``node``'s relay endpoint sent the other nodes (its ``/metrics``): audio
    datagrams by the importing node's mode, and those withheld from gated nodes."""
    import urllib.request

    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for mode in ("full", "gated"):
        prefix = f'conference_relay_sent_packets_total{{kind="audio",mode="{mode}"}} '
        found[mode] = next(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)
        )
    prefix = "conference_relay_withheld_packets_total "
    found["withheld"] = next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)
    )
    return found


async def test_a_node_relays_only_its_open_microphones_unless_the_other_records(
    nodes: list[ServerProcess],
) -> None:
    """Nine microphones on node 2 (more than eight: its audio gate works): three loud,
    one speaking in bursts, five silent at different levels.  Node 2 relays only the
    open ones to node 1, where a point hears them with no gap in its numbering across
    a burst's pause (the relay's gap is not loss); when node 1 records, it gets every
    microphone."""
    one, two = nodes
    meeting = f"cluster-{uuid.uuid4().hex[:8]}"
    chair = Client(one.url, meeting, one.token(meeting=meeting, identity="huyen", role="chair"))
    listener = Client(
        one.url, meeting, one.token(meeting=meeting, identity="xa-nghe"), decode=False
    )
    # RFC 6464 levels (aiortc measures each frame): about 13, 23 and 33 dBov loud; 76, 80,
    # 83 dBov and silence (127) held back by the gate (70 and quieter)
    amplitudes = [0.3, 0.1, 0.03, 0.0002, 0.00014, 0.0001, 0.0, 0.0]
    tracks = [ToneAudioTrack(300.0 + 50 * n, amplitude=a) for n, a in enumerate(amplitudes)]
    speaker = ToneAudioTrack(800.0, amplitude=0.2, speech_pattern=[(0.3, 1.6)])
    points = [
        Client(two.url, meeting, two.token(meeting=meeting, identity=f"xa-{n}"), decode=False)
        for n in range(len(tracks) + 1)
    ]
    clients = [chair, listener, *points]
    try:
        await chair.connect(auto_subscribe=False)
        await listener.connect()
        for point in points:
            await point.connect(auto_subscribe=False)
        await asyncio.gather(
            *(
                point.publish({"microphone": track})
                for point, track in zip(points, [*tracks, speaker], strict=True)
            )
        )
        await listener.wait_for(lambda: len(listener.counters) == 9, 20)
        for point in points:
            await point.wait_for(lambda p=point: "microphone" in own(p), 10)  # type: ignore[misc]
        microphones = [own(point)["microphone"] for point in points]
        assert set(microphones) == set(listener.counters)
        loud, burst = set(microphones[:3]), microphones[-1]
        arrivals: list[tuple[float, int]] = []
        listener.counters[burst].on_packet = lambda packet, now: arrivals.append(
            (now, packet.sequence_number)
        )
        await asyncio.sleep(1.0)  # the gate settles (it works from the ninth microphone)

        # node 1's point hears the open microphones only; node 2 sends node 1 no more
        before = {pid: counter.packets for pid, counter in listener.counters.items()}
        relayed = relay_counters(two)
        await asyncio.sleep(2.0)
        heard = {pid: counter.packets - before[pid] for pid, counter in listener.counters.items()}
        sent = relay_counters(two)
        assert all(heard[pid] >= 70 for pid in loud), heard  # 50 a second each (loaded: late)
        assert all(heard[pid] == 0 for pid in heard if pid not in loud | {burst}), heard
        assert 5 <= heard[burst] <= 90, heard  # 0.3 s of tone, then 1 s of hangover
        gated = sent["gated"] - relayed["gated"]
        assert 3 * 80 <= gated <= 3 * 50 * 2.0 + heard[burst] + 40, (gated, heard)
        assert sent["withheld"] - relayed["withheld"] >= 5 * 80
        assert sent["full"] == relayed["full"]
        # the burst's pauses: no hole in the numbering node 1 gave it (held back on node 2
        # for 0.6 s each time: not loss), the sender's clock moved on
        pauses = [
            b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False) if b[0] - a[0] > 0.3
        ]
        assert pauses, arrivals[-5:]
        numbers = sorted({seq for _, seq in arrivals})
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers

        # node 1 records: every microphone comes to it, the point still hears the open ones
        await chair.request({"type": "record-start"}, "recording")
        # node 1's next WANT says full (within a tick, a second on a loaded machine)
        started = relay_counters(two)["full"]
        for _ in range(40):
            await asyncio.sleep(0.25)
            if relay_counters(two)["full"] > started + 50:
                break
        relayed = relay_counters(two)
        await asyncio.sleep(1.5)
        sent = relay_counters(two)
        assert sent["full"] - relayed["full"] >= 9 * 60, (sent, relayed)  # 50 a second each
        assert sent["gated"] == relayed["gated"]
        await chair.request({"type": "record-stop"}, "recording")
        await eventually(lambda: manifests(one) and manifests(one)[0]["state"] == "complete", 10)
        [manifest] = manifests(one)
        frames = {
            track["identity"]: track["frames"]
            for track in manifest["tracks"]
            if track["source"] == "microphone"
        }
        assert len(frames) == 9 and min(frames.values()) >= 70, frames
    finally:
        for client in clients:
            await client.leave()


async def test_malformed_directory_entries_and_messages_are_ignored() -> None:
    """What another node (or anyone with Redis access) writes is checked before use."""
    from conference.cluster import node
    from conference.sfu.room import Room

    cluster = node.Cluster(REDIS, "test-checks", "test-secret-" + "x" * 40)
    room = Room("checks")
    cluster.rooms["checks"] = room
    try:
        good = {
            "id": "TR_x",
            "node": "other",
            "run": "r",
            "relay": ["127.0.0.1", 9],
            "stream": 1,
            "participant": "PA_x",
            "source": "camera",
            "kind": "video",
            "codec": "vp8",
            "clock_rate": 90000,
            "rids": [],
        }
        assert node._entry(json.dumps(good)) == good
        for bad in ({**good, "source": "../etc"}, {**good, "stream": "1"}, {**good, "relay": []}):
            assert node._entry(json.dumps(bad)) is None
        for text in ("", "[]", "{", '{"op": "added"}', '{"op": "members", "node": 1}'):
            cluster._on_message("conference:meeting:checks", text)
        assert not room.remote and not room.remote_members
        cluster._on_message(
            "conference:meeting:checks",
            json.dumps(
                {"op": "members", "node": "other", "run": "r", "participants": [{"id": "PA_x"}]}
            ),
        )
        assert room.remote_members == {"other": [{"id": "PA_x"}]}
        # revocations: implausible expiries (NaN, infinite, huge) are dropped, not raised
        learnt: list[tuple[str, str, float]] = []
        cluster.on_revoked = lambda *args: learnt.append(args)
        for expires in ("NaN", "Infinity", "1e20", '"soon"', "-5", "true"):
            cluster._on_revoked(
                f'{{"node": "other", "kind": "meeting", "token": "t", "expires": {expires}}}'
            )
        cluster._on_revoked('{"node": "other", "kind": "meeting", "token": "t"}')
        assert learnt == []
        cluster._on_revoked(
            '{"node": "other", "kind": "meeting", "token": "t", "expires": 1900000000}'
        )
        assert learnt == [("meeting", "t", 1900000000.0)]
    finally:
        await room.close()
        await cluster.redis.aclose()


def test_serve_without_its_redis_says_so_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conference",
            "serve",
            "--tls",
            "off",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            "--redis-url",
            "redis://:secret-password@127.0.0.1:1/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("conference: error: redis_url: cannot reach Redis"), done.stderr
    assert "Traceback" not in done.stderr and "secret-password" not in done.stderr


async def test_a_burst_of_updates_waits_for_a_connection_rather_than_failing() -> None:
    """Hundreds of Redis updates at once (a hundred points joining: their announcements
    and member lists) queue for the node's connections: none is refused (redis-py's
    default pool refuses the 101st: an announcement lost)."""
    unreachable = redis_reachable()
    if unreachable:
        pytest.skip(f"no Redis on 127.0.0.1:6379: {unreachable}")
    from conference.cluster import node

    run = uuid.uuid4().hex[:8]
    cluster = node.Cluster(REDIS, f"test-{run}", "test-secret-" + "x" * 40, cluster_name=run)
    key = f"{cluster.prefix}burst"
    try:
        await asyncio.gather(*(cluster.redis.hset(key, str(i), "x") for i in range(300)))
        assert await cluster.redis.hlen(key) == 300
    finally:
        await cluster.redis.delete(key)
        await cluster.redis.aclose()
