"""Three nodes as three hosts: one meeting across them (issue 13's "done when").

Each node is a `conference serve` process in a network namespace of its own, the three
and the test plugged into one switch (tests/lan.py): as three machines of a province's
server room, they reach each other, Redis and PostgreSQL only through the network
(`relay_host` is each host's own address).  A chair on node 1 and points on nodes 2
and 3 see and hear each other; the floor and the lock work across the nodes; a WHEP
viewer on node 3 watches a WHIP publisher of node 1; and when node 2 dies (kill -9),
its point comes back through node 3 within seconds and keeps the floor, while the
points elsewhere keep receiving the chair without a freeze.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from conference.sfu.bridge import configure_ice_hosts
from conference.tools.client import Client
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack
from conference.tools.whipclient import WhipError, whep_watch, whip_publish

from .conftest import ROOT, SECRET, ServerProcess, check_clean_exit
from .domain.conftest import _postgres_schema_url
from .lan import Lan, TcpForward, lan_available
from .mediacheck import audio_frequency, drain, track_for, video_numbers, wait_track
from .test_cluster import REDIS, redis_reachable

pytestmark = [pytest.mark.media, pytest.mark.slow]

PORT = 8443


async def start_node(lan: Lan, n: int, tmp: Path, environ: dict[str, str]) -> ServerProcess:
    """Node ``n`` in host ``n``'s namespace (waits in the loop: it runs the forwarders)."""
    home = tmp / f"node{n}"
    home.mkdir()
    address = lan.address(n)
    log_file = home / "server.log"
    env = dict(os.environ)
    env.update(environ)
    env.update(
        {
            "CONFERENCE_TOKEN_SECRET": SECRET,
            "CONFERENCE_CODEC_TRAP": str(home / "codec-trap.txt"),
            "CONFERENCE_RECORDINGS_DIR": str(home / "recordings"),
            "CONFERENCE_RELAY_HOST": address,
            "CONFERENCE_NODE_NAME": f"lan-{n}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    command = lan.command(
        n,
        [
            sys.executable,
            str(ROOT / "tests" / "codec_trap.py"),
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(PORT),
            "--data-dir",
            str(home / "data"),
            "--tls",
            "off",
            "--ice-host",
            address,
        ],
    )
    log = open(log_file, "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home)
    deadline = time.monotonic() + 30
    while '"listening"' not in log_file.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"node {n} did not start:\n" + log_file.read_text())
        await asyncio.sleep(0.05)
    return ServerProcess(
        url=f"http://{address}:{PORT}",
        port=PORT,
        data_dir=home / "data",
        trap_file=home / "codec-trap.txt",
        log_file=log_file,
        process=process,
    )


@pytest.fixture
def lan() -> Iterator[Lan]:
    for reason in (lan_available(), redis_reachable()):
        if reason:
            pytest.skip(reason)
    made = Lan(3)
    try:
        yield made
    finally:
        made.close()


async def longest_gap(track: Any, seconds: float) -> tuple[int, float]:
    """(frames decoded, the longest wait between two) over ``seconds`` from now."""
    drain(track)
    times = [time.monotonic()]
    deadline = times[0] + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(track.recv(), max(0.05, deadline - time.monotonic()))
        except TimeoutError:
            break
        times.append(time.monotonic())
    times.append(deadline)
    return len(times) - 2, max(b - a for a, b in zip(times, times[1:], strict=False))


def names(client: Client) -> set[str]:
    return {p["identity"] for p in client.room.get("participants", [])}


async def tone_of(client: Client, participant_id: str, seconds: float = 15.0) -> int:
    """The tone ``client`` hears from that participant's microphone, once it is heard
    (its relay from another node may still be starting): 0 if never."""
    deadline = time.monotonic() + seconds
    heard = 0
    while not heard and time.monotonic() < deadline:
        heard = round(await audio_frequency(track_for(client, participant_id, "microphone"), 1.0))
    return heard


async def test_one_meeting_on_three_hosts(lan: Lan, tmp_path: Path) -> None:
    forwards = [
        TcpForward(lan.root_address, 6379, ("127.0.0.1", 6379)),
        TcpForward(lan.root_address, 5432, ("127.0.0.1", 5432)),
    ]
    for forward in forwards:
        await forward.start()
    configure_ice_hosts(["127.0.0.1", lan.root_address])  # the test's peers on the switch
    postgres = _postgres_schema_url()
    base = next(postgres)  # a schema of its own (dropped at the end)
    database = base.set(host=lan.root_address, port=5432).render_as_string(hide_password=False)
    assert make_url(database).host == lan.root_address
    cluster = f"lan{uuid.uuid4().hex[:6]}"
    environ = {
        "CONFERENCE_REDIS_URL": REDIS.replace("127.0.0.1", lan.root_address),
        "CONFERENCE_CLUSTER_NAME": cluster,
        "CONFERENCE_DATABASE_URL": database,
    }
    nodes: list[ServerProcess] = []
    clients: list[Client] = []
    sessions: list[Any] = []
    try:
        for n in (1, 2, 3):  # one after the other: the first migrates the database
            nodes.append(await start_node(lan, n, tmp_path, environ))
        one, two, three = nodes
        meeting = f"lan-{uuid.uuid4().hex[:8]}"

        def client(node: ServerProcess, identity: str, role: str = "point") -> Client:
            made = Client(
                node.url, meeting, node.token(meeting=meeting, identity=identity, role=role)
            )
            clients.append(made)
            return made

        # the hall's camera, a WHIP encoder on node 1; a WHEP viewer (a commune's TV
        # channel) on node 3: the program feed there carries the camera relayed from node 1
        publisher = await whip_publish(
            f"{one.url}/whip/{meeting}",
            one.token(meeting=meeting, identity="may-quay", role="chair"),
            [BarcodeVideoTrack(320, 240, fps=15)],
        )
        sessions.append(publisher)
        viewer = None
        for _ in range(20):  # node 3 learns within a moment that the meeting is live
            try:
                viewer = await whep_watch(
                    f"{three.url}/whep/{meeting}",
                    three.token(meeting=meeting, identity="xem", role="viewer"),
                )
                break
            except WhipError as exc:
                assert exc.status == 404, exc.body
                await asyncio.sleep(0.25)
        assert viewer is not None
        sessions.append(viewer)
        deadline = time.monotonic() + 20
        while "video" not in viewer.tracks and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        numbers = await video_numbers(viewer.tracks["video"], 3.0)
        assert len([n for n in numbers if n is not None]) >= 10, numbers

        chair = client(one, "huyen", "chair")
        a = client(two, "xa-a")
        b = client(three, "xa-b")
        for joining in (chair, a, b):
            await joining.connect()
        await a.publish(
            {"camera": BarcodeVideoTrack(320, 240, fps=15), "microphone": ToneAudioTrack(440.0)}
        )
        await chair.wait_for(lambda: len(chair.tracks) >= 2, 20)
        await b.publish({"microphone": ToneAudioTrack(550.0)})
        await chair.publish(
            {"camera": BarcodeVideoTrack(320, 240, fps=15), "microphone": ToneAudioTrack(660.0)}
        )
        everyone = {"u:huyen", "pt:xa-a", "pt:xa-b"}
        for c in (chair, a, b):
            await c.wait_for(lambda c=c: everyone <= names(c), 15)  # type: ignore[misc]
        # the chair (node 1) hears both points and sees a's camera; each point hears the chair
        # (a's tracks are in before b publishes: see docs/ARCHITECTURE.md, "Nodes", on the
        # test client and two quick renegotiations)
        for point in (a, b):
            await wait_track(chair, point.id, "microphone", 20)
        heard = [await tone_of(chair, point.id) for point in (a, b)]
        assert abs(heard[0] - 440) < 15 and abs(heard[1] - 550) < 15, heard
        for point in (a, b):
            await point.wait_for(
                lambda p=point: sum(t.kind == "audio" for t in p.tracks.values()) >= 1, 20
            )  # type: ignore[misc]
        await b.wait_for(lambda: len(b.tracks) >= 3, 20)  # a's and the chair's
        assert abs(await audio_frequency(track_for(b, chair.id, "microphone"), 1.0) - 660) < 15

        # the floor (given on node 1 to a point of node 2) and the lock reach node 3
        await chair.send({"type": "give-floor", "participant": a.id})
        await b.wait_for(lambda: b.room.get("floor") == a.id or any(
            p.get("floor") for p in b.room.get("participants", []) if p["identity"] == "pt:xa-a"), 10)  # fmt: skip
        await chair.send({"type": "lock", "locked": True})
        await b.wait_for(lambda: b.room.get("locked") is True, 10)

        # node 2 dies: its point comes back through node 3 (the lock lets it in: it was in
        # the meeting) and still has the floor; b (node 3) kept receiving the chair
        watching = asyncio.ensure_future(longest_gap(track_for(b, chair.id, "camera"), 6.0))
        await asyncio.sleep(1.0)
        two.process.send_signal(signal.SIGKILL)
        two.process.wait(10)
        killed = time.monotonic()
        back = client(three, "xa-a")
        back.token = a.token
        await back.connect()
        assert time.monotonic() - killed < 10
        await chair.wait_for(lambda: everyone <= names(chair), 15)
        holder = next(p for p in back.room["participants"] if p["identity"] == "pt:xa-a")
        assert holder.get("floor") is True, back.room
        frames, gap = await watching
        assert frames >= 45 and gap < 1.0, (frames, gap)  # 15 fps; no freeze over 1 s
    finally:
        for made in clients:
            await made.leave()
        for session in sessions:
            await session.delete()
        configure_ice_hosts(["127.0.0.1"])
        for node in nodes:
            if node.process.poll() is None:
                check_clean_exit(node)
        for forward in forwards:
            await forward.close()
        next(postgres, None)  # drops the schema
