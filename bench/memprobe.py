"""Run ``conference serve`` with a memory probe: where does the server's RSS go?

    python -m bench.memprobe OUT.jsonl serve --host 127.0.0.1 --port 0 ...

A daemon thread writes one JSON line to OUT.jsonl every
``MEMPROBE_INTERVAL`` seconds (default 10): the process's RSS and its
anonymous / file parts (``/proc/self/status``), glibc's ``mallinfo2`` (bytes
in use by malloc, bytes free inside its arenas, mmapped bytes, number of
arenas), Python's own heap as far as ``sys.getallocatedblocks`` sees it, the
thread count and, every ``MEMPROBE_OBJECTS`` samples (default 3; 0 = never),
the twenty most numerous object types from ``gc.get_objects``.  Reading the
lines side by side says whether growth is Python objects (counts grow), memory
freed but kept by malloc (``free`` grows: fragmentation), or memory malloc
handed out to C code (``in_use`` grows while Python's blocks do not).

``MEMPROBE_TRIM=SECONDS`` also calls ``malloc_trim(0)`` that often (a
diagnostic for the fragmentation hypothesis).  ``MEMPROBE_TRACEMALLOC=1``
starts ``tracemalloc`` and logs the top growing allocation sites between
samples (slow: only for small runs).  ``MEMPROBE_PROFILE=OUT.prof`` adds the
CPU-time cProfile of ``bench/profile_server.py`` (SIGUSR1 starts it, SIGUSR2
writes OUT.prof), for a profile in the middle of a soak run.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


def status_kb() -> dict[str, int]:
    """The memory lines of /proc/self/status, in kB."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmData", "Threads", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def sample(libc: Any, count_objects: bool) -> dict[str, Any]:
    """One probe sample."""
    row: dict[str, Any] = {"t": time.time(), **status_kb()}
    if libc is not None:
        info = libc.mallinfo2()
        row["malloc_in_use_kb"] = (info.uordblks + info.hblkhd) // 1024
        row["malloc_free_kb"] = info.fordblks // 1024
        row["malloc_mmap_kb"] = info.hblkhd // 1024
        row["malloc_arena_kb"] = info.arena // 1024
    row["py_blocks"] = sys.getallocatedblocks()
    if count_objects:
        counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
        row["objects"] = dict(counts.most_common(20))
        row["objects_total"] = sum(counts.values())
    return row


def probe(path: str, interval: float, objects_every: int, trim_every: float) -> None:
    libc = _libc()
    snapshot = None
    tracing = os.environ.get("MEMPROBE_TRACEMALLOC") == "1"
    if tracing:
        import tracemalloc

        tracemalloc.start(4)
    last_trim = time.monotonic()
    n = 0
    with open(path, "a") as out:
        while True:
            time.sleep(interval)
            n += 1
            if trim_every and libc is not None and time.monotonic() - last_trim >= trim_every:
                libc.malloc_trim(0)
                last_trim = time.monotonic()
            row = sample(libc, objects_every > 0 and n % objects_every == 0)
            if tracing:
                import tracemalloc

                current = tracemalloc.take_snapshot()
                row["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
                if snapshot is not None:
                    top = current.compare_to(snapshot, "lineno")[:8]
                    row["tracemalloc_growth"] = [str(s) for s in top]
                snapshot = current
            out.write(json.dumps(row) + "\n")
            out.flush()


def main() -> int:
    out = sys.argv[1]
    interval = float(os.environ.get("MEMPROBE_INTERVAL", "10"))
    objects_every = int(os.environ.get("MEMPROBE_OBJECTS", "3"))
    trim_every = float(os.environ.get("MEMPROBE_TRIM", "0"))
    thread = threading.Thread(
        target=probe, args=(out, interval, objects_every, trim_every), daemon=True
    )
    thread.start()
    profile_out = os.environ.get("MEMPROBE_PROFILE")
    if profile_out:
        from bench.profile_server import install_signal_profiler

        install_signal_profiler(profile_out)
    from conference.cli import main as cli_main

    args = sys.argv[2:]
    if args and args[0] == "conference":
        args = args[1:]
    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
