"""A Python participant speaking the signaling protocol (docs/PROTOCOL.md).

Used by the tests, the benchmarks and the load tester.  Two ways to receive:

* ``decode=True``: stock aiortc peer connections; received tracks decode into
  frames (``client.tracks[publication_id]``), as a real viewer would see them.
* ``decode=False``: the forwarding peer connection of :mod:`conference.sfu.bridge`
  on the client side: packets are counted and checked, never decoded, so one
  process can simulate many points.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from ..sfu.bridge import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    RtpPacket,
    begin_ice_restart,
    finish_ice_restart,
    ice_restart_offered,
    local_ice_ufrag,
    wait_ice_restart,
)
from ..sfu.keyframe import is_keyframe

logger = logging.getLogger(__name__)


class ClientError(Exception):
    """The server answered with an error, or closed the connection."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class StreamCounter:
    """Packet-level reception of one stream (no decoding)."""

    kind: str
    codec: str = ""
    packets: int = 0
    bytes: int = 0
    keyframes: int = 0
    first_packet_at: float | None = None
    first_keyframe_at: float | None = None
    last_packet_at: float | None = None
    max_gap: float = 0.0
    highest_seq: int | None = None
    lost_estimate: int = 0
    arrivals: list[float] = field(default_factory=list)
    on_packet: Callable[[RtpPacket, float], None] | None = None

    def on_rtp(self, packet: RtpPacket, repaired: bool, layer: int = 0) -> None:
        now = time.monotonic()
        self.packets += 1
        self.bytes += len(packet.payload)
        if self.first_packet_at is None:
            self.first_packet_at = now
        if self.last_packet_at is not None:
            self.max_gap = max(self.max_gap, now - self.last_packet_at)
        self.last_packet_at = now
        if self.kind == "video" and packet.payload and is_keyframe(self.codec, packet.payload):
            self.keyframes += 1
            if self.first_keyframe_at is None:
                self.first_keyframe_at = now
        if self.on_packet is not None:
            self.on_packet(packet, now)

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, layer: int = 0) -> None:
        pass

    def on_bye(self) -> None:
        pass


class Client:
    """One participant: WebSocket signaling plus publisher/subscriber connections."""

    def __init__(
        self,
        base_url: str,
        meeting: str,
        token: str,
        *,
        decode: bool = True,
        ssl_context: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.meeting = meeting
        self.token = token
        self.decode = decode
        self.ssl = ssl_context
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.participant: dict[str, Any] = {}
        self.room: dict[str, Any] = {}
        self.speaker: str | None = None
        self.speaker_changes: list[tuple[float, str | None]] = []
        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self.tracks: dict[str, MediaStreamTrack] = {}  # publication id -> track (decode)
        self.counters: dict[str, StreamCounter] = {}  # publication id -> counter (no decode)
        self.track_map: dict[str, str] = {}  # mid -> publication id (or audio-slot:N)
        #: joined with audioSlots: slot -> the latest ``audio-slot`` message about it
        self.audio_slots: dict[int, dict[str, Any]] = {}
        self.audio_slot_changes = 0  # audio-slot messages so far
        self.errors: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.left_reason: str | None = None
        self.lobby: dict[str, Any] | None = None  # the "lobby" message, if it waited
        self.closed = asyncio.Event()
        self._answer: asyncio.Future[str] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.sources: dict[str, str] = {}  # publisher mid -> source
        #: the forwarding connections read received RTP from headers where a receiver
        #: has a header sink, and drop transport-cc feedback unread (`header_ingress`):
        #: the load tester's lean points
        self.headers_only = False
        self._closing = False
        self.resume_secret: str | None = None  # from `joined`, when joined with resume
        self._join: dict[str, Any] = {}

    # -- connection -----------------------------------------------------------------
    async def connect(
        self, auto_subscribe: bool = True, lobby_timeout: float = 600.0, **join: Any
    ) -> dict[str, Any]:
        """Join; in a scheduled meeting's lobby (``self.lobby``) wait up to `lobby_timeout`."""
        url = self.base_url.replace("http", "ws", 1) + f"/ws/meetings/{self.meeting}"
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, ssl=self.ssl, heartbeat=10)
        await self.send(
            {
                "type": "join",
                "version": 1,
                "token": self.token,
                "autoSubscribe": auto_subscribe,
                **join,
            }
        )
        msg = await self.ws.receive(timeout=10)
        while msg.type == aiohttp.WSMsgType.TEXT and '"lobby"' in msg.data:
            waiting = json.loads(msg.data)
            if waiting.get("type") != "lobby":
                break
            self.lobby = waiting  # a scheduled meeting not started yet, or a guest
            self.messages.append(waiting)
            msg = await self.ws.receive(timeout=lobby_timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            await self.close()
            raise ClientError("closed", f"connection closed: {self.ws.close_code}")
        joined = json.loads(msg.data)
        if joined.get("type") == "error":
            await self.close()
            raise ClientError(joined.get("code", "error"), joined.get("message", ""))
        self.participant = joined["participant"]
        self.room = joined["room"]
        self.resume_secret = joined.get("resume")
        self.audio_slots = {
            int(slot): {"slot": int(slot), "participant": participant}
            for slot, participant in (joined.get("audioSlots") or {}).items()
        }
        self._join = {"autoSubscribe": auto_subscribe, **join}
        self._reader = asyncio.ensure_future(self._read())
        return joined

    async def drop_signaling(self) -> None:
        """The WebSocket goes away without a ``leave`` (the page's network changed);
        the peer connections stay."""
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        if self.ws is not None:
            await self.ws.close()

    async def resume(self) -> dict[str, Any]:
        """Join again on a new WebSocket with the secret ``joined`` gave (after
        `drop_signaling`): within the server's ``resume_timeout`` the same session goes
        on (``resumed`` true: same participant, peer connections, publications); after
        it, a new session (``resumed`` false)."""
        assert self.session is not None
        await self.drop_signaling()
        self.closed = asyncio.Event()
        url = self.base_url.replace("http", "ws", 1) + f"/ws/meetings/{self.meeting}"
        self.ws = await self.session.ws_connect(url, ssl=self.ssl, heartbeat=10)
        join = {**self._join, "resume": self.resume_secret or True}
        await self.send({"type": "join", "version": 1, "token": self.token, **join})
        msg = await self.ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ClientError("closed", f"connection closed: {self.ws.close_code}")
        joined = json.loads(msg.data)
        if joined.get("type") != "joined":
            raise ClientError(joined.get("code", "error"), joined.get("message", ""))
        self.messages.append(joined)
        self.participant = joined["participant"]
        self.room = joined["room"]
        self.resume_secret = joined.get("resume")
        self._reader = asyncio.ensure_future(self._read())
        return joined

    @property
    def id(self) -> str:
        return str(self.participant.get("id", ""))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                self.messages.append(message)
                if self._closing:
                    continue
                try:
                    await self._handle(message)
                except Exception as exc:  # one bad message must not stop the reader
                    logger.warning(
                        "client %s: handling %s failed: %r", self.id, message.get("type"), exc
                    )
                    self.errors.append({"type": "client-error", "message": repr(exc)})
                async with self._changed:
                    self._changed.notify_all()
        except Exception as exc:  # a reader must not die silently
            logger.warning("client reader failed: %r", exc)
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "room":
            self.room = message
            self.speaker = message.get("speaker")
        elif kind == "speaker":
            self.speaker = message.get("participant")
            self.speaker_changes.append((time.monotonic(), self.speaker))
        elif kind == "answer" and self._answer is not None and not self._answer.done():
            self._answer.set_result(message["sdp"])
        elif kind == "offer" and message.get("pc") == "subscriber":
            await self._subscriber_offer(message)
        elif kind == "audio-slot" and isinstance(message.get("slot"), int):
            self.audio_slots[message["slot"]] = message
            self.audio_slot_changes += 1
        elif kind == "error":
            self.errors.append(message)
        elif kind == "leave":
            self.left_reason = message.get("reason")

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (re-checked on every message)."""

        async def check() -> None:
            async with self._changed:
                while not predicate():
                    await asyncio.wait_for(self._changed.wait(), 0.2)

        deadline = time.monotonic() + timeout
        while True:
            try:
                await asyncio.wait_for(check(), max(0.01, deadline - time.monotonic()))
                return
            except TimeoutError:
                if predicate():
                    return
                if time.monotonic() >= deadline:
                    raise

    async def request(
        self, message: dict[str, Any], reply: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send ``message`` and wait for the next message of type ``reply``."""
        since = len(self.messages)
        await self.send(message)
        return await self.wait_message(reply, timeout, since=since)

    async def wait_message(
        self, kind: str, timeout: float = 10.0, since: int | None = None
    ) -> dict[str, Any]:
        """Wait for a message of type ``kind`` received after ``since`` (default: now)."""
        start = len(self.messages) if since is None else since

        def found() -> bool:
            return any(m.get("type") == kind for m in self.messages[start:])

        await self.wait_for(found, timeout)
        return next(m for m in self.messages[start:] if m.get("type") == kind)

    # -- publishing ------------------------------------------------------------------
    async def publish(self, tracks: dict[str, MediaStreamTrack], codec: str | None = None) -> None:
        """Publish tracks by source ("microphone", "camera", "screen")."""
        if self.publisher is None:
            self.publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc = self.publisher
        added = []
        for source, track in tracks.items():
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if codec and track.kind == "video":
                _prefer_codec(transceiver, codec)
            added.append((transceiver, source))
        await self._publisher_negotiate(added)

    async def publish_forwarding(self, sources: dict[str, str], codec: str | None = None) -> Any:
        """Publish ``sources`` (source -> "audio" or "video") on a forwarding connection.

        Nothing is sent until the caller feeds the returned transceivers' senders
        (``ForwardingSender.send_rtp``): the load tester's lean points
        (conference/tools/loadtest/lean.py).  Returns {source: transceiver} once every
        sender has its negotiated parameters.
        """
        if self.publisher is None:
            self.publisher = ForwardingPeerConnection(headers_only=self.headers_only)
        pc = self.publisher
        added = []
        for source, kind in sources.items():
            transceiver = pc.addTransceiver(kind, direction="sendonly")
            if codec and kind == "video":
                _prefer_codec(transceiver, codec)
            added.append((transceiver, source))
        await self._publisher_negotiate(added)
        for transceiver, _ in added:
            sender = cast(ForwardingSender, transceiver.sender)
            await asyncio.wait_for(sender.ready.wait(), 15)
        return {source: transceiver for transceiver, source in added}

    async def _publisher_negotiate(self, added: list[tuple[Any, str]]) -> None:
        pc = self.publisher
        assert pc is not None
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        for transceiver, source in added:
            self.sources[transceiver.mid] = source
        self._answer = asyncio.get_running_loop().create_future()
        await self.send(
            {
                "type": "offer",
                "pc": "publisher",
                "sdp": pc.localDescription.sdp,
                "tracks": self.sources,
            }
        )
        sdp = await asyncio.wait_for(self._answer, 15)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def restart_ice(self) -> bool:
        """Restart ICE on both connections, as the room page does when its network
        changed: a publisher offer with new ICE credentials, and ``restart-ice`` for the
        subscriber connection (the server offers it again).  The DTLS sessions, tracks
        and the session itself stay.  True when both found their new path."""
        if self.publisher is not None:
            await begin_ice_restart(self.publisher, controlling=True)
            await self._publisher_negotiate([])
            finish_ice_restart(self.publisher)
        subscriber = self.subscriber
        if subscriber is not None:
            before = local_ice_ufrag(subscriber)
            await self.send({"type": "restart-ice", "pc": "subscriber"})
            # (the offer is answered once it is handled: then the ufrag is new)
            await self.wait_for(lambda: local_ice_ufrag(subscriber) != before, 15)
        ok = True
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                ok = await wait_ice_restart(pc) and ok
        return ok

    async def unpublish(self, source: str) -> None:
        """Stop sending ``source`` and tell the server (then renegotiate)."""
        await self.send({"type": "unpublish", "source": source})
        if self.publisher is None:
            return
        stopped = False
        for transceiver in self.publisher.getTransceivers():
            if self.sources.get(transceiver.mid or "") == source:
                transceiver.direction = "inactive"
                if transceiver.sender.track is not None:
                    transceiver.sender.track.stop()
                stopped = True
        if stopped:
            await self._publisher_negotiate([])

    async def mute(self, source: str, muted: bool) -> None:
        await self.send({"type": "mute", "source": source, "muted": muted})

    # -- subscribing -----------------------------------------------------------------
    async def _subscriber_offer(self, message: dict[str, Any]) -> None:
        if self.subscriber is None:
            if self.decode:
                self.subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            else:
                self.subscriber = ForwardingPeerConnection([], headers_only=self.headers_only)
        pc = self.subscriber
        # the offer names every mid that carries something now: a mid retired since
        # (its transceiver inactive, perhaps reused later) must not keep its old label
        self.track_map = dict(message.get("tracks") or {})
        restarting = ice_restart_offered(pc, message["sdp"])  # the server restarts ICE
        if restarting:
            await begin_ice_restart(pc, controlling=False)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        if restarting:
            finish_ice_restart(pc)
        for transceiver in pc.getTransceivers():
            publication = self.track_map.get(transceiver.mid or "")
            if publication is None:
                continue
            if self.decode:
                if transceiver.receiver.track is not None:
                    self.tracks[publication] = transceiver.receiver.track
            else:
                receiver = transceiver.receiver
                assert isinstance(receiver, ForwardingReceiver)
                counter = self.counters.get(publication)
                if counter is None:
                    media_codec = ForwardingPeerConnection.media_codec(transceiver)
                    codec = media_codec.name.lower() if media_codec else ""
                    counter = StreamCounter(kind=transceiver.kind, codec=codec)
                    self.counters[publication] = counter
                receiver.sink = counter
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        await self.send({"type": "answer", "pc": "subscriber", "sdp": pc.localDescription.sdp})

    async def subscribe(self, publication_ids: list[str]) -> None:
        await self.send({"type": "subscribe", "publications": publication_ids})

    async def unsubscribe(self, publication_ids: list[str]) -> None:
        await self.send({"type": "unsubscribe", "publications": publication_ids})

    def publications(self, source: str | None = None) -> list[dict[str, Any]]:
        """Publications of the others in the current room state."""
        found = []
        for participant in self.room.get("participants", []):
            if participant["id"] == self.id:
                continue
            for publication in participant["publications"]:
                if source is None or publication["source"] == source:
                    found.append(publication | {"participant": participant["id"]})
        return found

    # -- leaving -------------------------------------------------------------------
    async def leave(self) -> None:
        if self.ws is not None and not self.ws.closed:
            try:
                await self.send({"type": "leave"})
            except ConnectionError:
                pass
        await self.close()

    async def close(self) -> None:
        self._closing = True
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                await pc.close()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.session is not None:
            await self.session.close()


def _prefer_codec(transceiver: Any, codec: str) -> None:
    """Offer only ``codec`` (and its RTX) on a video transceiver."""
    from aiortc.rtcrtpsender import RTCRtpSender

    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.name.lower() in (codec.lower(), "rtx")])
