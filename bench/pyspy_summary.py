"""Summarise py-spy ``--format raw`` output (collapsed stacks) into top functions.

``python bench/pyspy_summary.py profile.txt [--top 25]`` prints, for the
sampled process, the functions with the largest *self* share (the frame at
the top of the stack) and the largest *inclusive* share (anywhere in the
stack), as % of all samples taken while the process was busy (py-spy leaves
idle samples out unless ``--idle`` is given).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    function, path = m.groups()
    parts = Path(path).parts
    for anchor in ("site-packages", "conference", "asyncio", "aiortc", "aioice"):
        if anchor in parts:
            i = parts.index(anchor)
            path = "/".join(parts[i + 1 if anchor == "site-packages" else i :])
            break
    else:
        path = Path(path).name
    return f"{function} ({path})"


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    self_count: Counter[str] = Counter()
    incl_count: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        frames = [
            _name(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        total += count
        self_count[frames[-1]] += count
        for name in set(frames):
            incl_count[name] += count

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "samples": v, "share_pct": round(100 * v / total, 1)}
            for k, v in counter.most_common(top)
        ]

    return {"samples": total, "self": table(self_count), "inclusive": table(incl_count)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    result = summarise(args.file, args.top)
    print(f"{result['samples']} samples")
    for kind in ("self", "inclusive"):
        print(f"\n{kind}:")
        for item in result[kind]:
            print(f"  {item['share_pct']:5.1f}%  {item['function']}")
