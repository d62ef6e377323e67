"""Python bytecodes the server executes per incoming packet, by function.

    python bench/bytecodes.py [--subscribers 2] [--packets 300] [--top 20]

The same setup as `bench/perpacket.py` (a publisher's connection and N subscribers',
real ICE/DTLS/SRTP on 127.0.0.1, a 1,100-byte VP8 payload with MID, transport-wide
sequence number and abs-send-time), but instead of CPU time it counts the bytecode
instructions CPython runs (``sys.settrace`` with opcode events) while the server
handles each packet, over ``--packets`` packets (transport-cc feedback, built every
100 ms, is spread over them).  Time on this shared 2-core machine varies by a factor
of two from one minute to the next; the count does not, so it shows what a change to
the Python on the per-packet path does, apart from the C and the kernel below it
(SRTP, ``sendto``), which it does not see.  With ``PYTHONPATH`` set the ``conference``
package comes from there (a "before" checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import perpacket  # noqa: E402

from conference.sfu.bridge import configure_ice_hosts  # noqa: E402


def counted(function: Any, *args: Any) -> Counter[str]:
    """Bytecodes run by ``function(*args)``, by the function that ran them."""
    counts: Counter[str] = Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            counts[frame.f_code.co_qualname] += 1
        return tracer

    sys.settrace(tracer)
    try:
        function(*args)
    finally:
        sys.settrace(None)
    return counts


async def run(subscribers: int, packets: int) -> Counter[str]:
    configure_ice_hosts(["127.0.0.1"])
    bench = perpacket.Bench()
    await bench.start()
    try:
        while len(bench.subscriptions) < subscribers:
            await bench.add_subscriber()
        await bench.measure(200)  # warm-up
        total: Counter[str] = Counter()
        for _ in range(packets):
            total += counted(bench.deliver, bench.datagram(perpacket.PAYLOAD), 1)
            await bench.drain()
        return total
    finally:
        await bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--packets", type=int, default=300)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    from conference.sfu.udp import PortRangeEventLoop  # the server's event loop

    with asyncio.Runner(loop_factory=PortRangeEventLoop) as runner:
        total = runner.run(run(args.subscribers, args.packets))
    print(
        f"bytecodes per incoming packet, {args.subscribers} subscriber(s): "
        f"{sum(total.values()) / args.packets:.0f}"
    )
    for name, count in total.most_common(args.top):
        print(f"{count / args.packets:8.1f}  {name}")


if __name__ == "__main__":
    main()
