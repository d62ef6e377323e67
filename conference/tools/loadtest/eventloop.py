"""The load generator's event loop: UDP receive that keeps up like a browser's.

asyncio's datagram transport reads one datagram per socket per loop iteration.
A simulated chair receives every point's audio and video on one bundled
socket (about 100 packets/s per point); when the loop has other work, that
socket falls behind and the kernel drops datagrams from its full receive
buffer, so the load test would measure its own slowness as the server's loss.
The server has the same problem and the same cure:
:class:`conference.sfu.udp.BatchedUdpEventLoop` (larger receive buffers,
batched reads), which the load tester uses as is.
"""

from __future__ import annotations

from conference.sfu.udp import READ_BATCH, RECEIVE_BUFFER, BatchedUdpEventLoop

__all__ = ["READ_BATCH", "RECEIVE_BUFFER", "LoadTestEventLoop"]


class LoadTestEventLoop(BatchedUdpEventLoop):
    """The event loop of load-test processes (see the module doc)."""
