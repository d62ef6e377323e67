"""The lean load generator's CPU per received and per sent packet, in one process.

What a simulated point (``conference loadtest --lean``) spends per packet, with real
parts on 127.0.0.1:

* **receive**: a server-side `ForwardingPeerConnection` with a video and an audio
  `ForwardingSender` (what the SFU sends a subscriber) connected by ICE + DTLS to a
  point's subscriber connection as the load tester makes it (`LoadClient`'s
  receivers, a `StreamStats` per stream).  Datagrams shaped as the server's copies
  (MID + abs-send-time, audio level for audio; 2-packet 360p video frames, one Opus
  packet per 20 ms) are SRTP-protected with the server side's session and handed to
  the point's connection's ``data_received``, where aioice delivers a datagram;
  ``time.thread_time`` around it.
* **send**: a point's `LeanPublisher` (camera and microphone, the load tester's
  clips) sending frames to a server-side connection, as its pacer does: header and
  extensions built, SRTP, ``sendto`` (the kernel's loopback delivery included).

    python bench/leanpoint.py [--packets 20000] [--rounds 3] [--mode auto|full|headers]

``--mode headers`` receives header-only (the lean receive, when this tree has it),
``full`` through SRTP unprotect and the parsed packet; ``auto`` the load tester's
default of the tree on the path.  Run it with another checkout first on
``PYTHONPATH`` to measure that checkout's generator (the bench only uses interfaces
both have).  Prints µs of CPU per packet, median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # the checkout on PYTHONPATH comes first (to measure another tree's generator)
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from conference.sfu.bridge import (  # noqa: E402
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    configure_ice_hosts,
)
from conference.sfu.rtpwire import abs_send_time, audio_level, build_rtp  # noqa: E402
from conference.tools.loadtest import sim  # noqa: E402
from conference.tools.loadtest.lean import LeanPublisher, LeanStream, packetized  # noqa: E402
from conference.tools.loadtest.media import prepare_media  # noqa: E402
from conference.tools.loadtest.streamstats import StreamStats  # noqa: E402

VIDEO = [b"\x90\x80\x80\x01\x11" + bytes(1095), b"\x80\x80\x80\x01" + bytes(700)]  # one frame
KEYFRAME = b"\x90\x80\x80\x01\x10\x02\x00\x9d\x01\x2a" + bytes(1090)
AUDIO = bytes(90)  # an Opus frame of room noise
BURST = 50  # packets per timed burst; the loop runs between bursts


async def connect(offerer: Any, answerer: Any) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Stream:
    """One stream the server side sends: its sender, and datagrams shaped as its copies."""

    def __init__(self, sender: ForwardingSender, kind: str) -> None:
        self.sender = sender
        self.kind = kind
        self.seq = 1000
        self.timestamp = 90000
        self.index = 0
        ids = sender.extension_ids
        self.mid = (ids[MID_URI], (sender.mid or "").encode())
        self.abs_id = ids.get(ABS_SEND_TIME_URI)
        self.level_id = ids.get(AUDIO_LEVEL_URI)
        self.protect = sender._transport._tx_srtp.protect

    def datagram(self, payload: bytes | None = None) -> bytes:
        if self.kind == "video":
            part = self.index % 2
            payload = payload if payload is not None else VIDEO[part]
            marker = part == 1
        else:
            payload = payload if payload is not None else AUDIO
            marker = False
        extensions = [self.mid]
        if self.kind == "audio" and self.level_id is not None:
            extensions.append((self.level_id, audio_level(False, 90)))
        if self.abs_id is not None:
            extensions.append((self.abs_id, abs_send_time(time.time())))
        data = build_rtp(
            self.sender.payload_type,
            marker,
            self.seq,
            self.timestamp,
            self.sender.ssrc,
            payload,
            tuple(extensions),
        )
        self.seq = (self.seq + 1) & 0xFFFF
        self.index += 1
        if marker or self.kind == "audio":
            self.timestamp = (self.timestamp + (3000 if self.kind == "video" else 960)) & 0xFFFFFFFF
        return self.protect(data)


class Bench:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.pcs: list[Any] = []
        self.streams: dict[str, Stream] = {}
        self.stats: dict[str, StreamStats] = {}
        self.receivers: dict[str, ForwardingReceiver] = {}
        self.deliver: Any = None
        self.publisher: LeanPublisher | None = None
        self.senders: list[ForwardingSender] = []

    async def start(self) -> None:
        server = ForwardingPeerConnection()
        client = ForwardingPeerConnection()
        if self.mode == "headers":
            client.headers_only = True  # type: ignore[attr-defined]
        self.pcs += [server, client]
        for kind in ("video", "audio"):
            server.addTransceiver(kind, direction="sendonly")
        await connect(server, client)
        senders = [t.sender for t in server.getTransceivers()]
        await wait_for(
            lambda: all(s.started and s._transport._tx_srtp is not None for s in senders), "DTLS"
        )
        for transceiver, sender in zip(client.getTransceivers(), senders, strict=True):
            assert isinstance(sender, ForwardingSender)
            receiver = transceiver.receiver
            assert isinstance(receiver, ForwardingReceiver)
            kind = transceiver.kind
            stats = StreamStats(f"x/{kind}", kind, "vp8" if kind == "video" else "opus")
            receiver.sink = stats
            stats.on_picture_loss = receiver.request_keyframe
            sim.feedback(receiver, False)
            if self.mode == "headers":
                receiver.header_sink = stats
            self.streams[kind] = Stream(sender, kind)
            self.stats[kind] = stats
            self.receivers[kind] = receiver
        self.deliver = client.getTransceivers()[0].receiver.transport.transport._connection
        await wait_for(lambda: all(r._started for r in self.receivers.values()), "the receivers")
        # first packets (a keyframe) so that the receivers learn the SSRCs
        self.deliver.data_received(self.streams["video"].datagram(KEYFRAME), 1)
        self.deliver.data_received(self.streams["video"].datagram(), 1)
        self.deliver.data_received(self.streams["audio"].datagram(), 1)
        await wait_for(lambda: all(s.packets > 0 for s in self.stats.values()), "the first packets")

    async def start_sender(self) -> None:
        """A point's camera and microphone (`LeanPublisher`) publishing to a server-side
        connection, replaying the load tester's clips (360p VP8 500 kbit/s, Opus)."""
        point = ForwardingPeerConnection()
        server = ForwardingPeerConnection()
        self.pcs += [point, server]
        point.addTransceiver("video", direction="sendonly")
        point.addTransceiver("audio", direction="sendonly")
        await connect(point, server)
        camera, microphone = (t.sender for t in point.getTransceivers())
        assert isinstance(camera, ForwardingSender) and isinstance(microphone, ForwardingSender)
        await wait_for(lambda: camera.started and camera._nominated.get(1) is not None, "ICE")
        await wait_for(lambda: microphone.started, "the microphone")
        clips = await asyncio.get_running_loop().run_in_executor(
            None, prepare_media, "vp8", "360p", 500, 30
        )
        video, talk, quiet = packetized(clips)
        self.publisher = LeanPublisher(
            LeanStream(camera, 90000),
            video,
            30,
            LeanStream(microphone, 48000, history=0),
            talk,
            clips.talk_levels,
            quiet,
            clips.quiet_levels,
        )
        self.senders = [camera, microphone]

    async def receive(self, kind: str, packets: int) -> float:
        """µs of the point's CPU per received packet of ``kind``."""
        stream = self.streams[kind]
        connection = self.deliver
        spent = 0.0
        for _ in range(packets // BURST):
            batch = [stream.datagram() for _ in range(BURST)]
            deliver = connection.data_received
            started = time.thread_time()
            for data in batch:
                deliver(data, 1)
            spent += time.thread_time() - started
            await asyncio.sleep(0)
        return spent / (packets // BURST * BURST) * 1e6

    async def send(self, packets: int) -> float:
        """µs of the point's CPU per sent packet: its camera's frames (360p VP8, about
        two packets each) and its microphone's (one each), one of each in turn, as the
        pacer sends them."""
        publisher = self.publisher
        assert publisher is not None
        spent = 0.0
        sent = 0
        while sent < packets:
            before = sum(s.packets_sent for s in self.senders)
            started = time.thread_time()
            for _ in range(10):
                publisher._send_video_frame()
                publisher._send_audio_frame()
            spent += time.thread_time() - started
            sent += sum(s.packets_sent for s in self.senders) - before
            await asyncio.sleep(0.002)  # the server side drains
        return spent / sent * 1e6

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()


async def run(packets: int, rounds: int, mode: str) -> dict[str, Any]:
    configure_ice_hosts(["127.0.0.1"])
    bench = Bench(mode)
    await bench.start()
    await bench.start_sender()
    results: dict[str, Any] = {"mode": mode}
    try:
        for name, measure in (
            ("receive_video_us", lambda: bench.receive("video", packets)),
            ("receive_audio_us", lambda: bench.receive("audio", packets)),
            ("send_us", lambda: bench.send(packets)),
        ):
            await measure()  # warm-up
            samples = [await measure() for _ in range(rounds)]
            results[name] = statistics.median(samples)
            print(
                f"{name:18s} {results[name]:6.2f} µs  "
                f"(rounds {', '.join(f'{s:.2f}' for s in samples)})",
                flush=True,
            )
        await asyncio.sleep(0.3)
        for kind, stats in bench.stats.items():
            report = stats.report()
            results[f"{kind}_check"] = {
                k: report[k] for k in ("packets", "lost", "frames", "freezes", "keyframes")
            }
    finally:
        await bench.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=("full", "headers"), default="full")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result = asyncio.run(run(args.packets, args.rounds, args.mode))
    print(json.dumps({k: v for k, v in result.items() if k.endswith("check")}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
