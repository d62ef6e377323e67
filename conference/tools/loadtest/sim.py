"""Simulated participants: the chair, meeting points and program-feed viewers.

Each simulated participant uses the real interfaces: the WebSocket signaling
protocol through :class:`conference.tools.client.Client` (``decode=False``), or WHEP
through :func:`conference.tools.whipclient.whep_watch`.  Publishers send pre-encoded
media (:mod:`conference.tools.loadtest.media`); everything received goes into
:class:`conference.tools.loadtest.streamstats.StreamStats`, one per stream episode.

How each one watches, as the browser page would:

* ``briefing``: the chair sees every point (``autoSubscribe``); a point sees
  the chair and the active speaker (``autoSubscribe: false`` plus explicit
  ``subscribe``/``unsubscribe`` when a ``speaker`` message names someone new;
  after silence it keeps showing the last speaker).
* ``grid``: everyone sees everyone (``autoSubscribe``).
* ``webinar``: the chair publishes; viewers watch the program feed over WHEP.

Size: a little over 600 lines: each kind of participant (chair, point, viewer) with
its lean and full receive paths and its scenario's subscriptions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

from ...sfu.bridge import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    attach_audio_levels,
    honour_keyframe_requests,
    light_receiver,
)
from ..client import Client, StreamCounter
from ..whipclient import WhipSession, exchange, whep_watch
from .lean import AUDIO_CLOCK, VIDEO_CLOCK, LeanPublisher, LeanStream, packetized
from .media import ClipTrack, MediaSet, SpeechTrack
from .plan import Seat
from .streamstats import StreamStats
from .weak import RelayFactory, relay_candidates, strip_candidates

__all__ = ["LoadClient", "SimulatedSeat"]

logger = logging.getLogger(__name__)

#: the chair's paged mosaic in a provincial briefing (room.js: 5 x 5, rotation every 10 s)
PAGE_SIZE = 25
PAGE_PERIOD = 10.0

#: handling a message slower than this is logged: meanwhile the client reads
#: nothing, not even the server's heartbeat (5 s), and answers no offer (10 s)
SLOW_HANDLING = 2.0


class LoadClient(Client):
    """A non-decoding :class:`Client` whose received streams feed :class:`StreamStats`.

    With ``relay`` (a point on a weak link, :mod:`.weak`) the server's SDP is
    rewritten to reach its candidates through relays, the point's own SDP goes
    out without candidates, the receivers keep their REMB estimator, and the
    point sends a ``view`` message, as the room page does: the server then
    allocates its downlink (layers, pauses) from that REMB and its loss.

    Without it (a strong point) the receivers run no estimator (it would cost
    ~10 % of a load-test process) and the point sends no ``view``: the server
    forwards it everything it subscribes, as a browser on a good link gets.

    ``headers_only`` (a strong lean point): received media is read from its RTP
    headers (`StreamStats.on_header`), without SRTP unprotect, whenever the checks
    need no payload.
    """

    def __init__(
        self,
        base_url: str,
        meeting: str,
        seat: Seat,
        *,
        insecure: bool = False,
        relay: RelayFactory | None = None,
        headers_only: bool = False,
    ) -> None:
        super().__init__(base_url, meeting, seat.token, decode=False, ssl_context=not insecure)
        self.seat = seat
        self.relay = relay
        self.headers_only = headers_only and relay is None
        self.paused: set[str] = set()  # publications the server paused for our link
        self.streams: list[StreamStats] = []  # every episode, in order
        self.by_mid: dict[str, StreamStats] = {}
        self.requested: dict[str, tuple[float, str]] = {}  # publication -> (monotonic, reason)
        self.identities: dict[str, str] = {}  # participant id -> identity
        self.speaker_log: list[tuple[float, str | None]] = []  # (wall time, identity)
        self.speaker_at = 0.0  # monotonic time of the last speaker message
        self.changed = asyncio.Event()
        self._watching = False  # subscriber connection state reported

    def learn(self, room: dict[str, Any]) -> None:
        """Remember participant identities from a room state."""
        for participant in room.get("participants", []):
            self.identities[participant["id"]] = participant.get("identity", participant["id"])

    async def send(self, message: dict[str, Any]) -> None:
        if self.relay is not None and message.get("type") in ("offer", "answer"):
            message = message | {"sdp": strip_candidates(str(message.get("sdp", "")))}
        await super().send(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        began = time.monotonic()
        kind = message.get("type")
        if self.relay is not None and kind in ("offer", "answer") and message.get("sdp"):
            message["sdp"] = await relay_candidates(str(message["sdp"]), self.relay)
        await super()._handle(message)
        took = time.monotonic() - began
        if took > SLOW_HANDLING:
            logger.warning("%s: handling %s took %.1f s", self.seat.identity, kind, took)
        if kind == "room":
            self.learn(message)
            self.relabel()
            self.changed.set()
        elif kind == "speaker":
            participant = message.get("participant")
            identity = self.identities.get(participant, participant) if participant else None
            self.speaker_log.append((time.time(), identity))
            self.speaker_at = time.monotonic()
            self.changed.set()
        elif kind == "video-paused":
            publication = str(message.get("publication"))
            paused = bool(message.get("paused"))
            if paused:
                self.paused.add(publication)
            else:
                self.paused.discard(publication)
            now = time.monotonic()
            for stats in self.by_mid.values():
                if stats.publication == publication and stats.ended_at is None:
                    if paused:
                        stats.pause(now)
                    else:
                        stats.resume(now)

    def relabel(self) -> None:
        """Name streams whose offer arrived before the room state that describes them."""
        for stats in self.streams:
            if stats.publisher == "?":
                identity, source, _ = self.describe(stats.publication)
                if identity != "?":
                    stats.publisher = identity
                    stats.label = f"{identity}/{source}"

    def describe(self, publication_id: str) -> tuple[str, str, str]:
        """(publisher identity, source, role) of a publication in the room state."""
        if publication_id.startswith("audio-slot:"):  # whoever is heard
            return ("slots", publication_id, "?")
        for participant in self.room.get("participants", []):
            for publication in participant.get("publications", []):
                if publication.get("id") == publication_id:
                    return (
                        participant.get("identity", participant["id"]),
                        publication.get("source", "?"),
                        participant.get("role", "?"),
                    )
        return ("?", "?", "?")

    async def _subscriber_offer(self, message: dict[str, Any]) -> None:
        # Client._subscriber_offer points every receiver at ``self.counters[publication]``
        # before it awaits the answer: it must find our StreamStats there, or the packets
        # of streams that continue across a renegotiation would miss them meanwhile.
        await super()._subscriber_offer(message)
        pc = self.subscriber
        if pc is None:
            return
        if not self._watching:
            self._watching = True
            identity = self.seat.identity

            @pc.on("connectionstatechange")
            def report_state() -> None:
                if pc.connectionState in ("failed", "closed") and not self._closing:
                    logger.warning("%s: subscriber connection %s", identity, pc.connectionState)

        now = time.monotonic()
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid or ""
            publication = self.track_map.get(mid)
            if publication is None:
                continue
            current = self.by_mid.get(mid)
            renewed = current is not None and current.ended_at is not None
            if (
                current is None
                or current.publication != publication
                or (renewed and publication in self.requested)
            ):
                if current is not None:
                    current.end(now)
                started, reason = self.requested.pop(publication, (now, "join"))
                codec = ForwardingPeerConnection.media_codec(transceiver)
                identity, source, _ = self.describe(publication)
                current = StreamStats(
                    f"{identity}/{source}",
                    transceiver.kind,
                    codec.name if codec else "",
                    publication=publication,
                    publisher=identity,
                    reason=reason,
                    started_at=started,
                )
                self.by_mid[mid] = current
                self.streams.append(current)
                if publication in self.paused:
                    current.pause(now)
                # duck-typed: Client only hands counters to receivers as packet sinks
                self.counters[publication] = cast(StreamCounter, current)
            receiver = transceiver.receiver
            if isinstance(receiver, ForwardingReceiver):
                receiver.sink = current
                if self.headers_only:
                    receiver.header_sink = current
                current.on_picture_loss = receiver.request_keyframe
                feedback(receiver, self.relay is not None)

    def end_streams(self, publications: set[str], now: float) -> None:
        for stats in self.by_mid.values():
            if stats.publication in publications:
                stats.end(now)


def feedback(receiver: ForwardingReceiver, weak: bool) -> None:
    """A receiver's feedback to the server: a weak point's as Chromium's (REMB from
    the receive-side estimator, which the server's allocator reads), the others'
    without the estimator (it costs ~10 % of a load-test process)."""
    if weak:
        receiver.transport_cc = False  # the server offers REMB to subscribers, not transport-cc
    else:
        light_receiver(receiver)


async def _weak_whep_watch(url: str, token: str, relay: RelayFactory) -> WhipSession:
    """:func:`conference.tools.whipclient.whep_watch` (non-decoding) through relays."""
    pc = ForwardingPeerConnection([])
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    location = await exchange(
        url, token, pc, strip_candidates, lambda answer: relay_candidates(answer, relay)
    )
    session = WhipSession(pc, location, token)
    for transceiver in pc.getTransceivers():
        session.tracks[transceiver.kind] = transceiver.receiver.track
    return session


@dataclass
class SimulatedSeat:
    """One simulated participant and what it measured."""

    seat: Seat
    scenario: str
    chair_identity: str
    process: int = 0
    #: a point on a weak link: where its relays come from (see :mod:`.weak`)
    relay: RelayFactory | None = None
    client: LoadClient | None = None
    whep: WhipSession | None = None
    #: publish through the server's own send path (:mod:`.lean`), not aiortc's sender
    lean: bool = False
    #: a lean point's microphone muted while it does not hold the floor (``--muted``)
    muted: bool = False
    camera: ClipTrack | LeanPublisher | None = None
    microphone: SpeechTrack | LeanPublisher | None = None
    lean_publisher: LeanPublisher | None = None
    whep_streams: list[StreamStats] = field(default_factory=list)
    started_at: float | None = None  # monotonic, just before connecting
    signaled_at: float | None = None  # joined message received
    joined_at: float | None = None  # first decodable frame of the chair / program
    error: str | None = None
    _follower: asyncio.Task[None] | None = None
    _shown_speaker: str | None = None
    #: the chair of a provincial briefing: how many pages of its mosaic it went through,
    #: of how many
    pages_shown: int = 0
    pages: int = 0
    #: packets a lean publisher had sent when the window started
    _sent_at_mark: int | None = None
    _microphone_at_mark: int | None = None
    _slot_changes_at_mark: int | None = None

    # -- joining --------------------------------------------------------------------
    async def join(
        self, url: str, meeting: str, media: MediaSet | None, insecure: bool, timeout: float
    ) -> None:
        """Join, publish and subscribe; returns once the first frame is in (or raises)."""
        self.started_at = time.monotonic()
        if self.seat.role == "viewer":
            await self._join_whep(url, meeting, insecure, timeout)
            return
        client = self.client = LoadClient(
            url, meeting, self.seat, insecure=insecure, relay=self.relay, headers_only=self.lean
        )
        briefing_point = self.scenario in ("briefing", "province") and not self.seat.is_chair
        paged_chair = self.scenario == "province" and self.seat.is_chair
        # a province's pages receive the microphones in audio slots, as room.js does
        slots = {"audioSlots": True} if self.scenario == "province" else {}
        joined = await client.connect(auto_subscribe=not (briefing_point or paged_chair), **slots)
        if self.relay is not None:  # a weak point has its downlink allocated, as a page does
            await client.send({"type": "view", "videos": {}})
        self.signaled_at = time.monotonic()
        client.learn(joined["room"])
        if briefing_point:
            await client.wait_for(lambda: bool(self._chair_publications()), timeout)
            await self._update_subscriptions(self.started_at, "join")
            self._follower = asyncio.ensure_future(self._follow_speaker())
        if paged_chair:
            self._follower = asyncio.ensure_future(self._follow_pages())
        if media is not None and self.seat.role != "viewer":
            await self._publish(client, media)
        if self.seat.is_chair:
            self.joined_at = time.monotonic()
            return
        await self._wait_first_frame(lambda: self._chair_video(), timeout)

    async def _join_whep(self, url: str, meeting: str, insecure: bool, timeout: float) -> None:
        if insecure and url.startswith("https"):
            raise RuntimeError(
                "WHEP viewers need a trusted certificate (whep_watch has no TLS option yet)"
            )
        assert self.started_at is not None
        if self.relay is not None:
            session = await _weak_whep_watch(f"{url}/whep/{meeting}", self.seat.token, self.relay)
        else:
            session = await whep_watch(
                f"{url}/whep/{meeting}", self.seat.token, False, headers_only=self.lean
            )
        self.whep = session
        self.signaled_at = time.monotonic()
        for transceiver in session.pc.getTransceivers():
            codec = ForwardingPeerConnection.media_codec(transceiver)
            stats = StreamStats(
                f"program/{transceiver.kind}",
                transceiver.kind,
                codec.name if codec else "",
                publisher="program",
                started_at=self.started_at,
            )
            self.whep_streams.append(stats)
            receiver = transceiver.receiver
            if isinstance(receiver, ForwardingReceiver):
                receiver.sink = stats
                if self.lean and self.relay is None:
                    receiver.header_sink = stats
                stats.on_picture_loss = receiver.request_keyframe
                feedback(receiver, self.relay is not None)
        await self._wait_first_frame(
            lambda: next((s for s in self.whep_streams if s.kind == "video"), None), timeout
        )

    async def _wait_first_frame(self, stream: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = stream()
            if stats is not None and stats.first_frame_at is not None:
                self.joined_at = stats.first_frame_at
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no video frame within {timeout:g} s")

    async def _publish(self, client: LoadClient, media: MediaSet) -> None:
        if self.lean:
            await self._publish_lean(client, media)
            return
        self.camera = ClipTrack(media.video, media.fps, start_index=self.seat.index * 37)
        self.microphone = SpeechTrack(media, offset=self.seat.index * 13)
        await client.publish(
            {"camera": self.camera, "microphone": self.microphone}, codec=media.video_codec
        )
        assert client.publisher is not None
        for transceiver in client.publisher.getTransceivers():
            sender = transceiver.sender
            if sender.track is self.camera:
                honour_keyframe_requests(sender, self.camera.request_keyframe)
            elif sender.track is self.microphone:
                attach_audio_levels(sender, self._microphone_level)

    async def _publish_lean(self, client: LoadClient, media: MediaSet) -> None:
        video, talk, quiet = packetized(media)
        transceivers = await client.publish_forwarding(
            {"camera": "video", "microphone": "audio"}, codec=media.video_codec
        )
        publisher = LeanPublisher(
            LeanStream(transceivers["camera"].sender, VIDEO_CLOCK),
            video,
            media.fps,
            LeanStream(transceivers["microphone"].sender, AUDIO_CLOCK, history=0),
            talk,
            media.talk_levels,
            quiet,
            media.quiet_levels,
            start_index=self.seat.index * 37,
            muted=self.muted and not self.seat.is_chair,
        )
        self.camera = self.microphone = self.lean_publisher = publisher
        publisher.start()

    def _microphone_level(self) -> int:
        return self.microphone.level if self.microphone is not None else 127

    # -- what a point shows (briefing) -------------------------------------------------
    def _publications_of(self, identity: str | None) -> set[str]:
        if identity is None or self.client is None:
            return set()
        for participant in self.client.room.get("participants", []):
            if participant.get("identity") == identity and participant["id"] != self.client.id:
                return {p["id"] for p in participant.get("publications", [])}
        return set()

    def _chair_publications(self) -> set[str]:
        return self._publications_of(self.chair_identity)

    def _chair_video(self) -> StreamStats | None:
        if self.client is None:
            return None
        for stats in self.client.streams:
            if stats.publisher == self.chair_identity and stats.kind == "video":
                return stats
        return None

    async def _update_subscriptions(self, at: float, reason: str) -> None:
        client = self.client
        assert client is not None
        speaker_id = client.speaker if client.speaker is not None else client.room.get("speaker")
        if speaker_id is not None:
            self._shown_speaker = client.identities.get(speaker_id, speaker_id)
        desired = self._chair_publications()
        if self._shown_speaker not in (None, self.seat.identity, self.chair_identity):
            desired |= self._publications_of(self._shown_speaker)
        if self.scenario == "province":  # the microphones come in the audio slots
            desired -= {p["id"] for p in client.publications("microphone")}
        changed = await self._subscribe_exactly(desired, at, reason)
        if self.relay is not None and changed:
            await client.send({"type": "view", "videos": self._view(desired)})

    def _view(self, desired: set[str]) -> dict[str, str]:
        """How a point's page shows what it receives (room.js): the speaker on the
        stage and the chair in a small inset beside it, or the chair on the stage.
        A weak link's allocator serves the stage first."""
        chair = self._chair_publications()
        speaker_shown = bool(desired - chair)
        return {key: "small" if speaker_shown and key in chair else "large" for key in desired}

    async def _follow_speaker(self) -> None:
        client = self.client
        assert client is not None
        try:
            while not client.closed.is_set():
                await client.changed.wait()
                client.changed.clear()
                at = client.speaker_at or time.monotonic()
                await self._update_subscriptions(at, "switch")
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # keep measuring; the report shows the error
            logger.warning("%s: following the speaker failed: %r", self.seat.identity, exc)
            self.error = f"follow-speaker: {exc!r}"

    async def _follow_pages(self) -> None:
        """The chair of a provincial briefing (``--scenario province``) as its page shows
        it (room.js): the microphones in audio slots, the speaker's camera, and the
        cameras of one page of :data:`PAGE_SIZE` points, the next page every
        :data:`PAGE_PERIOD` seconds.  (Its points, as their pages do, receive the
        microphones in audio slots too.)"""
        client = self.client
        assert client is not None
        started = time.monotonic()
        try:
            while not client.closed.is_set():
                page = int((time.monotonic() - started) / PAGE_PERIOD)
                cameras = sorted((p["participant"], p["id"]) for p in client.publications("camera"))
                pages = max(1, -(-len(cameras) // PAGE_SIZE))
                first = (page % pages) * PAGE_SIZE
                desired = {pid for _, pid in cameras[first : first + PAGE_SIZE]}
                speaker = (
                    client.speaker if client.speaker is not None else client.room.get("speaker")
                )
                desired |= {pid for who, pid in cameras if who == speaker}
                self.pages_shown = max(self.pages_shown, min(page + 1, pages))
                self.pages = pages
                await self._subscribe_exactly(desired, time.monotonic(), "page" if page else "join")
                try:
                    await asyncio.wait_for(client.changed.wait(), 1.0)
                except TimeoutError:
                    pass
                client.changed.clear()
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # keep measuring; the report shows the error
            logger.warning("%s: following the pages failed: %r", self.seat.identity, exc)
            self.error = f"follow-pages: {exc!r}"

    async def _subscribe_exactly(self, desired: set[str], at: float, reason: str) -> bool:
        """Subscribe to ``desired`` and to nothing else (of what is still published),
        the new streams asked for at ``at`` for ``reason``; whether anything changed."""
        client = self.client
        assert client is not None
        present = {
            p["id"] for participant in client.room.get("participants", [])
            for p in participant.get("publications", [])
        }  # fmt: skip
        subscribed = {s.publication for s in client.by_mid.values() if s.ended_at is None}
        subscribed |= set(client.requested)
        subscribed &= present
        gone = subscribed - desired
        new = desired - subscribed
        if gone:
            client.end_streams(gone, time.monotonic())
            for publication in gone:
                client.requested.pop(publication, None)
            await client.unsubscribe(sorted(gone))
        if new:
            for publication in new:
                client.requested[publication] = (at, reason)
            await client.subscribe(sorted(new))
        return bool(gone or new)

    # -- the floor --------------------------------------------------------------------
    def set_floor(self, holder: int) -> None:
        if self.microphone is not None:
            self.microphone.speaking = holder == self.seat.index

    # -- results ----------------------------------------------------------------------
    @property
    def streams(self) -> list[StreamStats]:
        return self.client.streams if self.client is not None else self.whep_streams

    def mark(self, now: float) -> None:
        for stats in self.streams:
            stats.mark(now)
        self._sent_at_mark = self._packets_sent()
        if self.lean_publisher is not None:
            self._microphone_at_mark = self.lean_publisher.microphone.sender.packets_sent
        self._slot_changes_at_mark = self.client.audio_slot_changes if self.client else 0

    def _receivers(self) -> list[ForwardingReceiver]:
        pc = self.client.subscriber if self.client is not None else None
        if pc is None and self.whep is not None:
            pc = self.whep.pc
        if pc is None:
            return []
        receivers: list[Any] = [t.receiver for t in pc.getTransceivers()]
        return [r for r in receivers if isinstance(r, ForwardingReceiver)]

    def _packets_sent(self) -> int | None:
        """RTP packets (RTX included) this seat's lean publisher sent so far."""
        publisher = self.lean_publisher
        if publisher is None:
            return None
        return publisher.camera.sender.packets_sent + publisher.microphone.sender.packets_sent

    def report(self, now: float) -> dict[str, Any]:
        client = self.client
        started = self.started_at
        return {
            "index": self.seat.index,
            "identity": self.seat.identity,
            "role": self.seat.role,
            "process": self.process,
            "joined": self.joined_at is not None,
            "error": self.error,
            "signaling_s": None
            if started is None or self.signaled_at is None
            else round(self.signaled_at - started, 3),
            "join_s": None
            if started is None or self.joined_at is None
            else round(self.joined_at - started, 3),
            "server_errors": [e.get("code") for e in client.errors][:20] if client else [],
            "left_reason": client.left_reason if client else None,
            # the server closed the signaling connection (e.g. 1009: a message too big)
            "closed_code": self._closed_code(),
            "speaker_log": client.speaker_log if client else [],
            "keyframes_requested": self.camera.keyframes_requested if self.camera else 0,
            "keyframes_sent": self.camera.keyframes_sent if self.camera else 0,
            # RTP packets its receivers took in since they started, and how many of them
            # were read from their header alone (--lean)
            "receiver_packets": sum(r.packets_received for r in self._receivers()),
            "headers_read": sum(r.headers_read for r in self._receivers()),
            # in the window, lean publishers only (RTX included)
            "packets_sent": None
            if self._sent_at_mark is None
            else (self._packets_sent() or 0) - self._sent_at_mark,
            # of which its microphone's (fewer while muted: --muted)
            "microphone_packets_sent": None
            if self._microphone_at_mark is None or self.lean_publisher is None
            else self.lean_publisher.microphone.sender.packets_sent - self._microphone_at_mark,
            "streams": [s.report(now) for s in self.streams],
            # audio slots: how often a slot changed hands in the window (a microphone
            # newly heard: every page's subscription switches, every page is told)
            "audio_slot_changes": None
            if client is None or self._slot_changes_at_mark is None
            else client.audio_slot_changes - self._slot_changes_at_mark,
            "mosaic": {
                "pages_shown": self.pages_shown,
                "pages": self.pages,
                "page_size": PAGE_SIZE,
                "page_period_s": PAGE_PERIOD,
            }
            if self.pages
            else None,
        }

    def _closed_code(self) -> int | None:
        client = self.client
        if client is None or client.ws is None or not client.closed.is_set():
            return None
        return client.ws.close_code

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        if self.lean_publisher is not None:
            await self.lean_publisher.stop()
        try:
            if self.client is not None:
                await asyncio.wait_for(self.client.leave(), 10)
            if self.whep is not None:
                await asyncio.wait_for(self.whep.delete(), 10)
        except Exception as exc:  # leaving must not hide the results
            logger.info("%s: leaving failed: %r", self.seat.identity, exc)
