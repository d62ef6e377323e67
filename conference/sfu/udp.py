"""Binding ICE sockets inside a fixed UDP port range, for firewalls.

aioice binds each host candidate with ``loop.create_datagram_endpoint(...,
local_addr=(address, 0))``.  The server runs on :class:`PortRangeEventLoop`,
which turns such a request for "any port" into the first free port of the
configured range.
"""

from __future__ import annotations

import asyncio
import errno
import random
from typing import Any


class PortRangeEventLoop(asyncio.SelectorEventLoop):
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
