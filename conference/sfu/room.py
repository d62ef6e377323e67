"""Room: one meeting's live media session (no meeting rules: see `RoomEvents`); the registry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..core.jsontext import Encoded
from .audiogate import GATE_FROM, SOUND_LEVEL, AudioGate
from .audioslots import AudioSlots
from .bandwidth import BandwidthManager
from .participant import Participant
from .program import ProgramFeed
from .publication import Publication
from .speaker import SpeakerDetector
from .subscription import Subscription

logger = logging.getLogger(__name__)

SPEAKER_TICK = 0.1
WATCHDOG_TICK = 1.0
CONNECT_TIMEOUT = 20.0
MEDIA_SILENCE_TIMEOUT = 15.0


class RoomError(Exception):
    """A room refused an operation; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RoomEvents:
    """What a room asks and reports to the layer above it; these defaults do nothing.

    The media plane holds no meeting rules: the chaired briefing
    (conference/realtime/briefing.py) implements these to admit joins, hold
    microphones, tell the pages, and keep its state across rejoins.
    """

    #: the identity of the participant holding the floor (its microphone always passes
    #: the audio gate), if the layer above has such a rule
    floor: str | None = None

    def admit(self, participant: Participant) -> None:
        """Before a join: raise `RoomError` to refuse it."""

    def joined(self, participant: Participant) -> None:
        """After a join, before it subscribes to anything."""

    async def departed(self, participant: Participant, reason: str, message: str | None) -> None:
        """A participant is gone from the room; its connections close next."""

    def publication_added(self, publication: Publication) -> None:
        """A new publication, before anyone subscribes to it (it may be blocked here)."""

    async def speaker_changed(self, participant_id: str | None) -> None:
        """The active speaker changed."""

    def layers_changed(self, publication: Publication, active: list[bool]) -> None:
        """Dynacast: the simulcast layers anyone receives changed."""

    def changed(self) -> None:
        """Something a participant list would show changed."""

    def tick(self, now: float) -> None:
        """Once a second (``time.monotonic()``)."""

    def closed(self) -> None:
        """The room closed (every participant has left)."""


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
        self.events = RoomEvents()  # replaced by the layer above (a briefing)
        self.connect_timeout = connect_timeout
        self.media_timeout = media_timeout
        self.public_ip = public_ip
        self.max_participants = max_participants
        self.video_codec = video_codec
        self.participants: dict[str, Participant] = {}
        #: publications of participants on other nodes, relayed here (conference/cluster)
        self.remote: dict[str, Publication] = {}
        #: the participants on other nodes, as their nodes describe them: node -> list
        self.remote_members: dict[str, list[dict[str, Any]]] = {}
        #: the other nodes that record this meeting
        self.recorded_by: set[str] = set()
        self.speaker = SpeakerDetector()
        #: which microphones reach their subscribers (a few at a time, the chair always)
        self.audio_gate = AudioGate()
        #: which microphone each audio slot carries, for the pages that receive the
        #: microphones in slots (`.audioslots`), and their slot subscriptions by page
        self.audio_slots = AudioSlots()
        self._slot_pages: dict[str, list[Subscription]] = {}
        self._microphones = 0  # published here or relayed from another node
        #: participant id -> (moderates, identity): the audio gate's cache
        self._who_known: dict[str, tuple[bool, str]] = {}
        self.program = ProgramFeed(self)
        self.created_at = time.time()
        self.closed = False
        self.recording = False  # set by conference.recording while a recorder runs
        #: why the last recording stopped by itself (a full disk): reason, message, at
        self.recording_failure: dict[str, str] | None = None
        #: Observers (the recorder): ``observer(event, subject, detail)``, see `_notify`.
        self.observers: list[Callable[[str, Any, str | None], None]] = []
        self._on_empty = on_empty
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
        self.events.admit(participant)
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
        self.events.joined(participant)
        if participant.wants_audio_slots:
            self._open_audio_slots(participant)
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
        self.changed()
        return replaced

    async def leave(
        self,
        participant_id: str,
        reason: str = "left",
        close_room: bool = True,
        message: str | None = None,
    ) -> None:
        """Remove a participant; unless it asked to leave, its signaling is hung up."""
        participant = self.participants.pop(participant_id, None)
        if participant is None:
            return
        logger.info("room %s: %s left (%s)", self.meeting_id, participant_id, reason)
        self._notify("left", participant, reason)
        self.bandwidth.forget(participant_id)
        self._who_known.pop(participant_id, None)
        self._slot_pages.pop(participant_id, None)
        await self.events.departed(participant, reason, message)
        self.speaker.remove(participant_id)
        self.program.participant_left(participant)
        await participant.close()
        if reason != "left" and participant.disconnect is not None:
            await participant.disconnect(reason)
        self.changed()
        if close_room and not self.participants:
            await self.close()

    def block(self, participant_id: str, source: str, blocked: bool) -> bool:
        """Stop (or resume) forwarding a participant's publications from ``source``."""
        participant = self.participants.get(participant_id)
        if participant is None:
            return False
        found = [p for p in participant.publications.values() if p.source == source]
        for publication in found:
            publication.blocked = blocked
        return bool(found)

    def changed(self) -> None:
        """Report a change the participant list shows (a mute, the recording flag)."""
        self.events.changed()

    def get(self, participant_id: str) -> Participant | None:
        """A participant by its id, else by its identity (``pt:xa-a``), else by a bare
        identity (``xa-a``, as WHEP URLs had it before identity kinds) naming one kind."""
        participant = self.participants.get(participant_id)
        if participant is None:
            participant = next(
                (p for p in self.participants.values() if p.who.identity == participant_id), None
            )
        if participant is None and ":" not in participant_id:
            found = [p for p in self.participants.values() if p.who.subject == participant_id]
            if len({p.who.kind for p in found}) == 1:
                participant = found[0]
        return participant

    def publications(self) -> list[Publication]:
        local = [pub for p in self.participants.values() for pub in p.publications.values()]
        return [*local, *self.remote.values()] if self.remote else local

    def add_remote(self, publication: Publication) -> None:
        """A publication of another node's participant (its receiver is a relay stream)."""
        if publication.id in self.remote or self.closed:
            return
        self.remote[publication.id] = publication
        self.publication_added(publication)

    def set_remote_members(
        self, node: str, members: list[dict[str, Any]], recording: bool = False
    ) -> None:
        """Who is in this meeting on ``node`` now (an empty list: nobody, or node gone),
        and whether that node records the meeting."""
        if recording and members:
            self.recorded_by.add(node)
        else:
            self.recorded_by.discard(node)
        if members:
            self.remote_members[node] = members
        elif self.remote_members.pop(node, None) is None:
            return
        self._who_known.clear()  # (the audio gate's cache: learnt again)
        self.changed()

    def remote_participants(self) -> list[dict[str, Any]]:
        """The descriptions of the participants on other nodes (`set_remote_members`)."""
        return [member for members in self.remote_members.values() for member in members]

    def remote_member(self, participant_id: str) -> dict[str, Any] | None:
        """The description of a participant on another node."""
        return next((m for m in self.remote_participants() if m.get("id") == participant_id), None)

    def remove_remote(self, publication_id: str) -> None:
        publication = self.remote.pop(publication_id, None)
        if publication is not None:
            publication.close()
            self.publication_removed(publication)

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
    def _admit_audio(self, publication: Publication, level: int | None) -> bool:
        """`Publication.gate` of every microphone: the room's `AudioGate`, except that a
        moderator's microphone (the chair's hall) and the floor holder's always reach
        everyone.  A microphone that goes out has an audio slot (`.audioslots`) while
        some page receives the microphones in slots."""
        if self._microphones <= GATE_FROM:  # a small meeting: everyone is heard as sent
            admitted = True
            now = None
        else:
            now = time.monotonic()
            known = self._who(publication.participant_id)
            if known is not None and (known[0] or known[1] == self.events.floor):
                admitted = True
            else:
                admitted = self.audio_gate.admit(publication.id, level, now)
        if admitted and self._slot_pages and publication.in_audio_slots:
            sound = level is None or level < SOUND_LEVEL  # no level: as the gate, open
            slot, moved = self.audio_slots.place(
                publication.id, time.monotonic() if now is None else now, sound
            )
            if moved:
                assert slot is not None
                self._switch_slot(slot, publication)
        return admitted

    # -- audio slots ---------------------------------------------------------------
    def _open_audio_slots(self, participant: Participant) -> None:
        """Give ``participant`` its slot subscriptions, each on the microphone its slot
        carries now (its own microphone: nothing)."""
        subscriptions = participant.open_audio_slots(self.audio_slots.count)
        if not subscriptions:
            return
        self._slot_pages[participant.id] = subscriptions
        for slot, publication in self._carried_for(participant.id):
            subscriptions[slot].switch_to(publication)

    def _carried_for(self, participant_id: str) -> list[tuple[int, Publication]]:
        """(slot, microphone) of the slots in use, as ``participant_id``'s page hears them
        (its own microphone's slot: left out)."""
        carried = []
        for slot, key in enumerate(self.audio_slots.keys):
            publication = self.find_publication(key) if key is not None else None
            if publication is not None and publication.participant_id != participant_id:
                carried.append((slot, publication))
        return carried

    def _switch_slot(self, slot: int, publication: Publication | None) -> None:
        """Slot ``slot`` carries ``publication`` from now on (None: nobody, its microphone
        is gone), on every page (its own page hears nothing there); each page is told
        whose voice the slot carries."""
        nobody = Encoded(
            {"type": "audio-slot", "slot": slot, "publication": None, "participant": None}
        )
        message = nobody
        if publication is not None:
            message = Encoded(
                nobody | {"publication": publication.id, "participant": publication.participant_id}
            )
        for participant_id, subscriptions in self._slot_pages.items():
            own = publication is None or publication.participant_id == participant_id
            subscriptions[slot].switch_to(None if own else publication)
            participant = self.participants.get(participant_id)
            if participant is not None and participant.slots_told:
                participant.tell(nobody if own else message)

    def slot_holders(self, participant: Participant) -> dict[str, str]:
        """Slot (as a string, a JSON key) -> the participant whose microphone it carries
        for ``participant``'s page (not its own)."""
        return {str(slot): p.participant_id for slot, p in self._carried_for(participant.id)}

    def _who(self, participant_id: str) -> tuple[bool, str] | None:
        """(moderates, identity) of a participant here or on another node (None: not
        known yet), kept for the audio gate."""
        known = self._who_known.get(participant_id)
        if known is not None:
            return known
        participant = self.participants.get(participant_id)
        if participant is not None:
            known = (participant.who.moderate, participant.who.identity)
        else:  # on another node: known once its node's list has arrived
            member = self.remote_member(participant_id) if self.remote_members else None
            if member is None:
                return None
            known = (member.get("moderator") is True, str(member.get("identity")))
        self._who_known[participant_id] = known
        return known

    def publication_added(self, publication: Publication) -> None:
        if publication.source == "microphone":
            publication.gate = self._admit_audio
            self._microphones += 1
        self.events.publication_added(publication)  # may block it before anyone receives it
        for participant in self.participants.values():
            if participant.auto_subscribe and participant.id != publication.participant_id:
                participant.subscribe(publication)
        self.program.refresh()
        self.changed()
        self._notify("publication-added", publication)

    def publication_removed(self, publication: Publication) -> None:
        if publication.source == "microphone":
            self._microphones -= 1
        self.audio_gate.forget(publication.id)
        freed = self.audio_slots.forget(publication.id)
        if freed is not None:
            self._switch_slot(freed, None)
        self.bandwidth.publication_gone(publication.id)
        self._notify("publication-removed", publication)
        self.program.refresh()
        self.changed()

    def _layers_changed(self, publication: Publication, active: list[bool]) -> None:
        self.events.layers_changed(publication, active)

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
                    await self.events.speaker_changed(current)
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
                self.events.tick(now)
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

    async def close(self, reason: str = "room-closed") -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        for participant_id in list(self.participants):
            await self.leave(participant_id, reason, close_room=False)
        for publication_id in list(self.remote):
            self.remove_remote(publication_id)
        self.events.closed()
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
    ) -> None:
        self.public_ip = public_ip
        self.connect_timeout = connect_timeout
        self.media_timeout = media_timeout
        self.max_rooms = max_rooms
        self.max_participants = max_participants
        self.video_codec = video_codec
        self.rooms: dict[str, Room] = {}
        #: called with every new room (conference/realtime/briefing.py opens its briefing)
        self.on_created: Callable[[Room], None] | None = None

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
        self.rooms[meeting_id] = room
        if self.on_created is not None:
            self.on_created(room)
        return room

    def _closed(self, room: Room) -> None:
        if self.rooms.get(room.meeting_id) is room:
            del self.rooms[room.meeting_id]

    async def close(self, reason: str = "room-closed") -> None:
        for room in list(self.rooms.values()):
            await room.close(reason)
