"""What one simulated viewer received on one stream, checked without decoding.

:class:`StreamStats` is a :class:`conference.sfu.bridge.PacketSink`: the
client's forwarding receiver hands it every RTP packet after SRTP decryption
(RTX repairs unwrapped and flagged).  It is a :class:`conference.sfu.bridge.HeaderSink`
too: a lean point (``--lean``) reads what it receives from the RTP headers alone,
which SRTP leaves in the clear (``on_header``: sequence number, timestamp, marker, the
payload's size), and asks for whole packets only while it waits for a keyframe (a VP8
keyframe is told by its payload descriptor, which is encrypted), and for RTX repairs.
From sequence numbers, timestamps, marker bits and the codec's keyframe bit it derives
what a viewer would experience:

* **loss**: sequence numbers skipped when a later one arrives are *missing*;
  a missing number that arrives later (NACK + RTX, or reordering) is
  *recovered*.  ``raw`` loss counts every number that was ever missing,
  ``final`` loss those never recovered (missing for more than
  :data:`LOSS_HORIZON` seconds);
* **frames completed**: a frame ends with a marker-bit packet and starts after
  the previous frame's marker packet; it is complete when no sequence number
  in between is missing.  Frames complete in order; a frame that stays
  incomplete for :data:`ABANDON_AFTER` seconds is abandoned (a decoder would
  need a new keyframe: ``on_picture_loss`` is called, which sends a PLI as a
  browser would) and frames count as *decodable* again only from the next
  complete keyframe.  Audio packets are single-packet frames;
* **freezes**: gaps longer than :data:`FREEZE_THRESHOLD` between consecutive
  decodable frames (and a trailing gap until the stream's end);
* **keyframe wait**: from the moment the stream was asked for (join, or a
  speaker switch) to the first complete keyframe;
* **keyframes**: keyframes completed; read from headers only, a stream counts only
  those it waited for (the first, and each after a loss made it undecodable);
* **gaps**: gaps longer than :data:`GAP_THRESHOLD` (300 ms) are counted too,
  the bound the weak-link profiles are checked against for audio;
* **pauses**: while the server says it paused a video for this viewer's link
  (``video-paused``, :meth:`StreamStats.pause` / :meth:`StreamStats.resume`),
  the missing frames are no freeze: the gap that spans a pause is not counted,
  and the paused time is reported on its own (``paused_seconds``) and left out
  of the frame rate;
* **talkspurts** (audio): after a pause, the next packet in sequence whose
  timestamp moved on as much as the clock did starts a talkspurt: silence the
  sender did not send (Opus DTX, or the server's audio gate:
  conference/sfu/audiogate.py), not a gap (a stalled network delivers late
  packets with their old timestamps).  So an audio stream's trailing pause is
  not judged: only a gap that the next packet closes.

Counters can be *marked*: a report covers only what happened after
:meth:`StreamStats.mark` (the measurement window), except the keyframe wait,
which belongs to the stream's episode.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...sfu.bridge import RtpPacket
from ...sfu.keyframe import is_keyframe

__all__ = [
    "ABANDON_AFTER",
    "FREEZE_THRESHOLD",
    "GAP_THRESHOLD",
    "LOSS_HORIZON",
    "MAX_GAP_FILL",
    "StreamStats",
]

#: A gap between two decodable frames longer than this is a freeze (seconds).
FREEZE_THRESHOLD = 0.5
#: The RTP clock of audio (Opus) in Hz.
AUDIO_CLOCK = 48000
#: Gaps longer than this are counted as ``gaps`` (seconds; the weak-link audio bound).
GAP_THRESHOLD = 0.3
#: A sequence number missing for longer than this is lost for good (seconds).
LOSS_HORIZON = 1.0
#: A frame still incomplete after this long is given up, and a keyframe asked
#: for, as a browser's jitter buffer does once NACKs did not help (seconds).
ABANDON_AFTER = 0.5
#: A forward jump of more sequence numbers than this is a discontinuity, not loss.
MAX_GAP_FILL = 1000


@dataclass
class _Counters:
    """The cumulative counters a window report is the difference of."""

    packets: int = 0
    repaired: int = 0
    bytes: int = 0
    expected: int = 0
    raw_missing: int = 0
    lost: int = 0
    frames: int = 0
    keyframes: int = 0
    abandoned: int = 0
    picture_loss: int = 0
    freezes: int = 0
    freeze_seconds: float = 0.0
    gaps: int = 0


class StreamStats:
    """Reception of one stream by one viewer (see the module documentation).

    ``label`` names the stream for reports (e.g. ``"chair/camera"``);
    ``started_at`` is the ``time.monotonic()`` at which it was asked for and
    ``reason`` why (``"join"``, or ``"switch"`` for a new active speaker).
    """

    __slots__ = (
        "label",
        "kind",
        "codec",
        "publication",
        "publisher",
        "reason",
        "started_at",
        "ended_at",
        "first_packet_at",
        "first_frame_at",
        "last_frame_at",
        "max_frame_gap",
        "freeze_log",
        "loss_log",
        "discontinuities",
        "duplicates",
        "talkspurts",
        "_last_audio",
        "_c",
        "_base",
        "_marked_at",
        "_highest",
        "_missing",
        "_pending",
        "_last_marker",
        "_keyframe_ts",
        "_decodable",
        "_last_prune",
        "_audio",
        "on_picture_loss",
        "_last_pli",
        "_paused_at",
        "_pauses",
        "_pause_gap",
    )

    def __init__(
        self,
        label: str,
        kind: str,
        codec: str,
        *,
        publication: str = "",
        publisher: str = "",
        reason: str = "join",
        started_at: float | None = None,
    ) -> None:
        self.label = label
        self.kind = kind
        self.codec = codec.lower()
        self.publication = publication
        self.publisher = publisher
        self.reason = reason
        self.started_at = time.monotonic() if started_at is None else started_at
        self.ended_at: float | None = None
        self.first_packet_at: float | None = None
        self.first_frame_at: float | None = None  # first decodable (key)frame
        self.last_frame_at: float | None = None
        self.max_frame_gap = 0.0
        self.freeze_log: list[tuple[float, float]] = []  # (start, seconds), the first 10
        self.loss_log: list[float] = []  # when unrecovered losses went missing, the first 10
        self.discontinuities = 0
        self.duplicates = 0
        #: audio: pauses the sender's clock shows as silence held back (not gaps)
        self.talkspurts = 0
        self._last_audio: tuple[int, int] | None = None  # (ext seq, timestamp)
        self._c = _Counters()
        self._base = _Counters()
        self._marked_at: float | None = None
        self._highest: int | None = None  # extended sequence number
        self._missing: dict[int, float] = {}  # extended seq -> when it went missing
        self._pending: deque[tuple[int, int, float]] = deque()  # (marker ext seq, ts, at)
        self._last_marker: int | None = None
        self._keyframe_ts: set[int] = set()
        self._decodable = False
        self._last_prune = 0.0
        self._audio = kind == "audio"
        self.on_picture_loss: Callable[[], None] | None = None
        self._last_pli = float("-inf")
        self._paused_at: float | None = None  # paused by the server since
        self._pauses: list[tuple[float, float]] = []  # (from, to) of the pauses that ended
        self._pause_gap = False  # the next frame gap spans a pause: not a freeze

    # -- PacketSink ---------------------------------------------------------------
    def on_rtp(self, packet: RtpPacket, repaired: bool, layer: int = 0) -> None:
        self.receive(packet, repaired, time.monotonic())

    # -- HeaderSink ---------------------------------------------------------------
    def on_header(self, seq: int, timestamp: int, marker: int, size: int, now: float) -> bool:
        """One packet read from its RTP header; False (nothing counted) while a video
        stream waits for a keyframe: then the packet must come whole (`receive`)."""
        if not self._decodable and not self._audio:
            return False
        self.account(seq, timestamp, marker, size, False, False, now)
        return True

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, layer: int = 0) -> None:
        pass

    def on_bye(self) -> None:
        pass

    # -- the logic (synchronous, testable with explicit times) ---------------------
    def receive(self, packet: RtpPacket, repaired: bool, now: float) -> None:
        """Account for one packet received at ``now`` (monotonic seconds)."""
        payload = packet.payload
        self.account(
            packet.sequence_number,
            packet.timestamp,
            packet.marker,
            len(payload),
            not self._audio and bool(payload) and is_keyframe(self.codec, payload),
            repaired,
            now,
        )

    def account(
        self,
        seq: int,
        timestamp: int,
        marker: int,
        size: int,
        keyframe: bool,
        repaired: bool,
        now: float,
    ) -> None:
        """Account for one packet by its header's fields, the size of its payload and
        whether that payload starts a keyframe (`receive`, `on_header`)."""
        c = self._c
        c.packets += 1
        c.bytes += size
        if repaired:
            c.repaired += 1
        if self.first_packet_at is None:
            self.first_packet_at = now
        highest = self._highest
        recovered = False
        if highest is None:
            ext = seq
            self._highest = ext
            self._last_marker = ext - 1
            c.expected += 1
        else:
            delta = (seq - highest) & 0xFFFF
            if delta == 0:
                self.duplicates += 1
                return
            if delta < 0x8000:  # ahead
                ext = highest + delta
                if delta > MAX_GAP_FILL:
                    # a restart of the sequence space, not a loss burst
                    self.discontinuities += 1
                    self._missing.clear()
                    self._pending.clear()
                    self._last_marker = ext - 1
                    self._decodable = False
                else:
                    for missing in range(highest + 1, ext):
                        self._missing[missing] = now
                    c.raw_missing += delta - 1
                c.expected += delta
                self._highest = ext
            else:
                ext = highest - (0x10000 - delta)
                if self._missing.pop(ext, None) is None:
                    self.duplicates += 1
                    return
                recovered = True

        if self._audio:
            # every audio packet is a whole frame; a lost one is concealed, never waited for
            previous = self._last_audio
            self._last_audio = (ext, timestamp)
            last = self.last_frame_at
            if previous is not None and last is not None and ext == previous[0] + 1:
                # the next packet, none missing, after a pause the sender's clock shows:
                # silence held back (Opus DTX, or the server's audio gate), not a gap
                # (a stalled network delivers late packets with their old timestamps)
                held = ((timestamp - previous[1]) & 0xFFFFFFFF) / AUDIO_CLOCK
                waited = now - last
                if waited > GAP_THRESHOLD and held >= 0.8 * waited:
                    self._pause_gap = True
                    self.talkspurts += 1
            self._decodable = True
            self._frame_done(now)
            if now - self._last_prune >= 0.25:
                self._prune(now)
            return
        if keyframe:
            self._keyframe_ts.add(timestamp)
        if marker:
            self._pending.append((ext, timestamp, now))
        if recovered and len(self._pending) > 1:
            # a repaired (or reordered) marker packet arrives after later frames' markers
            self._pending = deque(sorted(self._pending))
        if self._pending:
            self._complete_frames(now)
        if now - self._last_prune >= 0.25:
            self._prune(now)

    def _complete_frames(self, now: float) -> None:
        pending = self._pending
        missing = self._missing
        while pending:
            end, timestamp, at = pending[0]
            start = (self._last_marker if self._last_marker is not None else end - 1) + 1
            if end < start:  # a late duplicate of an already handled marker
                pending.popleft()
                continue
            if missing and any(s in missing for s in range(start, end + 1)):
                if now - at < ABANDON_AFTER:
                    return
                pending.popleft()
                self._last_marker = end
                self._c.abandoned += 1
                self._keyframe_ts.discard(timestamp)
                self._decodable = False
                self._ask_keyframe(now)
                continue
            pending.popleft()
            self._last_marker = end
            if timestamp in self._keyframe_ts:
                self._keyframe_ts.discard(timestamp)
                self._c.keyframes += 1
                self._decodable = True
            if self._decodable:
                self._frame_done(now)
            elif self.first_frame_at is not None:
                self._ask_keyframe(now)  # still waiting for a keyframe after a loss
        if len(self._keyframe_ts) > 16:
            self._keyframe_ts.clear()

    def _ask_keyframe(self, now: float) -> None:
        """Send a PLI (through ``on_picture_loss``), at most every 0.5 s."""
        if self.on_picture_loss is not None and now - self._last_pli >= 0.5:
            self._last_pli = now
            self._c.picture_loss += 1
            self.on_picture_loss()

    def _frame_done(self, now: float) -> None:
        c = self._c
        c.frames += 1
        last = self.last_frame_at
        if last is None:
            self.first_frame_at = now
        elif self._pause_gap or self._paused_at is not None:
            self._pause_gap = False  # the server paused it: no freeze
        else:
            gap = now - last
            if gap > self.max_frame_gap:
                self.max_frame_gap = gap
            if gap > GAP_THRESHOLD:
                c.gaps += 1
            if gap > FREEZE_THRESHOLD:
                c.freezes += 1
                c.freeze_seconds += gap
                if len(self.freeze_log) < 10:
                    self.freeze_log.append((last, gap))
        self.last_frame_at = now

    def _prune(self, now: float) -> None:
        self._last_prune = now
        if self._missing:
            limit = now - LOSS_HORIZON
            old = [s for s, at in self._missing.items() if at <= limit]
            for s in old:
                at = self._missing.pop(s)
                if len(self.loss_log) < 10:
                    self.loss_log.append(at)
            self._c.lost += len(old)
        if self._pending:
            self._complete_frames(now)

    # -- lifecycle ------------------------------------------------------------------
    def mark(self, now: float | None = None) -> None:
        """Start the measurement window: reports count from here on."""
        now = time.monotonic() if now is None else now
        self._prune(now)
        self._base = _Counters(**vars(self._c))
        self._marked_at = now
        self.max_frame_gap = 0.0
        self.freeze_log.clear()
        self.loss_log.clear()

    def pause(self, now: float | None = None) -> None:
        """The server paused this video for the viewer's link (``video-paused``)."""
        if self._paused_at is None:
            self._paused_at = time.monotonic() if now is None else now
            self._pause_gap = True

    def resume(self, now: float | None = None) -> None:
        """The server resumed it: frames are expected again (after a keyframe)."""
        if self._paused_at is not None:
            now = time.monotonic() if now is None else now
            self._pauses.append((self._paused_at, now))
            self._paused_at = None
            self._pause_gap = True

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def paused_within(self, start: float, end: float) -> float:
        """Seconds of [start, end] during which the server had paused this video."""
        pauses = self._pauses
        if self._paused_at is not None:
            pauses = [*pauses, (self._paused_at, end)]
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in pauses)

    def end(self, now: float | None = None) -> None:
        """The stream was given up (unsubscribed): nothing more is expected."""
        if self.ended_at is None:
            self.ended_at = time.monotonic() if now is None else now

    @property
    def keyframe_wait(self) -> float | None:
        """Seconds from asking for the stream to its first decodable frame."""
        if self.first_frame_at is None:
            return None
        return self.first_frame_at - self.started_at

    @property
    def packets(self) -> int:
        return self._c.packets

    @property
    def bytes(self) -> int:
        return self._c.bytes

    # -- reporting ---------------------------------------------------------------------
    def report(self, now: float | None = None) -> dict[str, Any]:
        """Counters since :meth:`mark` (or since the start), as plain JSON values."""
        now = time.monotonic() if now is None else now
        self._prune(now)
        end = self.ended_at if self.ended_at is not None else now
        c, b = self._c, self._base
        since = self._marked_at if self._marked_at is not None else self.started_at
        begin = max(since, self.started_at)
        seconds = max(end - begin, 1e-9)
        # numbers still missing count as lost when they are old enough to be NACKed
        pending_lost = sum(1 for at in self._missing.values() if now - at > 0.3)
        expected = c.expected - b.expected
        lost = c.lost - b.lost + pending_lost
        freezes = c.freezes - b.freezes
        freeze_seconds = c.freeze_seconds - b.freeze_seconds
        gaps = c.gaps - b.gaps
        paused = self.paused_within(begin, end)
        trailing = None
        if (
            self.last_frame_at is not None
            and end - self.last_frame_at > GAP_THRESHOLD
            and not self._pause_gap  # paused since the last frame: no freeze
            and self._paused_at is None
            # audio may end in silence held back (DTX, the server's audio gate): only a
            # gap the next packet closes is judged (a stopped stream shows in its frames)
            and not self._audio
        ):
            trailing = end - max(self.last_frame_at, begin)
            if trailing > GAP_THRESHOLD:
                gaps += 1
            if trailing > FREEZE_THRESHOLD:
                freezes += 1
                freeze_seconds += trailing
        frames = c.frames - b.frames
        shown_from = max(begin, self.first_frame_at or begin)
        showing = end - shown_from - self.paused_within(shown_from, end)
        return {
            "label": self.label,
            "kind": self.kind,
            "codec": self.codec,
            "publication": self.publication,
            "publisher": self.publisher,
            "reason": self.reason,
            "seconds": round(seconds, 3),
            "active": self.ended_at is None,
            "packets": c.packets - b.packets,
            "repaired": c.repaired - b.repaired,
            "bytes": c.bytes - b.bytes,
            "expected": expected,
            "lost": lost,
            "raw_missing": c.raw_missing - b.raw_missing,
            "loss_pct": round(100 * lost / expected, 3) if expected > 0 else 0.0,
            "raw_loss_pct": round(100 * (c.raw_missing - b.raw_missing) / expected, 3)
            if expected > 0
            else 0.0,
            "frames": frames,
            # the frame rate while showing (the keyframe wait is reported on its own)
            "fps": round(frames / showing, 2) if showing > 0.05 else 0.0,
            # over the whole window: keyframe wait and pauses count as no frames
            "fps_window": round(frames / seconds, 2),
            "keyframes": c.keyframes - b.keyframes,
            "abandoned_frames": c.abandoned - b.abandoned,
            "picture_loss_sent": c.picture_loss - b.picture_loss,
            "freezes": freezes,
            "freeze_seconds": round(freeze_seconds, 3),
            "gaps": gaps,
            "paused_seconds": round(paused, 3),
            "max_frame_gap_s": round(self.max_frame_gap, 3),
            # when the freezes started, in seconds from the start of the window
            "freezes_at_s": [[round(t - begin, 2), round(d, 2)] for t, d in self.freeze_log],
            "losses_at_s": [round(t - begin, 2) for t in self.loss_log],
            "keyframe_wait_s": None if self.keyframe_wait is None else round(self.keyframe_wait, 3),
            "discontinuities": self.discontinuities,
            "talkspurts": self.talkspurts,
            "duplicates": self.duplicates,
        }
