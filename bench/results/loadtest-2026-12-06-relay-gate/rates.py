"""Relayed media per second from run.sh's metrics file: the median of the per-second
rates over the seconds where audio was relayed (the load test's window and its joins).

    python rates.py PREFIX-metrics.txt
"""

import statistics
import sys
from collections import defaultdict

samples: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
for line in open(sys.argv[1]):
    when, node, name, value = line.split()
    samples[(node, name)].append((float(when), float(value)))

rates: dict[str, list[float]] = defaultdict(list)
for (node, name), points in sorted(samples.items()):
    if "_total{" not in name and not name.endswith("_total"):
        continue
    per_second = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(points, points[1:], strict=False)]
    busy = [rate for rate in per_second if rate > 0]
    # the steady part: drop the first and last 3 busy seconds (joins, leaves)
    steady = busy[3:-3] if len(busy) > 8 else busy
    if steady:
        print(f"{node} {name:70s} {statistics.median(steady):10.1f}/s (n={len(steady)})")
