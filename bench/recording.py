"""Recording benchmark: server CPU per recorded 720p VP8 track, and disk written per hour.

Usage::

    python bench/recording.py [--tracks 2] [--seconds 15] [--rounds 2] [--warmup 3]
        [--json bench/results/recording.json]

What runs (all on 127.0.0.1):

* the server: ``python -m conference serve`` as a subprocess (log level warning);
* this process: ``--tracks`` publishers, each replaying the benchmark clip
  (1280x720, 30 fps, ~1.5 Mbps VP8; ``conference.tools.testmedia.PacketTrack``, never
  re-encoded) as a camera, video only, with ``auto_subscribe=False`` so the
  server forwards nothing to anyone: the only work besides receiving is the
  recorder's.  The first publisher is the chair and sends ``record-start`` /
  ``record-stop`` over the real signaling protocol.

Measured, alternating ``--rounds`` times between "not recording" and
"recording" windows of ``--seconds`` each (after ``--warmup`` seconds):

* server CPU (utime+stime of its process, /proc/<pid>/stat) as % of one core;
  recording cost per track = (recording - not recording) / tracks, averaged
  over the rounds;
* disk: bytes the recordings directory grew during the recording windows, and
  the server's ``write_bytes`` from /proc/<pid>/io (what reached the block
  layer, if the kernel exposes it), both scaled to one track-hour;
* after the run the files are decoded here (frame count, errors) to show the
  recording was complete.

The clip's keyframe interval is 2 s and a PacketTrack cannot honour keyframe
requests, so each file starts at the next keyframe after ``record-start``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CLIP,
    SECRET,
    CpuMeter,
    machine_busy,
    start_conference_server,
)

MEETING = "bench-recording"


def _write_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def _publisher(url: str, index: int) -> Any:
    from conference.tokens import create_token
    from conference.tools.client import Client
    from conference.tools.testmedia import PacketTrack, cached_clip, load_packets

    token = create_token(
        SECRET,
        meeting=MEETING,
        identity=f"xa{index}",
        name=f"UBND xã {index}",
        role="chair" if index == 0 else "point",
        ttl=datetime.timedelta(hours=2),
    )
    client = Client(url, MEETING, token, decode=False)
    await client.connect(auto_subscribe=False)
    video = cached_clip("vp8", **CLIP)
    await client.publish({"camera": PacketTrack(load_packets(video), "video")}, codec="vp8")
    return client


async def _window(pid: int, seconds: float) -> tuple[float, float]:
    """(server % of one core, others' % of the machine) over ``seconds``."""
    meter = CpuMeter([pid])
    busy = machine_busy()
    meter.start()
    await asyncio.sleep(seconds)
    wall, usage = meter.stop()
    others = (machine_busy() - busy) / wall * 100 - usage[pid]
    return usage[pid], others


def _decode(root: Path) -> list[dict[str, Any]]:
    import av

    files = []
    for path in sorted(root.rglob("*.webm")):
        frames, errors = 0, 0
        with av.open(str(path)) as container:
            for packet in container.demux(video=0):
                try:
                    frames += len(packet.decode())
                except av.FFmpegError:
                    errors += 1
            duration = (container.duration or 0) / 1e6
        files.append(
            {
                "file": path.name,
                "bytes": path.stat().st_size,
                "frames": frames,
                "errors": errors,
                "seconds": duration,
            }
        )
    return files


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_conference_server(tmp)
        clients = []
        try:
            for index in range(args.tracks):
                clients.append(await _publisher(server.url, index))
            chair = clients[0]
            await asyncio.sleep(args.warmup)
            rounds = []
            recordings = tmp / "recordings"
            grown = 0
            written = 0
            recorded_seconds = 0.0
            for number in range(args.rounds):
                idle, idle_others = await _window(server.pid, args.seconds)
                await chair.request({"type": "record-start"}, "recording")
                await asyncio.sleep(args.warmup)
                size_before = _dir_bytes(recordings)
                io_before = _write_bytes(server.pid)
                start = time.monotonic()
                busy, busy_others = await _window(server.pid, args.seconds)
                recorded_seconds += time.monotonic() - start
                grown += _dir_bytes(recordings) - size_before
                io_after = _write_bytes(server.pid)
                if io_before is not None and io_after is not None:
                    written += io_after - io_before
                await chair.request({"type": "record-stop"}, "recording")
                row = {
                    "round": number + 1,
                    "idle_cpu": round(idle, 2),
                    "recording_cpu": round(busy, 2),
                    "per_track": round((busy - idle) / args.tracks, 2),
                    "others_idle": round(idle_others, 1),
                    "others_recording": round(busy_others, 1),
                }
                print(json.dumps(row), flush=True)
                rounds.append(row)
                await asyncio.sleep(1.0)
        finally:
            for client in clients:
                await client.leave()
            server.stop()
        track_hours = recorded_seconds * args.tracks / 3600
        per_track = sum(r["per_track"] for r in rounds) / len(rounds)
        return {
            "clip": CLIP,
            "tracks": args.tracks,
            "seconds": args.seconds,
            "rounds": rounds,
            "per_track_cpu_percent": round(per_track, 2),
            "idle_cpu_percent": round(sum(r["idle_cpu"] for r in rounds) / len(rounds), 2),
            "recording_cpu_percent": round(
                sum(r["recording_cpu"] for r in rounds) / len(rounds), 2
            ),
            "file_bytes_per_track_hour": round(grown / track_hours) if track_hours else None,
            "disk_write_bytes_per_track_hour": round(written / track_hours)
            if track_hours and written
            else None,
            "files": _decode(recordings) if recordings.exists() else [],
        }


def micro(seconds: float = 60.0) -> dict[str, Any]:
    """The recorder's own work without a server: CPU per second of recorded media.

    The clip's packets are packetized here (aiortc's VP8 packetizer, as the
    publisher would), then pushed through ``VideoAssembler`` and
    ``TrackWriter`` exactly as ``TrackRecorder.on_packet`` does; only that
    part is timed (``time.process_time``), so neighbours on the machine do
    not count.
    """
    from aiortc.codecs.vpx import Vp8Encoder

    from conference.recording.depacketize import VideoAssembler
    from conference.recording.writer import TrackWriter
    from conference.tools.testmedia import cached_clip, load_packets

    clip = load_packets(cached_clip("vp8", **CLIP))
    frame_ticks = 90000 // CLIP["fps"]
    packets: list[tuple[int, int, bool, bytes]] = []
    seq = 0
    loops = max(1, round(seconds / CLIP["seconds"]))
    for loop in range(loops):
        for index, record in enumerate(clip):
            timestamp = (loop * len(clip) + index) * frame_ticks
            payloads = Vp8Encoder._packetize(record.data, (loop * len(clip) + index) & 0x7FFF)
            for i, payload in enumerate(payloads):
                packets.append((seq & 0xFFFF, timestamp, i == len(payloads) - 1, payload))
                seq += 1
    media_seconds = loops * len(clip) / CLIP["fps"]
    with tempfile.TemporaryDirectory(prefix="bench-recording-micro-") as tmp:
        assembler = VideoAssembler("vp8")
        writer = TrackWriter(Path(tmp) / "micro.webm", "vp8", 90000)
        start = time.process_time()
        now = time.monotonic()
        for sequence_number, timestamp, marker, payload in packets:
            for frame in assembler.push(sequence_number, timestamp, marker, payload, now):
                writer.write(frame.data, frame.timestamp, frame.keyframe, frame.size)
        writer.close()
        cpu = time.process_time() - start
        size = (Path(tmp) / "micro.webm").stat().st_size
    return {
        "media_seconds": media_seconds,
        "packets": len(packets),
        "frames": writer.frames,
        "cpu_seconds": round(cpu, 3),
        "percent_of_a_core": round(cpu / media_seconds * 100, 3),
        "microseconds_per_packet": round(cpu / len(packets) * 1e6, 1),
        "file_bytes_per_hour": round(size / media_seconds * 3600),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=2, help="recorded video tracks")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window")
    parser.add_argument("--rounds", type=int, default=2, help="idle/recording pairs")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--json", default="bench/results/recording.json")
    parser.add_argument("--micro-only", action="store_true", help="only the in-process part")
    args = parser.parse_args()
    recorder_only = micro()
    print("recorder alone:", json.dumps(recorder_only), flush=True)
    if args.micro_only:
        return
    result = asyncio.run(run(args)) | {"recorder_alone": recorder_only}
    print(json.dumps({k: v for k, v in result.items() if k != "files"}, indent=2))
    for file in result["files"]:
        print(file)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
