"""The load generator's event loop: UDP receive that keeps up like a browser's.

asyncio's datagram transport reads one datagram per socket per loop iteration.
A simulated chair receives every point's audio and video on one bundled
socket (about 100 packets/s per point); when the loop has other work, that
socket falls behind and the kernel drops datagrams from its full receive
buffer, so the load test would measure its own slowness as the server's loss.
The server has the same problem and the same cure:
:class:`conference.sfu.udp.BatchedUdpEventLoop` (larger receive buffers,
batched reads), which the load tester builds on.

It also wakes less often (`CoalescingSelector`): every simulated point has its
own sockets, and packets reach them one by one, so a loop woken by each readable
socket runs an iteration (a ``select``, its callbacks, the ``recvfrom`` that finds
the socket empty) for a packet or two.  The load tester's loop instead looks at its
sockets at most every `COALESCE` seconds (its pacer ticks every 2 ms anyway) and
reads everything that arrived meanwhile: a point handles its packets up to 2 ms
later, which no check it makes can see (a browser's jitter buffer holds them
longer).

And a lean point's datagrams are read from the loop's buffer in place
(`conference.sfu.bridge.datagram_reader`): an RTP packet read from its header is
never copied out of it; only what goes on whole (STUN, DTLS, a packet whose payload
matters) becomes bytes.
"""

from __future__ import annotations

import selectors
import socket
import time
from typing import Any

from conference.sfu import udp
from conference.sfu.bridge import datagram_reader
from conference.sfu.udp import READ_BATCH, RECEIVE_BUFFER, BatchedUdpEventLoop

__all__ = [
    "COALESCE",
    "LEAN_READ_BATCH",
    "READ_BATCH",
    "RECEIVE_BUFFER",
    "CoalescingSelector",
    "LoadTestEventLoop",
]

#: the load generator's loop waits at least this long (s) between looks at its sockets
#: (less when a timer is due sooner)
COALESCE = 0.002
#: datagrams read from one socket per look (a chair of 150 points receives ~8,000 a
#: second on one socket: ~16 per look; the server's READ_BATCH is for a loop woken by
#: each readable socket)
LEAN_READ_BATCH = 256

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


_Batched: Any = getattr(udp, "_BatchedDatagramTransport", None)

if _Batched is not None:

    class _InPlaceDatagramTransport(_Batched):
        """The server's batched datagram transport, handing each datagram to the ICE
        connection's `datagram_reader` as a view of the loop's buffer once it has one."""

        _reader: Any = None

        def _read_ready(self) -> None:
            read = self._reader
            if read is None:
                read = self._reader = datagram_reader(self._protocol)
                if read is None:  # not an ICE connection reading headers (yet)
                    super()._read_ready()
                    return
            buffer = self._loop.datagram_buffer
            sock = self._sock
            for _ in range(LEAN_READ_BATCH):
                if self._conn_lost:
                    return
                try:
                    size, address = sock.recvfrom_into(buffer)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self._protocol.error_received(exc)
                    return
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal read error on datagram transport")
                    return
                read(buffer[:size], address)


class LoadTestEventLoop(BatchedUdpEventLoop):
    """The event loop of load-test processes (see the module doc)."""

    def __init__(self) -> None:
        super().__init__(CoalescingSelector())

    def _make_datagram_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: Any = None,
    ) -> Any:
        if _Batched is None:
            return super()._make_datagram_transport(sock, protocol, address, waiter, extra)
        try:  # as BatchedUdpEventLoop does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass
        return _InPlaceDatagramTransport(self, sock, protocol, address, waiter, extra)
