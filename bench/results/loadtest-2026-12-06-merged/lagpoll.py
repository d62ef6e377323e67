"""Poll the /metrics of a server that run.sh starts (workers behind one port: each
answer names its node) for its event-loop lag, every 0.5 s until it stops answering.

    python lagpoll.py OUT SECONDS   (start it just before run.sh)

Each line: time, node, the worst lag of its last 10 s
(``conference_event_loop_lag_max_seconds``), how many lags were at most 0.25 s, and
how many were measured (the histogram's bucket and count).
"""

from __future__ import annotations

import glob
import os
import re
import sys
import time
import urllib.request


def find_port(start: float, wait: float = 60.0) -> int | None:
    """The port of the server whose run.sh log appeared after ``start``."""
    deadline = time.time() + wait
    while time.time() < deadline:
        for path in glob.glob("/tmp/bw/srv-*/log.txt"):
            if os.path.getmtime(path) < start:
                continue
            found = re.search(r"listening on http://127.0.0.1:(\d+)", open(path).read())
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    return None


def value(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text, re.M)
    return found.group(1) if found else None


def main() -> None:
    port = find_port(time.time())
    if port is None:
        sys.exit("no server started")
    end = time.time() + float(sys.argv[2])
    with open(sys.argv[1], "w") as out:
        while time.time() < end:
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                text = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
                continue
            node = value(r'conference_info\{[^}]*node="([^"]+)"', text)
            lag = value(r"^conference_event_loop_lag_max_seconds(?:\{[^}]*\})? (\S+)", text)
            under = value(r'^conference_event_loop_lag_seconds_bucket\{le="0.25"\} (\S+)', text)
            count = value(r"^conference_event_loop_lag_seconds_count (\S+)", text)
            out.write(f"{time.time():.1f} {node} max {lag} le0.25 {under} count {count}\n")
            out.flush()
            time.sleep(0.5)


if __name__ == "__main__":
    main()
