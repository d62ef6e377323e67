"""ICE restart instead of rejoin, in headless Chromium (issue 15 item 10).

A point's page restarts ICE on its own session when its network changes: new ICE
credentials under the same DTLS sessions, the same participant, no leave and no join on
anybody's list or in the attendance.  Same setup as tests/test_browser.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import ServerProcess
from .test_browser import browser, join, wait_js, wait_until
from .test_room_browser import NAMES, growth, me, publication

__all__ = ["browser"]  # the fixture, shared with tests/test_browser.py

pytestmark = pytest.mark.slow

# the ICE credentials each connection of the page uses now, and the server's port on
# the selected candidate pair of each
ICE_JS = """async () => {
  const c = window.conference;
  const ufrag = (sdp) => (/a=ice-ufrag:(\\S+)/.exec(sdp || "") || [])[1] || null;
  const out = {};
  for (const name of ["publisher", "subscriber"]) {
    const pc = c[name];
    if (!pc) continue;
    let port = null;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        const remote = pair && stats.get(pair.remoteCandidateId);
        port = remote ? remote.port : null;
      }
    });
    out[name] = {local: ufrag(pc.localDescription && pc.localDescription.sdp),
      remote: ufrag(pc.remoteDescription && pc.remoteDescription.sdp),
      ice: pc.iceConnectionState, port};
  }
  return out;
}"""


def ice(page: Any) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = page.evaluate(ICE_JS)
    return result


def media_both_ways(chair: Any, point: Any, what: str) -> None:
    cam_point = publication(chair, me(point), "camera")
    mic_point = publication(chair, me(point), "microphone")
    cam_chair = publication(point, me(chair), "camera")
    wait_until(lambda: all(growth(chair, [cam_point, mic_point], 1).values()), 30, f"{what}: chair")
    wait_until(lambda: growth(point, [cam_chair], 1)[cam_chair] > 0, 30, f"{what}: point")


def test_page_restarts_ice_on_its_session(server: ServerProcess, browser: Any) -> None:
    chair = join(browser, server, "huyen", NAMES["huyen"], role="chair")
    point = join(browser, server, "xa-a", NAMES["xa-a"])
    point_id = me(point)
    media_both_ways(chair, point, "before")
    before = ice(point)
    assert set(before) == {"publisher", "subscriber"}, before

    # what the page does when its network changes (an `online` or connection `change`
    # event, or a connection disconnected for 2 s)
    point.evaluate("window.conference.restartIce('test')")
    wait_js(point, "window.conference.iceRestarts.at(-1)?.result === 'ok'", timeout=20)
    after = wait_until(
        lambda: (lambda now: now if all(now[n]["port"] for n in now) else None)(ice(point)),
        10,
        "selected pairs after the restart",
    )
    # both connections have new ICE credentials on both ends, and a new path: the
    # server's side of each selected pair is a new socket
    for name in ("publisher", "subscriber"):
        assert after[name]["local"] != before[name]["local"], (name, before, after)
        assert after[name]["remote"] != before[name]["remote"], (name, before, after)
        assert after[name]["port"] != before[name]["port"], (name, before, after)
    media_both_ways(chair, point, "after")

    # the same session: no rejoin on the page, nobody left or joined on the server
    assert me(point) == point_id
    assert point.evaluate("[window.conference.reconnects, window.conference.resumes]") == [0, 0]
    chair.wait_for_selector(f'#participants li[data-participant="{point_id}"]')
    log = server.log()
    assert f"{point_id} left" not in log and log.count(f"{point_id} joined") == 1
    assert f"participant {point_id}: publisher ICE restart" in log
    assert f"participant {point_id}: subscriber ICE restart" in log
    assert len(re.findall(r"ICE restart \S+: new path", log)) >= 2
    assert not chair.errors and not point.errors, (chair.errors, point.errors)
    chair.context.close()
    point.context.close()
