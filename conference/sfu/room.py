"""Room: the live media session of one meeting, and the registry of rooms."""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from typing import Any

from .bandwidth import BandwidthManager
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

# the chaired briefing (docs/PROTOCOL.md, "Chairing the meeting")
REJOIN_GRACE = 30.0  # a dropped point keeps its raised hand and the floor this long
CHAT_HISTORY = 50  # messages sent to a page when it joins
MAX_CHAT_CHARS = 1000
CHAT_RATE = (10, 10.0)  # at most 10 messages in 10 s per participant
MAX_REASON_CHARS = 200
ENDED_MEMORY = 12 * 3600.0  # an ended meeting refuses joins this long (in memory)


def printable_text(text: str, limit: int, multiline: bool = True) -> str:
    """User text made safe to show and log: NFC, no control or bidi-override characters.

    Pages render it as text (never HTML); this removes what could still mislead a
    reader (a right-to-left override reversing a name, invisible characters) and
    collapses blank lines.  Raises ValueError when nothing is left or it is too long.
    """
    text = unicodedata.normalize("NFC", text)
    kept = []
    for char in text:
        if char == "\n" and multiline:
            kept.append(char)
        elif char in "\t\n\r":
            kept.append(" ")
        elif unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(char)
    lines = [line.rstrip() for line in "".join(kept).strip().split("\n")]
    cleaned = "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))
    if not cleaned:
        raise ValueError("the text is empty")
    if len(cleaned) > limit:
        raise ValueError(f"the text is longer than {limit} characters")
    return cleaned


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
        self.recording = False  # set by conference.recording while a recorder runs
        #: Observers (the recorder): ``observer(event, subject, detail)``, see `_notify`.
        self.observers: list[Callable[[str, Any, str | None], None]] = []
        self.ended = False  # the chair ended the meeting for everyone
        # the chaired briefing, by identity so that it survives a point's rejoin
        self.locked = False
        self.floor: str | None = None  # identity of the floor holder
        self.hands: list[tuple[str, float]] = []  # (identity, time raised), in order
        self.held: set[str] = set()  # identities whose microphone the chair holds muted
        self.invited: set[str] = set()  # held identities asked to unmute (consent lifts it)
        self.admitted: set[str] = set()  # identities that joined (may rejoin a locked room)
        self.absent_since: dict[str, float] = {}  # identity -> monotonic time it left
        self.chat: deque[dict[str, Any]] = deque(maxlen=CHAT_HISTORY)
        self._chat_times: dict[str, deque[float]] = {}
        self._chat_seq = 0
        self._on_empty = on_empty
        self._broadcast_handle: asyncio.TimerHandle | None = None
        self.bandwidth = BandwidthManager(self)
        self.bandwidth.on_layers = self._layers_changed
        self._tasks: list[asyncio.Task[None]] = [
            asyncio.ensure_future(self._speaker_loop()),
            asyncio.ensure_future(self._watchdog_loop()),
            asyncio.ensure_future(self.bandwidth.run()),
        ]

    # -- membership ---------------------------------------------------------------
    async def join(self, participant: Participant) -> list[Participant]:
        """Add ``participant``; returns the sessions it replaced (same identity)."""
        if self.closed:
            raise RoomError("room-closed", "the meeting room is closed")
        identity = participant.who.identity
        if self.locked and not participant.who.moderate and identity not in self.admitted:
            raise RoomError("room-locked", "the chair has locked the meeting")
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
        self.admitted.add(identity)
        self.absent_since.pop(identity, None)
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
        self._notify("joined", participant)
        self.schedule_broadcast()
        return replaced

    async def leave(
        self,
        participant_id: str,
        reason: str = "left",
        close_room: bool = True,
        message: str | None = None,
    ) -> None:
        """Remove a participant; unless it asked to leave, tell it why and hang up."""
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return
        logger.info("room %s: %s left (%s)", self.meeting_id, participant_id, reason)
        self._notify("left", participant, reason)
        identity = participant.who.identity
        if not any(p.who.identity == identity for p in self.participants.values()):
            self.absent_since[identity] = time.monotonic()
        self._chat_times.pop(participant_id, None)
        self.bandwidth.forget(participant_id)
        if reason != "left":
            notice: dict[str, Any] = {"type": "leave", "reason": reason}
            if message:
                notice["message"] = message
            await participant.send(notice)
        self.speaker.remove(participant_id)
        self.program.participant_left(participant)
        await participant.close()
        if reason != "left" and participant.disconnect is not None:
            await participant.disconnect(CLOSE_CODES.get(reason, 4410), reason)
        self.schedule_broadcast()
        if close_room and not self.participants:
            await self.close()

    async def remove(
        self, participant_id: str, reason: str = "removed", message: str | None = None
    ) -> Participant | None:
        """Remove a participant on a moderator's order; its token cannot rejoin."""
        participant = self.participants.get(participant_id)
        if participant is not None:
            if self.on_removed is not None:
                self.on_removed(participant)
            await self.leave(participant.id, reason, close_room=False, message=message)
            self._forget(participant.who.identity)
        return participant

    def block(self, participant_id: str, source: str, blocked: bool) -> bool:
        """Stop (or resume) forwarding a participant's publication: a moderator's mute.

        A held microphone stays held across the point's rejoins (by identity).
        """
        participant = self.participants.get(participant_id)
        if participant is None:
            return False
        found = [p for p in participant.publications.values() if p.source == source]
        for publication in found:
            publication.blocked = blocked
        if source == "microphone" and found:
            if blocked:
                self.held.add(participant.who.identity)
            else:
                self.held.discard(participant.who.identity)
                self.invited.discard(participant.who.identity)
        if found:
            self.schedule_broadcast()
        return bool(found)

    # -- chairing ----------------------------------------------------------------------
    async def hold(self, identity: str, held: bool) -> None:
        """Hold (or release) the microphones of ``identity``; tell each changed session."""
        if held:
            self.held.add(identity)
        else:
            self.held.discard(identity)
            self.invited.discard(identity)
        for participant in list(self.participants.values()):
            if participant.who.identity != identity:
                continue
            changed = False
            for publication in participant.publications.values():
                if publication.source == "microphone" and publication.blocked != held:
                    publication.blocked = held
                    changed = True
            if changed:
                await participant.send(
                    {"type": "muted-by-moderator", "source": "microphone", "muted": held}
                )
        self.schedule_broadcast()

    def _chair_side(self, identity: str) -> bool:
        """The chair's own sessions (moderate grant) are never muted by the room."""
        return any(p.who.moderate for p in self.participants.values() if p.who.identity == identity)

    async def give_floor(self, participant: Participant) -> None:
        """``participant`` speaks: released and shown large; every other point is held."""
        identity = participant.who.identity
        self.floor = identity
        self.hands = [hand for hand in self.hands if hand[0] != identity]
        for other in {p.who.identity for p in self.participants.values()}:
            if other != identity and not self._chair_side(other):
                await self.hold(other, True)
        await self.hold(identity, False)
        await self.broadcast({"type": "floor", "participant": participant.id})
        self.program.refresh()

    async def take_floor(self) -> None:
        """End the floor: its holder is held again (unless it is the chair side)."""
        identity, self.floor = self.floor, None
        if identity is not None and not self._chair_side(identity):
            await self.hold(identity, True)
        await self.broadcast({"type": "floor", "participant": None})
        self.schedule_broadcast()

    async def mute_all(self) -> None:
        """Hold every microphone but the chair side's; ends the floor."""
        if self.floor is not None:
            self.floor = None
            await self.broadcast({"type": "floor", "participant": None})
        for identity in {p.who.identity for p in self.participants.values()}:
            if not self._chair_side(identity):
                await self.hold(identity, True)

    def raise_hand(self, identity: str, raised: bool) -> bool:
        """Add to (or take off) the queue of requests to speak; False if nothing changed."""
        queued = any(hand[0] == identity for hand in self.hands)
        if raised == queued:
            return False
        if raised:
            self.hands.append((identity, time.time()))
        else:
            self.hands = [hand for hand in self.hands if hand[0] != identity]
        self.schedule_broadcast()
        return True

    def add_chat(self, participant: Participant, text: str) -> dict[str, Any]:
        """Record a chat message (rate-limited per session); returns it for broadcast."""
        limit, window = CHAT_RATE
        now = time.monotonic()
        times = self._chat_times.setdefault(participant.id, deque())
        while times and now - times[0] > window:
            times.popleft()
        if len(times) >= limit:
            raise RoomError("rate-limited", f"at most {limit} chat messages in {window:.0f} s")
        times.append(now)
        self._chat_seq += 1
        message = {
            "type": "chat",
            "id": self._chat_seq,
            "participant": participant.id,
            "identity": participant.who.identity,
            "name": participant.who.name,
            "role": participant.who.role,
            "text": printable_text(text, MAX_CHAT_CHARS),
            "at": int(time.time() * 1000),
        }
        self.chat.append(message)
        return message

    async def end(self) -> None:
        """The chair ends the meeting for everyone; the meeting refuses joins from now on."""
        self.ended = True
        await self.close("meeting-ended")

    def _forget(self, identity: str) -> None:
        """Drop the chairing state of an identity that is gone for good."""
        self.hands = [hand for hand in self.hands if hand[0] != identity]
        if self.floor == identity:
            self.floor = None
        self.invited.discard(identity)
        self.admitted.discard(identity)
        self.absent_since.pop(identity, None)
        self.schedule_broadcast()

    def _identity_ids(self) -> dict[str, str]:
        """identity -> participant id of its browser session (else any session)."""
        ids: dict[str, str] = {}
        for participant in self.participants.values():
            if participant.transport == "websocket" or participant.who.identity not in ids:
                ids[participant.who.identity] = participant.id
        return ids

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
        owner = self.participants.get(publication.participant_id)
        if publication.source == "microphone" and owner is not None:
            identity = owner.who.identity
            if (
                self.floor is not None
                and identity != self.floor
                and not owner.who.moderate
                and identity not in self.held
            ):
                self.held.add(identity)  # a point joining during the floor is held too
            if identity in self.held:
                publication.blocked = True
                asyncio.ensure_future(
                    owner.send(
                        {"type": "muted-by-moderator", "source": "microphone", "muted": True}
                    )
                )
        for participant in self.participants.values():
            if participant.auto_subscribe and participant.id != publication.participant_id:
                participant.subscribe(publication)
        self.program.refresh()
        self.schedule_broadcast()
        self._notify("publication-added", publication)

    def publication_removed(self, publication: Publication) -> None:
        self.bandwidth.publication_gone(publication.id)
        self._notify("publication-removed", publication)
        self.program.refresh()
        self.schedule_broadcast()

    def _layers_changed(self, publication: Publication, active: list[bool]) -> None:
        """Dynacast: tell the publisher which simulcast layers to encode."""
        owner = self.participants.get(publication.participant_id)
        if owner is not None:
            message = {
                "type": "layers",
                "publication": publication.id,
                "rids": [layer.rid for layer in publication.layers],
                "active": active,
            }
            asyncio.ensure_future(owner.send(message))

    def _notify(self, event: str, subject: Any, detail: str | None = None) -> None:
        """Tell the observers (joined, left, publication-added/-removed, speaker, closed).

        An observer's exception is logged and never reaches the room.
        """
        for observer in list(self.observers):
            try:
                observer(event, subject, detail)
            except Exception:
                logger.exception("room %s: observer failed on %s", self.meeting_id, event)

    # -- active speaker --------------------------------------------------------------
    def on_audio_level(self, participant_id: str, level: int) -> None:
        self.speaker.observe(participant_id, level, time.monotonic())

    async def _speaker_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(SPEAKER_TICK)
                if self.speaker.update(time.monotonic()):
                    current = self.speaker.current
                    self._notify("speaker", current)
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
                for identity, since in list(self.absent_since.items()):
                    if now - since > REJOIN_GRACE:
                        admitted = identity in self.admitted
                        self._forget(identity)
                        if admitted:  # gone, but it may still rejoin a locked room
                            self.admitted.add(identity)
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
        ids = self._identity_ids()
        hands = [identity for identity, _ in self.hands if identity in ids]
        return {
            "type": "room",
            "meeting": self.meeting_id,
            "participants": [
                p.describe()
                | {
                    "moderator": p.who.moderate,
                    "hand": p.who.identity in hands,
                    "floor": p.who.identity == self.floor,
                }
                for p in self.participants.values()
            ],
            "speaker": self.speaker.current,
            "recording": self.recording,
            "floor": ids.get(self.floor) if self.floor is not None else None,
            "hands": [
                {"participant": ids[identity], "at": int(at * 1000)}
                for identity, at in self.hands
                if identity in ids
            ],
            "locked": self.locked,
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
        self._notify("closed", self)
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
        self.ended: dict[str, float] = {}  # meeting id -> monotonic time the chair ended it
        #: called with every new room (conference/lobby.py observes it)
        self.on_created: Callable[[Room], None] | None = None

    def get(self, meeting_id: str) -> Room | None:
        room = self.rooms.get(meeting_id)
        return room if room is not None and not room.closed else None

    def get_or_create(self, meeting_id: str) -> Room:
        room = self.get(meeting_id)
        if room is not None:
            return room
        now = time.monotonic()
        for ended, at in list(self.ended.items()):
            if now - at > ENDED_MEMORY:
                del self.ended[ended]
        if meeting_id in self.ended:
            raise RoomError("meeting-ended", "the chair has ended this meeting")
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
        if self.on_created is not None:
            self.on_created(room)  # the lobby's attendance and end hooks (conference/lobby.py)
        return room

    def _closed(self, room: Room) -> None:
        if room.ended:
            self.ended[room.meeting_id] = time.monotonic()
        if self.rooms.get(room.meeting_id) is room:
            del self.rooms[room.meeting_id]

    async def close(self, reason: str = "room-closed") -> None:
        for room in list(self.rooms.values()):
            await room.close(reason)
