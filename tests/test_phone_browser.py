"""The room on a phone (issue 15 item 6: at 390 px the video column was ~60 px wide).

A commune official follows and speaks from a phone: Chromium as a phone (390x844, mobile
viewport, touch), the chair on a PC.  The large video is the screen's width, the other
tiles in a strip below it, the control bar in view with buttons a finger can hit (44 px),
nothing wider than the screen; the chat opens in a panel above the bar, never hiding it;
the chair's notices show; the point raises its hand by touch, is given the floor and is
heard.  Turned sideways (844x390) the strip goes beside the video.  Same setup as
tests/test_browser.py (Debian's chromium, fake camera, a tone as microphone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import ServerProcess
from .test_browser import (
    browser,
    join,
    open_invitation,
    save_screenshot,
    sync_api,
    wait_js,
    wait_until,
)
from .test_room_browser import NAMES, NOTICE_IN_VIEW_JS, SILENT, growth, me, publication

__all__ = ["browser"]  # the fixture, shared with tests/test_browser.py

pytestmark = pytest.mark.slow

PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}

#: the buttons a point needs at hand (the chair has no hand to raise)
CONTROLS = ["mute-btn", "camera-btn", "hand-btn", "chat-btn", "more-btn", "leave-btn"]

# where things are on the page; a control counts only where a tap at its centre reaches it
LAYOUT_JS = """(ids) => {
  const box = (n) => { const r = n.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height, right: r.right, bottom: r.bottom}; };
  const stage = document.querySelector("#stage .tile");
  const controls = {};
  for (const id of ids) {
    const n = document.getElementById(id);
    const r = n.getBoundingClientRect();
    const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
    controls[id] = {...box(n), shown: n.offsetParent !== null, reached: n.contains(hit)};
  }
  const panel = document.getElementById("sidebar");
  return {width: innerWidth, height: innerHeight,
    scrollWidth: document.scrollingElement.scrollWidth,
    stage: stage && box(stage), stageVideo: stage ? stage.querySelector("video").videoWidth : 0,
    strip: [...document.querySelectorAll("#strip > :not([hidden])")].map(box),
    panel: panel.offsetParent ? box(panel) : null,
    topbar: document.querySelector(".topbar").offsetParent !== null, controls};
}"""


def layout(page: Any, controls: list[str] = CONTROLS) -> dict[str, Any]:
    """Where the page shows things; asserts what holds on any screen: nothing wider than
    the screen, each control shown, inside the screen, reached by a tap, 44 px or more."""
    seen: dict[str, Any] = page.evaluate(LAYOUT_JS, controls)
    assert seen["scrollWidth"] <= seen["width"], seen  # no sideways scrolling
    for name, control in seen["controls"].items():
        assert control["shown"] and control["reached"], (name, seen)
        assert control["x"] >= 0 and control["right"] <= seen["width"], (name, seen)
        assert control["y"] >= 0 and control["bottom"] <= seen["height"], (name, seen)
        assert control["w"] >= 44 and control["h"] >= 44, (name, control)
    return seen


def test_a_point_follows_and_speaks_from_a_phone(
    server: ServerProcess, browser: Any, tmp_path: Path
) -> None:
    chair = join(browser, server, "huyen", NAMES["huyen"], role="chair")
    phone = open_invitation(browser, server, "xa-a", NAMES["xa-a"], device=PHONE)
    phone.tap("#join:not([disabled])")
    phone.wait_for_selector("#room:not([hidden])")
    wait_js(phone, "window.conference.room.participants.length === 2")
    # upright: the chair's video large, the full width; our own image in the strip below
    wait_js(phone, "window.conference.mode === 'speaker'")
    wait_js(phone, "(document.querySelector('#stage .tile video') || {}).videoWidth > 0")
    seen = layout(phone)
    stage = seen["stage"]
    assert stage["w"] >= 0.9 * seen["width"], seen
    assert seen["strip"] and all(tile["y"] >= stage["bottom"] - 1 for tile in seen["strip"]), seen
    assert not seen["topbar"] and seen["panel"] is None, seen  # the whole screen is the room

    # a message: counted on the chat button; the chat opens above the bar, the video stays
    chair.fill("#chat-input", "Đề nghị các xã báo cáo số liệu tuần này.")
    chair.press("#chat-input", "Enter")
    sync_api.expect(phone.locator("#chat-btn")).to_have_attribute("data-count", "1")
    sync_api.expect(phone.locator("#chat-btn")).to_have_attribute(
        "aria-label", "Trao đổi: 1 tin nhắn mới"
    )
    save_screenshot(phone, tmp_path, "screenshot-room-phone.png")
    phone.tap("#chat-btn")
    sync_api.expect(phone.locator("#chat-log li .chat-text")).to_be_visible()
    seen = layout(phone)
    panel, stage = seen["panel"], seen["stage"]
    assert panel and panel["bottom"] <= seen["controls"]["mute-btn"]["y"] + 1, seen
    assert stage["bottom"] <= panel["y"] + 1 and stage["w"] >= 0.9 * seen["width"], seen
    assert phone.get_attribute("#chat-btn", "data-count") is None
    phone.fill("#chat-input", "Xã Quảng Sơn đã nhận.")
    phone.tap("#chat-send")
    sync_api.expect(chair.locator("#chat-log li .chat-text").last).to_have_text(
        "Xã Quảng Sơn đã nhận."
    )
    phone.tap("#panel-close")
    assert layout(phone)["panel"] is None
    # "more": the list of points and the rarer settings, above the bar
    phone.tap("#more-btn")
    sync_api.expect(phone.locator("#participants li")).to_have_count(2)
    seen = layout(phone, CONTROLS + ["layout-select", "profile-select"])
    assert seen["panel"]["bottom"] <= seen["controls"]["layout-select"]["y"] + 1, seen
    phone.tap("#more-btn")
    assert layout(phone)["panel"] is None

    # the chair mutes everyone: the phone is told in view; it raises its hand by touch,
    # is given the floor, and is heard
    ids = {"huyen": me(chair), "xa-a": me(phone)}
    mic = publication(chair, ids["xa-a"], "microphone")
    chair.click("#mute-all-btn")
    wait_js(phone, "!document.getElementById('notice').hidden")
    notice = phone.evaluate(NOTICE_IN_VIEW_JS)
    assert notice["inside"] and notice["onTop"] and "tắt micro" in notice["text"], notice
    sync_api.expect(phone.locator("#mute-btn")).to_have_text("Bật micro")
    phone.tap("#notice")
    phone.tap("#hand-btn")
    sync_api.expect(phone.locator("#hand-btn")).to_have_text("Hạ tay")
    chair.click(f'#hands li[data-participant="{ids["xa-a"]}"] button.give-floor')
    sync_api.expect(phone.locator("#mute-btn")).to_have_text("Tắt micro")

    def heard(loud: bool) -> Any:  # the chair hears the phone's microphone (1 s windows)
        return wait_until(
            lambda: (growth(chair, [mic], 1)[mic] > SILENT) == loud, 15, f"heard is {loud}"
        )

    heard(True)
    phone.tap("#mute-btn")  # the floor holder mutes and unmutes itself by touch
    sync_api.expect(phone.locator("#mute-btn")).to_have_text("Bật micro")
    heard(False)
    phone.tap("#mute-btn")
    sync_api.expect(phone.locator("#mute-btn")).to_have_text("Tắt micro")
    heard(True)

    # sideways: the video as high as the screen allows, the strip beside it, the bar in view
    phone.set_viewport_size({"width": 844, "height": 390})
    wait_js(phone, "document.querySelector('#stage .tile').getBoundingClientRect().height > 200")
    seen = layout(phone)
    stage = seen["stage"]
    assert stage["h"] >= 0.55 * seen["height"], seen
    assert all(tile["x"] >= stage["right"] - 1 for tile in seen["strip"]), seen
    save_screenshot(phone, tmp_path, "room-phone-sideways.png", docs=False)

    # a PC's window: the sidebar and the plain bar, none of the phone's buttons
    phone.set_viewport_size({"width": 1366, "height": 768})
    sync_api.expect(phone.locator("#chat-btn")).to_be_hidden()
    sync_api.expect(phone.locator("#sidebar")).to_be_visible()
    sync_api.expect(phone.locator(".topbar")).to_be_visible()
    assert not chair.errors and not phone.errors, (chair.errors, phone.errors)
    chair.context.close()
    phone.context.close()
