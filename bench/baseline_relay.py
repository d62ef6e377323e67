"""The "stock aiortc design" baseline: decode once, re-encode per subscriber.

A deliberately tiny server, for benchmarking only (no auth, no rooms):

* ``POST /publish`` (SDP offer as ``application/sdp``) -> SDP answer.  One
  publisher; its tracks are received by aiortc's normal ``RTCPeerConnection``
  (jitter buffer + decoder) and handed to ``aiortc.contrib.media.MediaRelay``.
* ``POST /subscribe`` (SDP offer with recvonly audio+video) -> SDP answer.
  Each subscriber gets ``relay.subscribe(track)`` copies; aiortc's
  ``RTCRtpSender`` of that subscriber encodes its copy (VP8 / Opus), so the
  encoding cost is paid once per subscriber -- which is what the stock aiortc
  examples (``server.py``, ``videostream-cli``) do.

Run: ``python bench/baseline_relay.py --port 0``; prints
``{"event": "listening", "port": N}``.  ICE uses 127.0.0.1 only.
``--unbuffered`` relays with ``buffered=False`` (drop frames for a slow
consumer instead of queueing them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conference.sfu.bridge import configure_ice_hosts  # noqa: E402  (only patches aioice)

logger = logging.getLogger("baseline")


class Relay:
    def __init__(self, buffered: bool) -> None:
        self.relay = MediaRelay()
        self.buffered = buffered
        self.tracks: dict[str, object] = {}
        self.pcs: set[RTCPeerConnection] = set()
        self.ready = asyncio.Event()

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.add(pc)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.pcs.discard(pc)
                await pc.close()

        return pc

    async def publish(self, request: web.Request) -> web.Response:
        offer = RTCSessionDescription(sdp=await request.text(), type="offer")
        pc = self._new_pc()

        @pc.on("track")
        def on_track(track: object) -> None:
            self.tracks[track.kind] = track  # type: ignore[attr-defined]
            if {"audio", "video"} <= set(self.tracks):
                self.ready.set()

        await pc.setRemoteDescription(offer)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return web.Response(text=pc.localDescription.sdp, content_type="application/sdp")

    async def subscribe(self, request: web.Request) -> web.Response:
        offer = RTCSessionDescription(sdp=await request.text(), type="offer")
        await asyncio.wait_for(self.ready.wait(), 15)
        pc = self._new_pc()
        await pc.setRemoteDescription(offer)
        for transceiver in pc.getTransceivers():
            track = self.tracks.get(transceiver.kind)
            if track is not None:
                transceiver.direction = "sendonly"
                pc.addTrack(self.relay.subscribe(track, buffered=self.buffered))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return web.Response(text=pc.localDescription.sdp, content_type="application/sdp")

    async def close(self) -> None:
        await asyncio.gather(*(pc.close() for pc in list(self.pcs)), return_exceptions=True)


async def main(port: int, buffered: bool) -> None:
    configure_ice_hosts(["127.0.0.1"])
    relay = Relay(buffered)
    app = web.Application()
    app.router.add_post("/publish", relay.publish)
    app.router.add_post("/subscribe", relay.subscribe)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"event": "listening", "port": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.close()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unbuffered", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.port, not args.unbuffered))
