"""What the load tester's loop costs with nothing to do but tick every 2 ms (its pacer's
rate), 42 UDP sockets registered (20 points' and a chair's two connections):

    python bench/results/loadtest-2026-12-06-lean/idle_tick.py lean|plain

``lean``: LoadTestEventLoop; ``plain``: asyncio's selector loop.  Process CPU over 5 s.
"""

import asyncio
import sys
import time

from conference.tools.loadtest.eventloop import LoadTestEventLoop


async def main(kind: str) -> None:
    loop = asyncio.get_running_loop()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        loop.call_at(loop.time() + 0.002, tick)

    tick()
    transports = [
        (
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
        )[0]
        for _ in range(42)
    ]
    cpu, start = time.process_time(), ticks
    await asyncio.sleep(5)
    cpu = time.process_time() - cpu
    count = ticks - start
    print(
        f"{kind}: {count / 5:.0f} ticks/s, {cpu / 5 * 100:.2f} % of a core,"
        f" {cpu / count * 1e6:.1f} us of CPU per tick"
    )
    for transport in transports:
        transport.close()


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "lean"
    loop = LoadTestEventLoop() if kind == "lean" else asyncio.SelectorEventLoop()
    try:
        loop.run_until_complete(main(kind))
    finally:
        loop.close()
