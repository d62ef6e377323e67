"""Forwarding benchmark: server CPU, throughput, loss and delay per subscriber count.

Usage::

    python bench/forwarding.py [--subscribers 0,1,5,10,20,40,50] [--seconds 10]
        [--warmup 3] [--workers 2] [--baseline 1,2,4,8] [--json bench/results/forwarding.json]

What runs (all on 127.0.0.1):

* the SFU server: ``python -m conference serve`` as a subprocess;
* this process: one publisher (``conference.tools.client.Client``) replaying a
  pre-encoded 1280x720 30 fps ~1.5 Mbps VP8 clip plus a 32 kbps Opus tone
  (``conference.tools.testmedia.PacketTrack``: packets are packetized, never encoded);
* ``--workers`` worker processes (multiprocessing, spawn) holding the
  subscribers, round-robin: ``Client(..., decode=False)``; every received packet
  goes through a tap (a ``PacketSink`` in front of the client's
  ``StreamCounter``) that records sequence numbers and arrival times.

Subscribers are added incrementally (0 -> 1 -> 5 -> ...) to the same room; for
each N the benchmark waits until every subscriber receives video, lets ``--warmup``
seconds pass, then measures for ``--seconds``:

* CPU of the server process (utime+stime from /proc/<pid>/stat, all threads)
  as % of one core = cpu seconds / wall seconds * 100; the bench processes
  are measured the same way (to show whether the load generator kept up);
* forwarded packets/s = sum over subscribers of received RTP packets / window;
* loss per subscriber: the server rewrites sequence numbers, so loss is
  counted in each subscriber's own sequence space, by the load tester's
  :class:`conference.tools.loadtest.streamstats.StreamStats` (the same accounting
  as ``conference loadtest``): "raw" = sequence numbers ever missing,
  "final" = those not repaired by RTX (NACK answered from the subscription's
  history) within a second, per expected packet in the window;
* forwarding delay: the publisher's DTLS transport ``_send_rtp`` is wrapped;
  for every video RTP packet it records ``time.time()`` under a key of the
  payload (length + CRC-32; the SFU forwards the payload byte-for-byte and
  the VP8 payload descriptor carries a picture id, so keys are unique).  The
  subscriber tap records (key, ``time.time()``) at delivery, after SRTP
  decryption and RTP parsing in the subscriber process.  The wall clock is
  shared by all processes of the machine, so delay = arrival - send covers:
  publisher SRTP + UDP + server (decrypt, rewrite, encrypt, send) + UDP +
  subscriber decrypt/parse, including any queueing in the (busy) bench
  processes.  Retransmitted packets are excluded.

The baseline (``--baseline``) does the same with ``bench/baseline_relay.py``:
stock aiortc (decode once, ``MediaRelay``, one VP8+Opus encoder per
subscriber).  Its payloads are re-encoded, so no delay is measured there;
delivered frame rate and bitrate are reported instead.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CLIP,
    ROOT,
    SECRET,
    CpuMeter,
    cpu_seconds,
    cpu_split,
    machine,
    machine_busy,
    payload_key,
    percentile,
    rtp_payload,
    ssrc_of,
    start_conference_server,
    start_process,
    udp_errors,
)

MEETING = "bench"
LIGHT_SUBSCRIBERS = True


# =====================================================================================
# Subscriber side (runs in worker processes)
# =====================================================================================
@dataclass
class TapWindow:
    audio_packets: int = 0
    arrivals: list[tuple[int, float]] = field(default_factory=list)


class Tap:
    """A PacketSink in front of an optional inner sink (the client's StreamCounter).

    Loss and frames come from the load tester's :class:`StreamStats` (sequence
    gaps, NACK repairs, complete frames); the tap itself only adds what the
    delay measurement needs: the arrival time of every first transmission,
    keyed by its payload.
    """

    def __init__(self, kind: str, inner: Any = None) -> None:
        from conference.tools.loadtest.streamstats import StreamStats

        self.kind = kind
        self.inner = inner
        self.total_video = 0
        self.stats = StreamStats(kind, kind, "vp8")
        self.window = TapWindow()
        self.measuring = False

    def mark(self) -> None:
        self.window = TapWindow()
        self.stats.mark()
        self.measuring = True

    def on_rtp(self, packet: Any, repaired: bool, layer: int = 0) -> None:
        if self.kind == "video":
            self.total_video += 1
            now = time.monotonic()
            self.stats.receive(packet, repaired, now)
            if self.measuring and not repaired:
                self.window.arrivals.append((payload_key(packet.payload), time.time()))
        elif self.measuring:
            self.window.audio_packets += 1
        if self.inner is not None:
            self.inner.on_rtp(packet, repaired)

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, layer: int = 0) -> None:
        if self.inner is not None:
            self.inner.on_sender_report(ntp_timestamp, rtp_timestamp)

    def on_bye(self) -> None:
        if self.inner is not None:
            self.inner.on_bye()

    def report(self) -> dict[str, Any]:
        stats = self.stats.report()
        return {
            "video_packets": stats["packets"],
            "video_repaired": stats["repaired"],
            "video_bytes": stats["bytes"],
            "audio_packets": self.window.audio_packets,
            "frames": stats["frames"],
            "expected": stats["expected"],
            "loss_pct": stats["loss_pct"],
            "raw_loss_pct": stats["raw_loss_pct"],
            "arrivals": self.window.arrivals,
        }


class SfuSubscriber:
    """A conference Client (decode=False) whose video/audio sinks are tapped."""

    def __init__(self, url: str, index: int) -> None:
        from conference.sfu.bridge import ForwardingReceiver, light_receiver
        from conference.tokens import create_token
        from conference.tools.client import Client

        token = create_token(
            SECRET,
            meeting=MEETING,
            identity=f"xa{index:03d}",
            name=f"UBND xã {index}",
            role="viewer",
            ttl=datetime.timedelta(hours=2),
        )
        taps: dict[str, Tap] = {}
        self.taps = taps

        class TappedClient(Client):
            async def _subscriber_offer(self, message: dict[str, Any]) -> None:
                await super()._subscriber_offer(message)
                assert self.subscriber is not None
                for transceiver in self.subscriber.getTransceivers():
                    receiver = transceiver.receiver
                    sink = getattr(receiver, "sink", None)
                    if sink is None or isinstance(sink, Tap):
                        continue
                    key = transceiver.kind
                    tap = taps.get(key)
                    if tap is None:
                        tap = taps[key] = Tap(key)
                    tap.inner = sink
                    receiver.sink = tap
                    if LIGHT_SUBSCRIBERS and isinstance(receiver, ForwardingReceiver):
                        light_receiver(receiver)  # as the load tester's points do

        self.client = TappedClient(url, MEETING, token, decode=False)

    async def start(self) -> None:
        await self.client.connect(auto_subscribe=True)

    def video_packets(self) -> int:
        tap = self.taps.get("video")
        return tap.total_video if tap else 0

    async def close(self) -> None:
        await self.client.leave()


class BaselineSubscriber:
    """A non-decoding peer connection that offers recvonly audio+video to the baseline."""

    def __init__(self, url: str, index: int) -> None:
        self.url = url
        self.taps = {"video": Tap("video"), "audio": Tap("audio")}
        self.pc: Any = None
        self.session: Any = None

    async def start(self) -> None:
        import aiohttp

        from conference.sfu.bridge import ForwardingPeerConnection, RTCSessionDescription

        pc = self.pc = ForwardingPeerConnection([])
        video = pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        self.session = aiohttp.ClientSession()
        async with self.session.post(
            self.url + "/subscribe",
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as response:
            response.raise_for_status()
            answer = await response.text()
        video.receiver.sink = self.taps["video"]
        audio.receiver.sink = self.taps["audio"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def video_packets(self) -> int:
        return self.taps["video"].total_video

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self.session is not None:
            await self.session.close()


async def _worker_main(conn: Any, mode: str, url: str) -> None:
    from conference.sfu.bridge import configure_ice_hosts

    configure_ice_hosts(["127.0.0.1"])
    loop = asyncio.get_running_loop()
    subscribers: list[Any] = []
    factory = SfuSubscriber if mode == "sfu" else BaselineSubscriber
    lags: list[float] = []
    measuring = False

    async def lag_monitor() -> None:
        # how late the event loop wakes up from a 10 ms sleep: queueing in this process
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            if measuring:
                lags.append((time.monotonic() - before - 0.01) * 1000)

    monitor = asyncio.ensure_future(lag_monitor())
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        if command == "add":
            added, failed = [], []
            for batch_start in range(0, len(arg), 4):
                batch = [factory(url, i) for i in arg[batch_start : batch_start + 4]]
                results = await asyncio.gather(*(s.start() for s in batch), return_exceptions=True)
                for sub, result in zip(batch, results, strict=True):
                    if isinstance(result, BaseException):
                        failed.append(repr(result))
                    else:
                        added.append(sub)
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline and any(s.video_packets() == 0 for s in added):
                await asyncio.sleep(0.1)
            waiting = sum(1 for s in added if s.video_packets() == 0)
            subscribers.extend(added)
            conn.send({"added": len(added), "failed": failed, "no_video": waiting})
        elif command == "mark":
            lags.clear()
            measuring = True
            for sub in subscribers:
                for tap in sub.taps.values():
                    tap.mark()
            conn.send({"pid": os.getpid(), "at": time.time()})
        elif command == "report":
            at = time.time()
            reports = []
            for sub in subscribers:
                video = sub.taps.get("video")
                audio = sub.taps.get("audio")
                item = video.report() if video else Tap("video").report()
                item["audio_packets"] = audio.window.audio_packets if audio else 0
                reports.append(item)
                for tap in sub.taps.values():
                    tap.measuring = False
            measuring = False
            lags.sort()
            conn.send(
                {
                    "at": at,
                    "subscribers": reports,
                    "pid": os.getpid(),
                    "lag_p99_ms": percentile(lags, 0.99) if lags else None,
                    "lag_max_ms": lags[-1] if lags else None,
                }
            )
        elif command == "close":
            monitor.cancel()
            await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)
            conn.send({"closed": len(subscribers)})
            return


def worker_entry(conn: Any, mode: str, url: str) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_worker_main(conn, mode, url))


class Workers:
    def __init__(self, count: int, mode: str, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.processes = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=worker_entry, args=(child, mode, url), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        self.next = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    async def call(self, commands: list[tuple[str, Any] | None]) -> list[Any]:
        loop = asyncio.get_running_loop()
        used = []
        for pipe, command in zip(self.pipes, commands, strict=True):
            if command is not None:
                pipe.send(command)
                used.append(pipe)
        return list(await asyncio.gather(*(loop.run_in_executor(None, p.recv) for p in used)))

    async def add(self, count: int, first_index: int) -> dict[str, Any]:
        per: list[list[int]] = [[] for _ in self.pipes]
        for i in range(count):
            per[self.next].append(first_index + i)
            self.next = (self.next + 1) % len(self.pipes)
        replies = await self.call([("add", ids) if ids else None for ids in per])
        return {
            "added": sum(r["added"] for r in replies),
            "failed": [f for r in replies for f in r["failed"]],
            "no_video": sum(r["no_video"] for r in replies),
        }

    async def broadcast(self, command: str) -> list[Any]:
        return await self.call([(command, None)] * len(self.pipes))

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.broadcast("close"), 30)
        except Exception:
            pass
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.terminate()


# =====================================================================================
# Publisher side (this process)
# =====================================================================================
class SendProbe:
    """Wraps the publisher transport's ``_send_rtp`` to stamp every video payload."""

    def __init__(self, transport: Any, video_ssrc: int) -> None:
        self.video_ssrc = video_ssrc
        self.sent: dict[int, float] = {}
        self.video = 0
        self.audio = 0
        self.video_bytes = 0
        original = transport._send_rtp

        async def send_rtp(data: bytes) -> None:
            payload = rtp_payload(data)
            if payload is not None:
                if ssrc_of(data) == self.video_ssrc:
                    self.sent[payload_key(payload)] = time.time()
                    self.video += 1
                    self.video_bytes += len(payload)
                else:
                    self.audio += 1
            await original(data)

        transport._send_rtp = send_rtp

    def counts(self) -> tuple[int, int, int]:
        return self.video, self.audio, self.video_bytes


def clip_tracks() -> dict[str, Any]:
    from conference.tools.testmedia import PacketTrack, cached_clip, load_packets

    video = cached_clip("vp8", **CLIP)
    audio = cached_clip("opus", seconds=CLIP["seconds"])
    return {
        "camera": PacketTrack(load_packets(video), "video"),
        "microphone": PacketTrack(load_packets(audio), "audio"),
    }


def probe_publisher(pc: Any) -> SendProbe:
    video = next(t for t in pc.getTransceivers() if t.kind == "video")
    return SendProbe(video.sender.transport, video.sender._ssrc)


async def sfu_publisher(url: str) -> tuple[Any, SendProbe]:
    from conference.tokens import create_token
    from conference.tools.client import Client

    token = create_token(
        SECRET,
        meeting=MEETING,
        identity="huyen",
        name="UBND huyện",
        role="chair",
        ttl=datetime.timedelta(hours=2),
    )
    client = Client(url, MEETING, token, decode=False)
    await client.connect(auto_subscribe=False)
    await client.publish(clip_tracks(), codec="vp8")
    assert client.publisher is not None
    return client, probe_publisher(client.publisher)


async def baseline_publisher(url: str) -> tuple[Any, SendProbe]:
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from conference.tools.testmedia import prefer_codec

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks = clip_tracks()
    video = pc.addTransceiver(tracks["camera"], direction="sendonly")
    prefer_codec(video, "video/VP8")
    pc.addTransceiver(tracks["microphone"], direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url + "/publish",
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as response:
            response.raise_for_status()
            answer = await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    class Closer:
        async def leave(self) -> None:
            await pc.close()

    return Closer(), probe_publisher(pc)


# =====================================================================================
# Measurement
# =====================================================================================
async def measure(
    n: int, server_pid: int, workers: Workers, probe: SendProbe, warmup: float, seconds: float
) -> dict[str, Any]:
    await asyncio.sleep(warmup)
    meter = CpuMeter([server_pid, os.getpid(), *workers.pids])
    await workers.broadcast("mark")
    v0, a0, b0 = probe.counts()
    busy0, udp0, split0 = machine_busy(), udp_errors(), cpu_split(server_pid)
    meter.start()
    await asyncio.sleep(seconds)
    wall, usage = meter.stop()
    busy1, udp1, split1 = machine_busy(), udp_errors(), cpu_split(server_pid)
    v1, a1, b1 = probe.counts()
    replies = await workers.broadcast("report")
    subs = [s for r in replies for s in r["subscribers"]]

    delays: list[float] = []
    unmatched = 0
    sent = probe.sent
    losses_final, losses_raw = [], []
    pkts = 0
    frames = 0
    video_bytes = 0
    repaired = 0
    for s in subs:
        pkts += s["video_packets"] + s["audio_packets"]
        frames += s["frames"]
        video_bytes += s["video_bytes"]
        repaired += s["video_repaired"]
        if s["expected"]:
            losses_final.append(s["loss_pct"] / 100)
            losses_raw.append(s["raw_loss_pct"] / 100)
        for key, arrived in s["arrivals"]:
            t = sent.get(key)
            if t is None:
                unmatched += 1
            else:
                delays.append((arrived - t) * 1000)
    delays.sort()
    server_cpu = usage[server_pid]
    bench_cpu = sum(v for pid, v in usage.items() if pid != server_pid)
    pub_video_pps = (v1 - v0) / wall
    pub_audio_pps = (a1 - a0) / wall
    result = {
        "subscribers": n,
        "connected": len(subs),
        "wall_s": round(wall, 2),
        "server_cpu_pct": round(server_cpu, 2),
        "server_user_pct": round((split1[0] - split0[0]) / wall * 100, 1),
        "server_sys_pct": round((split1[1] - split0[1]) / wall * 100, 1),
        "server_cpu_pct_per_sub": round(server_cpu / n, 3) if n else None,
        "bench_cpu_pct": round(bench_cpu, 1),
        "bench_cpu_pct_by_pid": {str(k): round(v, 1) for k, v in usage.items() if k != server_pid},
        "publisher_video_pps": round(pub_video_pps, 1),
        "publisher_audio_pps": round(pub_audio_pps, 1),
        "publisher_video_kbps": round((b1 - b0) * 8 / wall / 1000, 1),
        "forwarded_pps": round(pkts / wall, 1),
        "expected_pps": round(n * (pub_video_pps + pub_audio_pps), 1),
        "per_sub_video_kbps": round(video_bytes * 8 / wall / 1000 / n, 1) if n else None,
        "per_sub_fps": round(frames / wall / n, 1) if n else None,
        "loss_final_pct_mean": round(100 * sum(losses_final) / len(losses_final), 3)
        if losses_final
        else None,
        "loss_final_pct_max": round(100 * max(losses_final), 3) if losses_final else None,
        "loss_raw_pct_mean": round(100 * sum(losses_raw) / len(losses_raw), 3)
        if losses_raw
        else None,
        "loss_raw_pct_max": round(100 * max(losses_raw), 3) if losses_raw else None,
        "retransmitted_received": repaired,
        "machine_busy_pct": round((busy1 - busy0) / wall * 100, 1),
        "others_cpu_pct": round((busy1 - busy0) / wall * 100 - server_cpu - bench_cpu, 1),
        "udp_rcvbuf_errors": {k: udp1[k] - udp0[k] for k in udp0},
        "worker_lag_p99_ms": max((r["lag_p99_ms"] or 0) for r in replies) if replies else None,
        "worker_lag_max_ms": max((r["lag_max_ms"] or 0) for r in replies) if replies else None,
        "delay_samples": len(delays),
        "delay_unmatched": unmatched,
    }
    if delays:
        result.update(
            delay_p50_ms=round(percentile(delays, 0.50), 2),
            delay_p90_ms=round(percentile(delays, 0.90), 2),
            delay_p99_ms=round(percentile(delays, 0.99), 2),
            delay_max_ms=round(delays[-1], 2),
        )
    return result


async def profile_processes(
    targets: dict[str, int], seconds: float, prefix: Path
) -> dict[str, Any]:
    """Sample ``targets`` with py-spy (raw collapsed stacks) and summarise each."""
    from bench.pyspy_summary import summarise

    prefix.parent.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, pid in targets.items():
        out = Path(f"{prefix}-{name}.txt")
        procs[name] = (
            out,
            await asyncio.create_subprocess_exec(
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            ),
        )
    summaries = {}
    for name, (out, proc) in procs.items():
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            summaries[name] = {"error": err.decode(errors="replace")[-500:]}
            continue
        summaries[name] = summarise(out, top=25)
        summaries[name]["file"] = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
        print(f"  profile {name}: {summaries[name]['samples']} samples -> {out}", flush=True)
        for item in summaries[name]["self"][:12]:
            print(f"     self {item['share_pct']:5.1f}%  {item['function']}", flush=True)
    return summaries


async def cprofile_window(
    server: Any, prof_file: Path, seconds: float, keep: Path
) -> dict[str, Any]:
    """Profile the server (CPU-time cProfile, see bench/profile_server.py) for ``seconds``."""
    import pstats
    import shutil
    import signal as sig

    prof_file.unlink(missing_ok=True)
    cpu0 = cpu_seconds(server.pid)
    server.process.send_signal(sig.SIGUSR1)
    await asyncio.sleep(seconds)
    server.process.send_signal(sig.SIGUSR2)
    cpu1 = cpu_seconds(server.pid)
    for _ in range(100):
        if prof_file.exists() and prof_file.stat().st_size:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(prof_file, keep)
    stats = pstats.Stats(str(keep))
    total = stats.total_tt  # type: ignore[attr-defined]

    def name(func: tuple[str, int, str]) -> str:
        path, line, function = func
        short = "/".join(Path(path).parts[-2:]) if path not in ("~",) else ""
        return f"{function} ({short}:{line})" if short else function

    rows = []
    for func, (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((name(func), nc, tt, ct))
    by_self = sorted(rows, key=lambda r: -r[2])[:25]
    by_incl = sorted(rows, key=lambda r: -r[3])[:40]
    summary = {
        "file": str(keep.relative_to(ROOT) if keep.is_relative_to(ROOT) else keep),
        "profiled_cpu_s": round(total, 3),
        "process_cpu_s": round(cpu1 - cpu0, 3),
        "self": [
            {"function": f, "calls": nc, "self_pct": round(100 * tt / total, 1)}
            for f, nc, tt, _ in by_self
        ],
        "inclusive": [
            {"function": f, "calls": nc, "incl_pct": round(100 * ct / total, 1)}
            for f, nc, _, ct in by_incl
        ],
    }
    print(
        f"  cProfile (CPU time) {summary['profiled_cpu_s']} s of {summary['process_cpu_s']} s -> {keep}"
    )
    for item in summary["self"][:15]:
        print(f"     self {item['self_pct']:5.1f}%  {item['calls']:>8}  {item['function']}")
    return summary


def show(row: dict[str, Any]) -> None:
    def f(key: str, fmt: str = "{}") -> str:
        v = row.get(key)
        return "-" if v is None else fmt.format(v)

    print(
        f"  N={row['subscribers']:>3} conn={row['connected']:>3} server={f('server_cpu_pct', '{:.1f}')}% (sys {f('server_sys_pct')})"
        f" per-sub={f('server_cpu_pct_per_sub', '{:.3f}')}% bench={f('bench_cpu_pct', '{:.0f}')}%"
        f" pps={f('forwarded_pps', '{:.0f}')}/{f('expected_pps', '{:.0f}')}"
        f" kbps/sub={f('per_sub_video_kbps')} fps/sub={f('per_sub_fps')}"
        f" loss final/raw={f('loss_final_pct_mean')}/{f('loss_raw_pct_mean')}%"
        f" delay p50/p99={f('delay_p50_ms')}/{f('delay_p99_ms')} ms"
        f" | machine={f('machine_busy_pct', '{:.0f}')}% others={f('others_cpu_pct', '{:.0f}')}%"
        f" udp-drops={row.get('udp_rcvbuf_errors', {}).get('RcvbufErrors', '-')}"
        f" worker-lag p99/max={f('worker_lag_p99_ms', '{:.1f}')}/{f('worker_lag_max_ms', '{:.0f}')} ms",
        flush=True,
    )


def add_slopes(rows: list[dict[str, Any]]) -> None:
    previous = None
    for row in rows:
        if previous is not None and row["subscribers"] > previous["subscribers"]:
            row["marginal_pct_per_sub"] = round(
                (row["server_cpu_pct"] - previous["server_cpu_pct"])
                / (row["subscribers"] - previous["subscribers"]),
                3,
            )
        previous = row


async def run_series(
    mode: str, counts: list[int], args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    cprofile_at = set(ints(args.cprofile_at)) if mode == "sfu" else set()
    results_dir = Path(args.json).parent if args.json else ROOT / "bench" / "results"
    if not results_dir.is_absolute():
        results_dir = ROOT / results_dir
    prof_file = tmp / "server.prof"
    if mode == "sfu":
        wrapper = (
            [str(ROOT / "bench" / "profile_server.py"), str(prof_file)] if cprofile_at else None
        )
        server = start_conference_server(tmp, wrapper=wrapper)
    else:
        command = [sys.executable, str(ROOT / "bench" / "baseline_relay.py"), "--port", "0"]
        if args.baseline_unbuffered:
            command.append("--unbuffered")
        server = start_process(command, tmp / "baseline.log")
    print(f"{mode}: server pid {server.pid} on {server.url}", flush=True)
    workers = Workers(args.workers, mode, server.url)
    rows: list[dict[str, Any]] = []
    publisher = None
    profile_at = (
        set(ints(args.profile_at)) if mode == "sfu" else set(ints(args.profile_baseline_at))
    )
    try:
        publisher, probe = await (sfu_publisher if mode == "sfu" else baseline_publisher)(
            server.url
        )
        deadline = time.monotonic() + 15
        while probe.video == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        have = 0
        for n in counts:
            if n > have:
                started = time.monotonic()
                added = await workers.add(n - have, have)
                have += added["added"]
                print(
                    f"  added {added['added']} subscribers in {time.monotonic() - started:.1f} s"
                    f" (failed {len(added['failed'])}, without video {added['no_video']})",
                    flush=True,
                )
                if added["failed"]:
                    print("   ", added["failed"][:3], flush=True)
            row = await measure(n, server.pid, workers, probe, args.warmup, args.seconds)
            row["mode"] = mode
            rows.append(row)
            show(row)
            if n in cprofile_at:
                row["cprofile"] = await cprofile_window(
                    server, prof_file, args.profile_seconds, results_dir / f"cprofile-sfu-n{n}.prof"
                )
            if n in profile_at:
                # a separate window: py-spy's sampling must not disturb the measurement
                targets = {"server": server.pid, "worker0": workers.pids[0]}
                row["profiles"] = await profile_processes(
                    targets, args.profile_seconds, results_dir / f"profile-{mode}-n{n}"
                )
            if server.process.poll() is not None:
                raise RuntimeError("server exited:\n" + server.log()[-3000:])
    finally:
        await workers.close()
        if publisher is not None:
            try:
                await asyncio.wait_for(publisher.leave(), 10)
            except Exception:
                pass
        code = server.stop()
        log = server.log()
        problems = [line for line in log.splitlines() if "Traceback" in line or "ERROR" in line]
    add_slopes(rows)
    return {"rows": rows, "server_exit_code": code, "server_log_problems": problems[:20]}


def markdown(result: dict[str, Any]) -> str:
    def v(row: dict[str, Any], key: str, fmt: str = "{}") -> str:
        x = row.get(key)
        return "–" if x is None else fmt.format(x)

    lines = [
        "| N | server CPU % of a core (sys) | per subscriber % | marginal %/sub | forwarded pkts/s"
        " (expected) | kbps/sub | loss final / raw % (max) | delay p50 / p99 ms | bench CPU % | others % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["sfu"]["rows"]:
        lines.append(
            f"| {r['subscribers']} | {v(r, 'server_cpu_pct', '{:.1f}')} ({v(r, 'server_sys_pct', '{:.1f}')}) | {v(r, 'server_cpu_pct_per_sub', '{:.3f}')}"
            f" | {v(r, 'marginal_pct_per_sub', '{:.3f}')} | {v(r, 'forwarded_pps', '{:.0f}')} ({v(r, 'expected_pps', '{:.0f}')})"
            f" | {v(r, 'per_sub_video_kbps', '{:.0f}')}"
            f" | {v(r, 'loss_final_pct_mean', '{:.3f}')} / {v(r, 'loss_raw_pct_mean', '{:.3f}')} ({v(r, 'loss_raw_pct_max', '{:.2f}')})"
            f" | {v(r, 'delay_p50_ms', '{:.1f}')} / {v(r, 'delay_p99_ms', '{:.1f}')} | {v(r, 'bench_cpu_pct', '{:.0f}')}"
            f" | {v(r, 'others_cpu_pct', '{:.0f}')} |"
        )
    if result.get("baseline"):
        lines += [
            "",
            "| N | baseline CPU % of a core (sys) | per subscriber % | marginal %/sub | fps/sub | kbps/sub | loss final % | others % |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["baseline"]["rows"]:
            lines.append(
                f"| {r['subscribers']} | {v(r, 'server_cpu_pct', '{:.1f}')} ({v(r, 'server_sys_pct', '{:.1f}')}) | {v(r, 'server_cpu_pct_per_sub', '{:.2f}')}"
                f" | {v(r, 'marginal_pct_per_sub', '{:.2f}')} | {v(r, 'per_sub_fps')} | {v(r, 'per_sub_video_kbps', '{:.0f}')}"
                f" | {v(r, 'loss_final_pct_mean', '{:.2f}')} | {v(r, 'others_cpu_pct', '{:.0f}')} |"
            )
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()}) if text else []


async def main() -> None:
    parser = argparse.ArgumentParser(description="SFU forwarding benchmark (see module doc)")
    parser.add_argument("--subscribers", default="0,1,5,10,20,40,50")
    parser.add_argument(
        "--baseline", default="1,2,4,8", help="subscriber counts for the baseline ('' skips it)"
    )
    parser.add_argument(
        "--baseline-unbuffered",
        action="store_true",
        help="baseline MediaRelay with buffered=False (drops frames when behind)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default="bench/results/forwarding.json")
    parser.add_argument(
        "--profile-at",
        default="",
        help="subscriber counts after which py-spy samples "
        "the server and worker 0 for --profile-seconds (a separate, unmeasured window)",
    )
    parser.add_argument("--profile-baseline-at", default="")
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument(
        "--cprofile-at",
        default="",
        help="subscriber counts after which the server "
        "(started under bench/profile_server.py) is profiled with a CPU-time cProfile",
    )
    args = parser.parse_args()

    from conference.sfu.bridge import configure_ice_hosts

    configure_ice_hosts(["127.0.0.1"])
    clip_tracks()  # encode the clip into the cache before anything is timed
    result: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "clip": CLIP,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "workers": args.workers,
            "baseline_unbuffered": args.baseline_unbuffered,
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        counts = ints(args.subscribers)
        if counts:
            result["sfu"] = await run_series("sfu", counts, args, Path(tmp) / "sfu")
        baseline = ints(args.baseline)
        if baseline:
            result["baseline"] = await run_series(
                "baseline", baseline, args, Path(tmp) / "baseline"
            )
    if result.get("sfu") and result.get("baseline"):
        ours = {r["subscribers"]: r for r in result["sfu"]["rows"]}
        ratios = {}
        for r in result["baseline"]["rows"]:
            mine = ours.get(r["subscribers"])
            if mine and mine.get("server_cpu_pct_per_sub"):
                ratios[r["subscribers"]] = round(
                    r["server_cpu_pct_per_sub"] / mine["server_cpu_pct_per_sub"], 1
                )
        result["ratio_baseline_over_sfu_per_sub"] = ratios
    if args.json:
        path = Path(args.json)
        if not path.is_absolute():
            path = ROOT / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")
    if result.get("sfu"):
        print(markdown(result))
    if result.get("ratio_baseline_over_sfu_per_sub"):
        print("baseline/sfu CPU per subscriber:", result["ratio_baseline_over_sfu_per_sub"])


if __name__ == "__main__":
    asyncio.run(main())
