"""Publication: one incoming track of a participant, fanned out to subscriptions.

A simulcast publication has several :class:`Layer` s (the same camera at
several resolutions, lowest first); any other publication has one.  Each
subscription forwards exactly one layer, so each layer keeps its own set of
subscriptions, keyframe throttle, sender report and bitrate.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import red
from .bridge import RtpPacket, ntp_now
from .keyframe import KeyframeThrottle, is_keyframe

if TYPE_CHECKING:
    from .subscription import Subscription

logger = logging.getLogger(__name__)

SOURCES = ("microphone", "camera", "screen")

#: a group of pictures kept for new subscribers is dropped beyond these sizes
GOP_PACKETS = 4000
GOP_OCTETS = 4_000_000
#: a keyframe request unanswered this long marks a publisher that ignores them
SLOW_KEYFRAME = 3.0
#: :attr:`Layer.peak` is the highest bitrate measured in this many seconds
PEAK_WINDOW = 5.0


class MediaSource(Protocol):
    """What feeds a publication: a publisher's `ForwardingReceiver`, or another node's
    relay stream (`conference.sfu.relay.RelayReceiver`)."""

    kind: str
    rids: list[str]
    sink: Any

    def request_keyframe(self, layer: int = 0) -> None: ...


class Layer:
    """One RTP stream of a publication: a simulcast layer, or the only one."""

    __slots__ = (
        "index",
        "rid",
        "subscriptions",
        "keyframe_throttle",
        "keyframes_requested",
        "keyframes_received",
        "packets",
        "octets",
        "last_packet",
        "last_rtp",
        "sender_report",
        "bitrate",
        "_rate_mark",
        "_peaks",
        "live_since",
        "keep_keyframes",
        "gop",
        "_gop_octets",
        "keyframe_asked",
    )

    def __init__(self, index: int, rid: str | None) -> None:
        self.index = index
        self.rid = rid
        #: subscriptions forwarding (or waiting for a keyframe of) this layer
        self.subscriptions: set[Subscription] = set()
        self.keyframe_throttle = KeyframeThrottle(0.3)
        self.keyframes_requested = 0
        self.keyframes_received = 0
        self.packets = 0
        self.octets = 0
        self.last_packet = 0.0  # monotonic time
        self.last_rtp: tuple[int, float] | None = None  # (rtp timestamp, monotonic time)
        self.sender_report: tuple[int, int] | None = None  # (ntp, rtp) from the publisher
        #: bits per second, measured by :meth:`measure` (0 until then)
        self.bitrate = 0.0
        self._rate_mark: tuple[float, int] | None = None  # (time, octets) of the last measure
        #: (time, smoothed bits/s) of the measures in the last PEAK_WINDOW seconds
        self._peaks: deque[tuple[float, float]] = deque()
        #: monotonic time the layer (re)started after a pause of 1 s or more
        self.live_since = 0.0
        #: keep the last keyframe and what followed (``gop``) for new subscribers: for
        #: publishers that ignore keyframe requests (WHIP encoders, see
        #: :meth:`Publication.note_slow_keyframes`)
        self.keep_keyframes = False
        self.gop: list[tuple[RtpPacket, bool]] | None = None
        self._gop_octets = 0
        #: monotonic time of the oldest keyframe request not yet answered
        self.keyframe_asked: float | None = None

    def keep(self, packet: RtpPacket, keyframe: bool) -> None:
        """Add a packet to the cached group of pictures (from the last keyframe)."""
        gop = self.gop
        if keyframe and (gop is None or gop[0][0].timestamp != packet.timestamp):
            self.gop = [(packet, True)]
            self._gop_octets = len(packet.payload)
            return
        if gop is None:
            return
        gop.append((packet, keyframe))
        self._gop_octets += len(packet.payload)
        if len(gop) > GOP_PACKETS or self._gop_octets > GOP_OCTETS:
            self.gop = None  # too long a group: wait for the next keyframe

    def live(self, now: float, within: float = 1.0) -> bool:
        """Whether the publisher sent this layer in the last ``within`` seconds."""
        return self.packets > 0 and now - self.last_packet < within

    def measure(self, now: float) -> float:
        """Update :attr:`bitrate` from the octets since the last call (smoothed)."""
        mark = self._rate_mark
        self._rate_mark = (now, self.octets)
        if mark is not None and now - mark[0] >= 0.2:
            rate = 8 * (self.octets - mark[1]) / (now - mark[0])
            self.bitrate = rate if self.bitrate == 0 else 0.6 * self.bitrate + 0.4 * rate
        if not self.live(now, 2.0):
            self.bitrate = 0.0
            self._peaks.clear()
        peaks = self._peaks
        while peaks and now - peaks[0][0] > PEAK_WINDOW:
            peaks.popleft()
        peaks.append((now, self.bitrate))
        return self.bitrate

    def settled(self, now: float) -> bool:
        """Whether the layer has been sent for :data:`PEAK_WINDOW` seconds: before
        that its rate says little (an encoder (re)started by dynacast ramps up
        over seconds), and :attr:`peak` is not to be trusted alone."""
        return self.live(now) and now - self.live_since >= PEAK_WINDOW

    @property
    def peak(self) -> float:
        """The highest :attr:`bitrate` of the last :data:`PEAK_WINDOW` seconds: what
        a subscriber's link must carry for this layer (an encoder's rate swings with
        motion and keyframes; an upgrade priced at the mean overflows a link that
        barely holds the mean)."""
        return max((rate for _, rate in self._peaks), default=self.bitrate)

    def rtp_now(self, clock_rate: int) -> tuple[int, int] | None:
        """(NTP now, this layer's RTP timestamp for now), for sender reports."""
        now_ntp = ntp_now()
        if self.sender_report is not None:
            sr_ntp, sr_rtp = self.sender_report
            elapsed = ((now_ntp - sr_ntp) & 0xFFFFFFFFFFFFFFFF) / (1 << 32)
            if 0 <= elapsed < 3600:
                return now_ntp, (sr_rtp + int(elapsed * clock_rate)) & 0xFFFFFFFF
        if self.last_rtp is not None:
            rtp, when = self.last_rtp
            elapsed = time.monotonic() - when
            return now_ntp, (rtp + int(elapsed * clock_rate)) & 0xFFFFFFFF
        return None


class Publication:
    """One incoming audio or video track (microphone, camera or screen).

    The publisher's :class:`ForwardingReceiver` calls :meth:`on_rtp` for every
    packet with its layer; the publication detects keyframes once per packet
    and hands the packet to each :class:`Subscription` of that layer (which
    rewrites and sends it).  Keyframe requests from all subscriptions are
    throttled per layer, so twenty subscribers reporting the same loss cost
    the publisher one PLI.
    """

    def __init__(
        self,
        publication_id: str,
        participant_id: str,
        source: str,
        receiver: MediaSource,
        codec_name: str,
        clock_rate: int,
        on_audio_level: Callable[[str, int], None] | None = None,
        on_ended: Callable[[Publication], None] | None = None,
    ) -> None:
        self.id = publication_id
        self.participant_id = participant_id
        self.source = source
        self.kind = receiver.kind
        self.receiver = receiver
        self.codec_name = codec_name.lower()
        self.clock_rate = clock_rate
        self.muted = False
        # muted by a moderator: the server stops forwarding until lifted
        self.blocked = False
        rids: list[str | None] = list(receiver.rids) or [None]
        self.layers = [Layer(index, rid) for index, rid in enumerate(rids)]
        #: Called with every packet of the top layer after the subscriptions (the
        #: recorder); ``tap(publication, packet, keyframe)`` must not raise.
        self.taps: list[Callable[[Publication, RtpPacket, bool], None]] = []
        #: Other nodes' relay streams (conference/sfu/relay.py): called with every packet
        #: of every layer, ``relay(layer, packet, repaired, held)`` (``held``: the room's
        #: audio gate held it back from the subscriptions here; the relay sends it only
        #: to nodes that record), and every sender report,
        #: ``relay(layer, None, False, False, (ntp, rtp))``; must not raise.
        self.relays: list[Callable[..., None]] = []
        self._on_audio_level = on_audio_level
        self._on_ended = on_ended
        #: the room's audio gate (`.audiogate`, microphones only): called with every
        #: packet's level (None: no level), false = not forwarded to the subscriptions
        #: (the taps get it, and the relays to nodes that record)
        self.gate: Callable[[Publication, int | None], bool] | None = None
        #: the gate held the last packet back (here, or on the node it is relayed from:
        #: `held_back`)
        self.gated = False
        self.closed = False
        #: RED towards subscribers that asked for it: the frame before the packet
        #: being forwarded (timestamp, payload), and the RED payload built for the
        #: current packet (packet, block payload type, payload), shared by them all
        self._red_previous: tuple[int, bytes] | None = None
        self._red_built: tuple[RtpPacket, int, bytes] | None = None
        receiver.sink = self

    @property
    def simulcast(self) -> bool:
        return len(self.layers) > 1

    @property
    def top(self) -> Layer:
        return self.layers[-1]

    @property
    def subscriptions(self) -> set[Subscription]:
        """Every subscription of any layer."""
        found: set[Subscription] = set()
        for layer in self.layers:
            found |= layer.subscriptions
        return found

    # -- statistics of the top layer (what the recorder and the tests read) --------------
    @property
    def packets(self) -> int:
        return sum(layer.packets for layer in self.layers)

    @property
    def keyframes_requested(self) -> int:
        return sum(layer.keyframes_requested for layer in self.layers)

    @property
    def keyframes_received(self) -> int:
        return sum(layer.keyframes_received for layer in self.layers)

    @property
    def sender_report(self) -> tuple[int, int] | None:
        return self.top.sender_report

    @property
    def last_rtp(self) -> tuple[int, float] | None:
        return self.top.last_rtp

    # -- PacketSink -------------------------------------------------------------------
    def on_rtp(self, packet: RtpPacket, repaired: bool, layer: int = 0) -> None:
        stream = self.layers[layer] if layer < len(self.layers) else self.top
        stream.packets += 1
        payload = packet.payload
        if not repaired:  # retransmissions (and the publisher's RTX padding) are not media rate
            stream.octets += len(payload)
        if self.blocked:
            return
        forward = True
        if self.kind == "audio":
            keyframe = True
            level = packet.extensions.audio_level
            if level is not None and self._on_audio_level is not None and not self.muted:
                self._on_audio_level(self.participant_id, level[1])
            if self.gate is not None:
                forward = self.gate(self, level[1] if level is not None else None)
            if not forward:
                self.gated = True
            elif self.gated:
                self.gated = False
                for subscription in stream.subscriptions:
                    subscription.resync = True
        else:
            keyframe = bool(payload) and is_keyframe(self.codec_name, payload)
            if keyframe:
                stream.keyframes_received += 1
                stream.keyframe_asked = None
            if stream.keep_keyframes:
                stream.keep(packet, keyframe)
        now = time.monotonic()
        if not repaired:
            if now - stream.last_packet >= 1.0:  # (re)started: see Layer.settled
                stream.live_since = now
            stream.last_packet = now
            stream.last_rtp = (packet.timestamp, now)
        if forward and stream.subscriptions:
            blocks: dict[tuple[object, ...], bytes] = {}
            index = stream.index
            for subscription in list(stream.subscriptions):
                subscription.forward(self, index, packet, keyframe, blocks, now)
        if stream is self.top:
            for tap in self.taps:
                tap(self, packet, keyframe)
        if self.relays:
            held = not forward
            for relay in self.relays:
                relay(stream.index, packet, repaired, held)
        if self.kind == "audio" and payload:
            self._red_previous = (packet.timestamp, payload)

    def held_back(self) -> None:
        """Packets before the next one were held back on purpose: the exporting node's
        audio gate (a relayed microphone, `conference.sfu.relay`).  As after this room's
        own gate, the next packet forwarded continues each subscription's numbering
        without a gap and starts a talkspurt (`Subscription.forward`)."""
        self.gated = True

    def red_payload(self, packet: RtpPacket, block_pt: int) -> bytes:
        """``packet`` as RED (its frame after the one before it, see
        :mod:`.red`), built once for every subscriber that receives RED."""
        built = self._red_built
        if built is not None and built[0] is packet and built[1] == block_pt:
            return built[2]
        previous = self._red_previous
        redundant = None
        if previous is not None:
            redundant = ((packet.timestamp - previous[0]) & 0xFFFFFFFF, previous[1])
        data = red.build(block_pt, packet.payload, redundant)
        self._red_built = (packet, block_pt, data)
        return data

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, layer: int = 0) -> None:
        if layer < len(self.layers):
            self.layers[layer].sender_report = (ntp_timestamp, rtp_timestamp)
            for relay in self.relays:
                relay(layer, None, False, False, (ntp_timestamp, rtp_timestamp))

    def on_bye(self) -> None:
        self.close()

    # -- control -----------------------------------------------------------------------
    def request_keyframe(self, layer: int | None = None) -> bool:
        """Ask the publisher for a keyframe of ``layer`` (the top one by default),
        at most every 300 ms per layer."""
        if self.kind != "video":
            return False
        stream = self.top if layer is None else self.layers[layer]
        if stream.keyframe_throttle.allow(time.monotonic()):
            logger.debug("publication %s: keyframe requested (layer %d)", self.id, stream.index)
            stream.keyframes_requested += 1
            if stream.keyframe_asked is None:
                stream.keyframe_asked = time.monotonic()
            self.receiver.request_keyframe(stream.index)
            return True
        return False

    def note_slow_keyframes(self, now: float) -> None:
        """Start keeping keyframes for layers whose publisher ignores requests.

        An encoder that ignores PLI (FFmpeg, hardware encoders, cameras through
        WHIP) sends a keyframe only every few seconds: a new subscriber would
        wait that long for its first picture.  Such a layer keeps its last group
        of pictures, which :class:`Subscription` sends a new subscriber at once.
        """
        if self.simulcast:
            return  # browsers, which answer keyframe requests
        for stream in self.layers:
            asked = stream.keyframe_asked
            if asked is not None and now - asked > SLOW_KEYFRAME and not stream.keep_keyframes:
                logger.info(
                    "publication %s: layer %d ignores keyframe requests: keeping keyframes",
                    self.id,
                    stream.index,
                )
                stream.keep_keyframes = True

    def rtp_now(self, layer: int | None = None) -> tuple[int, int] | None:
        """(NTP now, the publisher's RTP timestamp for now), for sender reports."""
        stream = self.top if layer is None else self.layers[layer]
        return stream.rtp_now(self.clock_rate)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.receiver.sink = None
        for subscription in self.subscriptions:
            subscription.source_ended(self)
        for layer in self.layers:
            layer.subscriptions.clear()
        if self._on_ended is not None:
            self._on_ended(self)

    @property
    def in_audio_slots(self) -> bool:
        """Heard on the audio slots of the pages that have them (`.audioslots`): an Opus
        microphone.  Another codec (a G.711 encoder) cannot share a slot's Opus stream:
        such pages subscribe to it on a track of its own."""
        return self.source == "microphone" and self.codec_name == "opus"

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "codec": self.codec_name,
            "muted": self.muted or self.blocked,
            "blocked": self.blocked,
        }
        if self.simulcast:
            described["layers"] = [layer.rid for layer in self.layers]
        return described
