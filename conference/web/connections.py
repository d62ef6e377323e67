"""Connections from clients: how many may be open, how long a request may take to arrive.

A slow client must not lock the others out (issue 14, item 2): 1,100 connections that
sent a header line every 5 s were all held (aiohttp waits an hour for a request head by
default), filled the 1,024 descriptors of the process, and every ``accept()`` then
failed, logged by asyncio each time (237,728 lines in 66 s) while ``/healthz`` timed out.

* **Request head**: the server runs aiohttp with ``keepalive_timeout = header_timeout``.
  aiohttp arms that timer when a connection opens and again after each response, and
  closes the connection if no complete request head has arrived when it fires; it never
  fires while a handler runs (a WebSocket, a long answer).  So a client has
  ``header_timeout`` seconds to send a request head on a new connection (after the TLS
  handshake, itself limited to ``header_timeout``), and an idle kept-alive connection
  is closed after as long.
* **Request body**: `body_deadline` (a middleware) gives the body ``body_timeout``
  seconds once the head has arrived; a handler still waiting for it then gets
  `BodyTimeout` and the client a 408, and the connection is closed.
* **How many**: `ConnectionGuard` is the protocol factory of the listening socket.  It
  counts every TCP connection from ``accept()`` to close (a TLS handshake included: it
  runs the handshake itself with ``loop.start_tls``, so a connection is counted before it
  costs more than its descriptor) per client address and in total, and closes at once a
  connection over either cap (plain HTTP gets a one-line 503 first).  Addresses are
  counted one IPv4 address or one IPv6 /64 at a time (a single host often holds a whole
  /64).  Listed addresses (a reverse proxy on the same machine, whose connections carry
  every client) are exempt from the per-address cap, not from the total.
* **Below the open-file limit**: `raise_open_file_limit` raises the soft ``RLIMIT_NOFILE``
  to the hard one at start (as nginx, PostgreSQL and others do), and `connection_budget`
  keeps the total cap below it with room for everything else (see there).
* **Logged, not flooded**: `RateLimitedLog` writes the first refused connection, or the
  first ``accept()`` out of descriptors (`install_accept_error_log`), at once, then at
  most one line per minute with how many more there were.

With ``conference serve --workers N`` every worker is a process with its own caps and
its own descriptors: an address may hold N times ``max_connections_per_address`` in
all (the kernel spreads connections over the workers by their addresses and ports).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import resource
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

#: seconds the TLS close (close_notify both ways) may take before the socket is dropped
#: (asyncio's default is 30 s, during which a client that never answers keeps a descriptor)
TLS_SHUTDOWN_TIMEOUT = 5.0
#: descriptors kept, beside the connections, for the database, the log, the listening
#: and relay sockets, Redis, mail, compositions (ffmpeg pipes) and served files
RESERVED_FILES = 256
#: descriptors kept per participant the server admits: two peer connections (publishing,
#: receiving), each with one UDP socket per ICE address (IPv4, IPv6) and one per TURN
#: server, and its recording's open files
FILES_PER_PARTICIPANT = 8
#: what a connection over a cap is told before it is closed (plain HTTP only)
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\nRetry-After: 10\r\n"
    b"Connection: close\r\n\r\ntoo many connections\n"
)
#: asyncio's message when ``accept()`` fails for want of descriptors or memory
ACCEPT_ERROR = "socket.accept() out of system resource"


# --- the open-file limit ------------------------------------------------------------------


def raise_open_file_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the limit
    now in force.  (systemd gives a service 1,024 soft and 524,288 hard by default; the
    unit in docs/OPERATIONS.md sets ``LimitNOFILE``.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # an unlimited hard limit cannot be the soft one on Linux (fs.nr_open caps it)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning(
                "open files: cannot raise the limit from %d to %d: %s", soft, target, exc
            )
            return soft
        logger.info("open files: limit raised from %d to %d (the hard limit)", soft, target)
        return target
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_budget(open_files: int, participants: int) -> int:
    """The most client connections that leave room under ``open_files`` for the rest.

    Kept aside: `RESERVED_FILES` plus `FILES_PER_PARTICIPANT` per participant the server
    admits (``max_rooms`` x ``max_participants_per_room``), but at most half of the
    limit.  With the defaults (50 x 100 participants: 40,256 to keep): a limit of 1,024
    allows 512 connections, 65,536 allows 32,768, 524,288 allows 484,032; with
    ``max_rooms = 2`` and 100 participants (1,856 to keep), 65,536 allows 63,680.
    """
    reserve = min(RESERVED_FILES + FILES_PER_PARTICIPANT * participants, open_files // 2)
    return max(1, open_files - reserve)


# --- rate-limited logging -------------------------------------------------------------------


@dataclass
class _Kind:
    until: float
    more: int = 0
    last: str = ""
    timer: asyncio.TimerHandle | None = None


class RateLimitedLog:
    """Log the first event of a kind at once, then at most one line per ``interval``
    seconds saying how many more there were (and the latest)."""

    def __init__(
        self,
        log: logging.Logger = logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self.level = level
        self._kinds: dict[str, _Kind] = {}

    def note(self, kind: str, text: str) -> None:
        now = self.clock()
        state = self._kinds.get(kind)
        if state is not None and now < state.until:
            state.more += 1
            state.last = text
            if state.timer is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return  # said at the next event after the interval
                state.timer = loop.call_later(state.until - now, self.flush, kind)
            return
        if state is not None:
            self.flush(kind)
        self.log.log(self.level, "%s", text)
        self._kinds[kind] = _Kind(until=now + self.interval)

    def flush(self, kind: str) -> None:
        """Write the count of the events of ``kind`` not yet logged, if any."""
        state = self._kinds.get(kind)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.more:
            seconds = math.ceil(self.interval)
            self.log.log(
                self.level, "%s (and %d more like it in %d s)", state.last, state.more, seconds
            )
            state.more = 0
            state.until = self.clock() + self.interval


def install_accept_error_log(loop: asyncio.AbstractEventLoop, log: RateLimitedLog) -> None:
    """Rate-limit asyncio's "socket.accept() out of system resource" on ``loop``.

    asyncio reports every failed ``accept()`` to the loop's exception handler, up to
    ``backlog`` times per turn of the loop, and stops accepting for a second: out of
    descriptors, that was thousands of lines a second.  Other reports go on to the
    handler that was there (or the default one)."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            log.note(
                "accept",
                f"cannot accept connections: {context.get('exception')} "
                f"(open-file limit {limit}; asyncio retries in 1 s)",
            )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


# --- counting connections ---------------------------------------------------------------------


@dataclass
class Slot:
    """One admitted connection; ``key`` is None for an exempt address."""

    key: str | None
    released: bool = False


@dataclass
class ConnectionLimits:
    """Open connections per client address and in total (pure bookkeeping)."""

    #: most open connections in all
    total: int
    #: most open connections from one address (IPv4) or /64 (IPv6); 0 = no such cap
    per_address: int
    #: addresses or networks exempt from ``per_address`` (e.g. "127.0.0.1", "10.0.0.0/8")
    exempt: Iterable[str] = ()
    open: int = field(default=0, init=False)
    by_address: Counter[str] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in self.exempt]

    def key(self, host: str) -> str | None:
        """What a connection from ``host`` counts against: the IPv4 address, the IPv6 /64;
        None for an exempt address (or no IP address at all, a Unix socket)."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._exempt):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address)

    def refusal(self, key: str | None) -> tuple[str, str] | None:
        """Why one more connection counted against ``key`` is refused: (the cap, "total"
        or "address"; a sentence), or None."""
        if self.open >= self.total:
            return "total", f"{self.open} connections open, the most in all (max_connections)"
        if key is not None and self.per_address and self.by_address[key] >= self.per_address:
            return "address", (
                f"{self.by_address[key]} connections open from {key}, the most from one "
                "address (max_connections_per_address)"
            )
        return None

    def take(self, key: str | None) -> Slot:
        self.open += 1
        if key is not None:
            self.by_address[key] += 1
        return Slot(key)

    def release(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        self.open -= 1
        if slot.key is not None:
            self.by_address[slot.key] -= 1
            if self.by_address[slot.key] <= 0:
                del self.by_address[slot.key]


class ConnectionGuard:
    """The protocol factory of a listening socket: counts, caps, and does TLS.

    ``handler_factory`` makes the protocol that serves an admitted connection (aiohttp's
    ``web.Server``); it sees the connection only once admitted and, with ``ssl_context``,
    once the handshake (at most ``handshake_timeout`` seconds) is done.
    """

    def __init__(
        self,
        handler_factory: Callable[[], asyncio.BaseProtocol],
        limits: ConnectionLimits,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 15.0,
        shutdown_timeout: float = TLS_SHUTDOWN_TIMEOUT,
        log: RateLimitedLog | None = None,
    ) -> None:
        self.handler_factory = handler_factory
        self.limits = limits
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.shutdown_timeout = shutdown_timeout
        self.log = log or RateLimitedLog()
        #: refused connections since start, by cap ("total", "address")
        self.refused: Counter[str] = Counter()
        self._handshakes: set[asyncio.Task[None]] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def close(self) -> None:
        """Drop the connections still in their TLS handshake (the server is stopping)."""
        for task in list(self._handshakes):
            task.cancel()


class _Guarded(asyncio.Protocol):
    """One TCP connection: admitted or refused when accepted, then (after TLS) handed
    to the handler, to which everything is passed on; the slot is freed when the socket
    closes."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.slot: Slot | None = None
        self.inner: asyncio.BaseProtocol | None = None
        self.lost = False
        #: what TLS delivered between the handshake and the handler (asyncio reads on)
        self.early: list[bytes] = []
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self.guard
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple | list) and peer else ""
        key = guard.limits.key(str(host))
        refusal = guard.limits.refusal(key)
        if refusal is not None:
            cap, reason = refusal
            guard.refused[cap] += 1
            guard.log.note("refused", f"connection from {host} refused: {reason}")
            if guard.ssl_context is None:
                transport.write(REFUSED_RESPONSE)
                transport.close()
            else:
                transport.abort()
            return
        self.slot = guard.limits.take(key)
        if guard.ssl_context is None:
            self._open(transport)
            return
        transport.pause_reading()  # the ClientHello is for the TLS layer, not for us
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        guard._handshakes.add(task)
        task.add_done_callback(guard._handshakes.discard)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        guard = self.guard
        assert guard.ssl_context is not None
        try:
            if transport.is_closing():
                raise ConnectionResetError("closed before the TLS handshake")
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                self,
                guard.ssl_context,
                server_side=True,
                ssl_handshake_timeout=guard.handshake_timeout,
                ssl_shutdown_timeout=guard.shutdown_timeout,
            )
        except BaseException as exc:  # start_tls has closed the socket
            self._release()
            if isinstance(exc, OSError | TimeoutError):  # ssl.SSLError is an OSError
                logger.debug("TLS handshake failed: %r", exc)  # the client's business
                return
            raise
        if tls is None or self.lost:
            self._release()
            if tls is not None:
                tls.abort()
            return
        self._open(tls)

    def _open(self, transport: asyncio.BaseTransport) -> None:
        self.inner = inner = self.guard.handler_factory()
        inner.connection_made(transport)
        if isinstance(inner, asyncio.Protocol):
            for data in self.early:
                inner.data_received(data)
            if self.early_eof:
                inner.eof_received()
        self.early.clear()

    def _release(self) -> None:
        if self.slot is not None:
            self.guard.limits.release(self.slot)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            self.early.append(data)
        elif isinstance(self.inner, asyncio.Protocol):
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is None:
            self.early_eof = True
            return True
        if isinstance(self.inner, asyncio.Protocol):
            return self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._release()
        if self.inner is not None:
            self.inner.connection_lost(exc)


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site whose connections go through a `ConnectionGuard` (which does
    the TLS of ``ssl_context``, the site only reports it in its name)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        limits: ConnectionLimits,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 15.0,
        reuse_port: bool | None = None,
        backlog: int = 128,
        log: RateLimitedLog | None = None,
    ) -> None:
        super().__init__(
            runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port, backlog=backlog
        )
        assert runner.server is not None
        self.guard = ConnectionGuard(
            runner.server,
            limits,
            ssl_context=ssl_context,
            handshake_timeout=handshake_timeout,
            log=log,
        )

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = server = await loop.create_server(
            self.guard,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = server.sockets[0].getsockname()[1] if server.sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        self.guard.close()


# --- the request body -------------------------------------------------------------------------


class BodyTimeout(TimeoutError):
    """The request body did not arrive in time (set on the request's stream)."""


def body_deadline(timeout: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware giving a request body ``timeout`` seconds from the handler's start
    (the head has arrived); a read still waiting then raises `BodyTimeout`, which is
    answered 408 on a connection that is then closed.  The handler may run as long as
    it likes once the body is in; a body it did not read is bounded the same way."""
    log = RateLimitedLog(level=logging.INFO)

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        content = request.content
        if not request.body_exists or content.is_eof():
            response: web.StreamResponse = await handler(request)
            return response

        def expire() -> None:
            if not content.is_eof():
                content.set_exception(BodyTimeout(f"request body not received in {timeout:g} s"))

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            response = await handler(request)
            return response
        except BodyTimeout:
            log.note(
                "body",
                f"{request.method} {request.path[:100]} from {request.remote}: "
                f"request body not received in {timeout:g} s",
            )
            response = web.json_response(
                {"error": "request-timeout", "message": "the request body came too slowly"},
                status=408,
            )
            response.force_close()
            return response
        finally:
            if content.is_eof():
                timer.cancel()
            # else it goes on: aiohttp reads a body the handler left (up to 10 s of
            # "lingering"), and the timer ends that too, then the connection

    return middleware
