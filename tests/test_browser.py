"""End to end in headless Chromium: invitation links, pre-join, the room page.

Debian's ``chromium`` (``/usr/bin/chromium``, installed by .ci/run) is driven by
Playwright's Python package through ``executable_path`` (Playwright's own browser
download is never used).  Fake camera and microphone: the camera is Chromium's
moving test pattern, the microphone a tone from a WAV file this test writes.

Screenshots go to ``test-artifacts/`` (git-ignored) and the test's tmp dir; they
replace the ones in ``docs/`` only when ``UPDATE_SCREENSHOTS=1`` is set.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import struct
import time
import wave
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, ServerProcess

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():  # pragma: no cover - .ci/run installs it
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

# inbound-rtp statistics of the subscriber connection, one entry per stream
#: a JS function (c: the page state, mid) -> the publication a subscriber mid carries: its
#: own, or for an audio slot (room.js joins with audioSlots) the microphone of the
#: participant the slot carries now
PUBLICATION_OF_JS = """(c, mid) => {
  const id = c.midToPublication[mid];
  if (!id || !id.startsWith("audio-slot:")) return id;
  const who = c.audioSlots[id.slice(11)];
  const p = who && c.room.participants.find((x) => x.id === who);
  const mic = p && p.publications.find((x) => x.source === "microphone");
  return mic ? mic.id : id;
}"""

STATS_JS = """async () => {
  const pc = window.conference && window.conference.subscriber;
  if (!pc) return [];
  const out = [];
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") out.push({kind: s.kind, mid: s.mid,
      frames: s.framesDecoded || 0, energy: s.totalAudioEnergy || 0,
      samples: s.totalSamplesReceived || 0});
  });
  return out;
}"""


def write_tone(path: Path, seconds: float = 3.0, rate: int = 48000) -> Path:
    """A loud 440 Hz tone (speech-like level, so it drives the active speaker)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        samples = (
            int(12000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))
        )
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


def save_screenshot(page: Any, tmp_path: Path, name: str, docs: bool = True) -> Path:
    """Screenshot to the tmp dir and test-artifacts/; to docs/ with UPDATE_SCREENSHOTS=1
    (unless ``docs`` is false: an artifact only)."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / name)
    if docs and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / name)
    return path


def wait_js(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Wait until ``expression`` is true in ``page``.  Playwright's ``wait_for_function``
    polls through ``eval`` in the page, which the pages' Content-Security-Policy
    forbids (conference/web/headers.py); ``page.evaluate`` is not subject to it."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true in {timeout} s: {expression}"
        page.wait_for_timeout(50)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path) as browser:
        yield browser


@contextlib.contextmanager
def chromium(tmp_path: Path, extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """Debian's Chromium with a fake camera and a tone as microphone (``extra_args``:
    more command-line switches)."""
    tone = write_tone(tmp_path / "tone.wav")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                *extra_args,
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={tone}",
                "--allow-loopback-in-peer-connection",
                "--autoplay-policy=no-user-gesture-required",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def open_invitation(
    browser: Any,
    server: ServerProcess,
    identity: str,
    name: str,
    role: str = "point",
    init_script: str | None = None,
    lang: str | None = None,
    device: dict[str, Any] | None = None,
) -> Any:
    """Open an invitation link in a fresh context (own cookies): the pre-join screen;
    ``device``: the context's screen (Playwright's viewport, is_mobile, has_touch…), a
    1280x720 PC by default."""
    screen = device or {"viewport": {"width": 1280, "height": 720}}
    context = browser.new_context(locale="vi-VN", **screen)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.errors = []  # uncaught page errors, checked by tests
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    token = server.token(meeting="giao-ban", identity=identity, name=name, role=role)
    query = f"&lang={lang}" if lang else ""
    response = page.goto(f"{server.url}/m/giao-ban?token={token}{query}")
    assert response is not None and response.ok
    assert "token=" not in page.url  # the token left the address bar
    wait_js(page, "document.getElementById('name').value.length > 0")
    assert page.input_value("#name") == name
    return page


def join(browser: Any, server: ServerProcess, identity: str, name: str, role: str = "point") -> Any:
    """Open an invitation link and enter the room."""
    page = open_invitation(browser, server, identity, name, role)
    page.click("#join:not([disabled])")
    page.wait_for_selector("#room:not([hidden])")
    return page


def streams(page: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate(STATS_JS)
    return result


def receiving(page: Any, videos: int, audios: int) -> list[dict[str, Any]] | None:
    """The stats when ``videos`` videos decode frames and ``audios`` audios carry energy."""
    stats = streams(page)
    decoded = [s for s in stats if s["kind"] == "video" and s["frames"] > 0]
    heard = [s for s in stats if s["kind"] == "audio" and s["energy"] > 0]
    return stats if len(decoded) >= videos and len(heard) >= audios else None


# what a page's connections are doing: said when media does not come
CONNECTIONS_JS = """() => {
  const c = window.conference || {};
  const pc = (p) => p ? {connection: p.connectionState, ice: p.iceConnectionState,
    signaling: p.signalingState,
    receivers: p.getTransceivers().filter((t) => t.currentDirection === "recvonly").length} : null;
  return {publisher: pc(c.publisher), subscriber: pc(c.subscriber),
    negotiations: (c.negotiations || []).length, paused: [...(c.pausedVideos || [])],
    reconnects: c.reconnects, left: c.left};
}"""


def wait_for_media(
    page: Any, server: ServerProcess, videos: int, audios: int, what: str, timeout: float = 30
) -> list[dict[str, Any]]:
    """Wait until ``page`` decodes ``videos`` videos and hears ``audios`` audios; on a
    timeout, say what the page's connections and streams were doing, and the server's log."""
    try:
        found: list[dict[str, Any]] = wait_until(
            lambda: receiving(page, videos, audios), timeout, what
        )
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nstreams: {streams(page)}\nconnections: {page.evaluate(CONNECTIONS_JS)}"
            f"\nserver log:\n{server.log()[-6000:]}"
        ) from None
    return found


def rising(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> bool:
    old = {s["mid"]: s for s in before}
    grown = [
        s
        for s in after
        if s["mid"] in old
        and (
            s["frames"] > old[s["mid"]]["frames"]
            if s["kind"] == "video"
            else s["energy"] > old[s["mid"]]["energy"]
        )
    ]
    return len(grown) >= len([s for s in before if s["frames"] or s["energy"]])


def test_three_points_see_and_hear_each_other(
    server: ServerProcess, browser: Any, tmp_path: Path
) -> None:
    names = {
        "huyen": "UBND huyện Đắk Glong",
        "xa-quang-son": "UBND xã Quảng Sơn",
        "xa-dak-ha": "UBND xã Đắk Ha",
    }
    pages = {identity: join(browser, server, identity, name) for identity, name in names.items()}
    ids = {identity: page.evaluate("window.conference.me.id") for identity, page in pages.items()}

    # each page receives the two others' camera and microphone, and they keep flowing
    for identity, page in pages.items():
        first = wait_for_media(page, server, 2, 2, f"media on {identity}")
        wait_until(lambda: rising(first, streams(page)), 10, f"rising on {identity}")  # noqa: B023
        tiles = page.locator(".tile")
        assert tiles.count() == 2
        shown = sorted(tiles.locator(".name").all_inner_texts())
        assert shown == sorted(n for i, n in names.items() if i != identity)
        assert page.locator("#participants li").count() == 3

    # the others mute: the district hall is the only sound, hence the active speaker
    for identity in ("xa-quang-son", "xa-dak-ha"):
        pages[identity].click("#mute-btn")
        assert pages[identity].inner_text("#mute-btn") == "Bật micro"
    speaker = ids["huyen"]
    for identity in ("xa-quang-son", "xa-dak-ha"):
        pages[identity].wait_for_selector(f'.tile.speaking[data-participant="{speaker}"]')
        muted = pages[identity].locator(f'#participants li[data-participant="{ids[identity]}"]')
        sync_api.expect(muted.locator(".badge.mic-muted")).to_have_count(1)
    pages["huyen"].wait_for_selector(f'#participants li.speaking[data-participant="{speaker}"]')

    save_screenshot(pages["huyen"], tmp_path, "screenshot-room.png")
    assert not any(page.errors for page in pages.values()), [p.errors for p in pages.values()]

    # leaving removes the tile on the others' pages
    pages["xa-dak-ha"].click("#leave-btn")
    pages["xa-dak-ha"].click("#leave-confirm")  # leaving asks first
    wait_js(pages["huyen"], "document.querySelectorAll('.tile').length === 1")
    for page in pages.values():
        page.context.close()


def test_bad_and_expired_links_get_a_vietnamese_page(server: ServerProcess, browser: Any) -> None:
    context = browser.new_context(locale="vi-VN")
    page = context.new_page()
    expired = server.token(
        meeting="giao-ban", now=datetime.now(UTC) - timedelta(hours=2), ttl=timedelta(hours=1)
    )
    for token in ("not-a-token", expired):
        response = page.goto(f"{server.url}/m/giao-ban?token={token}")
        assert response is not None and response.status == 401
        assert "Đường liên kết không hợp lệ hoặc đã hết hạn" in page.inner_text(".message")
        assert "Traceback" not in page.content()
    # a link for another meeting
    other = server.token(meeting="hop-khac")
    response = page.goto(f"{server.url}/m/giao-ban?token={other}")
    assert response is not None and response.status == 403
    # without an invitation the page says so instead of offering to join
    response = page.goto(f"{server.url}/m/giao-ban")
    assert response is not None and response.ok
    page.wait_for_selector("#notice:not([hidden])")
    assert "hết hạn" in page.inner_text("#notice")
    context.close()


def test_landing_page_languages(server: ServerProcess, browser: Any) -> None:
    """Issue 15 item 4: an office PC with an English browser gets Vietnamese; English
    only by choice (``?lang=en``), remembered."""
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.goto(server.url + "/")
    assert "Hệ thống hội nghị truyền hình trực tuyến" in page.inner_text("h1")
    page.click("#signin-link")  # the office's way in (issue 15 item 7)
    page.wait_for_url("**/login")
    page.goto(server.url + "/?lang=en")
    assert "Online video briefing system" in page.inner_text("h1")
    page.goto(server.url + "/")  # the choice is remembered
    assert page.locator("html").get_attribute("lang") == "en"
    page.goto(server.url + "/?lang=vi")
    assert page.locator("html").get_attribute("lang") == "vi"
    context.close()
