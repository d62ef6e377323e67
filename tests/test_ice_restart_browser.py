"""ICE restart instead of rejoin, in headless Chromium (issue 15 item 10).

A point's page restarts ICE on its own session when its network changes: new ICE
credentials under the same DTLS sessions, the same participant, no leave and no join on
anybody's list or in the attendance.  Same setup as tests/test_browser.py.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time
import types
from pathlib import Path
from typing import Any

import pytest

from conference.tools import linkemu

from .conftest import ServerProcess, check_clean_exit, start_server
from .test_browser import browser, join, open_invitation, wait_js, wait_until
from .test_room_browser import NAMES, growth, me, publication
from .test_weak_link_browser import launch_in_namespace, namespaces_missing

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


# the page's own address on the publisher connection's selected candidate pair
CANDIDATE_JS = """async () => {
  const stats = await window.conference.publisher.getStats();
  let address = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = stats.get(s.selectedCandidatePairId);
      const local = pair && stats.get(pair.localCandidateId);
      address = local ? (local.address || local.ip) : null;
    }
  });
  return address;
}"""


# what the page's session is doing: said when it does not come back
PAGE_JS = """() => {
  const c = window.conference;
  const pc = (p) => p ? [p.connectionState, p.iceConnectionState, p.signalingState] : null;
  return {restarts: c.iceRestarts, reconnects: c.reconnects, resumes: c.resumes,
    reconnecting: c.reconnecting, socket: c.signaling ? c.signaling.ws.readyState : null,
    publisher: pc(c.publisher), subscriber: pc(c.subscriber), online: navigator.onLine};
}"""


def ice(page: Any) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = page.evaluate(ICE_JS)
    return result


# what a page sends and receives, said when a stream does not come: each outbound
# stream of the publisher connection, each inbound one of the subscriber connection,
# the publication each mid carries, the connections' states
MEDIA_JS = """async () => {
  const c = window.conference;
  const streams = async (pc, type, fields) => {
    const out = [];
    if (pc) (await pc.getStats()).forEach((s) => {
      if (s.type === type) out.push([s.mid, s.kind, ...fields.map((f) => s[f])]);
    });
    return out;
  };
  const path = async (pc) => {
    let found = null;
    if (pc) {
      const stats = await pc.getStats();
      stats.forEach((s) => {
        const pair = s.type === "transport" && stats.get(s.selectedCandidatePairId);
        const local = pair && stats.get(pair.localCandidateId);
        const remote = pair && stats.get(pair.remoteCandidateId);
        if (local && remote) found = `${local.address}:${local.port} -> ${remote.address}:${remote.port}`;
      });
    }
    return [pc ? pc.connectionState : null, pc ? pc.iceConnectionState : null, found];
  };
  return {
    me: c.me && c.me.id, restarts: c.iceRestarts, reconnects: c.reconnects,
    publisher: await path(c.publisher), subscriber: await path(c.subscriber),
    sent: await streams(c.publisher, "outbound-rtp",
      ["packetsSent", "framesEncoded", "qualityLimitationReason", "active"]),
    received: await streams(c.subscriber, "inbound-rtp",
      ["packetsReceived", "framesDecoded", "keyFramesDecoded", "pliCount", "nackCount"]),
    mids: c.midToPublication, paused: [...(c.pausedVideos || [])]};
}"""


def media_both_ways(chair: Any, point: Any, what: str, server: ServerProcess | None = None) -> None:
    cam_point = publication(chair, me(point), "camera")
    mic_point = publication(chair, me(point), "microphone")
    cam_chair = publication(point, me(chair), "camera")
    try:
        wait_until(
            lambda: all(growth(chair, [cam_point, mic_point], 1).values()), 30, f"{what}: chair"
        )
        wait_until(lambda: growth(point, [cam_chair], 1)[cam_chair] > 0, 30, f"{what}: point")
    except AssertionError as error:
        log = server.log()[-6000:] if server is not None else ""
        raise AssertionError(
            f"{error}\npoint's camera, microphone {cam_point}, {mic_point}; chair's camera "
            f"{cam_chair}\nchair: {chair.evaluate(MEDIA_JS)}\npoint: {point.evaluate(MEDIA_JS)}"
            f"\nserver log:\n{log}"
        ) from None


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
    # (the restart is done once the answers are applied and ICE is connected; the old
    # path, alive here, carries media until the browser selects a new pair)
    after = wait_until(
        lambda: (
            lambda now: (
                now if all(now[n]["port"] not in (None, before[n]["port"]) for n in now) else None
            )
        )(ice(point)),
        10,
        "new selected pairs after the restart",
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


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def test_page_moved_to_another_network_keeps_its_session(tmp_path: Path, browser: Any) -> None:
    """A real network change: the point's Chromium runs in a network namespace with two
    links to the server's machine, "Wi-Fi" and "4G".  Wi-Fi goes away (its interface and
    address with it) and 4G comes up with another address: the page's UDP paths and its
    WebSocket die.  The page finds out, resumes its session on a new socket and restarts
    ICE from the new address: the same participant, media both ways, no leave, no join."""
    reason = namespaces_missing()
    if reason:
        pytest.skip(reason)
    with linkemu.Namespace() as wifi, linkemu.Namespace() as fourg:
        # 4G's inner end moves into the point's namespace, down until the switch; the
        # server is at 4G's root address, reached over Wi-Fi until then
        service = fourg.host_address
        ip("-n", fourg.name, "link", "set", fourg.interface, "netns", wifi.name)
        ip("-n", wifi.name, "addr", "add", f"{fourg.address}/30", "dev", fourg.interface)
        ip("-n", wifi.name, "route", "add", f"{service}/32", "via", wifi.host_address)
        server = start_server(tmp_path, "--host", "0.0.0.0", "--ice-host", service)
        origin = f"http://{service}:{server.port}"
        # (the Chromium inside resolves no name but the server's address)
        inside = types.SimpleNamespace(command=wifi.command, host_address=service)
        roaming = launch_in_namespace(browser, inside, tmp_path, origin)
        try:
            chair = join(browser, server, "huyen", NAMES["huyen"], role="chair")
            point = open_invitation(
                roaming, dataclasses.replace(server, url=origin), "xa-a", NAMES["xa-a"]
            )
            console: list[str] = []
            point.on("console", lambda m: console.append(f"{time.monotonic():.1f} {m.text}"))
            point.click("#join:not([disabled])")
            point.wait_for_selector("#room:not([hidden])")
            point_id = me(point)
            media_both_ways(chair, point, "over Wi-Fi", server)
            host = point.evaluate(CANDIDATE_JS)
            assert host == wifi.address, host
            chair_before = chair.evaluate(MEDIA_JS)

            # Wi-Fi is gone: the point's interface goes down and loses its address.  Its
            # other end, in this (the chair's and the server's) namespace, keeps its
            # address: the chair's Chromium gathers candidates on every interface here,
            # and the server may have nominated the chair's candidate on that address;
            # deleting it made the chair's session depend on the server moving to
            # another path (docs/ARCHITECTURE.md, "A nominated path that stops
            # answering"), which is not what this test is about
            ip("-n", wifi.name, "addr", "flush", "dev", wifi.interface)
            ip("-n", wifi.name, "link", "set", wifi.interface, "down")
            ip("-n", wifi.name, "link", "set", fourg.interface, "up")  # 4G is up
            moved = time.monotonic()
            try:
                wait_js(
                    point,
                    "window.conference.iceRestarts.some((r) => r.result === 'ok')",
                    timeout=40,
                )
            except AssertionError as error:
                raise AssertionError(
                    f"{error}\npage: {point.evaluate(PAGE_JS)}\nconsole: {console[-30:]}"
                    f"\nserver log:\n{server.log()[-5000:]}"
                ) from None
            try:
                media_both_ways(chair, point, "over 4G", server)
            except AssertionError as error:
                raise AssertionError(
                    f"{error}\nchair before the move: {chair_before}"
                    f"\npoint's console: {console[-20:]}"
                ) from None
            took = time.monotonic() - moved
            assert point.evaluate(CANDIDATE_JS) == fourg.address
            # the same session all along
            assert me(point) == point_id
            assert point.evaluate("window.conference.reconnects") <= 1  # (a resume, if any)
            assert point.evaluate("window.conference.resumes") == point.evaluate(
                "window.conference.reconnects"
            )
            log = server.log()
            assert f"{point_id} left" not in log and log.count(f"{point_id} joined") == 1
            restarts = point.evaluate("window.conference.iceRestarts")
            print(f"network change to media both ways: {took:.1f} s; restarts: {restarts}")
            assert not chair.errors and not point.errors, (chair.errors, point.errors)
            chair.context.close()
            point.context.close()
        finally:
            roaming.close()
            check_clean_exit(server)
