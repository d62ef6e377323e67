"""The load generator's event loop: UDP receive that keeps up like a browser's.

asyncio's datagram transport reads one datagram per socket per loop iteration.
A simulated chair receives every point's audio and video on one bundled
socket (about 100 packets/s per point); when the loop has other work, that
socket falls behind and the kernel drops datagrams from its full receive
buffer, so the load test would measure its own slowness as the server's loss.
The server has the same problem and the same cure:
:class:`conference.sfu.udp.BatchedUdpEventLoop` (larger receive buffers,
batched reads), which the load tester uses as is.

It also wakes less often (`CoalescingSelector`): every simulated point has its
own sockets, and packets reach them one by one, so a loop woken by each readable
socket runs an iteration (a ``select``, its callbacks, the ``recvfrom`` that finds
the socket empty) for a packet or two.  The load tester's loop instead looks at its
sockets at most every `COALESCE` seconds (its pacer ticks every 2 ms anyway) and
reads everything that arrived meanwhile: a point handles its packets up to 2 ms
later, which no check it makes can see (a browser's jitter buffer holds them
longer).
"""

from __future__ import annotations

import selectors
import time
from typing import Any

from conference.sfu.udp import READ_BATCH, RECEIVE_BUFFER, BatchedUdpEventLoop

__all__ = ["COALESCE", "READ_BATCH", "RECEIVE_BUFFER", "CoalescingSelector", "LoadTestEventLoop"]

#: the load generator's loop waits at least this long (s) between looks at its sockets
#: (less when a timer is due sooner)
COALESCE = 0.002

_Base: Any = getattr(selectors, "EpollSelector", selectors.DefaultSelector)


class CoalescingSelector(_Base):
    """A selector whose ``select`` with a timeout sleeps (at most `COALESCE`, never past
    the timeout: the loop's next timer) and then polls without waiting: readiness no
    longer wakes the loop, the loop finds it when it looks.  A ``select(0)`` (callbacks
    are ready) polls at once."""

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None or timeout > 0:
            time.sleep(COALESCE if timeout is None else min(timeout, COALESCE))
            timeout = 0
        return super().select(timeout)


class LoadTestEventLoop(BatchedUdpEventLoop):
    """The event loop of load-test processes (see the module doc)."""

    def __init__(self) -> None:
        super().__init__(CoalescingSelector())
