"""Simulated points on weak links: ``conference loadtest --weak 30%:4g-weak``.

A share of the points is put behind one of the link profiles of
:mod:`conference.tools.linkemu` (``4g-weak``, ``adsl-busy``, ``very-weak``).  Each
such point gets a link of its own, as a commune on its own 4G router would:

* **rate**: the point runs in a worker process of its own, inside a network
  namespace (:class:`conference.tools.linkemu.Namespace`) whose veth pair carries the
  profile's rates as kernel ``tbf`` qdiscs: ``down_kbps`` towards the point,
  ``up_kbps`` from it, each with a queue of at most 150 ms before drops.  All
  of the point's traffic crosses it: media, and its signaling too;
* **loss, delay, jitter**: every media path goes through a
  :class:`conference.tools.linkemu.UdpRelay` in the coordinator (root namespace),
  listening on the namespace's host-side address and forwarding to one of
  the server's ICE candidates: the profile's loss each way, half its RTT each
  way plus up to ``jitter_ms`` (FIFO).  The signaling WebSocket is not
  delayed or lost (TCP would hide it anyway), only rate-limited.

How the media is made to take the relay (no change to the server):

* the server's SDP (the answer to the point's publisher offer, the offers for
  its subscriber connection, or a WHEP answer) is rewritten before the point
  applies it: each UDP candidate ``127.0.0.1 PORT`` becomes the address of a
  relay to it (:func:`relay_candidates`; one relay per server candidate and
  point, made on request by the coordinator and kept for renegotiations);
* the point's own SDP goes out without candidates and without
  ``a=end-of-candidates`` (:func:`strip_candidates`), as a browser that
  trickles would send it.  The server therefore learns the point's address
  only from its connectivity checks, which arrive from the relay's upstream
  socket: a peer-reflexive candidate (aioice accepts those), and the server
  never has a direct path to the point that would bypass the relay;
* the point reaches the server's HTTP port through a TCP forwarder in the
  coordinator on the namespace's host-side address (the namespace has no
  route anywhere else), so its URL is ``http://10.250.x.1:PORT``.

What a weak point sends and how it reports:

* its camera clip is encoded at :func:`weak_camera_kbps` (half its uplink,
  at most ``--bitrate``): pre-encoded media cannot adapt, and a browser's
  congestion control would settle below the uplink rather than send 500
  kbit/s into a 500 kbit/s link;
* it keeps the receive-side bandwidth estimator on (REMB to the server, as
  Chromium sends), where strong simulated points switch it off to save CPU:
  the server's per-subscriber allocator needs it to judge a weak downlink.

The choice of seats (:func:`assign_weak`) is deterministic: spread evenly
over the points, never the chair.  The report gets a per-link section
(``links``): strong against each profile (see :mod:`.report`).

Needs root (CAP_NET_ADMIN) and iproute2 (``ip``, ``tc``);
:func:`conference.tools.linkemu.available` says why not otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

from ..linkemu import PROFILES, LinkEmuError, LinkProfile, Namespace, UdpRelay, parse_weak

__all__ = [
    "WEAK_CAMERA_SHARE",
    "RelayRequester",
    "WeakSite",
    "assign_weak",
    "parse_weak_flag",
    "relay_candidates",
    "strip_candidates",
    "weak_camera_kbps",
    "weak_counts",
]

logger = logging.getLogger(__name__)

#: a weak point's camera bitrate: this share of its uplink (at most ``--bitrate``)
WEAK_CAMERA_SHARE = 0.5

WeakSpec = tuple[float, str]  # (share of the points 0..1, profile name)


# -- which points ------------------------------------------------------------------------
def parse_weak_flag(spec: str) -> WeakSpec:
    """``30%:4g-weak`` -> ``(0.3, "4g-weak")``; ValueError with the flag's message."""
    share, profile = parse_weak(spec)
    return share, profile.name


def weak_counts(points: int, specs: list[WeakSpec]) -> list[tuple[str, int]]:
    """How many points each ``--weak`` flag takes: its share rounded half up.

    A non-zero share takes at least one point.  ValueError when the flags
    together ask for more points than there are.
    """
    counts: list[tuple[str, int]] = []
    for share, name in specs:
        if name not in PROFILES:
            raise ValueError(f"unknown link profile {name!r}")
        count = int(share * points + 0.5 + 1e-9)
        if share > 0 and count == 0:
            count = 1
        counts.append((name, count))
    total = sum(count for _, count in counts)
    if total > points:
        asked = ", ".join(f"{count} on {name}" for name, count in counts)
        raise ValueError(f"--weak asks for {total} weak points ({asked}) but there are {points}")
    return counts


def assign_weak(points: int, specs: list[WeakSpec]) -> dict[int, str]:
    """Seat index (1..points) -> profile name, for the weak points.

    The weak points are spread evenly over 1..points (the k-th of W weak
    points is point ``floor((k + 0.5) * points / W) + 1``), and the profiles
    interleave over them in proportion to their counts.  The chair (index 0)
    is never weak.  Same arguments, same seats.
    """
    counts = [(name, count) for name, count in weak_counts(points, specs) if count]
    total = sum(count for _, count in counts)
    if not total:
        return {}
    indices = [int((k + 0.5) * points / total) + 1 for k in range(total)]
    given = {name: 0 for name, _ in counts}
    result: dict[int, str] = {}
    for k, index in enumerate(indices):
        # the profile furthest behind its proportional share so far (ties: flag order)
        name = max(counts, key=lambda item: item[1] * (k + 1) / total - given[item[0]])[0]
        given[name] += 1
        result[index] = name
    return result


def weak_camera_kbps(bitrate_kbps: int, profile: LinkProfile) -> int:
    """The camera bitrate of a point on ``profile`` (see the module doc)."""
    return max(50, min(bitrate_kbps, int(profile.up_kbps * WEAK_CAMERA_SHARE)))


# -- SDP ---------------------------------------------------------------------------------
_CANDIDATE = re.compile(
    r"^a=candidate:(?P<foundation>\S+) (?P<component>\d+) (?P<transport>\S+) (?P<priority>\d+)"
    r" (?P<host>\S+) (?P<port>\d+) typ (?P<type>\S+)"
)


def _lines(sdp: str) -> list[str]:
    return sdp.replace("\r\n", "\n").split("\n")


def _join(lines: list[str]) -> str:
    while lines and lines[-1] == "":
        lines.pop()
    return "\r\n".join(lines) + "\r\n"


def strip_candidates(sdp: str) -> str:
    """``sdp`` without ``a=candidate`` and ``a=end-of-candidates`` lines."""
    return _join(
        [
            line
            for line in _lines(sdp)
            if not line.startswith("a=candidate:") and line != "a=end-of-candidates"
        ]
    )


RelayFactory = Callable[[str, int], Awaitable[tuple[str, int] | None]]


async def relay_candidates(sdp: str, relay: RelayFactory) -> str:
    """``sdp`` with each UDP candidate's address replaced by a relay to it.

    ``relay(host, port)`` gives the relay's address, or None: that candidate
    is dropped, as are TCP candidates and names that are not IP addresses (a
    weak point can reach nothing but its relays).  Related addresses
    (``raddr``/``rport``) are dropped too.
    """
    out = []
    for line in _lines(sdp):
        match = _CANDIDATE.match(line)
        if match is None:
            out.append(line)
            continue
        host, port = match["host"], int(match["port"])
        if match["transport"].lower() != "udp":
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            continue
        address = await relay(host, port)
        if address is None:
            continue
        out.append(
            f"a=candidate:{match['foundation']} {match['component']} udp {match['priority']}"
            f" {address[0]} {address[1]} typ {match['type']}"
        )
    return _join(out)


# -- the point's side (worker process) -------------------------------------------------------
class RelayRequester:
    """A weak point's source of relays: asks the coordinator over the worker channel.

    The worker sends ``{"event": "relay", "id": N, "index": seat, "target":
    [host, port]}``; the coordinator answers ``{"cmd": "relay", "id": N,
    "address": [host, port]}`` (or ``"error"``), which the worker's command
    loop hands to :meth:`resolve`.  Answers are cached per target.
    """

    def __init__(self, send: Callable[[dict[str, Any]], None], index: int) -> None:
        self._send = send
        self.index = index
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[str, int] | None]] = {}
        self._known: dict[tuple[str, int], asyncio.Future[tuple[str, int] | None]] = {}

    async def __call__(self, host: str, port: int) -> tuple[str, int] | None:
        target = (host, port)
        future = self._known.get(target)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._known[target] = future
            request = next(self._ids)
            self._waiting[request] = future
            self._send(
                {"event": "relay", "id": request, "index": self.index, "target": [host, port]}
            )
        return await asyncio.wait_for(asyncio.shield(future), 10)

    def resolve(self, message: dict[str, Any]) -> None:
        future = self._waiting.pop(int(message.get("id", 0)), None)
        if future is None or future.done():
            return
        address = message.get("address")
        if address:
            future.set_result((str(address[0]), int(address[1])))
        else:
            logger.warning("point %d: no relay: %s", self.index, message.get("error"))
            future.set_result(None)


# -- the coordinator's side -------------------------------------------------------------
def _tc() -> str:
    found = shutil.which("tc")
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin"):
        if os.access(f"{folder}/tc", os.X_OK):
            return f"{folder}/tc"
    return "tc"


_TBF_SENT = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+)")


def _tbf_counters(argv: list[str]) -> tuple[int, int, int] | None:
    """(bytes, packets, dropped) of the root qdisc from ``tc -s qdisc show ...``."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for block in out.split("qdisc ")[1:]:
        if block.startswith("tbf") and " root " in block:
            match = _TBF_SENT.search(block)
            if match:
                return int(match[1]), int(match[2]), int(match[3])
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class WeakSite:
    """One weak point's link, run by the coordinator (see the module doc).

    :meth:`open` creates the rate-limited namespace and the TCP forwarder to
    the server's HTTP port; :meth:`relay` makes (once per server candidate)
    the loss/delay relay on the namespace's host-side address; :meth:`mark`
    and :meth:`stats` count what the relays and the tbf qdiscs passed and
    dropped in the measurement window; :meth:`close` undoes it all.
    """

    def __init__(
        self,
        index: int,
        identity: str,
        profile: LinkProfile,
        server: tuple[str, int],
        *,
        allow_remote: bool = False,
    ) -> None:
        self.index = index
        self.identity = identity
        self.profile = profile
        self.server = server
        self.allow_remote = allow_remote
        self.namespace = Namespace(down_kbps=profile.down_kbps, up_kbps=profile.up_kbps)
        self.relays: dict[tuple[str, int], UdpRelay] = {}
        self._forwarder: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._opened = False
        self._base: dict[str, int] = {}

    async def open(self) -> None:
        await asyncio.to_thread(self.namespace.open)
        self._opened = True
        self._forwarder = await asyncio.start_server(
            self._forward, host=self.namespace.host_address, port=0
        )

    @property
    def address(self) -> str:
        """The point's own address (inside the namespace): its ICE host candidate."""
        return self.namespace.address

    @property
    def forwarder_port(self) -> int:
        assert self._forwarder is not None
        port: int = self._forwarder.sockets[0].getsockname()[1]
        return port

    def url(self, scheme: str) -> str:
        """The server's base URL as the point reaches it (through the forwarder)."""
        return f"{scheme}://{self.namespace.host_address}:{self.forwarder_port}"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the point's namespace."""
        return self.namespace.command(argv)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.server)
        except OSError as exc:
            logger.warning("%s: cannot reach the server: %s", self.identity, exc)
            writer.close()
            return
        tasks = [
            asyncio.ensure_future(_pipe(reader, upstream_writer)),
            asyncio.ensure_future(_pipe(upstream_reader, writer)),
        ]
        self._connections.update(tasks)
        try:
            await asyncio.gather(*tasks)
        finally:
            self._connections.difference_update(tasks)

    async def relay(self, host: str, port: int) -> tuple[str, int]:
        """The relay to the server's candidate ``host:port`` (made on first use)."""
        target = (host, port)
        relay = self.relays.get(target)
        if relay is None:
            relay = UdpRelay.for_profile(
                self.profile,
                target,
                listen=(self.namespace.host_address, 0),
                seed=f"{self.identity}:{len(self.relays)}",
                allow_remote=self.allow_remote,
            )
            await relay.start()
            self.relays[target] = relay
        return relay.address

    def _counters(self) -> dict[str, int]:
        counters = {
            "relay_up_forwarded": sum(r.up_stats.forwarded for r in self.relays.values()),
            "relay_up_dropped": sum(r.up_stats.dropped for r in self.relays.values()),
            "relay_down_forwarded": sum(r.down_stats.forwarded for r in self.relays.values()),
            "relay_down_dropped": sum(r.down_stats.dropped for r in self.relays.values()),
        }
        if self._opened:
            ns = self.namespace
            tc = _tc()
            for direction, argv in (
                ("down", [tc, "-s", "qdisc", "show", "dev", ns.host_interface]),
                ("up", [tc, "-n", ns.name, "-s", "qdisc", "show", "dev", ns.interface]),
            ):
                found = _tbf_counters(argv)
                if found is not None:
                    counters[f"tbf_{direction}_bytes"] = found[0]
                    counters[f"tbf_{direction}_packets"] = found[1]
                    counters[f"tbf_{direction}_dropped"] = found[2]
        return counters

    async def mark(self) -> None:
        """Start the measurement window."""
        self._base = await asyncio.to_thread(self._counters)

    async def stats(self, seconds: float) -> dict[str, Any]:
        """What the link did since :meth:`mark`: relay and tbf counters, rates."""
        now = await asyncio.to_thread(self._counters)
        delta = {key: value - self._base.get(key, 0) for key, value in now.items()}
        result: dict[str, Any] = {
            "profile": self.profile.name,
            "namespace": self.namespace.name if self._opened else None,
            "address": self.namespace.address if self._opened else None,
            "relays": len(self.relays),
            **delta,
        }
        for direction in ("up", "down"):
            passed = delta.get(f"relay_{direction}_forwarded", 0)
            dropped = delta.get(f"relay_{direction}_dropped", 0)
            total = passed + dropped
            result[f"relay_{direction}_loss_pct"] = (
                round(100 * dropped / total, 2) if total else 0.0
            )
            sent = delta.get(f"tbf_{direction}_bytes")
            if sent is not None and seconds > 0:
                result[f"tbf_{direction}_kbps"] = round(sent * 8 / seconds / 1000, 1)
        return result

    async def close(self) -> None:
        for relay in self.relays.values():
            with contextlib.suppress(Exception):
                await relay.stop()
        self.relays.clear()
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        for task in list(self._connections):
            task.cancel()
        if self._opened:
            self._opened = False
            try:
                await asyncio.to_thread(self.namespace.close)
            except LinkEmuError as exc:
                logger.warning("%s: removing its namespace: %s", self.identity, exc)
