"""Binding ICE sockets inside a fixed UDP port range, for firewalls.

aioice binds each host candidate with ``loop.create_datagram_endpoint(...,
local_addr=(address, 0))``.  The server runs on :class:`PortRangeEventLoop`,
which turns such a request for "any port" into the first free port of the
configured range.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events as selector_events
import errno
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Receive buffer asked for on every UDP socket (bytes; the kernel caps it at rmem_max).
RECEIVE_BUFFER = 4 * 1024 * 1024
#: Datagrams read from one readable socket per event-loop iteration.
READ_BATCH = 32
#: Largest datagram read (UDP's own limit); longer ones are truncated, as by asyncio.
MAX_DATAGRAM = 65536

_Base: Any = getattr(selector_events, "_SelectorDatagramTransport", None)

if _Base is not None:

    class _BatchedDatagramTransport(_Base):
        """asyncio's datagram transport, reading up to READ_BATCH datagrams at a time.

        asyncio reads one datagram per readable socket per loop iteration: a
        server socket carrying forty points' media falls behind whenever the
        loop has other work, and the kernel drops from the full buffer.

        It also reads into one reusable buffer and copies out exactly the
        datagram.  asyncio's ``recvfrom(256 KiB)`` allocates 256 KiB per
        datagram and shrinks it; once glibc's adaptive mmap threshold rises
        above 256 KiB these come from the heap, and the small long-lived
        objects made from each packet (payloads kept in retransmission
        histories) pin every hole: the heap grew without bound (~0.7 MB/s at
        20 points, all of it free memory malloc could not return).
        """

        #: Handles an RTP or RTCP datagram (first byte 128-191, RFC 7983) in place: called
        #: with the loop's buffer and the datagram's size, it returns False to have the
        #: datagram handed to the protocol as any other.  `conference.sfu.bridge` sets it
        #: for the sockets of a connection whose SRTP it handles (`fast_ingress`): a
        #: media packet is then never copied out into bytes of its own.
        media: Callable[[memoryview, int], bool] | None = None

        def _read_ready(self) -> None:
            buffer = self._loop.datagram_buffer  # one per loop: copied out before any callback
            for _ in range(READ_BATCH):
                if self._conn_lost:
                    return
                try:
                    size, addr = self._sock.recvfrom_into(buffer)
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
                media = self.media
                if media is not None and size > 7 and 127 < buffer[0] < 192 and media(buffer, size):
                    continue
                self._protocol.datagram_received(bytes(buffer[:size]), addr)


class BatchedUdpEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose UDP sockets have large buffers and batched reads.

    Relies on CPython's private ``_SelectorDatagramTransport`` and
    ``_make_datagram_transport``; falls back to asyncio's transport without them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the receive buffer shared by this loop's datagram transports
        self.datagram_buffer = memoryview(bytearray(MAX_DATAGRAM))

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


class PortRangeEventLoop(BatchedUdpEventLoop):
    """A selector event loop whose wildcard-port UDP binds use a port range."""

    port_range: tuple[int, int] | None = None

    async def create_datagram_endpoint(
        self, protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **kwargs: Any
    ) -> Any:
        rng = self.port_range
        if rng is None or local_addr is None or local_addr[1] != 0:
            return await super().create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs
            )
        low, high = rng
        count = high - low + 1
        start = random.randrange(count)
        last_error: OSError | None = None
        for i in range(count):
            port = low + (start + i) % count
            try:
                return await super().create_datagram_endpoint(
                    protocol_factory,
                    local_addr=(local_addr[0], port),
                    remote_addr=remote_addr,
                    **kwargs,
                )
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                last_error = exc
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {low}-{high}") from last_error


def loop_factory(port_range: tuple[int, int] | None) -> PortRangeEventLoop:
    loop = PortRangeEventLoop()
    loop.port_range = port_range
    return loop
