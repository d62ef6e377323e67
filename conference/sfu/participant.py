"""Participant: one connected endpoint of a room, with its peer connections.

Peer-connection model (see docs/ARCHITECTURE.md): like LiveKit, a browser
participant has up to two peer connections:

* the **publisher** connection, offered by the client, carries what it sends;
* the **subscriber** connection, offered by the server, carries what it
  receives; the server renegotiates it whenever subscriptions change.

A WHIP encoder has only a publisher connection, a WHEP viewer only a subscriber
connection (offered by the client, as those protocols require).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCIceServer

from ..core.identity import Identity
from .bridge import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    RTCSessionDescription,
    accept_transport_cc,
    announce_address,
    begin_ice_restart,
    codec_capability,
    finish_ice_restart,
    ice_restart_offered,
)
from .publication import SOURCES, MediaSource, Publication
from .simulcast import SimulcastError, accept_in_answer, parse_offer
from .subscription import Subscription

if TYPE_CHECKING:
    from .room import Room

logger = logging.getLogger(__name__)

NEGOTIATION_TIMEOUT = 10.0
#: the least time between two subscriber offers (s): what changes meanwhile (a hundred
#: points joining at once) goes into the next offer: at most 1/OFFER_SPACING a second
OFFER_SPACING = 0.25
#: a joining page's audio slots wait this long (s) for its first videos, asked for at
#: once, to share their offer (a second would wait OFFER_SPACING); then go alone
SLOTS_OFFER_DELAY = 0.3

Signal = Callable[[dict[str, Any]], Awaitable[None]]


class NegotiationError(Exception):
    """An SDP offer or answer could not be applied."""


class _Resumed(Exception):
    """The client's signaling moved to a new socket: the offer waiting for an answer
    went to the old one and is made again."""


def _urls(server: RTCIceServer) -> list[str]:
    urls = server.urls
    return [urls] if isinstance(urls, str) else list(urls)


#: messages `Participant.tell` is sending
_telling: set[asyncio.Task[None]] = set()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(6)}"


class Participant:
    """One endpoint in a room (a browser, a WHIP encoder, a WHEP viewer)."""

    def __init__(
        self,
        room: Room,
        who: Identity,
        transport: str,
        signal: Signal | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        auto_subscribe: bool = True,
        red: bool = False,
        system_dtls: bool = False,
        audio_slots: bool = False,
    ) -> None:
        self.id = new_id("PA")
        self.room = room
        self.who = who
        self.transport = transport  # "websocket", "whip" or "whep"
        self.signal = signal
        # closes the signaling channel with a reason (set by the WebSocket handler)
        self.disconnect: Callable[[str], Awaitable[None]] | None = None
        # the server's own ICE agent needs STUN at most: handing it TURN would
        # make it allocate a relay per peer connection
        self.ice_servers = [
            server
            for server in ice_servers or []
            if all(url.startswith("stun:") for url in _urls(server))
        ]
        self.auto_subscribe = auto_subscribe and who.subscribe
        #: receives the meeting's microphones in audio slots (`.audioslots`), not one
        #: track per microphone: the room opens them at join
        self.wants_audio_slots = audio_slots and who.subscribe
        self.audio_slots: list[Subscription] = []
        #: ``joined`` went out with whom the slots carry: ``audio-slot`` news may follow
        self.slots_told = False
        #: the client receives RED audio (it said so when joining): the server's
        #: offers put ``red/48000/2`` first on its audio m-lines
        self.red = red
        #: DTLS on the system's OpenSSL (bridge.SystemDtlsCertificate): accepts the P-224
        #: certificate FFmpeg's WHIP muxer makes by default
        self.system_dtls = system_dtls
        self.publisher_pc: ForwardingPeerConnection | None = None
        self.subscriber_pc: ForwardingPeerConnection | None = None
        self.publications: dict[str, Publication] = {}
        self.subscriptions: dict[str, Subscription] = {}  # by publication id or slot
        self._mid_source: dict[str, str] = {}
        self._unpublished: set[MediaSource] = set()
        # transceivers of the subscriber pc: made inactive by an offer not yet
        # answered (retiring), then ready for reuse (free)
        self._retiring: list[Any] = []
        self._free: list[Any] = []
        # subscriptions on reused transceivers wait for the client's answer
        self._awaiting_answer: list[Subscription] = []
        self._transceiver_of: dict[str, Any] = {}  # subscription key -> transceiver
        self._publisher_lock = asyncio.Lock()
        self._negotiation_lock = asyncio.Lock()
        self._needs_negotiation = False
        #: the next subscriber offer restarts ICE (the client's network changed)
        self._ice_restart = False
        self._negotiation_task: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[str] | None = None
        self._offered_at = -OFFER_SPACING  # (loop time) when the last subscriber offer went out
        self.joined_at = time.time()
        #: link profile (high, low, audio): the highest layer it receives (the page
        #: applies it to what it sends); set by the page or the chair
        self.profile = "high"
        self.closed = False

    # -- description -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identity": self.who.identity,
            "name": self.who.name,
            "role": self.who.role,
            "transport": self.transport,
            "profile": self.profile,
            "publications": [p.describe() for p in self.publications.values()],
        }

    def tell(self, message: dict[str, Any]) -> None:
        """`send` from code that cannot wait for it (the media path)."""
        if self.signal is not None and not self.closed:
            task = asyncio.ensure_future(self.send(message))
            _telling.add(task)  # (a task nobody holds may be collected before it runs)
            task.add_done_callback(_telling.discard)

    async def send(self, message: dict[str, Any]) -> None:
        if self.signal is not None and not self.closed:
            try:
                await self.signal(message)
            except (ConnectionError, RuntimeError) as exc:
                logger.debug("participant %s: signal failed: %s", self.id, exc)

    def _new_pc(self) -> ForwardingPeerConnection:
        pc = ForwardingPeerConnection(self.ice_servers, system_dtls=self.system_dtls)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            # "closed" while we did not close it: the far end closed DTLS (its own
            # ICE failed, e.g. consent expired) and aiortc closed the connection.
            # Negotiating on it would fail for ever; the client rejoins instead.
            if pc.connectionState in ("failed", "closed") and not self.closed:
                logger.info("participant %s: connection %s", self.id, pc.connectionState)
                await self.room.leave(self.id, "connection-failed")

        return pc

    # -- publishing ----------------------------------------------------------------
    async def publisher_offer(self, sdp: str, sources: dict[str, str] | None = None) -> str:
        """Apply a client offer on the publisher connection; return the answer."""
        if not self.who.publish:
            raise PermissionError("this token may not publish")
        async with self._publisher_lock:
            if self.publisher_pc is None:
                self.publisher_pc = self._new_pc()
            pc = self.publisher_pc
            try:
                layers = parse_offer(sdp)
            except SimulcastError as exc:
                raise NegotiationError(f"bad simulcast offer: {exc}") from exc
            for transceiver in pc.getTransceivers():
                receiver = transceiver.receiver
                if isinstance(receiver, ForwardingReceiver) and receiver.rids:
                    if layers.get(transceiver.mid or "", receiver.rids) != receiver.rids:
                        raise NegotiationError("the simulcast layers of an m-line cannot change")
            # new ICE credentials: the client's network changed and it restarts ICE on
            # this connection (the same DTLS session, tracks and publications)
            restarting = ice_restart_offered(pc, sdp)
            if restarting:
                try:
                    await begin_ice_restart(pc, controlling=False)
                except ConnectionError as exc:
                    raise NegotiationError(f"cannot restart ICE: {exc}") from exc
                logger.info("participant %s: publisher ICE restart", self.id)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as exc:  # aiortc raises many types on bad SDP
                raise NegotiationError(f"cannot apply offer: {exc}") from exc
            if restarting:
                finish_ice_restart(pc)
            for transceiver in pc.getTransceivers():
                receiver = transceiver.receiver
                if transceiver.mid in layers and isinstance(receiver, ForwardingReceiver):
                    receiver.set_layers(layers[transceiver.mid])
            for source_mid, source in (sources or {}).items():
                self._mid_source[str(source_mid)] = source
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    self.room.adopt_video_codec(pc.offered_codecs(transceiver))
                    pc.answer_one_codec(transceiver, self.room.video_codec)
                else:
                    pc.red_follows_opus(transceiver)
            try:
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
            except Exception as exc:
                raise NegotiationError(f"cannot answer offer: {exc}") from exc
            self._sync_publications(pc)
            answer_sdp = accept_transport_cc(accept_in_answer(pc.localDescription.sdp, layers))
            return announce_address(answer_sdp, self.room.public_ip)

    def _sync_publications(self, pc: ForwardingPeerConnection) -> None:
        seen: set[str] = set()
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid
            receiver = transceiver.receiver
            if mid is None or not isinstance(receiver, ForwardingReceiver):
                continue
            receiving = pc.remote_sends(transceiver)
            existing = next((p for p in self.publications.values() if p.receiver is receiver), None)
            if not receiving:
                self._unpublished.discard(receiver)
                if existing is not None:
                    existing.close()
                continue
            if receiver in self._unpublished:
                continue
            if existing is not None:
                seen.add(existing.id)
                continue
            source = self._mid_source.get(mid) or (
                "microphone" if transceiver.kind == "audio" else "camera"
            )
            if source not in SOURCES:
                source = "microphone" if transceiver.kind == "audio" else "camera"
            codec = pc.media_codec(transceiver)
            if codec is None:
                continue
            publication = Publication(
                new_id("TR"),
                self.id,
                source,
                receiver,
                codec.name,
                codec.clockRate,
                on_audio_level=self.room.on_audio_level,
                on_ended=self._publication_ended,
            )
            if self.transport == "whip" and publication.kind == "video":
                for layer in publication.layers:  # encoders seldom honour keyframe requests
                    layer.keep_keyframes = True
            self.publications[publication.id] = publication
            seen.add(publication.id)
            self.room.publication_added(publication)

    def _publication_ended(self, publication: Publication) -> None:
        if self.publications.pop(publication.id, None) is not None:
            self.room.publication_removed(publication)

    def unpublish(self, source: str) -> bool:
        found = [p for p in self.publications.values() if p.source == source]
        for publication in found:
            self._unpublished.add(publication.receiver)
            publication.close()
        return bool(found)

    def set_muted(self, source: str, muted: bool) -> bool:
        found = False
        for publication in self.publications.values():
            if publication.source == source:
                publication.muted = muted
                found = True
        return found

    # -- subscribing (server-offered connection) ------------------------------------
    def subscribe(self, publication: Publication) -> Subscription | None:
        """Start receiving ``publication``; renegotiates the subscriber connection."""
        if not self.who.subscribe or publication.participant_id == self.id:
            return None
        if publication.id in self.subscriptions:
            return self.subscriptions[publication.id]
        if self.audio_slots and publication.in_audio_slots:
            return None  # it comes in a slot when it is heard
        if self.subscriber_pc is None:
            self.subscriber_pc = self._new_pc()
        pc = self.subscriber_pc
        transceiver = None
        for candidate in self._free:
            sender = candidate.sender
            if candidate.kind == publication.kind and (
                sender.codec is None or sender.codec.name.lower() == publication.codec_name
            ):
                transceiver = candidate
                break
        if transceiver is not None:
            self._free.remove(transceiver)
        else:
            transceiver = pc.addTransceiver(publication.kind, direction="sendonly")
            codecs = codec_capability(publication.kind, publication.codec_name)
            if self.red and publication.codec_name == "opus":
                codecs = codec_capability("audio", "red") + codecs
            transceiver.setCodecPreferences(codecs)
        transceiver.direction = "sendonly"
        sender = transceiver.sender
        assert isinstance(sender, ForwardingSender)
        subscription = Subscription(
            new_id("SU"), self.id, sender, publication.kind, on_source_ended=self._source_ended
        )
        if sender.started:
            # a reused transceiver: the client still sees it inactive and would
            # drop what we send (the keyframe first) until it answers the offer
            # that reactivates it
            subscription.paused = True
            self._awaiting_answer.append(subscription)
        if publication.kind == "video" and self.room.bandwidth.manages(self.id):
            subscription.max_layer = 0  # the allocator raises it as the link allows
        subscription.switch_to(publication)
        self.subscriptions[publication.id] = subscription
        self._transceiver_of[publication.id] = transceiver
        self.request_negotiation()
        return subscription

    def open_audio_slots(self, count: int) -> list[Subscription]:
        """``count`` audio tracks on the subscriber connection, each a subscription the
        room points at the microphone its slot carries (`Room._switch_slot`); the offer's
        ``tracks`` names them ``audio-slot:N``."""
        if self.audio_slots or not self.who.subscribe:
            return self.audio_slots
        if self.subscriber_pc is None:
            self.subscriber_pc = self._new_pc()
        pc = self.subscriber_pc
        codecs = codec_capability("audio", "opus")
        if self.red:
            codecs = codec_capability("audio", "red") + codecs
        for slot in range(count):
            transceiver = pc.addTransceiver("audio", direction="sendonly")
            transceiver.setCodecPreferences(codecs)
            sender = transceiver.sender
            assert isinstance(sender, ForwardingSender)
            subscription = Subscription(new_id("SU"), self.id, sender, "audio")
            key = f"audio-slot:{slot}"
            self.subscriptions[key] = subscription
            self._transceiver_of[key] = transceiver
            self.audio_slots.append(subscription)
        asyncio.get_running_loop().call_later(SLOTS_OFFER_DELAY, self._offer_slots)
        return self.audio_slots

    def _offer_slots(self) -> None:
        if self._transceiver_of["audio-slot:0"].mid is None:  # (in no offer yet)
            self.request_negotiation()

    def unsubscribe(self, publication_id: str) -> bool:
        if publication_id.startswith("audio-slot:"):
            return False  # the slots stay for the whole session
        subscription = self.subscriptions.pop(publication_id, None)
        if subscription is None:
            return False
        subscription.close()
        transceiver = self._transceiver_of.pop(publication_id, None)
        if transceiver is not None:
            transceiver.direction = "inactive"
            self._retiring.append(transceiver)
            self.request_negotiation()
        if subscription in self._awaiting_answer:
            self._awaiting_answer.remove(subscription)
        return True

    def _source_ended(self, subscription: Subscription, publication: Publication) -> None:
        if self.subscriptions.get(publication.id) is subscription:
            self.unsubscribe(publication.id)

    def track_map(self) -> dict[str, str]:
        """mid -> publication id, for the client to label incoming tracks."""
        return {t.mid: pid for pid, t in self._transceiver_of.items() if t.mid is not None}

    def restart_subscriber_ice(self) -> None:
        """Offer the subscriber connection again with new ICE credentials (the client's
        network changed: its page asks, see docs/PROTOCOL.md ``restart-ice``)."""
        if self.subscriber_pc is None:
            raise NegotiationError("no subscriber connection")
        self._ice_restart = True
        self.request_negotiation()

    def request_negotiation(self) -> None:
        self._needs_negotiation = True
        if self.signal is None or self.closed:
            return
        if self._negotiation_task is None or self._negotiation_task.done():
            self._negotiation_task = asyncio.ensure_future(self._negotiate())

    async def _negotiate(self) -> None:
        async with self._negotiation_lock:
            while self._needs_negotiation and not self.closed:
                wait = self._offered_at + OFFER_SPACING - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)  # changes meanwhile join this offer
                    if self.closed:
                        return
                self._needs_negotiation = False
                pc = self.subscriber_pc
                if pc is None:
                    return
                # what this offer deactivates or reactivates
                retiring = [t for t in self._retiring if t.direction == "inactive"]
                resuming = list(self._awaiting_answer)
                restarting, self._ice_restart = self._ice_restart, False
                try:
                    if restarting:
                        logger.info("participant %s: subscriber ICE restart", self.id)
                        try:
                            await begin_ice_restart(pc, controlling=True)
                        except ConnectionError as exc:  # not connected yet: a plain offer
                            logger.info("participant %s: no ICE restart: %s", self.id, exc)
                    offer = await pc.createOffer()
                    await pc.setLocalDescription(offer)
                    # mids are assigned by setLocalDescription
                    tracks = self.track_map()
                    loop = asyncio.get_running_loop()
                    self._answer = loop.create_future()
                    self._offered_at = loop.time()
                    await self.send(
                        {
                            "type": "offer",
                            "pc": "subscriber",
                            "sdp": announce_address(pc.localDescription.sdp, self.room.public_ip),
                            "tracks": tracks,
                        }
                    )
                    sdp = await asyncio.wait_for(self._answer, NEGOTIATION_TIMEOUT)
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
                    # (also a restart whose first offer was lost with a dropped socket)
                    finish_ice_restart(pc)
                    for transceiver in retiring:
                        if transceiver in self._retiring:
                            self._retiring.remove(transceiver)
                            self._free.append(transceiver)
                    for subscription in resuming:
                        if subscription in self._awaiting_answer:
                            self._awaiting_answer.remove(subscription)
                            subscription.resume()
                except _Resumed:
                    self._needs_negotiation = True
                    continue
                except TimeoutError:
                    logger.info("participant %s: no answer to subscriber offer", self.id)
                    await self.send(
                        {"type": "error", "code": "negotiation-timeout", "message": "no answer"}
                    )
                    return
                except Exception as exc:
                    logger.info("participant %s: subscriber negotiation failed: %s", self.id, exc)
                    await self.send(
                        {"type": "error", "code": "negotiation-failed", "message": str(exc)[:200]}
                    )
                    return
                finally:
                    self._answer = None

    def restarts_ice(self, sdp: str) -> bool:
        """Whether a publisher offer ``sdp`` restarts ICE (new credentials) on its
        connection (signaling rate-limits restarts: each gathers new sockets)."""
        pc = self.publisher_pc
        return pc is not None and ice_restart_offered(pc, sdp)

    def resumed(self) -> None:
        """The client's signaling came back on a new socket (docs/PROTOCOL.md, "Resuming
        a session"): a subscriber offer still waiting for its answer went to the old
        socket and may be lost, so it is made again."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(_Resumed())
            self.request_negotiation()
        elif self._awaiting_answer or self._retiring:
            self.request_negotiation()  # an offer that timed out while the socket was away

    def awaits_answer(self) -> bool:
        """Whether a subscriber offer is out, waiting for the client's answer."""
        return self._answer is not None and not self._answer.done()

    def subscriber_answer(self, sdp: str) -> None:
        if self._answer is None or self._answer.done():
            raise NegotiationError("no subscriber offer is waiting for an answer")
        self._answer.set_result(sdp)

    async def add_candidate(self, which: str, candidate: Any) -> None:
        pc = self.publisher_pc if which == "publisher" else self.subscriber_pc
        if pc is None:
            raise NegotiationError(f"no {which} connection")
        await pc.addIceCandidate(candidate)

    # -- client-offered subscriber connection (WHEP) ----------------------------------
    async def viewer_offer(self, sdp: str, codec: str) -> tuple[str, list[Subscription]]:
        """Answer a WHEP offer; returns the answer and one subscription per m-line."""
        pc = self._new_pc()
        self.subscriber_pc = pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise NegotiationError(f"cannot apply offer: {exc}") from exc
        subscriptions: list[Subscription] = []
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                pc.answer_one_codec(transceiver, codec)
            else:
                pc.red_follows_opus(transceiver)
            transceiver.direction = "sendonly"
            sender = transceiver.sender
            assert isinstance(sender, ForwardingSender)
            subscription = Subscription(new_id("SU"), self.id, sender, transceiver.kind)
            self.subscriptions[f"slot:{transceiver.mid}"] = subscription
            subscriptions.append(subscription)
        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            raise NegotiationError(f"cannot answer offer: {exc}") from exc
        return announce_address(pc.localDescription.sdp, self.room.public_ip), subscriptions

    # -- leaving ------------------------------------------------------------------
    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        for subscription in list(self.subscriptions.values()):
            subscription.close()
        self.subscriptions.clear()
        for publication in list(self.publications.values()):
            publication.close()
        for pc in (self.publisher_pc, self.subscriber_pc):
            if pc is not None:
                try:
                    # shielded: aiortc may be closing the connection itself (all DTLS
                    # transports closed); a second close() awaits aiortc's own future,
                    # and cancelling us (server shutdown) must not cancel that future,
                    # or aiortc's close task fails with InvalidStateError.
                    await asyncio.shield(pc.close())
                except Exception as exc:  # closing must never fail the room
                    logger.debug("participant %s: close failed: %s", self.id, exc)

    def media_silent_since(self, now: float, limit: float) -> bool:
        """Whether this endpoint should have sent media or feedback but did not.

        Only for endpoints without a signaling channel (WHIP, WHEP), whose
        failures only media can reveal.  An encoder always sends; a viewer that
        has received packets sends RTCP receiver reports about every second.
        """
        receivers: list[ForwardingReceiver] = []
        senders: list[ForwardingSender] = []
        for pc in (self.publisher_pc, self.subscriber_pc):
            for transceiver in pc.getTransceivers() if pc is not None else []:
                if (
                    isinstance(transceiver.receiver, ForwardingReceiver)
                    and self.transport == "whip"
                ):
                    receivers.append(transceiver.receiver)
                if isinstance(transceiver.sender, ForwardingSender) and self.transport == "whep":
                    senders.append(transceiver.sender)
        if receivers:
            return now - max(r.last_packet_time for r in receivers) > limit
        # receivers keep reporting on a stream after it pauses (RFC 3550)
        feeding = [s for s in senders if s.last_time is not None]
        if feeding:
            return now - max(s.last_feedback for s in senders) > limit
        return False

    def media_connected(self) -> bool:
        pcs = [pc for pc in (self.publisher_pc, self.subscriber_pc) if pc is not None]
        return bool(pcs) and any(pc.connectionState == "connected" for pc in pcs)
