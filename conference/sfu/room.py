"""Room: the live media session of one meeting, and the registry of rooms."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from .participant import Participant
from .program import ProgramFeed
from .publication import Publication
from .speaker import SpeakerDetector

logger = logging.getLogger(__name__)

SPEAKER_TICK = 0.1
WATCHDOG_TICK = 1.0
CONNECT_TIMEOUT = 20.0
MEDIA_SILENCE_TIMEOUT = 15.0

# WebSocket close codes for the reasons a room ends a session (docs/PROTOCOL.md)
CLOSE_CODES = {"replaced": 4409, "server-shutdown": 1001}


class RoomError(Exception):
    """A room refused an operation; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Room:
    """Participants of one meeting, their publications, speaker and program feed."""

    def __init__(
        self,
        meeting_id: str,
        max_participants: int = 100,
        video_codec: str = "VP8",
        on_empty: Any = None,
        public_ip: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        media_timeout: float = MEDIA_SILENCE_TIMEOUT,
    ) -> None:
        self.meeting_id = meeting_id
        # called before a moderator removes a participant (the server revokes its token)
        self.on_removed: Callable[[Participant], None] | None = None
        self.connect_timeout = connect_timeout
        self.media_timeout = media_timeout
        self.public_ip = public_ip
        self.max_participants = max_participants
        self.video_codec = video_codec
        self.participants: dict[str, Participant] = {}
        self.speaker = SpeakerDetector()
        self.program = ProgramFeed(self)
        self.created_at = time.time()
        self.closed = False
        self._on_empty = on_empty
        self._broadcast_handle: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = [
            asyncio.ensure_future(self._speaker_loop()),
            asyncio.ensure_future(self._watchdog_loop()),
        ]

    # -- membership ---------------------------------------------------------------
    async def join(self, participant: Participant) -> list[Participant]:
        """Add ``participant``; returns the sessions it replaced (same identity)."""
        if self.closed:
            raise RoomError("room-closed", "the meeting room is closed")
        replaced = [
            p
            for p in self.participants.values()
            if p.who.identity == participant.who.identity and p.transport == participant.transport
        ]
        if len(self.participants) - len(replaced) >= self.max_participants:
            raise RoomError("room-full", "the meeting room is full")
        for old in replaced:
            await self.leave(old.id, "replaced", close_room=False)
        self.participants[participant.id] = participant
        if participant.auto_subscribe:
            for publication in self.publications():
                participant.subscribe(publication)
        logger.info(
            "room %s: %s joined (%s, %s)",
            self.meeting_id,
            participant.id,
            participant.who.role,
            participant.transport,
        )
        self.schedule_broadcast()
        return replaced

    async def leave(
        self, participant_id: str, reason: str = "left", close_room: bool = True
    ) -> None:
        """Remove a participant; unless it asked to leave, tell it why and hang up."""
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return
        logger.info("room %s: %s left (%s)", self.meeting_id, participant_id, reason)
        if reason != "left":
            await participant.send({"type": "leave", "reason": reason})
        self.speaker.remove(participant_id)
        self.program.participant_left(participant)
        await participant.close()
        if reason != "left" and participant.disconnect is not None:
            await participant.disconnect(CLOSE_CODES.get(reason, 4410), reason)
        self.schedule_broadcast()
        if close_room and not self.participants:
            await self.close()

    async def remove(self, participant_id: str, reason: str = "removed") -> Participant | None:
        """Remove a participant on a moderator's order; its token cannot rejoin."""
        participant = self.participants.get(participant_id)
        if participant is not None:
            if self.on_removed is not None:
                self.on_removed(participant)
            await self.leave(participant.id, reason, close_room=False)
        return participant

    def block(self, participant_id: str, source: str, blocked: bool) -> bool:
        """Stop (or resume) forwarding a participant's publication: a moderator's mute."""
        participant = self.participants.get(participant_id)
        if participant is None:
            return False
        found = [p for p in participant.publications.values() if p.source == source]
        for publication in found:
            publication.blocked = blocked
        if found:
            self.schedule_broadcast()
        return bool(found)

    def get(self, participant_id: str) -> Participant | None:
        participant = self.participants.get(participant_id)
        if participant is None:
            participant = next(
                (p for p in self.participants.values() if p.who.identity == participant_id), None
            )
        return participant

    def publications(self) -> list[Publication]:
        return [pub for p in self.participants.values() for pub in p.publications.values()]

    def find_publication(self, publication_id: str) -> Publication | None:
        return next((p for p in self.publications() if p.id == publication_id), None)

    def adopt_video_codec(self, offered: list[str]) -> None:
        """Let the first video publisher decide the room's one video codec.

        A room forwards one video codec so that every point can receive every
        camera and the program feed can switch between them.  The configured
        default (VP8) holds unless the first video publisher cannot send it
        (FFmpeg's WHIP muxer and many hardware encoders send only H.264): then
        the room adopts that publisher's codec, and later publishers that
        offer it are answered with it too.
        """
        if not offered or self.video_codec.lower() in (name.lower() for name in offered):
            return
        if any(p.kind == "video" for p in self.publications()):
            logger.info(
                "room %s: a publisher offers only %s; the room forwards %s",
                self.meeting_id,
                ", ".join(offered),
                self.video_codec,
            )
            return
        logger.info("room %s: video codec %s (first publisher)", self.meeting_id, offered[0])
        self.video_codec = offered[0]

    # -- publications ------------------------------------------------------------
    def publication_added(self, publication: Publication) -> None:
        for participant in self.participants.values():
            if participant.auto_subscribe and participant.id != publication.participant_id:
                participant.subscribe(publication)
        self.program.refresh()
        self.schedule_broadcast()

    def publication_removed(self, publication: Publication) -> None:
        self.program.refresh()
        self.schedule_broadcast()

    # -- active speaker --------------------------------------------------------------
    def on_audio_level(self, participant_id: str, level: int) -> None:
        self.speaker.observe(participant_id, level, time.monotonic())

    async def _speaker_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(SPEAKER_TICK)
                if self.speaker.update(time.monotonic()):
                    current = self.speaker.current
                    logger.debug("room %s: speaker %s", self.meeting_id, current)
                    self.program.refresh()
                    await self.broadcast({"type": "speaker", "participant": current})
        except asyncio.CancelledError:
            pass

    async def _watchdog_loop(self) -> None:
        """Remove participants whose media never connected or went silent."""
        try:
            while True:
                await asyncio.sleep(WATCHDOG_TICK)
                now = time.monotonic()
                for participant in list(self.participants.values()):
                    reason = self._stale(participant, now)
                    if reason is not None:
                        await self.leave(participant.id, reason)
        except asyncio.CancelledError:
            pass

    def _stale(self, participant: Participant, now: float) -> str | None:
        age = time.time() - participant.joined_at
        for pc in (participant.publisher_pc, participant.subscriber_pc):
            if (
                pc is not None
                and pc.connectionState in ("new", "connecting")
                and age > self.connect_timeout
            ):
                return "connection-timeout"
        # a connected endpoint sends RTP or at least RTCP receiver reports
        # every second or so; aioice's consent check alone takes 30 s
        if participant.media_connected() and age > self.media_timeout:
            if participant.media_silent_since(now, self.media_timeout):
                return "media-timeout"
        return None

    # -- state to clients ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "type": "room",
            "meeting": self.meeting_id,
            "participants": [p.describe() for p in self.participants.values()],
            "speaker": self.speaker.current,
        }

    def schedule_broadcast(self) -> None:
        if self._broadcast_handle is not None or self.closed:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._broadcast_handle = None
            asyncio.ensure_future(self.broadcast(self.state()))

        self._broadcast_handle = loop.call_later(0.05, fire)

    async def broadcast(self, message: dict[str, Any]) -> None:
        for participant in list(self.participants.values()):
            await participant.send(message)

    async def close(self, reason: str = "room-closed") -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        if self._broadcast_handle is not None:
            self._broadcast_handle.cancel()
        for participant_id in list(self.participants):
            await self.leave(participant_id, reason, close_room=False)
        if self._on_empty is not None:
            self._on_empty(self)


class RoomRegistry:
    """The live rooms of this server, with its caps."""

    def __init__(
        self,
        max_rooms: int = 50,
        max_participants: int = 100,
        video_codec: str = "VP8",
        public_ip: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        media_timeout: float = MEDIA_SILENCE_TIMEOUT,
        on_removed: Callable[[Participant], None] | None = None,
    ) -> None:
        self.public_ip = public_ip
        self.on_removed = on_removed
        self.connect_timeout = connect_timeout
        self.media_timeout = media_timeout
        self.max_rooms = max_rooms
        self.max_participants = max_participants
        self.video_codec = video_codec
        self.rooms: dict[str, Room] = {}

    def get(self, meeting_id: str) -> Room | None:
        room = self.rooms.get(meeting_id)
        return room if room is not None and not room.closed else None

    def get_or_create(self, meeting_id: str) -> Room:
        room = self.get(meeting_id)
        if room is not None:
            return room
        if len(self.rooms) >= self.max_rooms:
            raise RoomError("server-full", "this server has reached its number of rooms")
        room = Room(
            meeting_id,
            self.max_participants,
            self.video_codec,
            on_empty=self._closed,
            public_ip=self.public_ip,
            connect_timeout=self.connect_timeout,
            media_timeout=self.media_timeout,
        )
        room.on_removed = self.on_removed
        self.rooms[meeting_id] = room
        return room

    def _closed(self, room: Room) -> None:
        if self.rooms.get(room.meeting_id) is room:
            del self.rooms[room.meeting_id]

    async def close(self, reason: str = "room-closed") -> None:
        for room in list(self.rooms.values()):
            await room.close(reason)
