"""Subscription: one outgoing copy of a publication to one participant.

Each subscription owns the outgoing stream's identity (SSRC, payload type,
header-extension IDs: all negotiated on the subscriber's peer connection) and
rewrites every forwarded packet into it:

* sequence numbers through a :class:`PacketMap` (drops of padding-only packets
  leave no gap; losses do, so the subscriber NACKs them);
* timestamps by a constant offset per source;
* header extensions rebuilt with the subscriber's IDs (MID, audio level,
  abs-send-time).

The source can change (program feed, a reused transceiver), and so can the
layer of a simulcast source (the allocator's choice for this subscriber's
link).  A switch waits for a keyframe of the new source or layer, keeps
forwarding the old one meanwhile, and keeps the outgoing sequence numbers,
timestamps and (VP8) picture IDs continuous, so the subscriber's decoder sees
one stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .bridge import ABS_SEND_TIME_URI, AUDIO_LEVEL_URI, MID_URI, ForwardingSender, RtpPacket
from .history import PacketHistory
from .packetmap import PacketMap
from .publication import Publication
from .rtpwire import BlockTemplate, abs_send_time, build_rtp_with_block, extension_block
from .vp8 import Vp8Rewriter

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
        self.layer = 0  # the source's layer being forwarded
        self.pending_layer = 0
        #: the highest layer this subscriber should get (None: the top one); set by
        #: the bandwidth allocator and the subscriber's view
        self.max_layer: int | None = None
        #: video paused because even the lowest layer does not fit the link
        self.suspended = False
        self.paused = False
        self._vp8: Vp8Rewriter | None = None
        self._map: PacketMap | None = None
        self._ts_offset = 0
        self._started = False
        self._history: PacketHistory[tuple[int, int, bytes, bytes]] = PacketHistory(HISTORY_SIZE)
        self._on_source_ended = on_source_ended
        #: the audio gate held the source back since the last packet sent: the next one
        #: continues the numbering and starts a talkspurt (see `.audiogate`)
        self.resync = False
        self._mid_ext: tuple[int, bytes] | None = None
        self._level_id: int | None = None
        self._abs_id: int | None = None
        self._ext_key: tuple[object, ...] = (None, None, None)
        self._template = BlockTemplate(None, None, None)
        self.packets_forwarded = 0
        self.retransmitted = 0
        self.switches = 0
        self.keyframe_waits = 0
        self.replays = 0  # starts from a kept keyframe
        self.padding_sent = 0  # octets of bandwidth probes
        sender.feedback = self
        sender.on_ready = self._sender_ready
        if sender.started:
            self._sender_ready()

    # -- source management ---------------------------------------------------------
    def choose_layer(self, publication: Publication, now: float | None = None) -> int:
        """The layer to forward: the highest at most :attr:`max_layer` that the
        publisher sends now, else the lowest one it sends above, else the wanted one."""
        top = len(publication.layers) - 1
        wanted = top if self.max_layer is None else max(0, min(self.max_layer, top))
        if top == 0:
            return 0
        now = time.monotonic() if now is None else now
        for index in range(wanted, -1, -1):
            if publication.layers[index].live(now):
                return index
        for index in range(wanted + 1, top + 1):
            if publication.layers[index].live(now):
                return index
        return wanted

    def _unregister_pending(self) -> None:
        if self.pending is not None:
            layers = self.pending.layers
            if self.pending is not self.source or self.pending_layer != self.layer:
                if 0 <= self.pending_layer < len(layers):
                    layers[self.pending_layer].subscriptions.discard(self)
            self.pending = None

    def update_layer(self, now: float | None = None) -> None:
        """Move to the layer :meth:`choose_layer` picks now (after a keyframe of it)."""
        source = self.pending or self.source
        if source is None or self.suspended or len(source.layers) < 2:
            return
        layer = self.choose_layer(source, now)
        if self.pending is not None:
            if self.pending_layer == layer:
                return
        elif layer == self.layer:
            return
        self._wait_for(source, layer)

    def _wait_for(self, publication: Publication, layer: int) -> None:
        self._unregister_pending()
        if publication is self.source and layer == self.layer:
            return
        logger.debug(
            "subscription %s of %s: waiting for %s layer %d",
            self.id,
            self.subscriber_id,
            publication.id,
            layer,
        )
        self.pending = publication
        self.pending_layer = layer
        publication.layers[layer].subscriptions.add(self)
        self.keyframe_waits += 1
        publication.request_keyframe(layer)
        self._replay()

    def _replay(self) -> None:
        """Start a waiting subscription at once from the layer's kept keyframe.

        For publishers that ignore keyframe requests the layer keeps its last
        keyframe and the packets that followed (``Layer.gop``).  They are sent
        now, through the normal path (this subscription's sequence numbers,
        history, picture IDs), with their timestamps squeezed to 1 ms apart:
        the decoder gets its picture at once and catches up to the live one
        without the receiver buffering seconds of old frames.  Live packets
        then continue from the last kept frame.  Other subscribers see nothing
        of it.
        """
        publication, layer = self.pending, self.pending_layer
        if publication is None or layer < 0 or self.paused or self.suspended:
            return
        if not self.sender._started:
            return  # again when the sender is ready
        gop = publication.layers[layer].gop
        if not gop:
            return
        first = gop[0][0]
        self._start_source(publication, layer, first)
        base = (first.timestamp + self._ts_offset) & 0xFFFFFFFF
        step = max(1, publication.clock_rate // 1000)
        frame, frame_ts = 0, first.timestamp
        for packet, keyframe in list(gop):
            if packet.timestamp != frame_ts:
                frame, frame_ts = frame + 1, packet.timestamp
            self._ts_offset = (base + frame * step - packet.timestamp) & 0xFFFFFFFF
            self.forward(publication, layer, packet, keyframe, None)
        self.replays += 1
        logger.debug(
            "subscription %s of %s: started from %d kept packets of %s",
            self.id,
            self.subscriber_id,
            len(gop),
            publication.id,
        )

    def suspend(self, suspended: bool) -> None:
        """Pause (True) or resume the video: nothing fits the subscriber's link."""
        if suspended == self.suspended:
            return
        self.suspended = suspended
        if suspended:
            target = self.pending or self.source
            self._unregister_pending()
            self._detach_source()
            self.pending = target  # resumes here, from a keyframe
            self.pending_layer = -1
        elif self.pending is not None:
            target = self.pending
            self.pending = None
            self._wait_for(target, self.choose_layer(target))

    def switch_to(self, publication: Publication | None) -> None:
        """Forward ``publication`` from its next keyframe on (None: stop)."""
        if publication is self.source and self.pending is None:
            return
        if self.pending is not None and self.pending is not publication:
            self._unregister_pending()
        if publication is None:
            self._detach_source()
            return
        if publication is self.source or publication is self.pending:
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
        if self.suspended:
            self.pending = publication
            self.pending_layer = -1
            return
        self._wait_for(publication, self.choose_layer(publication))

    def _detach_source(self) -> None:
        if self.source is not None:
            layers = self.source.layers
            if self.layer < len(layers) and not (
                self.pending is self.source and self.pending_layer == self.layer
            ):
                layers[self.layer].subscriptions.discard(self)
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
        target = self.pending or self.source
        self._unregister_pending()
        self._detach_source()
        if target is not None and not self.suspended:
            self._wait_for(target, self.choose_layer(target))
        elif target is not None:
            self.pending, self.pending_layer = target, -1

    def close(self) -> None:
        self._unregister_pending()
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
        self._template = BlockTemplate(self._mid_ext, self._level_id, self._abs_id)
        self._request_keyframe()
        self._replay()

    def _request_keyframe(self) -> None:
        if self.pending is not None and self.pending_layer >= 0:
            self.pending.request_keyframe(self.pending_layer)
        elif self.source is not None:
            self.source.request_keyframe(self.layer)

    # -- the forwarding path -------------------------------------------------------
    def forward(
        self,
        publication: Publication,
        layer: int,
        packet: RtpPacket,
        keyframe: bool,
        blocks: dict[tuple[object, ...], bytes] | None = None,
        now: float | None = None,
    ) -> None:
        """Rewrite ``packet`` of ``publication``'s ``layer`` and send it, if it belongs here.

        ``blocks`` is a per-packet cache of header-extension blocks shared by
        the subscriptions of one fan-out: those with the same extension IDs
        and MID get the same block, built once.  ``now`` is the fan-out's
        ``time.monotonic()`` (read once per packet, not per copy).
        """
        sender = self.sender
        if not sender._started or self.paused:
            return
        if publication is not self.source or layer != self.layer:
            if publication is not self.pending or layer != self.pending_layer:
                return
            if not keyframe:
                publication.request_keyframe(layer)
                return
            self._start_source(publication, layer, packet)
        packet_map = self._map
        if packet_map is None:
            return
        payload = packet.payload
        if self._vp8 is not None:
            payload = self._vp8.rewrite(payload)
        if not payload:
            # padding-only packets are bandwidth probes for the first hop
            packet_map.drop(packet.sequence_number)
            return
        if sender.red_block_pt is not None:
            payload = publication.red_payload(packet, sender.red_block_pt)
        marker = packet.marker
        if self.resync:
            self.resync = False
            seq: int | None = packet_map.resume(packet.sequence_number)
            marker = True  # the first packet of a talkspurt (RFC 3551, 4.1)
        else:
            # PacketMap.map's common case (the next packets, in order) inline
            step = (packet.sequence_number - packet_map._high) & 0xFFFF
            if 0 < step <= packet_map._restart:
                packet_map._high += step
                seq = (packet_map._high + packet_map._offset) & 0xFFFF
            else:
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
        history = self._history  # PacketHistory.store, inlined: once per copy
        slot = seq % HISTORY_SIZE
        history._seqs[slot] = seq
        history._items[slot] = (timestamp, marker, payload, block)
        if ((seq - sender.last_seq) & 0xFFFF) < 0x8000:
            sender.last_seq = seq
            sender.last_ts = timestamp
            sender.last_time = time.monotonic() if now is None else now
        self.packets_forwarded += 1
        sender.emit(marker, seq, timestamp, block, payload)

    def _extension_block(self, packet: RtpPacket) -> bytes:
        """This subscriber's header extensions for ``packet``, with its IDs: MID,
        the packet's audio level, abs-send-time (`BlockTemplate`)."""
        return self._template.block(packet.extensions.audio_level, time.time())

    def _start_source(self, publication: Publication, layer: int, packet: RtpPacket) -> None:
        self.resync = False  # the numbering continues here already
        previous, previous_layer = self.source, self.layer
        if previous is not None:
            previous.layers[previous_layer].subscriptions.discard(self)
            self.switches += 1
        logger.debug(
            "subscription %s of %s: now forwarding %s layer %d from seq %d",
            self.id,
            self.subscriber_id,
            publication.id,
            layer,
            packet.sequence_number,
        )
        self.source = publication
        self.layer = layer
        self.pending = None
        sender = self.sender
        first_seq = (sender.last_seq + 1) & 0xFFFF
        self._map = PacketMap(packet.sequence_number, first_seq)
        offset = None
        if previous is publication and self._started:
            offset = layer_timestamp_offset(publication, previous_layer, layer, self._ts_offset)
        if offset is None:
            if sender.last_time is None:
                target_ts = sender.last_ts
            else:
                elapsed = max(time.monotonic() - sender.last_time, 0.001)
                target_ts = sender.last_ts + max(1, int(elapsed * publication.clock_rate))
            offset = (target_ts - packet.timestamp) & 0xFFFFFFFF
        self._ts_offset = offset
        if publication.codec_name != "vp8":
            self._vp8 = None
        elif self._started:
            # VP8 picture IDs continue across the switch; until the first switch
            # payloads go out as they came (no rewriting cost)
            if self._vp8 is None:
                self._vp8 = Vp8Rewriter()
                # learns the last IDs sent: the newest packet in the history (the
                # sender's last one came from here: this subscription has started)
                last = self._history.get(sender.last_seq)
                if last is not None and last[2]:
                    self._vp8.rewrite(last[2])
            self._vp8.switch()
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
                data = self._rtx(sender.rtx_payload_type, seq, timestamp, marker, payload, block)
            else:
                data = build_rtp_with_block(
                    sender.payload_type, marker, seq, timestamp, sender._ssrc, payload, block
                )
            self.retransmitted += 1
            sender.send_rtp(data, len(payload))

    def _rtx(
        self,
        payload_type: int,
        seq: int,
        timestamp: int,
        marker: int,
        payload: bytes,
        block: bytes,
    ) -> bytes:
        """An RTX packet (RFC 4588: the RTX stream's header, then the original
        sequence number) for packet ``seq`` of the history."""
        sender = self.sender
        data = build_rtp_with_block(
            payload_type,
            marker,
            sender.rtx_seq,
            timestamp,
            sender._rtx_ssrc,
            seq.to_bytes(2, "big") + payload,
            block,
        )
        sender.rtx_seq = (sender.rtx_seq + 1) & 0xFFFF
        return data

    def pad(self, octets: int) -> int:
        """Send about ``octets`` of padding for a bandwidth probe; returns what was sent.

        The padding is recent packets sent again as RTX (as libwebrtc pads):
        the subscriber discards them as duplicates, but its bandwidth estimator
        counts them.  Each carries a fresh abs-send-time, or the estimator would
        read their age as queueing delay.  Nothing is sent without RTX.
        """
        sender = self.sender
        rtx_pt = sender.rtx_payload_type
        if not sender._started or self._map is None or rtx_pt is None or self.paused:
            return 0
        extensions: list[tuple[int, bytes]] = []
        if self._mid_ext is not None:
            extensions.append(self._mid_ext)
        if self._abs_id is not None:
            extensions.append((self._abs_id, abs_send_time(time.time())))
        block = extension_block(tuple(extensions))
        sent = 0
        last = sender.last_seq
        for back in range(HISTORY_SIZE // 4):
            if sent >= octets:
                break
            seq = (last - back) & 0xFFFF
            item = self._history.get(seq)
            if item is None:
                continue
            timestamp, marker, payload, _ = item
            data = self._rtx(rtx_pt, seq, timestamp, marker, payload, block)
            sender.send_rtp(data, len(payload) + 2)
            sent += len(data)
        self.padding_sent += sent
        return sent

    def on_picture_loss(self) -> None:
        self._request_keyframe()

    def on_remb(self, bitrate: int) -> None:
        pass

    def sender_report(self) -> tuple[int, int] | None:
        source = self.source
        if source is None:
            return None
        now = source.rtp_now(self.layer)
        if now is None:
            return None
        ntp, rtp = now
        return ntp, (rtp + self._ts_offset) & 0xFFFFFFFF


def layer_timestamp_offset(
    publication: Publication, old: int, new: int, old_offset: int
) -> int | None:
    """The timestamp offset that continues layer ``old``'s outgoing clock on ``new``.

    Simulcast layers are separate RTP streams with their own random timestamp
    bases; their sender reports tie each to the publisher's wall clock.  The
    new layer's RTP time for "now" minus the old layer's gives the difference
    of bases.  None when either layer has no sender report yet (the caller
    then continues from the elapsed time).
    """
    layers = publication.layers
    if layers[old].sender_report is None or layers[new].sender_report is None:
        return None
    old_now = layers[old].rtp_now(publication.clock_rate)
    new_now = layers[new].rtp_now(publication.clock_rate)
    if old_now is None or new_now is None:
        return None
    return (old_offset + old_now[1] - new_now[1]) & 0xFFFFFFFF
