"""Poll a server's /metrics (workers behind one port: each answer names its node) for
the event-loop lag: prints time, node, lag max over the last 10 s, and the count of lags
above 0.25 s from the histogram."""
import re, sys, time, urllib.request, glob, os
start = time.time()
deadline = time.time() + 60
port = None
while time.time() < deadline and port is None:
    for path in glob.glob("/tmp/bw/srv-*/log.txt"):
        if os.path.getmtime(path) < start: continue
        m = re.search(r"listening on http://127.0.0.1:(\d+)", open(path).read())
        if m: port = int(m.group(1))
    time.sleep(0.2)
out = open(sys.argv[1], "w")
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except Exception as exc:
        time.sleep(0.3); continue
    node = re.search(r'conference_info\{[^}]*node="([^"]+)"', text)
    lag = re.search(r"^conference_event_loop_lag_max_seconds(?:\{[^}]*\})? ([0-9.e+-]+)", text, re.M)
    over = re.search(r'^conference_event_loop_lag_seconds_bucket\{[^}]*le="0.25"[^}]*\} ([0-9.e+-]+)', text, re.M)
    count = re.search(r"^conference_event_loop_lag_seconds_count(?:\{[^}]*\})? ([0-9.e+-]+)", text, re.M)
    out.write(f"{time.time():.1f} {node and node.group(1)} max {lag and lag.group(1)} le0.25 {over and over.group(1)} count {count and count.group(1)}\n"); out.flush()
    time.sleep(0.5)
