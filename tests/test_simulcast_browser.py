"""Simulcast in headless Chromium: a point publishes its camera in three layers, each
viewer receives the one layer the server chooses for it, and a layer nobody receives
stops being encoded by the publisher (dynacast).

Same setup as tests/test_browser.py (Debian's chromium through Playwright, fake camera
at 1280x720, traffic on 127.0.0.1 only).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import ServerProcess
from .test_browser import browser, join, wait_until

__all__ = ["browser"]  # the fixture, shared with tests/test_browser.py

pytestmark = [pytest.mark.slow, pytest.mark.quiet]

# what the publisher sends, per simulcast layer (rid)
OUTBOUND_JS = """async () => {
  const c = window.conference;
  if (!c || !c.publisher) return {};
  const out = {};
  (await c.publisher.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video" && s.rid) out[s.rid] = {
      bytes: s.bytesSent || 0, width: s.frameWidth || 0, active: s.active,
      limitation: s.qualityLimitationReason};
  });
  return out;
}"""

# what a viewer receives of one publication
INBOUND_JS = """async (publication) => {
  const c = window.conference;
  if (!c || !c.subscriber) return null;
  let found = null;
  (await c.subscriber.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && c.midToPublication[s.mid] === publication) found = {
      width: s.frameWidth || 0, frames: s.framesDecoded || 0, bytes: s.bytesReceived || 0};
  });
  return found;
}"""

CAMERA_JS = """(participant) => {
  const p = window.conference.room.participants.find((x) => x.id === participant);
  const pub = p && p.publications.find((x) => x.source === "camera");
  return pub && pub.layers ? pub.id : null;
}"""


# the publisher's own estimate of its uplink (GoogCC, fed by our transport-cc feedback)
UPLINK_JS = """async () => {
  const c = window.conference;
  let rate = 0;
  if (c && c.publisher) (await c.publisher.getStats()).forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate)
      rate = s.availableOutgoingBitrate;
  });
  return rate;
}"""


def outbound(page: Any) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = page.evaluate(OUTBOUND_JS)
    return result


def inbound(page: Any, publication: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = page.evaluate(INBOUND_JS, publication)
    return result


def receives_width(page: Any, publication: str, width: int) -> dict[str, Any] | None:
    """The inbound stats once the video decodes at ``width`` pixels and keeps decoding."""
    first = inbound(page, publication)
    if not first or first["width"] != width:
        return None
    time.sleep(0.5)
    second = inbound(page, publication)
    if second and second["width"] == width and second["frames"] > first["frames"]:
        return second
    return None


def growing(page: Any, rid: str, seconds: float = 1.0) -> bool:
    before = outbound(page).get(rid, {}).get("bytes", 0)
    time.sleep(seconds)
    return bool(outbound(page).get(rid, {}).get("bytes", 0) > before)


def test_simulcast_one_layer_per_viewer_and_dynacast(server: ServerProcess, browser: Any) -> None:
    publisher = join(browser, server, "xa-a", "UBND xã Quảng Sơn")
    # the server's transport-cc feedback lets the publisher find its real uplink
    # (loopback: plenty): 1.2 Mbit/s and more within 10 s, where the server's REMB
    # used to hold it at 375-600 kbit/s
    seen: list[float] = []

    def uplink() -> float | None:
        seen.append(publisher.evaluate(UPLINK_JS))
        return seen[-1] if seen[-1] >= 1_200_000 else None

    try:
        wait_until(uplink, 10, "the publisher's estimate to reach 1.2 Mbit/s")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {[round(r / 1000) for r in seen[::4]]} kbit/s") from None
    large_viewer = join(browser, server, "huyen", "UBND tỉnh", role="chair")
    small_viewer = join(browser, server, "xa-b", "UBND xã Đắk Ha")
    me = publisher.evaluate("window.conference.me.id")
    camera = wait_until(
        lambda: large_viewer.evaluate(CAMERA_JS, me), 20, "the simulcast camera publication"
    )
    # the page publishes three layers and the server accepted them (a=simulcast:recv)
    sent = wait_until(
        lambda: (lambda o: o if {"q", "h", "f"} <= set(o) else None)(outbound(publisher)),
        20,
        "three outbound layers",
    )
    assert sent["f"]["width"] in (0, 1280), sent

    # the chair gives the point the floor: its camera is the large tile on every page;
    # on a small screen that tile is small
    small_viewer.set_viewport_size({"width": 600, "height": 300})
    large_viewer.evaluate(
        "(id) => window.conference.signaling.send({type: 'give-floor', participant: id})", me
    )
    wait_until(lambda: receives_width(large_viewer, camera, 1280), 30, "the top layer, large")
    wait_until(lambda: receives_width(small_viewer, camera, 320), 30, "the low layer, small")
    # dynacast: nobody receives the middle layer, so the publisher stops encoding it
    wait_until(lambda: not growing(publisher, "h"), 20, "the middle layer switched off")
    assert growing(publisher, "q") and growing(publisher, "f")
    # a wider page needs the middle layer: it comes back
    # (a 1000 px window: the video column beside the side panel is ~660 px wide, "medium")
    small_viewer.set_viewport_size({"width": 1000, "height": 640})
    wait_until(lambda: growing(publisher, "h"), 20, "the middle layer back")
    wait_until(lambda: receives_width(small_viewer, camera, 640), 30, "the middle layer")
    # the large viewer kept the top layer all along
    assert receives_width(large_viewer, camera, 1280) or wait_until(
        lambda: receives_width(large_viewer, camera, 1280), 10, "the top layer still"
    )
    for page in (publisher, large_viewer, small_viewer):
        assert page.errors == []
