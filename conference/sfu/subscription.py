"""Subscription: one outgoing copy of a publication to one participant.

Each subscription owns the outgoing stream's identity (SSRC, payload type,
header-extension IDs: all negotiated on the subscriber's peer connection) and
rewrites every forwarded packet into it:

* sequence numbers through a :class:`PacketMap` (drops of padding-only packets
  leave no gap; losses do, so the subscriber NACKs them);
* timestamps by a constant offset per source;
* header extensions rebuilt with the subscriber's IDs (MID, audio level,
  abs-send-time).

The source can change (program feed, a reused transceiver).  A switch waits for
a keyframe of the new source and keeps the outgoing sequence numbers and
timestamps continuous, so the subscriber's decoder sees one stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .bridge import ABS_SEND_TIME_URI, AUDIO_LEVEL_URI, MID_URI, ForwardingSender, RtpPacket
from .history import PacketHistory
from .packetmap import PacketMap
from .publication import Publication
from .rtpwire import abs_send_time, audio_level, build_rtp_with_block, extension_block

logger = logging.getLogger(__name__)

HISTORY_SIZE = 1024


class Subscription:
    """Forwards one publication (or a switching sequence of them) to one sender."""

    def __init__(
        self,
        subscription_id: str,
        subscriber_id: str,
        sender: ForwardingSender,
        kind: str,
        on_source_ended: Callable[[Subscription, Publication], None] | None = None,
    ) -> None:
        self.id = subscription_id
        self.subscriber_id = subscriber_id
        self.sender = sender
        self.kind = kind
        self.source: Publication | None = None
        self.pending: Publication | None = None
        self.paused = False
        self._map: PacketMap | None = None
        self._ts_offset = 0
        self._started = False
        self._history: PacketHistory[tuple[int, bool, bytes, bytes]] = PacketHistory(HISTORY_SIZE)
        self._on_source_ended = on_source_ended
        self._mid_ext: tuple[int, bytes] | None = None
        self._level_id: int | None = None
        self._abs_id: int | None = None
        self._ext_key: tuple[object, ...] = (None, None, None)
        self.packets_forwarded = 0
        self.retransmitted = 0
        self.switches = 0
        self.keyframe_waits = 0
        sender.feedback = self
        sender.on_ready = self._sender_ready
        if sender.started:
            self._sender_ready()

    # -- source management ---------------------------------------------------------
    def switch_to(self, publication: Publication | None) -> None:
        """Forward ``publication`` from its next keyframe on (None: stop)."""
        if publication is self.source and self.pending is None:
            return
        if self.pending is not None and self.pending is not publication:
            self.pending.subscriptions.discard(self)
            self.pending = None
        if publication is None:
            self._detach_source()
            return
        if publication is self.source:
            return
        codec = self.sender.codec
        if codec is not None and codec.name.lower() != publication.codec_name:
            logger.info(
                "subscription %s: cannot switch %s to %s (negotiated %s)",
                self.id,
                self.kind,
                publication.codec_name,
                codec.name,
            )
            return
        logger.debug(
            "subscription %s of %s: waiting for %s", self.id, self.subscriber_id, publication.id
        )
        self.pending = publication
        publication.subscriptions.add(self)
        self.keyframe_waits += 1
        publication.request_keyframe()

    def _detach_source(self) -> None:
        if self.source is not None:
            self.source.subscriptions.discard(self)
        self.source = None
        self._map = None

    def source_ended(self, publication: Publication) -> None:
        if publication is self.pending:
            self.pending = None
        if publication is self.source:
            self.source = None
            self._map = None
        if self._on_source_ended is not None:
            self._on_source_ended(self, publication)

    def resume(self) -> None:
        """Start forwarding after a pause, from the source's next keyframe."""
        if not self.paused:
            return
        self.paused = False
        if self.source is not None:
            self.pending, self.source = self.source, None
            self._map = None
        target = self.pending
        if target is not None:
            target.request_keyframe()

    def close(self) -> None:
        if self.pending is not None:
            self.pending.subscriptions.discard(self)
            self.pending = None
        self._detach_source()
        self.sender.feedback = None
        self.sender.on_ready = None

    def _sender_ready(self) -> None:
        ids = self.sender.extension_ids
        mid = self.sender.mid
        self._mid_ext = (ids[MID_URI], mid.encode()) if MID_URI in ids and mid else None
        self._level_id = ids.get(AUDIO_LEVEL_URI)
        self._abs_id = ids.get(ABS_SEND_TIME_URI)
        self._ext_key = (self._mid_ext, self._level_id, self._abs_id)
        target = self.pending or self.source
        if target is not None:
            target.request_keyframe()

    # -- the forwarding path -------------------------------------------------------
    def forward(
        self,
        publication: Publication,
        packet: RtpPacket,
        keyframe: bool,
        blocks: dict[tuple[object, ...], bytes] | None = None,
    ) -> None:
        """Rewrite ``packet`` of ``publication`` and send it, if it belongs here.

        ``blocks`` is a per-packet cache of header-extension blocks shared by
        the subscriptions of one fan-out: those with the same extension IDs
        and MID get the same block, built once.
        """
        sender = self.sender
        if not sender._started or self.paused:
            return
        if publication is not self.source:
            if publication is not self.pending:
                return
            if not keyframe:
                publication.request_keyframe()
                return
            self._start_source(publication, packet)
        packet_map = self._map
        if packet_map is None:
            return
        payload = packet.payload
        if not payload:
            # padding-only packets are bandwidth probes for the first hop
            packet_map.drop(packet.sequence_number)
            return
        seq = packet_map.map(packet.sequence_number)
        if seq is None:
            return
        timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        key = self._ext_key
        block = blocks.get(key) if blocks is not None else None
        if block is None:
            block = self._extension_block(packet)
            if blocks is not None:
                blocks[key] = block
        marker = bool(packet.marker)
        data = build_rtp_with_block(
            sender.payload_type, marker, seq, timestamp, sender._ssrc, payload, block
        )
        self._history.store(seq, (timestamp, marker, payload, block))
        if ((seq - sender.last_seq) & 0xFFFF) < 0x8000:
            sender.last_seq = seq
            sender.last_ts = timestamp
            sender.last_time = time.monotonic()
        self.packets_forwarded += 1
        sender.send_rtp(data, len(payload))

    def _extension_block(self, packet: RtpPacket) -> bytes:
        """This subscriber's header extensions for ``packet``, with its IDs."""
        extensions: list[tuple[int, bytes]] = []
        if self._mid_ext is not None:
            extensions.append(self._mid_ext)
        if self._level_id is not None:
            level = packet.extensions.audio_level
            if level is not None:
                extensions.append((self._level_id, audio_level(level[0], level[1])))
        if self._abs_id is not None:
            extensions.append((self._abs_id, abs_send_time(time.time())))
        return extension_block(tuple(extensions))

    def _start_source(self, publication: Publication, packet: RtpPacket) -> None:
        if self.source is not None:
            self.source.subscriptions.discard(self)
            self.switches += 1
        logger.debug(
            "subscription %s of %s: now forwarding %s from seq %d",
            self.id,
            self.subscriber_id,
            publication.id,
            packet.sequence_number,
        )
        self.source = publication
        self.pending = None
        sender = self.sender
        first_seq = (sender.last_seq + 1) & 0xFFFF
        self._map = PacketMap(packet.sequence_number, first_seq)
        if sender.last_time is None:
            target_ts = sender.last_ts
        else:
            elapsed = max(time.monotonic() - sender.last_time, 0.001)
            target_ts = sender.last_ts + max(1, int(elapsed * publication.clock_rate))
        self._ts_offset = (target_ts - packet.timestamp) & 0xFFFFFFFF
        self._started = True

    # -- FeedbackSink --------------------------------------------------------------
    def on_nack(self, sequence_numbers: list[int]) -> None:
        self._retransmit(sequence_numbers)

    def _retransmit(self, sequence_numbers: list[int]) -> None:
        sender = self.sender
        for seq in sequence_numbers[:64]:
            item = self._history.get(seq)
            if item is None:
                continue
            timestamp, marker, payload, block = item
            if sender.rtx_payload_type is not None:
                # RFC 4588: the RTX stream's header, then the original sequence number
                data = build_rtp_with_block(
                    sender.rtx_payload_type,
                    marker,
                    sender.rtx_seq,
                    timestamp,
                    sender._rtx_ssrc,
                    seq.to_bytes(2, "big") + payload,
                    block,
                )
                sender.rtx_seq = (sender.rtx_seq + 1) & 0xFFFF
            else:
                data = build_rtp_with_block(
                    sender.payload_type, marker, seq, timestamp, sender._ssrc, payload, block
                )
            self.retransmitted += 1
            sender.send_rtp(data, len(payload))

    def on_picture_loss(self) -> None:
        target = self.pending or self.source
        if target is not None:
            target.request_keyframe()

    def on_remb(self, bitrate: int) -> None:
        pass

    def sender_report(self) -> tuple[int, int] | None:
        source = self.source
        if source is None:
            return None
        now = source.rtp_now()
        if now is None:
            return None
        ntp, rtp = now
        return ntp, (rtp + self._ts_offset) & 0xFFFFFFFF
