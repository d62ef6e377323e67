"""Weak links for tests and the load tester: rate limits, loss, delay, jitter.

A commune on shared 4G or a busy ADSL line is the case the SFU must get
right, so the tests and ``conference loadtest`` need to put a simulated
point behind such a link.  Three pieces:

* `LinkProfile` and `PROFILES`: the named links (``4g-weak``,
  ``adsl-busy``, ``very-weak``) and `parse_weak` for the load tester's
  ``SHARE%:PROFILE`` flags;
* `Namespace`: a network namespace joined to the root namespace by a veth
  pair, with an optional rate limit in each direction.  The limit is a
  real kernel ``tbf`` qdisc, so a sender that exceeds it sees what it would
  see on the real link: a queue that grows to a bounded delay, then drops;
* `UdpRelay`: an asyncio UDP relay that adds loss, one-way delay and
  jitter in user space, each direction on its own.

Why two mechanisms: the usual tool, ``netem``, is not in the kernel of the
machines this runs on, and neither iptables nor nft is installed, so the
kernel can only limit the rate (``tbf``, ``htb``).  Loss and delay are
therefore done by the relay, which the load tester puts between a
simulated point and the server (the profile's RTT split half each way).
The server sees the relay's upstream socket as the peer; ICE accepts it as
a peer-reflexive candidate once the point sends its checks to the relay.

Addressing rule: traffic goes only to 127.0.0.1 or into namespaces created
here.  Each `Namespace` takes a /30 of 10.250.0.0/16 (its first host
address on the root side, the second inside) and gets no default route, so a process inside can
reach the root namespace at `Namespace.host_address` and nothing else.
`UdpRelay` refuses other targets unless told ``allow_remote=True``.  The
namespace and its veth pair are deleted on exit, also after a failure.
Only ``ip`` and ``tc`` from iproute2 are needed, and root (CAP_NET_ADMIN).

Size: over 600 lines: a self-contained test and load-test tool (profiles, namespaces,
relay) with its own command-line check; the server never imports it.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import ipaddress
import itertools
import logging
import math
import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "PROFILES",
    "DirectionStats",
    "Impairment",
    "LinkEmuError",
    "LinkProfile",
    "Namespace",
    "UdpRelay",
    "available",
    "parse_weak",
]

log = logging.getLogger(__name__)


# --- profiles ----------------------------------------------------------------


@dataclass(frozen=True)
class LinkProfile:
    """A named access link, as seen from the point (down = towards the point).

    `loss` is a fraction (0.01 for 1 %) applied to each direction;
    `rtt_ms` is split half each way; `jitter_ms` is added to each one-way
    delay as a uniform random extra in ``[0, jitter_ms]``.
    """

    name: str
    down_kbps: int
    up_kbps: int
    rtt_ms: float
    loss: float
    jitter_ms: float

    def __post_init__(self) -> None:
        if self.down_kbps <= 0 or self.up_kbps <= 0:
            raise ValueError(f"profile {self.name}: rates must be positive")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"profile {self.name}: loss must be a fraction in [0, 1)")
        if self.rtt_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"profile {self.name}: RTT and jitter must not be negative")


PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile("4g-weak", down_kbps=1000, up_kbps=500, rtt_ms=80, loss=0.01, jitter_ms=10),
        LinkProfile("adsl-busy", down_kbps=2000, up_kbps=512, rtt_ms=40, loss=0.005, jitter_ms=5),
        LinkProfile("very-weak", down_kbps=384, up_kbps=256, rtt_ms=150, loss=0.03, jitter_ms=30),
    )
}


def parse_weak(spec: str) -> tuple[float, LinkProfile]:
    """Parse a load-tester flag ``SHARE%:PROFILE``, e.g. ``30%:4g-weak``.

    Returns the share as a fraction (0.30) and the profile.  The ``%`` may
    be left out (``30:4g-weak`` is the same); the share must lie in
    0-100 %.  Raises ValueError with a message fit for the command line.
    """
    share_text, colon, name = spec.strip().partition(":")
    if not colon:
        raise ValueError(f"{spec!r}: expected SHARE%:PROFILE, e.g. 30%:4g-weak")
    share_text = share_text.strip().removesuffix("%").strip()
    try:
        percent = float(share_text)
    except ValueError:
        raise ValueError(f"{spec!r}: share {share_text!r} is not a number of percent") from None
    if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
        raise ValueError(f"{spec!r}: share must be between 0 and 100 %")
    name = name.strip().lower()
    profile = PROFILES.get(name)
    if profile is None:
        known = ", ".join(PROFILES)
        raise ValueError(f"{spec!r}: unknown link profile {name!r} (known: {known})")
    return percent / 100.0, profile


# --- namespaces with rate limits -----------------------------------------------


class LinkEmuError(RuntimeError):
    """An ``ip`` or ``tc`` command failed."""


def _tool(name: str) -> str:
    """``ip``/``tc`` by name when on PATH, else their iproute2 location."""
    if shutil.which(name):
        return name
    for folder in ("/usr/sbin", "/sbin"):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return name


_IP = _tool("ip")
_TC = _tool("tc")

#: The /16 the namespaces take their /30s from.
SUBNET = ipaddress.IPv4Network("10.250.0.0/16")
_SLOTS = SUBNET.num_addresses // 4

#: tbf: at most this much queueing delay before drops (tbf ``latency``).
QUEUE_MS = 150
#: tbf: the bucket holds this many milliseconds of the rate ...
BURST_MS = 5
#: ... but at least two full Ethernet frames (a 1500-byte MTU plus header).
MIN_BURST_BYTES = 2 * 1514

_counter = itertools.count()


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkEmuError(f"{' '.join(argv)}: {exc}") from exc
    if check and result.returncode != 0:
        raise LinkEmuError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def _tbf_args(kbps: int, queue_ms: float) -> list[str]:
    burst = max(MIN_BURST_BYTES, math.ceil(kbps * 1000 / 8 * BURST_MS / 1000))
    return ["tbf", "rate", f"{kbps}kbit", "burst", str(burst), "latency", f"{queue_ms:g}ms"]


def _addresses_in_use() -> set[ipaddress.IPv4Address]:
    out = _run([_IP, "-4", "-o", "addr", "show"]).stdout
    used = set()
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            text = fields[fields.index("inet") + 1]
            used.add(ipaddress.IPv4Interface(text).ip)
    return used


class Namespace:
    """A network namespace behind a veth pair, optionally rate-limited.

    ``with Namespace(down_kbps=1000, up_kbps=500) as ns:`` (or ``async
    with``) creates the namespace `name` with ``lo`` up and the veth end
    `address` (the second host of a /30 in 10.250.0.0/16) inside; the
    other end, `host_address` (the first host), is in the root namespace.
    Run programs inside with ``subprocess.Popen(ns.command([...]))``.  A server that a program inside
    must reach has to listen on `host_address` (or 0.0.0.0): there is no
    route anywhere else.

    Rate limits are ``tbf`` qdiscs: `down_kbps` on the egress of the root
    end (root -> namespace), `up_kbps` on the egress of the inner end
    (namespace -> root); `set_rate` changes or lifts them live.  tbf counts
    whole frames (IP and Ethernet headers included), rates in kbit/s of
    1000 bit.  Parameters:

    - ``burst`` = `BURST_MS` (5 ms) of the rate, but at least two full
      frames (3028 bytes).  A bucket smaller than a frame would never pass
      it; a larger one lets bursts through at line speed, which a weak link
      does not.  At 400 kbit/s that is 3028 bytes, i.e. 60 ms at the rate.
    - ``latency`` = `QUEUE_MS` (150 ms, ``queue_ms`` to change): the queue
      holds what drains in that time (tbf's ``limit`` = rate x latency +
      burst), after that packets are dropped.  A real weak link queues
      like this (bufferbloat is what makes congestion visible as delay
      before loss), but not without bound.

    Names and subnets are unique per instance across processes: slot N
    (the /30 and the names ``linkemu-N``, ``leNh``, ``leNn``) starts from
    the process ID and a counter, and a slot is claimed by creating its
    namespace (which fails if it exists) and veth pair; taken slots, or
    subnets some interface already uses, are skipped.
    """

    def __init__(
        self,
        *,
        down_kbps: int | None = None,
        up_kbps: int | None = None,
        queue_ms: float = QUEUE_MS,
    ) -> None:
        self.down_kbps = down_kbps
        self.up_kbps = up_kbps
        self.queue_ms = queue_ms
        self._slot: int | None = None
        self._ns_created = False
        self._veth_created = False

    # Names and addresses exist once the namespace is open.

    def _need_slot(self) -> int:
        if self._slot is None:
            raise RuntimeError("the namespace is not open")
        return self._slot

    @property
    def name(self) -> str:
        return f"linkemu-{self._need_slot()}"

    @property
    def host_interface(self) -> str:
        """The veth end in the root namespace."""
        return f"le{self._need_slot()}h"

    @property
    def interface(self) -> str:
        """The veth end inside the namespace."""
        return f"le{self._need_slot()}n"

    @property
    def host_address(self) -> str:
        return str(SUBNET[4 * self._need_slot() + 1])

    @property
    def address(self) -> str:
        return str(SUBNET[4 * self._need_slot() + 2])

    def command(self, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside the namespace."""
        return [_IP, "netns", "exec", self.name, *argv]

    # Setup and teardown.

    def open(self) -> None:
        if self._slot is not None:
            raise RuntimeError("the namespace is already open")
        try:
            self._claim_slot()
            ns, host_if, inner_if = self.name, self.host_interface, self.interface
            _run([_IP, "link", "set", inner_if, "netns", ns])
            _run([_IP, "addr", "add", f"{self.host_address}/30", "dev", host_if])
            _run([_IP, "link", "set", host_if, "up"])
            _run([_IP, "-n", ns, "addr", "add", f"{self.address}/30", "dev", inner_if])
            _run([_IP, "-n", ns, "link", "set", inner_if, "up"])
            _run([_IP, "-n", ns, "link", "set", "lo", "up"])
            down, up = self.down_kbps, self.up_kbps
            self.down_kbps = self.up_kbps = None
            self.set_rate(down, up)
        except BaseException:
            try:
                self.close()
            except LinkEmuError as exc:
                log.warning("cleaning up after a failed setup: %s", exc)
            raise

    def _claim_slot(self) -> None:
        used = _addresses_in_use()
        start = os.getpid() * 16 + next(_counter)
        for attempt in range(64):
            slot = (start + attempt) % _SLOTS
            if {SUBNET[4 * slot + 1], SUBNET[4 * slot + 2]} & used:
                continue
            ns = f"linkemu-{slot}"
            if _run([_IP, "netns", "add", ns], check=False).returncode != 0:
                continue  # another instance's (or a stale one): not ours to touch
            added = _run(
                [_IP, "link", "add", f"le{slot}h", "type", "veth", "peer", "name", f"le{slot}n"],
                check=False,
            )
            if added.returncode != 0:
                _run([_IP, "netns", "del", ns], check=False)
                continue
            self._slot = slot
            self._ns_created = self._veth_created = True
            return
        raise LinkEmuError("no free 10.250.0.0/16 slot for a namespace after 64 tries")

    def close(self) -> None:
        """Delete the veth pair and the namespace (what this instance created)."""
        if self._slot is None:
            return
        errors = []
        if self._veth_created:
            # Deleting one end deletes both, and their qdiscs.  Deleting the
            # namespace would do it too, but only asynchronously.
            result = _run([_IP, "link", "del", self.host_interface], check=False)
            if result.returncode != 0 and self._link_exists():
                errors.append(result.stderr.strip())
            self._veth_created = False
        if self._ns_created:
            result = _run([_IP, "netns", "del", self.name], check=False)
            if result.returncode != 0:
                errors.append(result.stderr.strip())
            self._ns_created = False
        self._slot = None
        self.down_kbps = self.up_kbps = None
        if errors:
            raise LinkEmuError("; ".join(errors))

    def _link_exists(self) -> bool:
        return _run([_IP, "link", "show", self.host_interface], check=False).returncode == 0

    def set_rate(self, down_kbps: int | None, up_kbps: int | None) -> None:
        """Set (or with None, lift) the rate limits; takes effect at once."""
        for kbps, current, tc, dev in (
            (down_kbps, self.down_kbps, [_TC], self.host_interface),
            (up_kbps, self.up_kbps, [_TC, "-n", self.name], self.interface),
        ):
            if kbps is not None:
                if kbps <= 0:
                    raise ValueError("rates must be positive (None lifts the limit)")
                _run([*tc, "qdisc", "replace", "dev", dev, "root", *_tbf_args(kbps, self.queue_ms)])
            elif current is not None:
                _run([*tc, "qdisc", "del", "dev", dev, "root"])
        self.down_kbps, self.up_kbps = down_kbps, up_kbps

    def __enter__(self) -> Namespace:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Namespace:
        await asyncio.to_thread(self.open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        where = self.name if self._slot is not None else "closed"
        return f"<Namespace {where} down={self.down_kbps} up={self.up_kbps} kbit/s>"


@functools.cache
def available() -> str | None:
    """None if namespaces with tbf work here, else the reason they do not.

    Tries it: creates a rate-limited namespace and deletes it again.  The
    answer is cached for the process.
    """
    for tool in (_IP, _TC):
        if not shutil.which(tool):
            return f"{tool} (iproute2) is not installed"
    try:
        with Namespace(down_kbps=1000, up_kbps=1000):
            pass
    except (LinkEmuError, OSError) as exc:
        hint = "" if os.geteuid() == 0 else " (needs root / CAP_NET_ADMIN)"
        return f"network namespaces with tbf do not work here{hint}: {exc}"
    return None


# --- the user-space relay ------------------------------------------------------


@dataclass(frozen=True)
class Impairment:
    """What one direction of a `UdpRelay` does to each datagram.

    A datagram is dropped with probability `loss`; otherwise it leaves
    ``delay_ms`` plus a uniform ``[0, jitter_ms]`` after it arrived.  By
    default the link stays FIFO, as real access links do (their jitter is
    queueing): a datagram never leaves before the one that arrived ahead of
    it, so it may wait a little longer than its own draw, never longer than
    the bound.  On a dense stream (a video frame's packets) that makes the
    delays of neighbours alike, i.e. less jitter than the draws alone.
    With ``reorder=True`` each datagram keeps its own draw and may
    overtake others, by at most `jitter_ms`.
    """

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be a fraction in [0, 1]")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay and jitter must not be negative")


@dataclass
class DirectionStats:
    """Datagrams one direction of a `UdpRelay` has sent on and dropped."""

    forwarded: int = 0
    dropped: int = 0


def _check_target(host: str, allow_remote: bool) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"relay target {host!r} must be an IP address") from None
    if allow_remote or address.is_loopback or address in SUBNET:
        return
    raise ValueError(
        f"relay target {host} is neither loopback nor in {SUBNET} (pass allow_remote=True)"
    )


class _Direction:
    """One direction: the random draws, the datagrams in flight, one timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, impairment: Impairment, seed: str) -> None:
        self.loop = loop
        self.impairment = impairment
        self.random = random.Random(seed)
        self.stats = DirectionStats()
        # (due, arrival number, datagram, address): a heap, in arrival order
        # for equal due times; without reordering the dues never decrease.
        self.heap: list[tuple[float, int, bytes, Any]] = []
        self.arrivals = itertools.count()
        self.timer: asyncio.TimerHandle | None = None
        self.last_due = 0.0
        self.transport: asyncio.DatagramTransport | None = None

    def push(self, data: bytes, addr: Any) -> None:
        imp = self.impairment
        # Both draws every time, so a seed gives the same drops and delays.
        lost = self.random.random() < imp.loss
        extra = self.random.uniform(0.0, imp.jitter_ms) if imp.jitter_ms else 0.0
        if lost:
            self.stats.dropped += 1
            return
        delay = (imp.delay_ms + extra) / 1000.0
        if delay <= 0.0 and not self.heap:
            self.send(data, addr)
            return
        due = self.loop.time() + delay
        if not imp.reorder:
            due = max(due, self.last_due)
            self.last_due = due
        heapq.heappush(self.heap, (due, next(self.arrivals), data, addr))
        if self.timer is None or due < self.timer.when():
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(due, self.flush)

    def flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, data, addr = heapq.heappop(heap)
            self.send(data, addr)
        if heap:
            self.timer = self.loop.call_at(heap[0][0], self.flush)

    def send(self, data: bytes, addr: Any) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if addr is None:
            transport.sendto(data)
        else:
            transport.sendto(data, addr)
        self.stats.forwarded += 1

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.heap.clear()


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("relay listener: %s", exc)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay._from_target(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the target is not listening yet.
        log.debug("relay upstream: %s", exc)


class UdpRelay:
    """A UDP relay that loses, delays and jitters datagrams, per direction.

    Listens on `listen` (127.0.0.1 and a free port by default; the bound
    address is `address` once started) and sends what arrives there to
    `target` from one upstream socket; what the target sends back goes to
    the client that sent last.  ``up`` applies to client -> target (a
    point's uplink), ``down`` to target -> client.  The draws come from
    ``random.Random`` seeded per direction from `seed`, so a run with a
    seed drops and delays the same datagrams again.  Counters:
    `up_stats`, `down_stats`.

    ``async with UdpRelay(target, up=..., down=...) as relay:``, or
    `start` / `stop`.  Datagrams still delayed at `stop` are discarded.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        up: Impairment = Impairment(),
        down: Impairment = Impairment(),
        seed: int | str | None = None,
        allow_remote: bool = False,
    ) -> None:
        _check_target(target[0], allow_remote)
        _check_target(listen[0], allow_remote)
        self.target = target
        self.listen = listen
        self.up = up
        self.down = down
        self.seed = seed
        self.client: Any = None
        self._up: _Direction | None = None
        self._down: _Direction | None = None
        self._listener: asyncio.DatagramTransport | None = None
        self._upstream: asyncio.DatagramTransport | None = None
        self.up_stats = DirectionStats()
        self.down_stats = DirectionStats()

    @classmethod
    def for_profile(cls, profile: LinkProfile, target: tuple[str, int], **kwargs: Any) -> UdpRelay:
        """A relay with the profile's loss each way and half its RTT each way."""
        each_way = Impairment(profile.loss, profile.rtt_ms / 2, profile.jitter_ms)
        return cls(target, up=each_way, down=each_way, **kwargs)

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send to (the bound listening address)."""
        if self._listener is None:
            raise RuntimeError("the relay is not started")
        host, port = self._listener.get_extra_info("sockname")[:2]
        return host, port

    async def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError("the relay is already started")
        loop = asyncio.get_running_loop()
        seed = "" if self.seed is None else repr(self.seed)
        self._up = _Direction(loop, self.up, f"{seed}:up" if seed else str(random.random()))
        self._down = _Direction(loop, self.down, f"{seed}:down" if seed else str(random.random()))
        self.up_stats, self.down_stats = self._up.stats, self._down.stats
        upstream, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self), remote_addr=self.target
        )
        try:
            listener, _ = await loop.create_datagram_endpoint(
                lambda: _Listener(self), local_addr=self.listen
            )
        except BaseException:
            upstream.close()
            raise
        self._upstream, self._listener = upstream, listener
        self._up.transport = upstream
        self._down.transport = listener

    async def stop(self) -> None:
        for direction in (self._up, self._down):
            if direction is not None:
                direction.close()
        for transport in (self._listener, self._upstream):
            if transport is not None:
                transport.close()
        self._listener = self._upstream = None
        await asyncio.sleep(0)  # let the transports finish closing

    def _from_client(self, data: bytes, addr: Any) -> None:
        self.client = addr
        if self._up is not None:
            self._up.push(data, None)

    def _from_target(self, data: bytes) -> None:
        if self._down is not None and self.client is not None:
            self._down.push(data, self.client)

    async def __aenter__(self) -> UdpRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return (
            f"<UdpRelay -> {self.target[0]}:{self.target[1]} "
            f"up {self.up_stats.forwarded}/{self.up_stats.dropped} dropped, "
            f"down {self.down_stats.forwarded}/{self.down_stats.dropped} dropped>"
        )
