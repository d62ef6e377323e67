"""Publication: one incoming track of a participant, fanned out to subscriptions."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .bridge import ForwardingReceiver, RtpPacket, ntp_now
from .keyframe import KeyframeThrottle, is_keyframe

if TYPE_CHECKING:
    from .subscription import Subscription

logger = logging.getLogger(__name__)

SOURCES = ("microphone", "camera", "screen")


class Publication:
    """One incoming audio or video track (microphone, camera or screen).

    The publisher's :class:`ForwardingReceiver` calls :meth:`on_rtp` for every
    packet; the publication detects keyframes once per packet and hands the
    packet to each :class:`Subscription` (which rewrites and sends it).  Keyframe
    requests from all subscriptions are throttled here, so twenty subscribers
    reporting the same loss cost the publisher one PLI.
    """

    def __init__(
        self,
        publication_id: str,
        participant_id: str,
        source: str,
        receiver: ForwardingReceiver,
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
        self.subscriptions: set[Subscription] = set()
        #: Called with every forwarded packet after the subscriptions (the recorder);
        #: ``tap(publication, packet, keyframe)`` must not raise.
        self.taps: list[Callable[[Publication, RtpPacket, bool], None]] = []
        self.keyframe_throttle = KeyframeThrottle(0.3)
        self.keyframes_requested = 0
        self.keyframes_received = 0
        self.packets = 0
        self.last_rtp: tuple[int, float] | None = None  # (rtp timestamp, monotonic time)
        self.sender_report: tuple[int, int] | None = None  # (ntp, rtp) from the publisher
        self._on_audio_level = on_audio_level
        self._on_ended = on_ended
        self.closed = False
        receiver.sink = self

    # -- PacketSink -------------------------------------------------------------------
    async def on_rtp(self, packet: RtpPacket, repaired: bool) -> None:
        self.packets += 1
        if self.blocked:
            return
        payload = packet.payload
        if self.kind == "audio":
            keyframe = True
            level = packet.extensions.audio_level
            if level is not None and self._on_audio_level is not None and not self.muted:
                self._on_audio_level(self.participant_id, level[1])
        else:
            keyframe = bool(payload) and is_keyframe(self.codec_name, payload)
            if keyframe:
                self.keyframes_received += 1
        if not repaired:
            self.last_rtp = (packet.timestamp, time.monotonic())
        blocks: dict[tuple[object, ...], bytes] = {}
        for subscription in list(self.subscriptions):
            subscription.forward(self, packet, keyframe, blocks)
        for tap in self.taps:
            tap(self, packet, keyframe)

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        self.sender_report = (ntp_timestamp, rtp_timestamp)

    def on_bye(self) -> None:
        self.close()

    # -- control -----------------------------------------------------------------------
    def request_keyframe(self) -> bool:
        """Ask the publisher for a keyframe, at most every 300 ms."""
        if self.kind != "video":
            return False
        if self.keyframe_throttle.allow(time.monotonic()):
            logger.debug("publication %s: keyframe requested", self.id)
            self.keyframes_requested += 1
            self.receiver.request_keyframe()
            return True
        return False

    def rtp_now(self) -> tuple[int, int] | None:
        """(NTP now, the publisher's RTP timestamp for now), for sender reports."""
        now_ntp = ntp_now()
        if self.sender_report is not None:
            sr_ntp, sr_rtp = self.sender_report
            elapsed = ((now_ntp - sr_ntp) & 0xFFFFFFFFFFFFFFFF) / (1 << 32)
            if 0 <= elapsed < 3600:
                return now_ntp, (sr_rtp + int(elapsed * self.clock_rate)) & 0xFFFFFFFF
        if self.last_rtp is not None:
            rtp, when = self.last_rtp
            elapsed = time.monotonic() - when
            return now_ntp, (rtp + int(elapsed * self.clock_rate)) & 0xFFFFFFFF
        return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.receiver.sink = None
        for subscription in list(self.subscriptions):
            subscription.source_ended(self)
        self.subscriptions.clear()
        if self._on_ended is not None:
            self._on_ended(self)

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "codec": self.codec_name,
            "muted": self.muted or self.blocked,
            "blocked": self.blocked,
        }
