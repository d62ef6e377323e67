"""RED audio (RFC 2198) end to end: Chromium pages send and receive it, and a client
that cannot decode it still gets plain Opus.

A point's page puts ``red/48000/2`` first on its microphone (quality.js ``preferRed``),
so Chromium sends every Opus frame together with the one before it; the server takes
the frames out (and would rebuild a packet lost on the point's uplink from the next
one).  A second page said ``red: true`` when joining, so the server's offer puts RED
first on its audio m-lines and the server wraps each frame with the one before it:
on a lossy rural downlink one lost packet costs no sound.  A Python client (aiortc,
which has no RED) joins too: it must get the same microphone as Opus it decodes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from conference.tools.client import Client

from .conftest import ServerProcess
from .test_browser import browser, join, wait_until

__all__ = ["browser"]

pytestmark = pytest.mark.slow

T = TypeVar("T")

# the audio streams of one connection: packets and payload bytes (Chromium's stats name
# the codec inside RED: Opus), and the audio codecs the connection negotiated, in order
AUDIO_JS = """async (which) => {
  const pc = window.conference && window.conference[which];
  // (between the page making its connection and answering, nothing to read yet)
  if (!pc || !(pc.currentLocalDescription || pc.localDescription)) return null;
  const streams = [];
  (await pc.getStats()).forEach((s) => {
    if ((s.type === "inbound-rtp" || s.type === "outbound-rtp") && s.kind === "audio") {
      streams.push({packets: s.packetsReceived ?? s.packetsSent,
        bytes: s.bytesReceived ?? s.bytesSent, energy: s.totalAudioEnergy || 0});
    }
  });
  const local = pc.currentLocalDescription || pc.localDescription;
  const line = (local.sdp.match(/m=audio [^\\r]*/) || [""])[0];
  const codecs = line.split(" ").slice(3).map((pt) => {
    const found = local.sdp.match(new RegExp(`a=rtpmap:${pt} ([^/]+)/`));
    return found ? found[1].toLowerCase() : pt;
  });
  return {streams, codecs};
}"""


def audio(page: Any, which: str) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(AUDIO_JS, which)
    return result


def per_packet(stream: dict[str, Any]) -> float:
    return float(stream["bytes"]) / max(int(stream["packets"]), 1)


def test_pages_send_and_receive_red_and_a_python_client_gets_opus(
    server: ServerProcess, browser: Any
) -> None:
    speaker = join(browser, server, "xa-a", "UBND xã Quảng Sơn")
    listener = join(browser, server, "huyen", "UBND huyện Đắk Glong", "chair")

    # the point's page sends RED: its offer put RED first, and the server says so
    wait_until(lambda: "the publisher sends RED" in server.log(), 20, "RED from the point's page")
    sent = audio(speaker, "publisher")
    assert sent["codecs"][:2] == ["red", "opus"], sent
    # the chair's page receives RED (its answer keeps RED first), and it plays
    heard = wait_until(
        lambda: (
            (a := audio(listener, "subscriber"))
            and [s for s in a["streams"] if s["energy"] > 0 and s["packets"] > 100]
            and a
        ),
        20,
        "the point's microphone on the chair's page",
    )
    assert heard["codecs"][:2] == ["red", "opus"], heard
    # ... and what arrives carries each frame twice, as what the point sends does
    # (plain Opus would be half as large a packet)
    spoken = audio(speaker, "publisher")["streams"][0]
    received = [s for s in heard["streams"] if s["energy"] > 0][0]
    assert per_packet(received) > 0.8 * per_packet(spoken), (received, spoken)

    # a Python client (no RED) gets the same microphone as Opus it decodes
    microphone = speaker.evaluate(
        """() => {
          const c = window.conference;
          const me = c.room.participants.find((p) => p.id === c.me.id);
          return me.publications.find((p) => p.source === "microphone").id;
        }"""
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    token = server.token(meeting="giao-ban", identity="xa-b", name="UBND xã Đắk Ha", role="point")
    client = Client(server.url, "giao-ban", token)

    async def listen() -> float:
        await client.connect()
        for _ in range(200):
            if microphone in client.tracks:
                break
            await asyncio.sleep(0.1)
        track = client.tracks[microphone]
        chunks = []
        for _ in range(100):  # 2 s of 20 ms frames
            frame = await asyncio.wait_for(track.recv(), 5)
            chunks.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0])
            rate = frame.sample_rate
        samples = np.concatenate(chunks).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(samples))
        return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])

    try:
        pitch = run(listen())
        # the page's fake microphone plays a 440 Hz tone (tests/test_browser.py)
        assert abs(pitch - 440) < 10, f"the Python client decoded {pitch:.0f} Hz, not the tone"
    finally:
        try:
            run(client.leave(), 20)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
    for page in (speaker, listener):
        assert not page.errors, page.errors
        page.context.close()
