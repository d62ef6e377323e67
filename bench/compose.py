"""Composition benchmark: how much faster than real time one recording is composed.

Usage::

    python bench/compose.py [--seconds 60] [--tracks 3] [--workdir DIR]
        [--nice 0] [--preset veryfast] [--json bench/results/compose.json]

What runs (in this process, like the background job does in its own):

* a synthetic meeting is written first (``conference.tools.synthetic``;
  kept in ``--workdir`` and reused when it exists): ``--tracks`` participants,
  each a 1280x720 30 fps VP8 camera (~1.5 Mbps, barcode picture with a moving
  texture) and an Opus microphone, the first one the chair, the active speaker
  changing every 4 s with a silence every fifth turn;
* :func:`conference.recording.compose.compose` composes it to the 1280x720
  25 fps H.264 (libx264 ``superfast`` by default) + AAC MP4, with the SHA-256 checks.

Measured: wall time (speed = meeting seconds / wall seconds), this process's
CPU time (user + system, all threads: decoders, libx264, numpy), and the
machine's CPU used by others meanwhile (the machine is shared).  The cost per
output second is constant (every source is streamed, memory does not grow),
so a 30-minute meeting takes 1800 s / speed; the report prints that
extrapolation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_busy  # noqa: E402
from conference.recording.compose import PRESET, compose  # noqa: E402
from conference.tools.synthetic import Participant, write_recording  # noqa: E402


def _meeting(workdir: Path, seconds: float, tracks: int) -> Path:
    directory = workdir / "recordings" / "2026" / "11" / f"bench-{tracks}x{int(seconds)}"
    existing = sorted(directory.glob("*.manifest.json"))
    if existing:
        return existing[0]
    people = [
        Participant(
            f"p{k}",
            "chair" if k == 0 else "point",
            tone=440.0 + 110 * k,
            length=seconds,
            size=(1280, 720),
        )
        for k in range(tracks)
    ]
    speakers: list[tuple[float, str | None]] = []
    turn = 0
    at = 0.0
    while at < seconds:
        speakers.append((at, None if turn % 5 == 4 else f"p{turn % tracks}"))
        turn += 1
        at += 4.0
    started = time.monotonic()
    path = write_recording(directory, people, speakers, workdir / "key")
    print(f"wrote the synthetic meeting in {time.monotonic() - started:.0f} s: {directory}")
    return path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tracks", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/conference-bench-compose"))
    parser.add_argument("--nice", type=int, default=0, help="os.nice() before composing")
    parser.add_argument("--preset", default=PRESET, help=f"libx264 preset (default {PRESET})")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    manifest = _meeting(args.workdir, args.seconds, args.tracks)
    output = args.workdir / "bench.mp4"
    if args.nice:
        os.nice(args.nice)
    cpu0, busy0, wall0 = _cpu(), machine_busy(), time.monotonic()
    compose(manifest, output, preset=args.preset)
    wall = time.monotonic() - wall0
    cpu = _cpu() - cpu0
    others = max(0.0, machine_busy() - busy0 - cpu)
    speed = args.seconds / wall
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "meeting_seconds": args.seconds,
        "video_tracks": args.tracks,
        "source": "1280x720 30 fps VP8 ~1.5 Mbps + Opus per participant",
        "output": f"1280x720 25 fps H.264 {args.preset} crf 23 + AAC 96 kbit/s mono",
        "preset": args.preset,
        "wall_seconds": round(wall, 2),
        "speed_x_realtime": round(speed, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_cores_used": round(cpu / wall, 2),
        "cpu_seconds_per_meeting_second": round(cpu / args.seconds, 3),
        "others_cores_used": round(others / wall, 2),
        "load_average": os.getloadavg()[0],
        "output_bytes": output.stat().st_size,
        "extrapolated_30_min_seconds": round(1800 / speed),
        "nice": args.nice,
    }
    print(json.dumps(result, indent=2))
    print(
        f"{args.seconds:.0f} s meeting, {args.tracks} video tracks: composed in {wall:.1f} s "
        f"= {speed:.2f}x real time; CPU {cpu:.1f} s ({cpu / wall:.2f} cores); "
        f"30 min -> ~{1800 / speed / 60:.1f} min"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
