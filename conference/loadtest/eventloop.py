"""The load generator's event loop: UDP receive that keeps up like a browser's.

asyncio's datagram transport reads one datagram per socket per loop iteration.
A simulated chair receives every point's audio and video on one bundled
socket (about 100 packets/s per point); when the loop has other work, that
socket falls behind and the kernel drops datagrams from its full receive
buffer, so the load test would measure its own slowness as the server's loss.
A browser reads its sockets on a dedicated network thread with a larger
buffer.  :class:`LoadTestEventLoop` gets closer to that:

* each datagram socket gets a receive buffer of :data:`RECEIVE_BUFFER` bytes
  (the kernel caps it at ``net.core.rmem_max``);
* a readable socket is drained up to :data:`READ_BATCH` datagrams per
  iteration instead of one.

It relies on two private names of CPython's ``asyncio.selector_events``
(``_SelectorDatagramTransport`` and ``BaseSelectorEventLoop._make_datagram_transport``);
where they are missing the loop falls back to asyncio's own transport.  The
server is never run on this loop: only load-test processes use it.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events as selector_events
import logging
import socket
from typing import Any

__all__ = ["READ_BATCH", "RECEIVE_BUFFER", "LoadTestEventLoop"]

logger = logging.getLogger(__name__)

#: Receive buffer asked for on every UDP socket of a load-test process (bytes).
RECEIVE_BUFFER = 4 * 1024 * 1024
#: Datagrams read from one readable socket per event-loop iteration.
READ_BATCH = 32

_Base: Any = getattr(selector_events, "_SelectorDatagramTransport", None)


if _Base is not None:

    class _BatchedDatagramTransport(_Base):
        """asyncio's datagram transport, reading up to READ_BATCH datagrams at a time."""

        def _read_ready(self) -> None:
            for _ in range(READ_BATCH):
                if self._conn_lost:
                    return
                try:
                    data, addr = self._sock.recvfrom(self.max_size)
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
                else:
                    self._protocol.datagram_received(data, addr)


class LoadTestEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop with larger, batch-read UDP sockets (see the module doc)."""

    def _make_datagram_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: Any = None,
    ) -> Any:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError as exc:
            logger.debug("cannot enlarge a UDP receive buffer: %s", exc)
        if _Base is None:
            return super()._make_datagram_transport(  # type: ignore[misc]
                sock, protocol, address, waiter, extra
            )
        return _BatchedDatagramTransport(self, sock, protocol, address, waiter, extra)
