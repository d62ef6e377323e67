"""Relay: a publication carried from the node that receives it to other nodes.

A meeting can span several server processes (nodes).  Each node receives its
own participants' media; a publication reaches another node's subscribers
through one relay stream per node (never one per subscriber), over UDP between
the nodes' relay endpoints, as *keyed plain RTP*: the RTP fields a forwarder
needs and the payload, unencrypted, each datagram authenticated by an
HMAC-SHA256 tag (8 bytes) under a key every node derives from the shared token
secret.  Like Jitsi's Octo or mediasoup's pipe transports it is meant for the
nodes' private network (or loopback): it hides nothing from a listener there,
but nobody without the key can inject media or steer a stream anywhere.

Datagrams (big-endian), every one ``header | body | tag``::

    header  "CR" version:u8 type:u8 stream:u32 layer:u8
    MEDIA   seq:u16 timestamp:u32 flags:u8 level:u8 payload...
            flags: 1 marker, 2 repaired (a retransmission), 4 audio level present, 8 voice,
                   16 resumed (the packets before it since the last one sent were held
                   back on purpose: not lost)
    PLI     (empty)                      the importer wants a keyframe of `layer`
    NACK    seq:u16 ...                  the importer lost these of `layer`
    SR      ntp:u64 rtp:u32              the publisher's sender report of `layer`
    WANT    time:f64 port:u16 mode:u8 host...
                                         the importer (at host:port) wants the stream
                                         for `LEASE` seconds more (renewed every second):
                                         mode 0 gated, 1 full (every packet)
    DROP    time:f64 port:u16 mode:u8 host...    it no longer does

Demand is soft state: an importer whose publication has subscribers (any audio:
its levels drive the node's active speaker) sends
WANT every `KEEPALIVE` seconds; the exporter sends to it until a DROP or until
`LEASE` seconds pass without a WANT, so a node that dies stops costing its
peers within seconds.  WANT and DROP carry the importer's address inside the
authenticated part (a replayed one can only send media where it already goes)
and their time (older than `MAX_AGE` is ignored).

**Gated relays.**  A microphone's packet that the exporting room's audio gate held
back (`Publication.on_rtp` passes its verdict to the relay hook) is sent only to
importers in *full* mode: those that record the publication (its taps), which say so
in their WANT.  The others (*gated* mode) get the microphones open on the exporting
node, and the first packet after a held-back run carries the ``resumed`` flag: the
importer's `NackTracker` forgets the gap (`NackTracker.skip`) and its publication's
subscriptions continue their numbering with the marker bit (`Publication.held_back`,
as after the local gate).  The exporter keeps each importer's mode and which of them
missed packets (``Export.behind``), so an importer switching modes mid-run gets the
flag too.  Why this still lets each node hear the meeting's loudest voices:
docs/ARCHITECTURE.md, "Nodes".

Losses between nodes are repaired hop by hop: the importer tracks sequence
numbers per layer (`NackTracker`) and NACKs; the exporter keeps its last
packets per layer (`PacketHistory`) and sends them again flagged ``repaired``, to
the importer that asked (every importer when the NACK's source is not a lease's
address).  Keyframe requests (PLI) travel back the same way.

An exported :class:`Publication` is unchanged: the endpoint hooks its
``relays`` (every layer's packets and sender reports).  An imported one is a
plain `Publication` whose receiver is a :class:`RelayReceiver`: the room,
subscriptions, speaker detection and recorder treat it like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .bridge import RtpPacket
from .history import PacketHistory
from .nack import NackTracker
from .publication import Publication

logger = logging.getLogger(__name__)

MAGIC = b"CR"
#: 2: the WANT's mode, the MEDIA ``resumed`` flag (gated relays); nodes of one cluster run
#: the same version (a datagram of another is refused)
VERSION = 2
MEDIA, PLI, NACK, SR, WANT, DROP = 1, 2, 3, 4, 5, 6
TAG_BYTES = 8
HEADER = struct.Struct("!2sBBIB")
MEDIA_FIELDS = struct.Struct("!HIBB")
SR_FIELDS = struct.Struct("!QI")
DEMAND_FIELDS = struct.Struct("!dHB")
F_MARKER, F_REPAIRED, F_LEVEL, F_VOICE, F_RESUMED = 1, 2, 4, 8, 16
#: the flags byte of a MEDIA body
FLAGS_AT = 6

#: an exporter sends a stream this long after the last WANT
LEASE = 3.0
#: an importer with subscribers renews its demand this often
KEEPALIVE = 1.0
#: demand datagrams older than this (clocks of one province's servers agree) are ignored
MAX_AGE = 10.0
#: packets per layer an exporter keeps for retransmission
HISTORY = 512
#: the period of the endpoint's housekeeping (NACK retries, demand, leases)
TICK = 0.05
#: at most this many sequence numbers in one NACK datagram
NACK_MAX = 64

Address = tuple[str, int]


def relay_key(secret: str) -> bytes:
    """The relay's HMAC key, derived from the nodes' shared token secret."""
    return hmac.new(secret.encode(), b"conference relay v1", hashlib.sha256).digest()


class RelayFormatError(ValueError):
    """A datagram that is not a well-formed, authentic relay datagram."""


def seal(key: bytes, kind: int, stream: int, layer: int, body: bytes) -> bytes:
    """A relay datagram: header, ``body`` and its tag."""
    data = HEADER.pack(MAGIC, VERSION, kind, stream, layer) + body
    return data + hmac.digest(key, data, "sha256")[:TAG_BYTES]


def unseal(key: bytes, data: bytes) -> tuple[int, int, int, bytes]:
    """(type, stream, layer, body) of an authentic datagram; `RelayFormatError` else."""
    if len(data) < HEADER.size + TAG_BYTES:
        raise RelayFormatError("too short")
    signed, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    if not hmac.compare_digest(hmac.digest(key, signed, "sha256")[:TAG_BYTES], tag):
        raise RelayFormatError("bad tag")
    magic, version, kind, stream, layer = HEADER.unpack_from(signed)
    if magic != MAGIC or version != VERSION:
        raise RelayFormatError("not a relay datagram of this version")
    return kind, stream, layer, signed[HEADER.size :]


def media_body(packet: RtpPacket, repaired: bool) -> bytes:
    flags = (F_MARKER if packet.marker else 0) | (F_REPAIRED if repaired else 0)
    level = packet.extensions.audio_level
    value = 0
    if level is not None:
        flags |= F_LEVEL | (F_VOICE if level[0] else 0)
        value = level[1]
    fields = MEDIA_FIELDS.pack(packet.sequence_number, packet.timestamp, flags, value)
    return fields + packet.payload


def media_packet(body: bytes) -> tuple[RtpPacket, bool]:
    """The RTP packet of a MEDIA body, and whether it was a retransmission (its payload
    type is left 0: a subscription sends with its own sender's)."""
    if len(body) < MEDIA_FIELDS.size:
        raise RelayFormatError("short media")
    seq, timestamp, flags, value = MEDIA_FIELDS.unpack_from(body)
    packet = RtpPacket(
        marker=flags & F_MARKER,
        sequence_number=seq,
        timestamp=timestamp,
        payload=body[MEDIA_FIELDS.size :],
    )
    if flags & F_LEVEL:
        packet.extensions.audio_level = (bool(flags & F_VOICE), value)
    return packet, bool(flags & F_REPAIRED)


def resumed_body(body: bytes) -> bytes:
    """A MEDIA ``body`` flagged ``resumed`` (held-back packets before it)."""
    return body[:FLAGS_AT] + bytes((body[FLAGS_AT] | F_RESUMED,)) + body[FLAGS_AT + 1 :]


def demand_body(address: Address, when: float | None = None, full: bool = False) -> bytes:
    host, port = address
    when = time.time() if when is None else when
    return DEMAND_FIELDS.pack(when, port, 1 if full else 0) + host.encode()


def demand(body: bytes) -> tuple[Address, bool]:
    """The importer's address in a WANT or DROP body (which must be recent), and whether
    it wants every packet (full mode) rather than only those of open microphones."""
    if len(body) <= DEMAND_FIELDS.size:
        raise RelayFormatError("short demand")
    when, port, mode = DEMAND_FIELDS.unpack_from(body)
    if abs(time.time() - when) > MAX_AGE:
        raise RelayFormatError("stale demand")
    if mode > 1:
        raise RelayFormatError("bad mode")
    try:
        host = body[DEMAND_FIELDS.size :].decode("ascii")
    except UnicodeDecodeError as exc:
        raise RelayFormatError("bad host") from exc
    return (host, port), mode == 1


@dataclass
class Export:
    """A local publication offered to other nodes as relay stream ``stream``."""

    stream: int
    publication: Publication
    #: importers' addresses -> when their lease ends (monotonic)
    leases: dict[Address, float] = field(default_factory=dict)
    history: list[PacketHistory[bytes]] = field(default_factory=list)
    #: the importers (of ``leases``) in full mode: they get every packet, those the
    #: exporting room's audio gate held back too (they record the publication)
    full: set[Address] = field(default_factory=set)
    #: importers in gated mode that missed held-back packets since the last one sent
    #: to them: the next one carries the ``resumed`` flag
    behind: set[Address] = field(default_factory=set)
    #: a held-back run is going on (``behind`` has its gated importers)
    holding: bool = False
    #: the hook in the publication's ``relays`` while anyone holds a lease
    hook: Callable[..., None] | None = None
    retransmitted: int = 0

    def forget(self, address: Address) -> None:
        """``address`` holds no lease any more."""
        self.leases.pop(address, None)
        self.full.discard(address)
        self.behind.discard(address)


class RelayReceiver:
    """Stands where a `ForwardingReceiver` stands for an imported publication.

    It is fed by its :class:`RelayEndpoint` and asks the exporting node for
    keyframes; the :class:`Publication` it serves is its ``sink``.
    """

    def __init__(
        self,
        endpoint: RelayEndpoint,
        origin: Address,
        stream: int,
        kind: str,
        rids: list[str],
    ) -> None:
        self.endpoint = endpoint
        self.origin = origin
        self.stream = stream
        self.kind = kind
        self.rids = rids
        self.sink: Any = None
        self.trackers = [NackTracker() for _ in range(max(1, len(rids)))]
        self.nacks_sent = 0
        self.wanting = False
        #: the mode of the last WANT: full (every packet) or gated
        self.full = False
        #: gaps the exporter made on purpose (``resumed`` packets), not NACKed
        self.gaps_skipped = 0

    def request_keyframe(self, layer: int = 0) -> None:
        self.endpoint.send_to(self.origin, PLI, self.stream, layer, b"")

    def wanted(self) -> bool:
        """Whether anyone on this node receives the publication (or records it).

        Audio is always wanted: the node's speaker detection hears every microphone of
        the meeting, as a single node does, even one that nobody here subscribes to.
        """
        sink = self.sink
        return sink is not None and (self.kind == "audio" or bool(sink.subscriptions or sink.taps))

    def wants_full(self) -> bool:
        """Whether this node needs every packet, those the exporting room's audio gate
        held back too: it records the publication (its taps).  Its subscriptions and
        speaker detection need only the open microphones (see the module doc)."""
        sink = self.sink
        return sink is not None and bool(sink.taps)


class RelayEndpoint(asyncio.DatagramProtocol):
    """One node's relay socket: exports its publications, imports other nodes'."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.transport: asyncio.DatagramTransport | None = None
        #: the address other nodes send to: the bound one (a specific address)
        self.address: Address = ("", 0)
        self.exports: dict[int, Export] = {}
        self.imports: dict[tuple[Address, int], RelayReceiver] = {}
        self._next_stream = 1
        self._task: asyncio.Task[None] | None = None
        self._last_keepalive = 0.0
        self.dropped = 0  # datagrams refused (bad tag, unknown stream, malformed)
        #: MEDIA datagrams and their octets sent to importers, by the publication's kind
        #: and the importer's mode (``/metrics``: ``conference_relay_sent_*``);
        #: retransmissions included
        self.sent: dict[tuple[str, str], list[int]] = {
            (kind, mode): [0, 0] for kind in ("audio", "video") for mode in ("full", "gated")
        }
        #: datagrams not sent to importers in gated mode (packets the gate held back,
        #: once per such importer)
        self.withheld = 0

    # -- life ------------------------------------------------------------------------
    async def start(self, host: str, port: int = 0) -> Address:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.transport = transport
        bound = transport.get_extra_info("sockname")
        self.address = (bound[0], bound[1])
        self._task = asyncio.ensure_future(self._housekeeping())
        logger.info("relay endpoint on %s:%d", *self.address)
        return self.address

    def close(self) -> None:
        for receiver in list(self.imports.values()):
            if receiver.wanting:
                self.send_to(receiver.origin, DROP, receiver.stream, 0, demand_body(self.address))
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        for export in list(self.exports.values()):
            self.unexport(export.publication)

    # -- exporting -------------------------------------------------------------------
    def export(self, publication: Publication) -> int:
        """Offer ``publication`` to other nodes; returns its stream number."""
        for export in self.exports.values():
            if export.publication is publication:
                return export.stream
        stream = self._next_stream
        self._next_stream = (stream % 0xFFFFFFFF) + 1
        export = Export(
            stream, publication, history=[PacketHistory(HISTORY) for _ in publication.layers]
        )
        self.exports[stream] = export
        return stream

    def unexport(self, publication: Publication) -> None:
        for stream, export in list(self.exports.items()):
            if export.publication is publication:
                del self.exports[stream]
                self._unhook(export)

    def _hook(self, export: Export) -> None:
        if export.hook is not None:
            return
        kind = export.publication.kind
        full_tally = self.sent.setdefault((kind, "full"), [0, 0])
        gated_tally = self.sent.setdefault((kind, "gated"), [0, 0])
        leases, full, behind = export.leases, export.full, export.behind

        def relay(
            layer: int,
            packet: RtpPacket | None,
            repaired: bool,
            held: bool = False,
            sr: Any = None,
        ) -> None:
            """``held``: the exporting room's audio gate held the packet back."""
            if packet is None:
                body = SR_FIELDS.pack(*sr)
                for address in leases:
                    self.send_to(address, SR, export.stream, layer, body)
                return
            body = media_body(packet, repaired)
            if layer < len(export.history):
                export.history[layer].store(packet.sequence_number, body)
            transport = self.transport
            if transport is None:
                return
            gated = len(leases) - len(full)
            if held:  # to the importers in full mode only
                if not repaired and not export.holding:
                    export.holding = True
                    behind.update(address for address in leases if address not in full)
                self.withheld += gated
                if not full:
                    return
            data = seal(self.key, MEDIA, export.stream, layer, body)
            targets = full if held else leases
            if behind and not repaired:  # the first packet to those that missed some
                resumed = seal(self.key, MEDIA, export.stream, layer, resumed_body(body))
                for address in targets:
                    transport.sendto(resumed if address in behind else data, address)
                behind.difference_update(targets)
            else:
                for address in targets:
                    transport.sendto(data, address)
            size = len(data)
            full_tally[0] += len(full)
            full_tally[1] += len(full) * size
            if not held:
                gated_tally[0] += gated
                gated_tally[1] += gated * size
                if not repaired:
                    export.holding = False

        export.hook = relay
        export.publication.relays.append(relay)

    def _unhook(self, export: Export) -> None:
        if export.hook is not None:
            export.publication.relays.remove(export.hook)
            export.hook = None

    # -- importing -------------------------------------------------------------------
    def import_stream(
        self, origin: Address, stream: int, kind: str, rids: list[str]
    ) -> RelayReceiver:
        """A receiver for another node's stream (its `Publication` is made by the caller)."""
        key = (origin, stream)
        receiver = self.imports.get(key)
        if receiver is None:
            receiver = RelayReceiver(self, origin, stream, kind, rids)
            self.imports[key] = receiver
        return receiver

    def forget(self, receiver: RelayReceiver) -> None:
        """Stop importing (the publication ended, or its node is gone)."""
        if self.imports.get((receiver.origin, receiver.stream)) is receiver:
            del self.imports[(receiver.origin, receiver.stream)]
        if receiver.wanting:
            receiver.wanting = False
            self.send_to(receiver.origin, DROP, receiver.stream, 0, demand_body(self.address))

    # -- the wire --------------------------------------------------------------------
    def send_to(self, address: Address, kind: int, stream: int, layer: int, body: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(seal(self.key, kind, stream, layer, body), address)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            kind, stream, layer, body = unseal(self.key, data)
            if kind == MEDIA or kind == SR:
                self._imported(addr, kind, stream, layer, body)
            else:
                self._exported(addr, kind, stream, layer, body)
        except RelayFormatError as exc:
            self.dropped += 1
            logger.debug("relay: datagram from %s refused: %s", addr, exc)

    def _imported(self, addr: Any, kind: int, stream: int, layer: int, body: bytes) -> None:
        receiver = self.imports.get(((addr[0], addr[1]), stream))
        if receiver is None or receiver.sink is None:
            self.dropped += 1
            return
        if kind == SR:
            if len(body) != SR_FIELDS.size:
                raise RelayFormatError("bad sender report")
            receiver.sink.on_sender_report(*SR_FIELDS.unpack(body), layer=layer)
            return
        packet, repaired = media_packet(body)
        resumed = body[FLAGS_AT] & F_RESUMED and not repaired
        if layer < len(receiver.trackers):
            tracker = receiver.trackers[layer]
            if repaired:
                if not tracker.repairs(packet.sequence_number):
                    return  # a copy of what is here already
            elif resumed:  # the gap before it was made on purpose: not lost
                tracker.skip(packet.sequence_number)
                receiver.gaps_skipped += 1
            else:
                lost = tracker.received(packet.sequence_number, time.monotonic())
                if lost:
                    self._nack(receiver, layer, lost)
        if resumed:  # its subscriptions continue their numbering, as after the local gate
            receiver.sink.held_back()
        receiver.sink.on_rtp(packet, repaired, layer)

    def _exported(self, addr: Any, kind: int, stream: int, layer: int, body: bytes) -> None:
        export = self.exports.get(stream)
        if export is None:
            self.dropped += 1
            return
        if kind == WANT:
            address, full = demand(body)
            if address not in export.leases:
                logger.info(
                    "relay: stream %d (%s) to %s:%d%s",
                    stream,
                    export.publication.id,
                    *address,
                    " (full)" if full else "",
                )
            elif full != (address in export.full):
                logger.info(
                    "relay: stream %d to %s:%d %s",
                    stream,
                    *address,
                    "full" if full else "gated",
                )
            export.leases[address] = time.monotonic() + LEASE
            if full:
                export.full.add(address)
            elif address in export.full:
                export.full.discard(address)
                if export.holding:  # it misses the rest of this run
                    export.behind.add(address)
            self._hook(export)
        elif kind == DROP:
            address = demand(body)[0]
            if address in export.leases:
                logger.info("relay: stream %d no longer to %s:%d", stream, *address)
            export.forget(address)
            if not export.leases:
                self._unhook(export)
        elif kind == PLI:
            if layer < len(export.publication.layers):
                export.publication.request_keyframe(layer)
        elif kind == NACK:
            if layer >= len(export.history) or len(body) % 2:
                raise RelayFormatError("bad nack")
            history = export.history[layer]
            # to the importer that asked (its datagrams come from its lease's address);
            # to every importer if the NACK came from elsewhere (a translated address)
            asker = (addr[0], addr[1])
            targets = [asker] if asker in export.leases else list(export.leases)
            for (seq,) in struct.iter_unpack("!H", body):
                stored = history.get(seq)
                if stored is None:
                    continue
                flags = stored[FLAGS_AT] | F_REPAIRED
                again = stored[:FLAGS_AT] + bytes((flags,)) + stored[FLAGS_AT + 1 :]
                for address in targets:
                    self.send_to(address, MEDIA, stream, layer, again)
                    export.retransmitted += 1
                    mode = "full" if address in export.full else "gated"
                    tally = self.sent.setdefault((export.publication.kind, mode), [0, 0])
                    tally[0] += 1
                    tally[1] += len(again) + HEADER.size + TAG_BYTES
        else:
            raise RelayFormatError(f"unknown type {kind}")

    def _nack(self, receiver: RelayReceiver, layer: int, seqs: list[int]) -> None:
        for start in range(0, len(seqs), NACK_MAX):
            chunk = seqs[start : start + NACK_MAX]
            body = struct.pack(f"!{len(chunk)}H", *chunk)
            self.send_to(receiver.origin, NACK, receiver.stream, layer, body)
            receiver.nacks_sent += len(chunk)

    # -- housekeeping ----------------------------------------------------------------
    async def _housekeeping(self) -> None:
        try:
            while True:
                await asyncio.sleep(TICK)
                self.tick(time.monotonic())
        except asyncio.CancelledError:
            pass

    def tick(self, now: float) -> None:
        """First demands, NACK retries, demand renewals, lease expiry."""
        for receiver in list(self.imports.values()):
            sink = receiver.sink
            if not receiver.wanting or receiver.full != (sink is not None and bool(sink.taps)):
                # a first subscriber here, or a recording started or stopped here (the
                # mode changed: see `RelayReceiver.wants_full`): ask within a tick
                self.want_now(receiver)
            for layer, tracker in enumerate(receiver.trackers):
                due = tracker.due(now)
                if due:
                    self._nack(receiver, layer, due)
        if now - self._last_keepalive >= KEEPALIVE:
            self._last_keepalive = now
            self.renew()
        for export in self.exports.values():
            expired = [a for a, until in export.leases.items() if until < now]
            for address in expired:
                export.forget(address)
                logger.info("relay: stream %d lease of %s:%d ended", export.stream, *address)
            if expired and not export.leases:
                self._unhook(export)

    def renew(self) -> None:
        """Send WANT for every imported stream someone here receives (DROP for the rest)."""
        for receiver in list(self.imports.values()):
            wanted = receiver.wanted()
            if wanted:
                self._want(receiver)
            elif receiver.wanting:
                self.send_to(receiver.origin, DROP, receiver.stream, 0, demand_body(self.address))
            receiver.wanting = wanted

    def want_now(self, receiver: RelayReceiver) -> None:
        """Ask for ``receiver``'s stream at once: a first local subscriber, or its mode
        changed (a recording here started or stopped)."""
        if receiver.wanted() and (not receiver.wanting or receiver.full != receiver.wants_full()):
            receiver.wanting = True
            self._want(receiver)

    def _want(self, receiver: RelayReceiver) -> None:
        full = receiver.wants_full()
        receiver.full = full
        body = demand_body(self.address, full=full)
        self.send_to(receiver.origin, WANT, receiver.stream, 0, body)
