"""Run ``conference serve`` with a CPU-time cProfile that signals switch on and off.

    python bench/profile_server.py OUT.prof serve --host 127.0.0.1 ...

SIGUSR1 starts profiling, SIGUSR2 stops it and writes OUT.prof (pstats
format).  The profiler's clock is ``time.process_time`` (CPU time of the
process), not wall time: on a shared 2-core machine a wall-clock sampler
(py-spy) charges the time the server spends preempted -- typically right
after a loopback ``sendto`` wakes a receiving process -- to whatever frame
was running, which inflates ``sendto``.  Outside the window the server runs
without any profiler.  cProfile's per-call overhead inflates Python-heavy
functions relative to C calls; read shares, not absolute times.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def install_signal_profiler(out: str) -> None:
    """SIGUSR1 starts a CPU-time cProfile of this process, SIGUSR2 writes it to ``out``."""
    profiler = cProfile.Profile(time.process_time)

    def start(*_: object) -> None:
        profiler.enable()

    def stop(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> int:
    install_signal_profiler(sys.argv[1])
    from conference.cli import main as cli_main

    args = sys.argv[2:]
    if args and args[0] == "conference":  # accept "... OUT.prof conference serve ..." too
        args = args[1:]
    return cli_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
