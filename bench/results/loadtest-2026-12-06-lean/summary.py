"""Summarise the alternating runs: the generator's CPU per simulated participant and per
packet, per side (before / after) and size.

    python bench/results/loadtest-2026-12-06-lean/summary.py RAW_DIR [--json OUT]

RAW_DIR holds the runs' reports (SIDE-POINTS-ROUND.json, as alternate.sh names them);
``--json`` writes the per-run figures (the full reports are ~200 kB each: not kept).
"""

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def figures(report: dict[str, Any]) -> dict[str, Any]:
    g, v = report["generator"], report["video"]
    joined = report["participants"]["joined"]
    return {
        "joined": joined,
        "generator_cpu_pct": g["cpu_pct"],
        "per_participant_pct": round(g["cpu_pct"] / joined, 3) if joined else None,
        "us_per_packet": g.get("cpu_us_per_packet"),
        "packets_per_s": (g.get("packets_received_per_s") or 0)
        + (g.get("packets_sent_per_s") or 0),
        "headers_read_pct": g.get("headers_read_pct"),
        "lag_p99_ms": g.get("lag_p99_ms"),
        "machine_busy_pct": g.get("machine_busy_pct"),
        "others_pct": g.get("others_pct"),
        "server_cpu_pct": report["server"].get("cpu_pct"),
        "loss_pct": report["loss_pct"],
        "video_freezes": v.get("freezes"),
        "fps": v.get("fps_mean"),
        "join_p95_s": report["join"]["p95_s"],
        "floor_changes_detected": f"{report['speaker']['detected']} of "
        f"{report['speaker']['floor_changes']}",
    }


def joined(values: list[Any], form: str) -> str:
    return ", ".join("-" if value is None else format(value, form) for value in values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("raw", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[str, dict[str, Any]] = {}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for path in sorted(args.raw.glob("*-*-*.json")):
        side, points, _ = path.stem.rsplit("-", 2)
        runs[path.stem] = figures(json.loads(path.read_text()))
        groups.setdefault((side, int(points)), []).append(runs[path.stem])
    for (side, points), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per = [r["per_participant_pct"] for r in rows]
        us = [r["us_per_packet"] for r in rows]
        print(
            f"{side:6s} {points:3d} points: generator"
            f" {joined([r['generator_cpu_pct'] for r in rows], '.1f')} %;"
            f" per participant {joined(per, '.2f')} % (median {statistics.median(per):.2f});"
            f" per packet {joined(us, '.1f')} us"
            f" (median {statistics.median(u for u in us if u is not None):.1f});"
            f" packets/s {joined([r['packets_per_s'] for r in rows], ',')};"
            f" lag p99 {joined([r['lag_p99_ms'] for r in rows], '.0f')} ms;"
            f" others {joined([r['others_pct'] for r in rows], '.0f')} %;"
            f" loss {joined([r['loss_pct'] for r in rows], '.2f')} %;"
            f" freezes {joined([r['video_freezes'] for r in rows], 'd')};"
            f" join p95 {joined([r['join_p95_s'] for r in rows], '.2f')} s"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
