"""Lean publishing for simulated points: pre-packetized RTP through the negotiated SRTP.

A stock aiortc sender costs a simulated point most of its CPU: per frame a track
``recv`` and a payloader, per packet a header built by ``RtpPacket.serialize``, an
SRTP ``protect`` through pylibsrtp's Python wrapper and four coroutines down to
``sendto``.  With ``--lean`` a point publishes on a `ForwardingPeerConnection`
instead: the offer and answer, ICE and DTLS are the same, then each outgoing stream
is a `ForwardingSender` (the server's own send path: one header built from bytes,
one SRTP call, one ``sendto``) fed by `LeanPublisher` from payloads packetized once
per process (`packetize`), shared by every point of the process.

What the server sees is what the stock sender sent: the same payloads (VP8 picture
IDs continue across the clip's loop), the MID, transport-wide sequence number, abs-send-time and audio-level header
extensions, a keyframe after each PLI or FIR (the replay jumps to the clip's next
keyframe), RTX retransmissions of NACKed packets, sender reports.

Per packet the work is small (`LeanStream.send_frame`): the extension block is a
template with the transport-wide sequence number filled in (abs-send-time and the
audio level change once per frame), the header, block and payload are written
straight into the SRTP session's buffer and sent from it
(`ForwardingSender.send_media`), the history for RTX is a ring.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ...sfu.bridge import ABS_SEND_TIME_URI, AUDIO_LEVEL_URI, MID_URI, ForwardingSender
from ...sfu.rtpwire import abs_send_time, audio_level, build_rtp_with_block, extension_block
from ...sfu.twcc import TWCC_URI
from ..testmedia import EncodedPacket
from .media import MediaSet

__all__ = ["LeanPublisher", "LeanStream", "PacketizedClip", "packetize", "packetized"]

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
HISTORY = 512  # packets kept for retransmission (~5 s of 360p video); a power of two
_U16 = struct.Struct("!H")
#: what Chromium sends for a muted microphone (``track.enabled = false``) when the
#: server asked for Opus DTX (``usedtx=1``): measured in Chromium 156, ~5.25 packets a
#: second of ~17 payload bytes, against ~50 a second when it is open
MUTED_INTERVAL = 0.2  # s between two packets of a muted microphone
MUTED_PAYLOAD = b"\xf8" + bytes(16)  # one 20 ms CELT frame's TOC and a silent body
#: ``time.time()`` less ``time.monotonic()`` (the event loop's clock): its readings as
#: wall time
_WALL_OFFSET = time.time() - time.monotonic()


def transport_counter(transport: Any) -> list[int]:
    """The transport-wide sequence counter of a connection's DTLS transport (shared
    by every stream sent on it)."""
    counter = getattr(transport, "_conference_twcc", None)
    if counter is None:
        counter = [random.randrange(0, 1 << 16)]
        transport._conference_twcc = counter
    return counter


@dataclass(frozen=True)
class PacketizedFrame:
    payloads: tuple[bytes, ...]
    keyframe: bool
    ticks: int  # RTP clock ticks until the next frame (audio: the frame's samples)

    #: each payload as (its first two bytes, what follows bytes 2-3): for VP8 those
    #: two are the 15-bit picture ID (aiortc's descriptor is X, I, M), set per frame
    parts: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple((p[:2], p[4:]) for p in self.payloads))


@dataclass(frozen=True)
class PacketizedClip:
    frames: tuple[PacketizedFrame, ...]
    keyframes: tuple[int, ...]
    vp8: bool


def packetize(packets: Sequence[EncodedPacket], codec: str, clock_rate: int) -> PacketizedClip:
    """RTP payloads of every frame of a clip, made once by aiortc's own payloader."""
    mime = f"{'audio' if codec.lower() == 'opus' else 'video'}/{codec}"
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=clock_rate))
    frames = []
    for record in packets:
        packet = av.Packet(record.data)
        packet.pts = record.pts
        packet.time_base = record.time_base
        payloads, _ = encoder.pack(packet)
        ticks = round(record.duration * record.time_base * clock_rate) or (
            960 if clock_rate == AUDIO_CLOCK else 3000
        )
        frames.append(PacketizedFrame(tuple(payloads), record.keyframe, ticks))
    keyframes = tuple(i for i, f in enumerate(frames) if f.keyframe)
    return PacketizedClip(tuple(frames), keyframes, codec.lower() == "vp8")


_PACKETIZED: dict[int, tuple[object, tuple[PacketizedClip, PacketizedClip, PacketizedClip]]] = {}


def packetized(media: MediaSet) -> tuple[PacketizedClip, PacketizedClip, PacketizedClip]:
    """(camera, speech, room noise) of ``media``, packetized once per process."""
    kept = _PACKETIZED.get(id(media))
    if kept is None or kept[0] is not media:
        clips = (
            packetize(media.video, media.video_codec, VIDEO_CLOCK),
            packetize(media.talk, "opus", AUDIO_CLOCK),
            packetize(media.quiet, "opus", AUDIO_CLOCK),
        )
        kept = _PACKETIZED[id(media)] = (media, clips)
    return kept[1]


class LeanStream:
    """One outgoing stream: RTP packets built and sent through a `ForwardingSender`.

    It is the sender's `FeedbackSink`: NACKs are answered with RTX (or the packet
    again, without RTX), a PLI or FIR calls `on_keyframe_request`, sender reports
    carry the stream's clock.
    """

    def __init__(self, sender: ForwardingSender, clock_rate: int, history: int = HISTORY) -> None:
        if history & (history - 1):
            raise ValueError("the history's size must be a power of two")
        self.sender = sender
        self.clock_rate = clock_rate
        self.seq = random.randrange(0, 1 << 16)
        self.rtx_seq = random.randrange(0, 1 << 16)
        self.timestamp = random.randrange(0, 1 << 32)
        self.sent_at = time.time()  # wall time of `timestamp`
        #: what was sent, for RTX: (seq, payload, marker, timestamp) at seq % size
        self.history: list[tuple[int, bytes, bool, int] | None] = [None] * history
        self.history_size = history  # 0: nothing kept (audio is not NACKed)
        ids = sender.extension_ids
        mid = sender.mid.encode() if MID_URI in ids and sender.mid else None
        #: transport-wide sequence numbers, one counter per connection, as Chromium
        #: sends them (the server then answers with transport-cc feedback instead of
        #: running its REMB estimator, as for a browser)
        self._twcc_id = ids.get(TWCC_URI)
        self._twcc = transport_counter(sender.transport)
        self._abs_send_time_id = ids.get(ABS_SEND_TIME_URI)
        self._audio_level_id = ids.get(AUDIO_LEVEL_URI)
        # the extension block (RFC 8285, one-byte form), in the order MID, transport-wide
        # sequence number, abs-send-time, audio level: for each presence of the level, a
        # template (filled in per frame and per packet) and the offsets of its values
        self._blocks: dict[bool, tuple[bytearray, int, int, int]] = {}
        for with_level in (False, True):
            block = bytearray()
            at = {}
            if mid is not None:
                block += bytes(((ids[MID_URI] << 4) | (len(mid) - 1),)) + mid
            for name, x_id, size in (
                ("twcc", self._twcc_id, 2),
                ("abs", self._abs_send_time_id, 3),
                ("level", self._audio_level_id if with_level else None, 1),
            ):
                if x_id is not None:
                    block.append((x_id << 4) | (size - 1))
                    at[name] = 4 + len(block)
                    block += bytes(size)
            if block:
                block += bytes(-len(block) & 3)
                block[0:0] = bytes((0xBE, 0xDE, 0, len(block) >> 2))
            self._blocks[with_level] = (
                block,
                at.get("twcc", -1),
                at.get("abs", -1),
                at.get("level", -1),
            )
        self._one_byte = all(
            0 < x_id < 15
            for x_id in (
                ids.get(MID_URI),
                self._twcc_id,
                self._abs_send_time_id,
                self._audio_level_id,
            )
            if x_id is not None
        ) and (mid is None or 0 < len(mid) < 17)
        self.on_keyframe_request: Callable[[], None] | None = None
        self.retransmitted = 0
        self.keyframe_requests = 0
        sender.feedback = self

    def send(self, payload: bytes, marker: bool, level: int | None = None) -> None:
        """One packet (a frame of one packet, or a part of one: ``marker`` says)."""
        self.send_frame((payload,), level, marker)

    def send_frame(
        self,
        payloads: Sequence[bytes],
        level: int | None = None,
        marker: bool = True,
        now: float | None = None,
    ) -> None:
        """The packets of one frame, at the stream's current timestamp, the last with
        the marker bit (unless ``marker`` is False); ``level``: the RFC 6464 audio level
        (-dBov) of an audio frame; ``now``: ``time.monotonic()`` if the caller has it."""
        sender = self.sender
        if not sender.started:
            return
        if not self._one_byte:  # IDs of the two-byte form: not what our server offers
            self._send_generic(payloads, level, marker)
            return
        block, twcc_at, abs_at, level_at = self._blocks[level is not None]
        if abs_at >= 0:
            wall = time.time() if now is None else now + _WALL_OFFSET
            block[abs_at : abs_at + 3] = abs_send_time(wall)
        if level_at >= 0 and level is not None:
            block[level_at] = audio_level(level < 127, level)[0]
        twcc = self._twcc
        timestamp = self.timestamp
        history = self.history
        mask = self.history_size - 1
        last = len(payloads) - 1
        emit = sender.emit  # send_media, with the nominated pair at hand (bridge)
        pack_into = _U16.pack_into
        for i, payload in enumerate(payloads):
            if twcc_at >= 0:
                wide = twcc[0]
                twcc[0] = wide + 1
                pack_into(block, twcc_at, wide & 0xFFFF)
            seq = self.seq
            self.seq = (seq + 1) & 0xFFFF
            bit = marker and i == last
            emit(bit, seq, timestamp, block, payload)  # copies the block at once
            if mask >= 0:
                history[seq & mask] = (seq, payload, bit, timestamp)

    def _send_generic(self, payloads: Sequence[bytes], level: int | None, marker: bool) -> None:
        ids = self.sender.extension_ids
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            extensions: list[tuple[int, bytes]] = []
            if MID_URI in ids and self.sender.mid:
                extensions.append((ids[MID_URI], self.sender.mid.encode()))
            if self._twcc_id is not None:
                extensions.append((self._twcc_id, _U16.pack(self._twcc[0] & 0xFFFF)))
                self._twcc[0] += 1
            if self._abs_send_time_id is not None:
                extensions.append((self._abs_send_time_id, abs_send_time(time.time())))
            if level is not None and self._audio_level_id is not None:
                extensions.append((self._audio_level_id, audio_level(level < 127, level)))
            seq = self.seq
            self.seq = (seq + 1) & 0xFFFF
            bit = marker and i == last
            self.sender.send_media(
                bit, seq, self.timestamp, extension_block(tuple(extensions)), payload
            )
            if self.history_size:
                self.history[seq & (self.history_size - 1)] = (seq, payload, bit, self.timestamp)

    def advance(self, ticks: int, now: float | None = None) -> None:
        """The next frame's timestamp, ``ticks`` on (``now``: ``time.monotonic()``)."""
        self.timestamp = (self.timestamp + ticks) & 0xFFFFFFFF
        self.sent_at = time.time() if now is None else now + _WALL_OFFSET

    # -- FeedbackSink ------------------------------------------------------------------
    def on_nack(self, sequence_numbers: list[int]) -> None:
        sender = self.sender
        if not self.history_size:
            return
        for seq in sequence_numbers:
            kept = self.history[seq & (self.history_size - 1)]
            if kept is None or kept[0] != seq:
                continue
            _, payload, marker, timestamp = kept
            self.retransmitted += 1
            if sender.rtx_payload_type is not None:
                rtx_seq = self.rtx_seq
                self.rtx_seq = (rtx_seq + 1) & 0xFFFF
                data = build_rtp_with_block(
                    sender.rtx_payload_type,
                    marker,
                    rtx_seq,
                    timestamp,
                    sender.rtx_ssrc,
                    seq.to_bytes(2, "big") + payload,
                    b"",
                )
            else:
                data = build_rtp_with_block(
                    sender.payload_type, marker, seq, timestamp, sender.ssrc, payload, b""
                )
            sender.send_rtp(data, len(payload))

    def on_picture_loss(self) -> None:
        self.keyframe_requests += 1
        if self.on_keyframe_request is not None:
            self.on_keyframe_request()

    def on_remb(self, bitrate: int) -> None:
        pass

    def sender_report(self) -> tuple[int, int] | None:
        now = time.time()
        ntp = int((now + 2208988800) * (1 << 32))
        elapsed = round((now - self.sent_at) * self.clock_rate)
        return ntp, (self.timestamp + elapsed) & 0xFFFFFFFF


class LeanPublisher:
    """Replays a packetized camera clip and speech through two `LeanStream` s.

    ``speech`` and ``quiet`` are the clips of talking and of room noise, chosen by
    :attr:`speaking` (set by the floor schedule), each with the RFC 6464 level of its
    frames; :attr:`level` is that of the audio frame sent last.  It stands for both the
    camera and the microphone of a simulated point (the attributes the load tester
    reads of a `ClipTrack` and a `SpeechTrack`).
    """

    def __init__(
        self,
        camera: LeanStream,
        video: PacketizedClip,
        fps: int,
        microphone: LeanStream,
        speech: PacketizedClip,
        speech_levels: Sequence[int],
        quiet: PacketizedClip,
        quiet_levels: Sequence[int],
        start_index: int = 0,
        muted: bool = False,
    ) -> None:
        self.camera, self.microphone = camera, microphone
        #: the microphone is muted while the point does not speak (``--muted``): it
        #: sends what a muted browser sends (`MUTED_INTERVAL`, `MUTED_PAYLOAD`)
        self.muted = muted
        self.video, self.fps = video, fps
        self.speech, self.speech_levels = speech, speech_levels
        self.quiet, self.quiet_levels = quiet, quiet_levels
        self.speaking = False
        first = start_index % len(video.frames)
        self._index = next((k for k in video.keyframes if k >= first), video.keyframes[0])
        self._keyframe_wanted = False
        self._picture_id = random.randrange(0, 1 << 15)
        self.keyframes_sent = 0
        self.keyframes_requested = 0
        self.level = 127  # of the audio frame sent last
        camera.on_keyframe_request = self.request_keyframe
        self._video_due = self._audio_due = 0.0  # loop time of the next frame
        self._talk_index = self._quiet_index = 0
        self._was_speaking = False
        self._video_ticks = round(VIDEO_CLOCK / fps)

    def request_keyframe(self) -> None:
        self.keyframes_requested += 1
        self._keyframe_wanted = True

    def start(self) -> None:
        now = asyncio.get_running_loop().time()
        self._video_due = self._audio_due = now
        self._talk_index = self._quiet_index = 0
        self._was_speaking = False
        pacer().add(self)

    async def stop(self) -> None:
        pacer().remove(self)

    @property
    def next_due(self) -> float:
        """Loop time of this point's next frame (video or audio)."""
        return min(self._video_due, self._audio_due)

    def send_due(self, now: float) -> None:
        """Send every frame whose time has come (the `Pacer` calls this each tick)."""
        period = 1 / self.fps
        while self._video_due <= now:
            self._send_video_frame(now)
            self._video_due += period
        while self._audio_due <= now:
            self._audio_due += self._send_audio_frame(now) / AUDIO_CLOCK

    def _send_video_frame(self, now: float | None = None) -> None:
        frames = self.video.frames
        if self._keyframe_wanted:
            self._keyframe_wanted = False
            if not frames[self._index].keyframe:
                keys = self.video.keyframes
                self._index = next((k for k in keys if k > self._index), keys[0])
        frame = frames[self._index]
        self._index = (self._index + 1) % len(frames)
        if frame.keyframe:
            self.keyframes_sent += 1
        if self.video.vp8:  # aiortc's descriptor: X, I, M: the picture ID at 2-3
            pid = _U16.pack(0x8000 | self._picture_id)
            self._picture_id = (self._picture_id + 1) & 0x7FFF
            self.camera.send_frame([start + pid + rest for start, rest in frame.parts], now=now)
        else:
            self.camera.send_frame(frame.payloads, now=now)
        self.camera.advance(self._video_ticks, now)

    def _send_audio_frame(self, now: float | None = None) -> int:
        """Send the next 20 ms of speech or room noise (or, muted, the packet a muted
        browser sends every `MUTED_INTERVAL`); returns its clock ticks."""
        speaking = self.speaking
        if self.muted and not speaking:
            self._was_speaking = False
            self.level = 127
            self.microphone.send_frame([MUTED_PAYLOAD], 127, now=now)
            ticks = round(MUTED_INTERVAL * AUDIO_CLOCK)
            self.microphone.advance(ticks, now)
            return ticks
        if speaking:
            if not self._was_speaking:
                self._talk_index = 0  # a new turn starts a sentence
            frames, levels, index = self.speech.frames, self.speech_levels, self._talk_index
            self._talk_index += 1
        else:
            frames, levels, index = self.quiet.frames, self.quiet_levels, self._quiet_index
            self._quiet_index += 1
        self._was_speaking = speaking
        frame = frames[index % len(frames)]
        self.level = levels[index % len(levels)]
        self.microphone.send_frame(frame.payloads, self.level, now=now)
        self.microphone.advance(frame.ticks, now)
        return frame.ticks


#: how often the `Pacer` wakes (s): a frame leaves at most this late
PACER_TICK = 0.002


class Pacer:
    """One timer for every lean publisher of a process (of its event loop).

    A timer per point and per stream (30 video and 50 audio wake-ups a second each)
    cost the generator about as much as the packets themselves; one tick at most every
    `PACER_TICK` sends every frame that fell due since, for every point, in the
    order they fell due (a heap of the points' next frames: a tick touches only the
    points it sends for).  Points keep their own phases (each starts its clock when it
    starts), so the server still sees them spread over the frame interval, in steps of
    2 ms (a coarser tick would hand the server its packets in fewer, larger bursts than
    independent halls do, and flatter its wake-up costs).  The tick is a plain timer
    callback, not a task's sleep (that took two loop iterations per tick).
    """

    def __init__(self) -> None:
        self.publishers: dict[LeanPublisher, int] = {}  # -> its entry's order, start order
        self._due: list[tuple[float, int, LeanPublisher]] = []  # (next frame, order, who)
        self._order = 0
        self._timer: asyncio.Handle | None = None

    def add(self, publisher: LeanPublisher) -> None:
        self._order += 1
        self.publishers[publisher] = self._order  # an older entry of it no longer counts
        heapq.heappush(self._due, (publisher.next_due, self._order, publisher))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_soon(self._tick)

    def remove(self, publisher: LeanPublisher) -> None:
        self.publishers.pop(publisher, None)  # its heap entry goes when it falls due

    def _tick(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._due
        publishers = self.publishers
        while due and due[0][0] <= now:
            _, order, publisher = heapq.heappop(due)
            if publishers.get(publisher) != order:  # removed (or added again since)
                continue
            try:
                publisher.send_due(now)
            except Exception:  # one point's failure must not stop the others
                logger.exception("lean publisher failed")
                publishers.pop(publisher, None)
                continue
            heapq.heappush(due, (publisher.next_due, order, publisher))
        if due:
            self._timer = loop.call_at(max(due[0][0], now + PACER_TICK), self._tick)


_PACERS: dict[asyncio.AbstractEventLoop, Pacer] = {}


def pacer() -> Pacer:
    """The running event loop's `Pacer`."""
    loop = asyncio.get_running_loop()
    found = _PACERS.get(loop)
    if found is None:
        for old in [known for known in _PACERS if known.is_closed()]:
            del _PACERS[old]
        found = _PACERS[loop] = Pacer()
    return found
