"""The meeting lifecycle on the media plane: lobby, start, guests, end, attendance.

A real server process on a database prepared through the scheduling services (SQLite and
PostgreSQL), participants over real WebSockets (conference.tools.client).  Ad-hoc rooms (meeting
ids that are not meetings of the database) keep working with a signed token alone.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from conference.domain import db
from conference.domain.accounts import set_password
from conference.domain.attendance import list_events, presence
from conference.domain.meetings import ZONE, cancel_meeting, create_meeting, get_meeting
from conference.tools.client import Client, ClientError
from conference.tools.testmedia import ToneAudioTrack

from .conftest import ServerProcess, check_clean_exit, migrated_sqlite, start_server
from .domain.meeting_setup import make_org
from .domain.test_cli import env  # noqa: F401 - fixture
from .domain.test_meetings_e2e import url_of
from .test_browser import browser, wait_js  # noqa: F401 - fixture

T = TypeVar("T")


async def eventually(check: Callable[[], T], timeout: float = 10.0) -> T:
    """Poll `check()` until it returns something true (database writes in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, "condition not met in time"
            return value
        await asyncio.sleep(0.1)


def schedule(database: db.Database, minutes: int, n_points: int = 3) -> tuple[int, int, list[str]]:
    """An organisation and two meetings starting in `minutes`: (meeting, other, points)."""
    start = (datetime.now(ZONE) + timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    with database.session() as session:
        org = make_org(session, n_points=n_points, email=False)
        invited = org.points[:2]  # the last point is not invited: a guest
        meeting = create_meeting(
            session,
            title="Giao ban tuần",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=invited,
        ).meeting
        other = create_meeting(
            session,
            title="Họp bị hủy",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=invited,
        ).meeting
        cancel_meeting(session, other.id, version=None)
        return meeting.id, other.id, org.points


@pytest.fixture
def prepared(
    tmp_path: Path,
    env: dict[str, str],  # noqa: F811
) -> Any:
    Path(env["CONFERENCE_DATA_DIR"]).mkdir(parents=True)
    url = url_of(env)
    db.upgrade(url)
    database = db.Database(url)
    meeting, cancelled, points = schedule(database, minutes=10)
    server = start_server(tmp_path, env=env)
    try:
        yield server, database, str(meeting), str(cancelled), points
    finally:
        database.close()
        check_clean_exit(server)


def sqlite_database(tmp_path: Path) -> db.Database:
    """A fresh SQLite database in ``tmp_path/data``, where `start_server` looks."""
    data = tmp_path / "data"
    data.mkdir()
    url = url_of({"CONFERENCE_DATA_DIR": str(data)})
    migrated_sqlite(data / "conference.db")
    return db.Database(url)


async def refused(client: Client, code: str) -> None:
    with pytest.raises(ClientError) as info:
        await client.connect()
    assert info.value.code == code, info.value


async def test_lobby_start_guest_attendance_end(prepared: Any) -> None:
    server: ServerProcess
    server, database, meeting, cancelled, points = prepared
    point_a, point_b, outsider = points

    def client(identity: str, role: str = "point", meeting_id: str = meeting) -> Client:
        return Client(server.url, meeting_id, server.token(meeting_id, identity, role))

    clients: list[Client] = []
    try:
        # An invited point arrives early: the lobby, not the room.
        a = client(point_a)
        clients.append(a)
        a_joining = asyncio.ensure_future(a.connect())
        await eventually(lambda: a.lobby is not None)
        assert a.lobby is not None
        assert a.lobby["guest"] is False and a.lobby["title"] == "Giao ban tuần"
        assert datetime.fromisoformat(a.lobby["starts"]) > datetime.now(ZONE)
        assert not a_joining.done()
        # The room page of a waiting point loads (it shows the lobby).
        async with aiohttp.ClientSession() as http:
            page = f"{server.url}/m/{meeting}?token={server.token(meeting, point_a, 'point')}"
            async with http.get(page) as response:
                assert response.status == 200

        # An identity that is not invited waits as a guest.
        guest = client(outsider)
        clients.append(guest)
        guest_joining = asyncio.ensure_future(guest.connect())
        await eventually(lambda: guest.lobby is not None)
        assert guest.lobby is not None and guest.lobby["guest"] is True

        # A chair of another district is refused; a cancelled meeting refuses.
        await refused(client("chu-tich-b", "chair"), "not-invited")
        await refused(client(point_b, meeting_id=cancelled), "meeting-cancelled")
        with database.session() as session:
            assert get_meeting(session, meeting).status == "scheduled"

        # The chair joins: the meeting starts and the waiting point enters.
        chair = client("chu-tich", "chair")
        clients.append(chair)
        await chair.connect()
        await asyncio.wait_for(a_joining, 10)
        assert a.id and a.participant["identity"] == f"pt:{point_a}"  # a point's identity
        with database.session() as session:
            assert get_meeting(session, meeting).status == "live"
        # The guest still waits; the chair sees it in lobby-state and admits it.
        state = await chair.wait_message("lobby-state", since=0)
        await chair.wait_for(
            lambda: any(
                m.get("type") == "lobby-state"
                and [w["identity"] for w in m["waiting"]] == [f"pt:{outsider}"]
                and m["started"]
                for m in chair.messages
            )
        )
        assert not guest_joining.done()
        assert state["type"] == "lobby-state"
        # only the chair may admit
        await a.send({"type": "admit", "identity": outsider})
        error = await a.wait_message("error")
        assert error["code"] == "forbidden"
        await chair.send({"type": "admit", "identity": "nobody-waits"})
        assert (await chair.wait_message("error"))["code"] == "not-waiting"
        await chair.send({"type": "admit", "identity": outsider})  # bare: the one waiting
        await asyncio.wait_for(guest_joining, 10)
        assert guest.participant["identity"] == f"pt:{outsider}"

        # A point arriving now that the meeting is live enters at once, and publishes.
        b = client(point_b)
        clients.append(b)
        await b.connect()
        assert b.lobby is None
        await b.publish({"microphone": ToneAudioTrack(440.0)})
        await chair.wait_for(lambda: len(chair.publications("microphone")) == 1, 15)

        # The guest leaves: joins and leaves are attendance events.
        await guest.leave()
        await a.leave()

        def stored() -> list[Any]:
            with database.session() as session:
                events = list_events(session, meeting)
                return [(e.identity, e.kind, e.point.code if e.point else None) for e in events]

        await eventually(lambda: len(stored()) == 6)
        events = stored()
        assert set(events) == {
            (f"pt:{point_a}", "join", point_a),
            (f"pt:{outsider}", "join", outsider),
            ("u:chu-tich", "join", None),
            (f"pt:{point_b}", "join", point_b),
            (f"pt:{outsider}", "leave", outsider),
            (f"pt:{point_a}", "leave", point_a),
        }
        assert events.index((f"pt:{point_a}", "join", point_a)) < events.index(
            (f"pt:{point_a}", "leave", point_a)
        )
        with database.session() as session:
            rows = {p.identity: p for p in presence(session, meeting)}
            assert rows[point_a].invited and rows[point_a].first_join is not None
            assert rows[outsider].invited is False and rows[outsider].last_leave is not None

        # A guest refused by the chair is told so.
        late = client("khach-moi", "viewer")
        clients.append(late)
        late_joining = asyncio.ensure_future(late.connect())
        await eventually(lambda: late.lobby is not None)
        await chair.send({"type": "refuse", "identity": "khach-moi"})
        with pytest.raises(ClientError) as info:
            await asyncio.wait_for(late_joining, 10)
        assert info.value.code == "refused"

        # Someone waiting when the chair ends the meeting is told; the meeting is ended.
        waiting = client("khach-2", "viewer")
        clients.append(waiting)
        waiting_joining = asyncio.ensure_future(waiting.connect())
        await eventually(lambda: waiting.lobby is not None)
        await chair.send({"type": "end-meeting"})
        with pytest.raises(ClientError) as info:
            await asyncio.wait_for(waiting_joining, 10)
        assert info.value.code == "meeting-ended"

        def status() -> str:
            with database.session() as session:
                return get_meeting(session, meeting).status

        await eventually(lambda: status() == "ended")
        await refused(client(point_a), "meeting-ended")
        await refused(client("chu-tich", "chair"), "meeting-ended")
        await eventually(lambda: ("u:chu-tich", "leave", None) in stored())

        # Ad-hoc rooms (not meetings of the database) need no lobby, record nothing.
        adhoc = client("xa-bat-ky", meeting_id="m-adhoc")
        clients.append(adhoc)
        await adhoc.connect()
        assert adhoc.lobby is None and adhoc.id
        # a number is a scheduled meeting or nothing (issue 14 item 8: as an ad-hoc room
        # it recorded into what the library showed as that meeting of another district)
        await refused(client("xa-bat-ky", meeting_id="987654"), "unknown-meeting")
    finally:
        for c in clients:
            await c.close()


async def test_chair_starts_explicitly_and_lobby_messages(tmp_path: Path) -> None:
    """SQLite only: `"start": false`, `meeting-start`, the lobby's ping/leave, and
    `adhoc_meetings = false` refusing unknown meetings."""
    database = sqlite_database(tmp_path)
    meeting_id, _, points = schedule(database, minutes=20)
    meeting = str(meeting_id)
    server = start_server(tmp_path, env={"CONFERENCE_ADHOC_MEETINGS": "false"})
    clients: list[Client] = []

    def client(identity: str, role: str = "point", meeting_id: str = meeting) -> Client:
        c = Client(server.url, meeting_id, server.token(meeting_id, identity, role))
        clients.append(c)
        return c

    try:
        await refused(client("xa", meeting_id="m-adhoc"), "unknown-meeting")
        await refused(client("xa", meeting_id="424242"), "unknown-meeting")

        # The lobby answers ping, refuses other messages, and lets a point leave.
        url = server.url.replace("http", "ws", 1) + f"/ws/meetings/{meeting}"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            token = server.token(meeting, points[1], "point")
            await ws.send_json({"type": "join", "version": 1, "token": token})
            assert (await ws.receive_json(timeout=10))["type"] == "lobby"
            await ws.send_json({"type": "ping", "id": 7})
            assert await ws.receive_json(timeout=10) == {"type": "pong", "id": 7}
            await ws.send_json({"type": "offer", "sdp": "v=0"})
            error = await ws.receive_json(timeout=10)
            assert error["code"] == "in-lobby"
            await ws.send_json({"type": "leave"})
            closing = await ws.receive(timeout=10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

        # WHIP cannot wait in a lobby: refused before the start, and for a guest.
        async def whip(identity: str) -> tuple[int, str]:
            headers = {
                "Authorization": f"Bearer {server.token(meeting, identity, 'point')}",
                "Content-Type": "application/sdp",
            }
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{server.url}/whip/{meeting}", data="v=0\r\n", headers=headers) as r,
            ):
                return r.status, (await r.json())["error"]

        assert await whip(points[0]) == (403, "not-started")

        a = client(points[0])
        a_joining = asyncio.ensure_future(a.connect())
        await eventually(lambda: a.lobby is not None)
        chair = client("chu-tich", "chair")
        await chair.connect(start=False)
        state = await chair.wait_message("lobby-state", since=0)
        assert state["started"] is False
        assert [w["identity"] for w in state["waiting"]] == [f"pt:{points[0]}"]
        with database.session() as session:
            assert get_meeting(session, meeting).status == "scheduled"
        assert not a_joining.done()
        # meeting-start is the chair's; an ad-hoc style message from a point is refused
        await a_joining_is_waiting(a_joining)
        await chair.send({"type": "meeting-start"})
        await asyncio.wait_for(a_joining, 10)
        with database.session() as session:
            assert get_meeting(session, meeting).status == "live"
        await chair.send({"type": "meeting-start"})
        assert (await chair.wait_message("error"))["code"] == "already-started"
        assert await whip(points[2]) == (403, "not-admitted")  # a guest
        assert (await whip(points[0]))[0] == 400  # admitted: on to the (bad) offer

        # Stopping the server stores the leaves of the sessions it closes.
        assert server.stop() == 0
        with database.session() as session:
            kinds = [(e.identity, e.kind) for e in list_events(session, meeting)]
        assert kinds.count(("u:chu-tich", "join")) == 1
        assert ("u:chu-tich", "leave") in kinds and (f"pt:{points[0]}", "leave") in kinds
    finally:
        for c in clients:
            await c.close()
        database.close()
        check_clean_exit(server)


async def a_joining_is_waiting(joining: asyncio.Future[Any]) -> None:
    await asyncio.sleep(0.3)
    assert not joining.done()


@pytest.mark.slow
def test_lobby_in_the_browser(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    """A point's page waits in the lobby until the chair's page starts the meeting; the
    chair's page lists a waiting guest and admits it (Chromium, SQLite)."""
    database = sqlite_database(tmp_path)
    meeting_id, _, points = schedule(database, minutes=10)
    meeting = str(meeting_id)
    server = start_server(tmp_path)
    try:

        def open_page(identity: str, name: str, role: str = "point") -> Any:
            context = browser.new_context(locale="vi-VN", viewport={"width": 1280, "height": 720})
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.errors = []
            page.console = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.on("console", lambda message: page.console.append(message.text))
            token = server.token(meeting=meeting, identity=identity, name=name, role=role)
            response = page.goto(f"{server.url}/m/{meeting}?token={token}")
            assert response is not None and response.ok
            wait_js(page, "document.getElementById('name').value.length > 0")
            page.click("#join:not([disabled])")
            return page

        point = open_page(points[0], "UBND xã số 1")
        try:
            point.wait_for_selector("#lobby:not([hidden])")
        except Exception as exc:  # failed once under the full suite's load: say what the page saw
            raise AssertionError(
                f"no lobby: {exc}\npage errors: {point.errors}\nconsole: {point.console[-20:]}"
                f"\nserver log: {server.log()[-3000:]}"
            ) from None
        assert point.inner_text("#lobby-text") == "Đang chờ chủ trì bắt đầu hội nghị…"
        assert "Giờ bắt đầu" in point.inner_text("#lobby-starts")
        assert point.is_hidden("#room") and point.is_hidden("#prejoin")

        chair = open_page("chu-tich", "Chủ tịch UBND huyện", role="chair")
        chair.wait_for_selector("#room:not([hidden])")
        point.wait_for_selector("#room:not([hidden])")
        assert point.is_hidden("#lobby")

        guest = open_page(points[2], "UBND xã số 3")
        guest.wait_for_selector("#lobby:not([hidden])")
        assert guest.inner_text("#lobby-text") == "Đang chờ chủ trì cho phép vào hội nghị…"
        admit = f'#lobby-waiting button[data-action="admit"][data-identity="pt:{points[2]}"]'
        chair.wait_for_selector(admit)
        assert "UBND xã số 3 (khách)" in chair.inner_text("#lobby-waiting")
        assert chair.is_hidden("#lobby-start")  # the meeting has started
        chair.click(admit)
        guest.wait_for_selector("#room:not([hidden])")
        chair.wait_for_selector("#lobby-none:not([hidden])")
        for page in (point, chair, guest):
            assert page.errors == []
        with database.session() as session:
            assert get_meeting(session, meeting).status == "live"
    finally:
        database.close()
        check_clean_exit(server)


async def test_auto_recording_policy_records_from_the_start(tmp_path: Path) -> None:
    """A meeting whose recording policy is ``auto`` is recorded as soon as the chair
    starts it: every page sees ``recording: true`` and a manifest appears on disk."""
    database = sqlite_database(tmp_path)
    start = (datetime.now(ZONE) + timedelta(minutes=10)).replace(second=0, microsecond=0)
    with database.session() as session:
        org = make_org(session, n_points=2, email=False)
        recorded = create_meeting(
            session,
            title="Giao ban có ghi hình",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=org.points[:1],
            recording_policy="auto",
        ).meeting
        plain = create_meeting(
            session,
            title="Giao ban không ghi hình",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=org.points[1:],
        ).meeting
        recorded_id, plain_id = str(recorded.id), str(plain.id)
    database.close()
    server = start_server(tmp_path)
    clients: list[Client] = []
    try:
        for meeting, point_code in ((recorded_id, org.points[0]), (plain_id, org.points[1])):
            chair = Client(server.url, meeting, server.token(meeting, "chu-tich", "chair"))
            clients.append(chair)
            await chair.connect()
            point = Client(server.url, meeting, server.token(meeting, point_code, "point"))
            clients.append(point)
            await point.connect()
        recorded_chair, recorded_point, plain_chair, plain_point = clients

        def recording_on(client: Client) -> bool:
            rooms = [m for m in client.messages if m.get("type") == "room"]
            return bool(rooms) and bool(rooms[-1].get("recording"))

        await eventually(lambda: recording_on(recorded_point) and recording_on(recorded_chair))
        manifests = list((tmp_path / "recordings").rglob("*.manifest.json"))
        assert [m.parent.name for m in manifests] == [recorded_id]
        # the manifest says the room was a scheduled meeting (issue 14 item 8)
        assert json.loads(manifests[0].read_text())["scheduled"] is True
        await asyncio.sleep(0.5)
        assert not recording_on(plain_chair) and not recording_on(plain_point)
    finally:
        for client in clients:
            await client.close()
        check_clean_exit(server)


async def test_waiting_points_hear_at_once_that_the_meeting_was_cancelled_or_moved(
    tmp_path: Path,
) -> None:
    """Issue 14 item 15: a point waiting in the lobby is told when its meeting is moved out
    of the join window or cancelled (`meeting-moved` / `meeting-cancelled`, close 4403):
    at once when the server itself changed the meeting (the API here), within a few
    seconds when another process did (`conference meeting cancel`); and a join right
    after a cancellation is refused, not let into the lobby by a remembered verdict."""
    database = sqlite_database(tmp_path)
    meeting_id, _, points = schedule(database, minutes=20)
    second_id, _, _ = schedule_more(database, minutes=20)
    with database.session() as session:
        set_password(session, "chu-tich", "mat-khau-1")
    meeting, second = str(meeting_id), str(second_id)
    server = start_server(tmp_path)
    clients: list[Client] = []

    def client(identity: str, meeting_id: str) -> Client:
        c = Client(server.url, meeting_id, server.token(meeting_id, identity, "point"))
        clients.append(c)
        return c

    async def api(http: aiohttp.ClientSession, method: str, path: str, body: Any) -> Any:
        async with http.request(method, f"{server.url}/api/v1{path}", json=body) as response:
            data = await response.json()
            assert response.status in (200, 201), data
            return data

    try:
        async with aiohttp.ClientSession() as http:
            token = (
                await api(
                    http, "POST", "/tokens", {"username": "chu-tich", "password": "mat-khau-1"}
                )
            )["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            # moved two days later through the API: told at once
            a, b = client(points[0], meeting), client(points[1], meeting)
            joining = [asyncio.ensure_future(c.connect()) for c in (a, b)]
            await eventually(lambda: a.lobby is not None and b.lobby is not None)
            current = await api(http, "GET", f"/meetings/{meeting}", None)
            start = datetime.fromisoformat(current["start"]) + timedelta(days=2)
            end = datetime.fromisoformat(current["end"]) + timedelta(days=2)
            moved_at = time.monotonic()
            await api(
                http,
                "PATCH",
                f"/meetings/{meeting}",
                {"version": current["version"], "start": start.isoformat(), "end": end.isoformat()},
            )
            for joined in joining:
                with pytest.raises(ClientError) as info:
                    await asyncio.wait_for(joined, 5)
                assert info.value.code == "meeting-moved", info.value
            assert time.monotonic() - moved_at < 2.0  # at once, not at the next check

            # cancelled through the API: told at once, the socket closed with 4403; a
            # join right after is refused
            ws_url = server.url.replace("http", "ws", 1) + f"/ws/meetings/{second}"
            async with aiohttp.ClientSession() as raw, raw.ws_connect(ws_url) as ws:
                join = {"type": "join", "version": 1, "token": server.token(second, points[0])}
                await ws.send_json(join)
                assert (await ws.receive_json(timeout=10))["type"] == "lobby"
                current = await api(http, "GET", f"/meetings/{second}", None)
                cancelled_at = time.monotonic()
                await api(
                    http, "POST", f"/meetings/{second}/cancel", {"version": current["version"]}
                )
                error = await ws.receive_json(timeout=5)
                assert error["type"] == "error" and error["code"] == "meeting-cancelled", error
                closing = await ws.receive(timeout=5)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4403
                assert time.monotonic() - cancelled_at < 2.0
            await refused(client(points[0], second), "meeting-cancelled")
            # issue 14 item 8: a number that is no meeting is not an ad-hoc room either
            await refused(client(points[0], "987654"), "unknown-meeting")

        # cancelled by another process (the CLI does this): at the upkeep's next sweep (5 s)
        third_id, _, _ = schedule_more(database, minutes=20)
        third = str(third_id)
        d = client(points[1], third)
        d_joining = asyncio.ensure_future(d.connect())
        await eventually(lambda: d.lobby is not None)
        with database.session() as session:
            cancel_meeting(session, third_id, version=None)
        with pytest.raises(ClientError) as info:
            await asyncio.wait_for(d_joining, 10)
        assert info.value.code == "meeting-cancelled"
    finally:
        for c in clients:
            await c.close()
        database.close()
        check_clean_exit(server)


def schedule_more(database: db.Database, minutes: int) -> tuple[int, None, None]:
    """Another meeting of the organisation `schedule` made, with its first two points."""
    start = (datetime.now(ZONE) + timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    with database.session() as session:
        meeting = create_meeting(
            session,
            title="Họp thêm",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=["ubnd-xa-01", "ubnd-xa-02"],
        ).meeting
        return meeting.id, None, None


async def test_one_place_in_the_lobby_per_identity(tmp_path: Path) -> None:
    """Issue 14 item 5: 200 sockets of one invitation link filled the lobby.  A newer
    session of a waiting identity replaces the older (`replaced`, 4409): one link
    holds one place, whatever it opens."""
    database = sqlite_database(tmp_path)
    meeting_id, _, points = schedule(database, minutes=20)
    meeting = str(meeting_id)
    server = start_server(tmp_path)
    ws_url = server.url.replace("http", "ws", 1) + f"/ws/meetings/{meeting}"
    join = {"type": "join", "version": 1, "token": server.token(meeting, points[0])}
    try:
        async with aiohttp.ClientSession() as http:
            sockets = []
            for _ in range(5):
                ws = await http.ws_connect(ws_url)
                await ws.send_json(join)
                assert (await ws.receive_json(timeout=10))["type"] == "lobby"
                sockets.append(ws)
            for older in sockets[:-1]:
                error = await older.receive_json(timeout=5)
                assert error["type"] == "error" and error["code"] == "replaced", error
                closing = await older.receive(timeout=5)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4409
            chair = Client(server.url, meeting, server.token(meeting, "chu-tich", "chair"))
            await chair.connect(start=False)
            state = await chair.wait_message("lobby-state", since=0)
            assert [w["identity"] for w in state["waiting"]] == [f"pt:{points[0]}"]
            newest = sockets[-1]
            await newest.send_json({"type": "ping", "id": 1})
            assert await newest.receive_json(timeout=5) == {"type": "pong", "id": 1}
            await chair.close()
            for ws in sockets:
                await ws.close()
    finally:
        database.close()
        check_clean_exit(server)


def test_lobby_places_per_address() -> None:
    from conference.realtime.lobby import MAX_WAITING_PER_ADDRESS, Waiter, address_full

    def waiter(address: str) -> Waiter:
        return Waiter("w", "id", "n", "point", False, 0.0, None, address=address)  # type: ignore[arg-type]

    hall = [waiter("203.0.113.7")] * (MAX_WAITING_PER_ADDRESS - 1)
    assert not address_full(hall, "203.0.113.7")
    assert address_full(hall + [waiter("203.0.113.7")], "203.0.113.7")
    assert not address_full(hall + [waiter("203.0.113.7")], "198.51.100.1")
    proxy = [waiter("127.0.0.1")] * (3 * MAX_WAITING_PER_ADDRESS)  # a local reverse proxy
    assert not address_full(proxy, "127.0.0.1") and not address_full(proxy, None)


async def test_meetings_ended_elsewhere_close_and_meetings_nobody_ended_end(
    tmp_path: Path,
) -> None:
    """Issue 14 item 4: a meeting nobody ends stayed live for ever (its points then
    refused elsewhere, `point-busy-live`).  `POST /api/v1/meetings/{id}/end` (and
    `conference meeting end`, another process) close its room for everyone; a live
    meeting left empty `auto_end_after` minutes past its end ends by itself."""
    from conference.domain.meetings import end_meeting, start_meeting

    database = sqlite_database(tmp_path)
    meeting_id, _, points = schedule(database, minutes=20)
    second_id, _, _ = schedule_more(database, minutes=20)
    overdue_id, _, _ = schedule_more(database, minutes=20)
    with database.session() as session:
        set_password(session, "chu-tich", "mat-khau-1")
        overdue = get_meeting(session, overdue_id)
        start_meeting(session, overdue_id)
        overdue.start_at = datetime.now(ZONE) - timedelta(hours=3)
        overdue.end_at = datetime.now(ZONE) - timedelta(hours=2)
    server = start_server(tmp_path, env={"CONFERENCE_AUTO_END_AFTER": "1"})
    clients: list[Client] = []

    async def in_room(meeting: str) -> Client:
        chair = Client(server.url, meeting, server.token(meeting, "chu-tich", "chair"))
        point = Client(server.url, meeting, server.token(meeting, points[0]))
        clients.extend([chair, point])
        await chair.connect()  # starts the meeting
        await point.connect()
        return point

    def left(client: Client) -> bool:
        return any(
            m.get("type") == "leave" and m.get("reason") == "meeting-ended" for m in client.messages
        )

    try:
        # the overdue live meeting, empty: ended by the server within two sweeps
        def status(meeting_id: int) -> str:
            with database.session() as session:
                return get_meeting(session, meeting_id).status

        await eventually(lambda: status(overdue_id) == "ended", timeout=20)

        # ended through the API: the room closes at once
        point = await in_room(str(meeting_id))
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{server.url}/api/v1/tokens",
                json={"username": "chu-tich", "password": "mat-khau-1"},
            ) as response:
                token = (await response.json())["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(
                f"{server.url}/api/v1/meetings/{meeting_id}", headers=headers
            ) as response:
                version = (await response.json())["version"]
            ended_at = time.monotonic()
            async with http.post(
                f"{server.url}/api/v1/meetings/{meeting_id}/end",
                json={"version": version},
                headers=headers,
            ) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["status"] == "ended"
        await eventually(lambda: left(point), timeout=5)
        assert time.monotonic() - ended_at < 3.0
        await refused(
            Client(server.url, str(meeting_id), server.token(str(meeting_id), points[1])),
            "meeting-ended",
        )

        # ended by another process (`conference meeting end`): at the next sweep
        point = await in_room(str(second_id))
        with database.session() as session:
            end_meeting(session, second_id)
        await eventually(lambda: left(point), timeout=15)
        assert status(meeting_id) == "ended" and status(second_id) == "ended"
    finally:
        for c in clients:
            await c.close()
        database.close()
        check_clean_exit(server)


async def test_sockets_not_joined_hear_the_shutdown(tmp_path: Path) -> None:
    """Issue 14 item 14: at shutdown a socket still in the lobby, and one that has not
    sent its join yet, are closed with 1001 ``server-shutdown`` like joined ones (they
    were dropped: 1006)."""
    database = sqlite_database(tmp_path)
    meeting_id, _, points = schedule(database, minutes=20)
    database.close()
    server = start_server(tmp_path)
    url = server.url.replace("http", "ws", 1) + f"/ws/meetings/{meeting_id}"
    async with aiohttp.ClientSession() as http:
        waiting = await http.ws_connect(url)
        token = server.token(str(meeting_id), points[0], "point")
        await waiting.send_json({"type": "join", "version": 1, "token": token})
        assert (await waiting.receive_json(timeout=10))["type"] == "lobby"
        silent = await http.ws_connect(url)  # opened, no join yet
        await asyncio.sleep(0.2)
        try:
            server.process.send_signal(signal.SIGTERM)
            for ws in (waiting, silent):
                closing = await ws.receive(timeout=15)
                assert closing.type == aiohttp.WSMsgType.CLOSE, closing
                assert (closing.data, closing.extra) == (1001, "server-shutdown")
        finally:
            await waiting.close()
            await silent.close()
    await asyncio.to_thread(server.process.wait, 20)  # stopping by itself: no second signal
    check_clean_exit(server)


async def test_a_resumed_session_with_an_ice_restart_is_one_attendance(prepared: Any) -> None:
    """Issue 15 item 10: a point whose network changed keeps its session: its socket
    comes back (resume) and ICE restarts; the attendance has one join and one leave."""
    server: ServerProcess
    server, database, meeting, _, points = prepared
    point = points[0]
    chair = Client(server.url, meeting, server.token(meeting, "chu-tich", "chair"))
    a = Client(server.url, meeting, server.token(meeting, point, "point"))
    try:
        await chair.connect()
        await a.connect(resume=True)
        await a.publish({"microphone": ToneAudioTrack(440.0)})
        await chair.wait_for(lambda: len(chair.publications("microphone")) == 1, 15)
        await a.wait_for(
            lambda: a.publisher is not None and a.publisher.connectionState == "connected", 15
        )
        first = a.id
        await a.drop_signaling()
        assert (await a.resume())["resumed"] is True and a.id == first
        assert await a.restart_ice()
        await a.leave()

        def stored() -> list[tuple[str, str]]:
            with database.session() as session:
                return [
                    (e.participant_id.rsplit(":", 1)[-1], e.kind)
                    for e in list_events(session, meeting)
                    if e.identity == f"pt:{point}"
                ]

        await eventually(lambda: len(stored()) == 2)
        await asyncio.sleep(0.5)  # (nothing more comes)
        assert stored() == [(first, "join"), (first, "leave")]
    finally:
        await a.close()
        await chair.close()
