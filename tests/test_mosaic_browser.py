"""A large meeting in headless Chromium: the chair's mosaic of many points, the point's
speaker layout, and link profiles (the point's configured bandwidth, the chair's select).

Thirty Chromium pages are too heavy for a small test machine: the chair (and one point)
are Chromium pages (tests/test_browser.py's set-up), the other points are light Python
clients (conference/tools/client.py) that publish a small barcode camera (160x120, 5 fps) from
an event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import URL

from conference.domain import db
from conference.domain.meetings import ZONE, create_meeting
from conference.domain.models import Point
from conference.tools.client import Client
from conference.tools.testmedia import BarcodeVideoTrack

from .conftest import ServerProcess, check_clean_exit, start_server
from .domain.meeting_setup import make_org
from .test_browser import browser, join, save_screenshot, sync_api, wait_js, wait_until

__all__ = ["browser"]  # the fixture, shared with tests/test_browser.py

pytestmark = pytest.mark.slow

T = TypeVar("T")

MEETING = "giao-ban"
POINTS = 28  # and one Chromium point: a page of 25 thumbnails, 4 on the second page

# the chair's page: what it shows and what it receives
SHOWN_JS = """() => {
  const c = window.conference;
  const cameras = {};
  for (const p of c.room.participants) {
    const cam = p.publications.find((x) => x.source === "camera");
    if (cam) cameras[cam.id] = p.id;
  }
  const view = JSON.parse(c.viewKey || "[]");
  return {
    mode: c.mode, page: c.page, pages: c.pages,
    strip: [...document.querySelectorAll("#strip .tile")].map((n) => n.dataset.participant),
    stage: [...document.querySelectorAll("#stage .tile")].map((n) => n.dataset.participant),
    shown: c.plan.filter((t) => t.video).map((t) => t.participant).sort(),
    off: c.plan.filter((t) => t.place === "off").map((t) => t.participant).sort(),
    subscribed: [...c.subscribed].filter((id) => id in cameras).map((id) => cameras[id]).sort(),
    view: Object.fromEntries(view.map(([id, size]) => [cameras[id], size])),
  };
}"""


class Points:
    """Light points: Python clients on an event loop of their own (a background thread)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.clients: list[Client] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _join(self, index: int) -> Client:
        identity = f"xa-{index:03d}"
        token = self.server.token(
            meeting=MEETING, identity=identity, name=f"UBND xã số {index}", role="point"
        )
        client = Client(self.server.url, MEETING, token)
        self.clients.append(client)
        await client.connect(auto_subscribe=False)  # receives nothing: a camera only
        await client.publish({"camera": BarcodeVideoTrack(160, 120, fps=5, start=index * 1000)})
        return client

    def join(self, count: int) -> None:
        async def all_of_them() -> None:
            for first in range(0, count, 7):  # a few at a time: ICE and DTLS in Python
                last = min(first + 7, count)
                await asyncio.gather(*(self._join(i + 1) for i in range(first, last)))

        self.run(all_of_them(), timeout=120)

    def close(self) -> None:
        async def leave() -> None:
            await asyncio.gather(*(c.leave() for c in self.clients), return_exceptions=True)

        try:
            self.run(leave(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture
def points(server: ServerProcess) -> Iterator[Points]:
    crowd = Points(server)
    try:
        yield crowd
    finally:
        crowd.close()


def room_profile(client: Client) -> str | None:
    """A client's own profile in the room state it received."""
    me = [p for p in client.room.get("participants", []) if p["id"] == client.id]
    return str(me[0]["profile"]) if me else None


def shown(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(SHOWN_JS)
    return result


def shown_when(page: Any, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """What `page` shows once `check` holds (the last state in the failure message)."""
    last: list[dict[str, Any]] = []

    def ready() -> dict[str, Any] | None:
        last[:] = [shown(page)]
        return last[0] if check(last[0]) else None

    try:
        result: dict[str, Any] = wait_until(ready, 20, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last}") from None
    return result


def test_chair_mosaic_pages_rotation_and_profiles(
    server: ServerProcess, browser: Any, points: Points, tmp_path: Path
) -> None:
    points.join(POINTS)
    ids = sorted(c.id for c in points.clients)
    chair = join(browser, server, "tinh", "UBND tỉnh Lào Cai", role="chair")
    web_point = join(browser, server, "xa-web", "UBND xã Bản Lầu")
    web_id = web_point.evaluate("window.conference.me.id")
    everyone = sorted([*ids, web_id])  # the chair's others: 29 tiles, 25 + 4

    # page 1: 25 thumbnails, "Trang 1/2"; only their cameras are received, as small videos
    sync_api.expect(chair.locator("#pager")).to_be_visible()
    sync_api.expect(chair.locator("#page-label")).to_have_text("Trang 1/2")
    sync_api.expect(chair.locator("#strip .tile")).to_have_count(25)
    first = shown_when(
        chair,
        lambda s: len(s["subscribed"]) == 25 and len(s["view"]) == 25 and len(s["off"]) == 4,
        "page 1 subscribed and reported",
    )
    assert first["mode"] == "mosaic" and first["pages"] == 2 and first["stage"] == []
    assert first["shown"] == sorted(first["strip"]) == first["subscribed"]
    assert len(first["off"]) == 4 and set(first["off"]) | set(first["shown"]) == set(everyone)
    assert set(first["view"].values()) == {"small"}, first["view"]
    widths = chair.eval_on_selector_all("#strip .tile", "(ns) => ns.map((n) => n.clientWidth)")
    assert max(widths) < 400, widths  # a 5 x 5 grid of thumbnails on a 1280 px page
    # the thumbnails play: the small videos decode on the chair's page (most of them: a
    # loaded test machine may be slow to start a few)
    playing = """() => [...document.querySelectorAll('#strip .tile video')]
        .filter((v) => v.videoWidth > 0 && v.currentTime > 0).length"""
    wait_until(lambda: chair.evaluate(playing) >= 15, 45, "thumbnails playing")
    save_screenshot(chair, tmp_path, "screenshot-mosaic.png", docs=False)

    # "Trang sau": the remaining 4, and only they are received now
    chair.click("#page-next")
    sync_api.expect(chair.locator("#page-label")).to_have_text("Trang 2/2")
    sync_api.expect(chair.locator("#strip .tile")).to_have_count(4)
    second = shown_when(chair, lambda s: s["subscribed"] == first["off"], "page 2 subscribed")
    assert second["shown"] == first["off"] and set(second["view"]) == set(first["off"])
    # "Trang trước" goes back
    chair.click("#page-prev")
    sync_api.expect(chair.locator("#page-label")).to_have_text("Trang 1/2")

    # the rotation turns the pages by itself (every 10 s; 1.5 s in this test)
    chair.evaluate("window.conference.rotationMs = 1500")
    chair.check("#rotate")
    sync_api.expect(chair.locator("#page-label")).to_have_text("Trang 2/2", timeout=5000)
    sync_api.expect(chair.locator("#page-label")).to_have_text("Trang 1/2", timeout=5000)
    chair.uncheck("#rotate")
    assert chair.evaluate("window.conference.rotate") is False
    label = chair.inner_text("#page-label")  # a slow machine may have turned once more
    time.sleep(2.0)
    assert chair.inner_text("#page-label") == label  # stopped
    if label != "Trang 1/2":
        chair.click("#page-prev")
        sync_api.expect(chair.locator("#page-label")).to_have_text("Trang 1/2")

    # a point of a large meeting: the chair large, a short strip of names, one video
    point_view = shown_when(
        web_point, lambda s: s["stage"] and s["subscribed"], "the point's speaker layout"
    )
    chair_id = chair.evaluate("window.conference.me.id")
    assert point_view["mode"] == "speaker", point_view
    assert point_view["stage"] == [chair_id] and point_view["subscribed"] == [chair_id]
    assert len(point_view["strip"]) <= 8 and point_view["shown"] == [chair_id]

    # the floor: its holder large on the chair's mosaic beside the thumbnails, and on the point
    # (a meeting-room PC's full-HD screen)
    chair.set_viewport_size({"width": 1920, "height": 1080})
    floor = ids[3]
    chair.click(f'#participants li[data-participant="{floor}"] button.give-floor')
    chair.wait_for_selector(f'#stage .tile.large[data-participant="{floor}"]')
    web_point.wait_for_selector(f'#stage .tile.large[data-participant="{floor}"]')
    with_floor = shown_when(
        chair,
        lambda s: floor in s["subscribed"] and len(s["view"]) == 26,
        "the floor holder received",
    )
    assert floor not in with_floor["strip"] and len(with_floor["strip"]) == 25
    assert with_floor["view"][floor] == "medium", with_floor["view"]  # ~790 px wide
    assert {with_floor["view"][p] for p in with_floor["strip"]} == {"small"}
    save_screenshot(chair, tmp_path, "screenshot-mosaic-floor.png", docs=False)
    chair.click("#take-floor-btn")
    chair.wait_for_selector("#stage .tile", state="detached")

    # the chair sets a point's link profile from its row: the room state and the point have it
    target = points.clients[5]
    row = f'#participants li[data-participant="{target.id}"]'
    assert chair.input_value(f"{row} select.profile-one") == "high"
    chair.select_option(f"{row} select.profile-one", "low")
    points.run(target.wait_for(lambda: any(m.get("type") == "profile" for m in target.messages)))
    assert [m["profile"] for m in target.messages if m.get("type") == "profile"] == ["low"]
    profile = "(id) => window.conference.room.participants.find((p) => p.id === id).profile"
    wait_until(lambda: chair.evaluate(profile, target.id) == "low", 5, "the room state's profile")
    sync_api.expect(chair.locator(f"{row} select.profile-one")).to_have_value("low")
    points.run(target.wait_for(lambda: room_profile(target) == "low"))
    # and a Chromium point's page applies it (audio only: no video sent or received)
    chair.select_option(
        f'#participants li[data-participant="{web_id}"] select.profile-one', "audio"
    )
    wait_js(web_point, "window.conference.profile === 'audio'")
    assert web_point.input_value("#profile-select") == "audio"
    sync_api.expect(web_point.locator("#notice")).to_contain_text("Chỉ âm thanh")
    wait_until(lambda: not shown(web_point)["subscribed"], 10, "no video on the point")
    sync_api.expect(
        chair.locator(f'#participants li[data-participant="{web_id}"] .cam-muted')
    ).to_be_visible()

    # a phone-sized chair page: 3 x 3 pages
    chair.set_viewport_size({"width": 390, "height": 800})
    sync_api.expect(chair.locator("#page-label")).to_have_text("Trang 1/4")
    sync_api.expect(chair.locator("#strip .tile")).to_have_count(9)
    save_screenshot(chair, tmp_path, "screenshot-mosaic-phone.png", docs=False)
    assert chair.errors == [] and web_point.errors == [], (chair.errors, web_point.errors)


# -- the point's configured bandwidth is its page's default profile ---------------------


@pytest.fixture
def scheduled(tmp_path: Path) -> Iterator[tuple[ServerProcess, str, list[str]]]:
    """A server on a database with a meeting in 10 minutes and three invited points:
    bandwidth low, standard and high."""
    data = tmp_path / "data"  # the server's --data-dir (tests/conftest.py)
    data.mkdir()
    url = URL.create("sqlite", database=str(data / "conference.db"))
    db.upgrade(url)
    database = db.Database(url)
    start = (datetime.now(ZONE) + timedelta(minutes=10)).replace(second=0, microsecond=0)
    with database.session() as session:
        org = make_org(session, n_points=3, email=False)
        for code, bandwidth in zip(org.points, ("low", "standard", "high"), strict=True):
            session.query(Point).filter(Point.code == code).update({"bandwidth_profile": bandwidth})
        meeting = create_meeting(
            session,
            title="Giao ban tuần",
            unit="huyen-a",
            chair="chu-tich",
            start=start,
            end=start + timedelta(hours=1),
            points=org.points,
        ).meeting
        meeting_id = str(meeting.id)
    database.close()
    server = start_server(tmp_path)
    try:
        yield server, meeting_id, org.points
    finally:
        check_clean_exit(server)


def session_profile(page: Any, server: ServerProcess, meeting: str, token: str) -> str:
    """Open the invitation link; the page's session JSON says the profile."""
    response = page.goto(f"{server.url}/m/{meeting}?token={token}")
    assert response is not None and response.ok
    wait_js(page, "document.getElementById('name').value.length > 0")
    body = page.evaluate(
        "(m) => fetch(`/m/${m}/session`, {cache: 'no-store'}).then((r) => r.text())", meeting
    )
    return str(json.loads(body)["profile"])


def test_point_bandwidth_is_the_default_profile(
    scheduled: tuple[ServerProcess, str, list[str]], browser: Any
) -> None:
    server, meeting, codes = scheduled
    context = browser.new_context(locale="vi-VN", viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        expected = {codes[0]: "low", codes[1]: "high", codes[2]: "high"}
        for code, profile in expected.items():
            token = server.token(meeting=meeting, identity=code, name=f"UBND {code}")
            assert session_profile(page, server, meeting, token) == profile, code
            sync_api.expect(page.locator("#prejoin-profile")).to_have_value(profile)
        # the chair side, and a point in an ad-hoc room, start at "high"
        token = server.token(meeting=meeting, identity="chu-tich", role="chair", name="Ông A")
        assert session_profile(page, server, meeting, token) == "high"
        token = server.token(meeting="giao-ban", identity=codes[0], name="UBND xã số 1")
        assert session_profile(page, server, "giao-ban", token) == "high"
        sync_api.expect(page.locator("#prejoin-profile")).to_have_value("high")
    finally:
        context.close()
