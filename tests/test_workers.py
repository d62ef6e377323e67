"""``conference serve --workers N`` (conference/workers.py): N nodes on one port.

The pure parts (port shares, the workers' settings, the settings' checks) run
anywhere; the rest starts a real supervisor with two workers on the Redis of
127.0.0.1:6379 (skipped with the reason without it).  The kernel spreads the
connections over the workers (SO_REUSEPORT), so the tests do not choose where a
participant lands: they connect until they have participants on both workers, and
check that the meeting works across them: media, the lobby of a scheduled meeting
(SQLite and PostgreSQL), a worker killed and started again, a clean stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from conference.domain import db
from conference.domain.meetings import ZONE, create_meeting
from conference.settings import Settings, SettingsError, load_settings
from conference.tools.client import Client, ClientError
from conference.tools.testmedia import BarcodeVideoTrack, ToneAudioTrack
from conference.workers import udp_shares, worker_settings

from .conftest import ServerProcess, check_clean_exit, start_server
from .domain.meeting_setup import make_org
from .domain.test_cli import env  # noqa: F401 - fixture
from .domain.test_meetings_e2e import url_of
from .mediacheck import audio_frequency, increasing, video_numbers
from .test_cli import assert_one_line_error, run
from .test_cluster import REDIS, redis_reachable

# -- the pure parts --------------------------------------------------------------------------


def test_the_udp_range_is_shared_out_in_equal_parts() -> None:
    assert udp_shares(50000, 50099, 4) == [
        (50000, 50024),
        (50025, 50049),
        (50050, 50074),
        (50075, 50099),
    ]
    assert udp_shares(50000, 50002, 2) == [(50000, 50000), (50001, 50001)]  # one spare
    with pytest.raises(ValueError):
        udp_shares(50000, 50000, 2)


def test_each_worker_is_a_node_of_its_own() -> None:
    settings = Settings(
        port=8443,
        workers=3,
        redis_url=REDIS,
        node_name="hop",
        relay_port=7000,
        udp_port_min=40000,
        udp_port_max=40299,
    )
    made = [worker_settings(settings, i, 8443) for i in range(3)]
    assert [s.node_name for s in made] == ["hop-1", "hop-2", "hop-3"]
    assert [s.relay_port for s in made] == [7000, 7001, 7002]
    assert [(s.udp_port_min, s.udp_port_max) for s in made] == [
        (40000, 40099),
        (40100, 40199),
        (40200, 40299),
    ]
    assert {s.port for s in made} == {8443} and {s.workers for s in made} == {1}
    # without a relay port or a UDP range, each takes free ports; the name from the host
    plain = worker_settings(dataclasses.replace(settings, relay_port=0, node_name=None,
                                                udp_port_min=None, udp_port_max=None), 1, 9000)  # fmt: skip
    assert plain.relay_port == 0 and plain.udp_port_min is None
    assert plain.node_name is not None and plain.node_name.endswith("-9000-2")


def test_workers_need_redis_and_a_big_enough_port_range() -> None:
    with pytest.raises(SettingsError, match="workers = 2 needs redis_url"):
        load_settings(env={}, overrides={"workers": 2})
    with pytest.raises(SettingsError, match="too small for 4 workers"):
        load_settings(
            env={"CONFERENCE_UDP_PORTS": "50000-50006"},
            overrides={"workers": 4, "redis_url": REDIS},
        )
    with pytest.raises(SettingsError, match="number of workers"):
        load_settings(env={"CONFERENCE_WORKERS": "many"})
    auto = load_settings(env={"CONFERENCE_WORKERS": "auto", "CONFERENCE_REDIS_URL": REDIS})
    assert auto.workers == max(1, os.cpu_count() or 1)
    assert load_settings(env={}).workers == 1


def test_serve_with_workers_and_no_redis_says_so(tmp_path: Path) -> None:
    result = run("serve", "--workers", "2", "--tls", "off", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "needs redis_url")


# -- a real supervisor ---------------------------------------------------------------------


def workers_of(server: ServerProcess) -> list[int]:
    """The worker processes of the supervisor (its children)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()]


def node_of_fresh_connection(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
        return str(json.loads(response.read())["node"])


def nodes_answering(server: ServerProcess, want: int, tries: int = 60) -> set[str]:
    seen: set[str] = set()
    for _ in range(tries):
        seen.add(node_of_fresh_connection(server))
        if len(seen) >= want:
            break
    return seen


def start_workers(tmp: Path, environ: dict[str, str] | None = None) -> ServerProcess:
    unreachable = redis_reachable()
    if unreachable:
        pytest.skip(f"no Redis on 127.0.0.1:6379: {unreachable}")
    name = f"w{uuid.uuid4().hex[:6]}"
    return start_server(
        tmp,
        "--workers",
        "2",
        "--redis-url",
        REDIS,
        "--node-name",
        name,
        "--cluster-name",
        name,
        env=environ,
    )


def remote_identities(client: Client) -> set[str]:
    """Who ``client``'s node shows as being on another node."""
    return {p["identity"] for p in client.room.get("participants", []) if p.get("remote")}


@pytest.mark.media
async def test_two_workers_share_the_port_and_serve_one_meeting(tmp_path: Path) -> None:
    server = start_workers(tmp_path)
    try:
        base = json.loads(next(line for line in server.log().splitlines() if '"listening"' in line))
        assert base["workers"] == 2
        nodes = nodes_answering(server, 2)
        assert len(nodes) == 2, nodes  # both answer on the one port
        meeting = f"workers-{uuid.uuid4().hex[:8]}"
        chair = Client(server.url, meeting, server.token(meeting, "huyen", "chair"))
        await chair.connect()
        clients = [chair]
        try:
            # points join until one sits on the other worker than the chair
            far: Client | None = None
            for n in range(12):
                point = Client(server.url, meeting, server.token(meeting, f"xa-{n}"))
                clients.append(point)
                await point.connect()
                await point.wait_for(lambda p=point: "u:huyen" in {  # type: ignore[misc]
                    q["identity"] for q in p.room.get("participants", [])}, 10)  # fmt: skip
                if "u:huyen" in remote_identities(point):
                    far = point
                    break
            assert far is not None, "12 points all landed on the chair's worker"
            video = BarcodeVideoTrack(320, 240, fps=15)
            await chair.publish({"camera": video, "microphone": ToneAudioTrack(660.0)})
            await far.wait_for(lambda: len(far.tracks) >= 2, 20)
            (camera,) = [t for t in far.tracks.values() if t.kind == "video"]
            (microphone,) = [t for t in far.tracks.values() if t.kind == "audio"]
            numbers = await video_numbers(camera, 3.0)
            decoded = [n for n in numbers if n is not None]
            assert len(decoded) >= 20 and increasing(numbers), numbers
            assert abs(await audio_frequency(microphone, 1.0) - 660.0) < 15
        finally:
            for client in clients:
                await client.leave()

        # a worker killed is started again; the port keeps answering meanwhile
        before = workers_of(server)
        assert len(before) == 2
        os.kill(before[1], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = workers_of(server)
            if len(now) == 2 and before[1] not in now:
                break
            await asyncio.sleep(0.2)
        assert len(workers_of(server)) == 2 and before[1] not in workers_of(server)
        assert "died (signal 9)" in server.log() and "starting it again" in server.log()
        deadline = time.monotonic() + 20
        while len(nodes_answering(server, 2, tries=10)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert len(nodes_answering(server, 2)) == 2
    finally:
        check_clean_exit(server)  # SIGTERM: both workers close their rooms, exit 0
    log = server.log()
    assert log.count("shutting down: closing rooms") == 2, log[-3000:]


def schedule_with_guests(database: db.Database) -> tuple[str, list[str]]:
    """A meeting starting in 10 minutes with four invited points: (id, points)."""
    from datetime import datetime, timedelta

    start = (datetime.now(ZONE) + timedelta(minutes=10)).replace(second=0, microsecond=0)
    with database.session() as session:
        org = make_org(session, n_points=4, email=False)
        meeting = create_meeting(
            session,
            title="Giao ban tỉnh",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=org.points,
        ).meeting
        return str(meeting.id), list(org.points)


@pytest.mark.media
async def test_the_lobby_works_across_workers(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> None:
    Path(env["CONFERENCE_DATA_DIR"]).mkdir(parents=True)
    url = url_of(env)
    db.upgrade(url)
    database = db.Database(url)
    meeting, points = schedule_with_guests(database)
    database.close()
    server = start_workers(tmp_path, environ=env)
    clients: list[Client] = []
    joining: dict[str, asyncio.Future[Any]] = {}

    def client(identity: str, role: str = "point") -> Client:
        made = Client(server.url, meeting, server.token(meeting, identity, role))
        clients.append(made)
        return made

    try:
        # an invited point waits before the chair arrives (on either worker)
        first = client(points[0])
        joining[f"pt:{points[0]}"] = asyncio.ensure_future(first.connect())
        await first.wait_for(lambda: first.lobby is not None, 10)
        chair = client("chu-tich", "chair")
        await chair.connect(start=False)
        by_identity: dict[str, Client] = {f"pt:{points[0]}": first}  # by identity key

        def waiting() -> list[dict[str, Any]]:
            states = [m for m in chair.messages if m.get("type") == "lobby-state"]
            return states[-1]["waiting"] if states else []

        async def arrive(identity: str) -> None:
            key = f"pt:{identity}"  # a point's token: a point's identity, invited or not
            by_identity[key] = waiter = client(identity)
            joining[key] = asyncio.ensure_future(waiter.connect())
            await chair.wait_for(lambda: key in {w["identity"] for w in waiting()}, 10)

        # the chair's first list has it, wherever it waits; then guests arrive until
        # some wait on the chair's worker and some on the other: the list has them all
        await chair.wait_for(lambda: f"pt:{points[0]}" in {w["identity"] for w in waiting()}, 10)
        for n in range(16):
            await arrive(f"khach-{n}")
            guests = [w for w in waiting() if w["guest"]]
            remote = [w for w in guests if w.get("remote")]
            if len(remote) >= 2 and len(guests) > len(remote):
                break
        guests = [w for w in waiting() if w["guest"]]
        far = [w["identity"] for w in guests if w.get("remote")]
        near = [w["identity"] for w in guests if not w.get("remote")]
        assert len(far) >= 2 and near, waiting()
        assert len(waiting()) == len(joining)
        assert not any(future.done() for future in joining.values())

        # the chair refuses a guest on the other worker: it is told at once
        await chair.send({"type": "refuse", "identity": far[0]})
        with pytest.raises(ClientError) as refused:
            await asyncio.wait_for(joining[far[0]], 10)
        assert refused.value.code == "refused"
        # admits one there and one here, then starts: they and the invited point enter
        admitted = [far[1], near[0]]
        for identity in admitted:
            await chair.send({"type": "admit", "identity": identity})
        await chair.send({"type": "meeting-start"})
        for identity in [f"pt:{points[0]}", *admitted]:
            joined = await asyncio.wait_for(joining[identity], 15)
            assert joined["type"] == "joined"
            entered = by_identity[identity]
            await entered.wait_for(
                lambda e=entered: "u:chu-tich" in {  # type: ignore[misc]
                    p["identity"] for p in e.room.get("participants", [])}, 10)  # fmt: skip
        still = {w["identity"] for w in waiting()}
        others = set(joining) - {far[0], f"pt:{points[0]}", *admitted}
        await chair.wait_for(lambda: {w["identity"] for w in waiting()} == others, 10)
        assert still >= others
        # the chair ends the meeting: the guests still waiting, on both workers, are told
        await chair.send({"type": "end-meeting"})
        for identity in others:
            with pytest.raises(ClientError) as ended:
                await asyncio.wait_for(joining[identity], 10)
            assert ended.value.code == "meeting-ended", identity
    finally:
        for future in joining.values():
            future.cancel()
        for made in clients:
            await made.leave()
        check_clean_exit(server)


async def test_a_signed_out_session_is_refused_by_every_worker(tmp_path: Path) -> None:
    """Sign-out, sign-in lockouts and "sign out everywhere" hold on every worker."""
    from .test_webauth import SESSION_COOKIE, Browser, Site

    server = start_workers(tmp_path)
    database = db.Database(url_of({"CONFERENCE_DATA_DIR": str(server.data_dir)}))
    site = Site(server, database, admin_password="")
    browsers: list[Browser] = []
    try:
        site.add_user("thuky-a", "secretary", display_name="Lò Thị Mai")
        first = site.browser()
        browsers.append(first)
        await first.signed_in("thuky-a")
        cookie = first.session_cookie()
        token = await first.csrf("/home")
        status, _, _ = await first.post("/logout", {"csrf_token": token})
        assert status == 303
        # the revocation reaches the other workers through Redis: milliseconds, less than
        # a second on a loaded machine
        await asyncio.sleep(1.0)
        # the cookie replayed on fresh connections: whichever worker takes each, refused
        for _ in range(8):
            replay = site.browser()
            browsers.append(replay)
            status, _, response = await replay.get(
                "/home", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
            )
            assert status == 303 and response.headers["Location"].startswith("/login")
            await replay.close()

        # failed sign-ins are counted in the shared database: a username locked through one
        # worker is locked on every worker
        site.add_user("chu-tri", "chair", display_name="Chủ trì")
        for attempt in range(5):
            status, _, _ = await first.login("chu-tri", f"doan-sai-{attempt}")
        assert status == 429
        for _ in range(8):  # fresh connections: whichever worker takes each, still locked
            other = site.browser()
            browsers.append(other)
            status, _, _ = await other.login("chu-tri", "mat-khau-1")
            assert status == 429
            await other.close()

        # signing out everywhere on one worker ends the sessions every worker checks
        await first.signed_in("thuky-a")
        cookie = first.session_cookie()
        status, _, _ = await first.post(
            "/account/signout", {"csrf_token": await first.csrf("/home")}
        )
        assert status == 303
        for _ in range(8):
            replay = site.browser()
            browsers.append(replay)
            status, _, _ = await replay.get(
                "/home", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
            )
            assert status == 303
            await replay.close()
    finally:
        for browser in browsers:
            await browser.close()
        database.close()
        check_clean_exit(server)


def test_a_port_another_server_listens_on_is_refused() -> None:
    from conference.workers import reserve_port

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a worker binds
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port)
    finally:
        listener.close()
    held = reserve_port("127.0.0.1", port)  # free again
    held.close()


def test_serve_with_workers_and_an_unreachable_redis_says_so(tmp_path: Path) -> None:
    result = run(
        "serve",
        "--workers",
        "2",
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "--tls",
        "off",
        "--port",
        "0",
        cwd=tmp_path,
    )
    # (stdout holds the first run's admin account, made before the check)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("conference: error: redis_url: cannot reach")
