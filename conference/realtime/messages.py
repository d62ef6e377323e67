"""The messages of a joined WebSocket session: a table of small handlers, one per type.

A handler checks the message's shape (`ProtocolError`: ``bad-message`` and the like)
and calls the media plane (`Participant`, `Room`) or the briefing's rules
(conference/realtime/briefing.py), which refuse with `RoomError` or
`PermissionError`.  Handlers marked ``chair=True`` need the moderate grant.  A
handler returns True when the session ends (``leave``, ``end-meeting``).  The
messages are in docs/PROTOCOL.md.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCIceCandidate

from ..recording import recorder as recording
from ..sfu.bandwidth import VIEW_SIZES
from ..sfu.bridge import ice_candidate_from_json
from ..sfu.participant import Participant
from ..sfu.publication import SOURCES
from .briefing import Briefing, Chair
from .lobby import LOBBY_MESSAGES
from .lobby import handle_message as lobby_message
from .ratelimit import MessageRates

logger = logging.getLogger(__name__)

MAX_CANDIDATE_CHARS = 1024
#: link profiles (the page's names): the highest layer a point receives and sends
PROFILES = ("high", "low", "audio")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Session:
    """A joined WebSocket session: its participant, its room's briefing, its sender."""

    participant: Participant
    briefing: Briefing
    send: Callable[[dict[str, Any]], Awaitable[None]]
    rates: MessageRates = field(default_factory=MessageRates)


Handler = Callable[[Session, dict[str, Any]], Awaitable[bool | None]]
HANDLERS: dict[str, Handler] = {}


def handles(*kinds: str, chair: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler for message types ``kinds`` (the chair's only if ``chair``)."""

    def register(handler: Handler) -> Handler:
        async def checked(session: Session, message: dict[str, Any]) -> bool | None:
            if chair:
                chair_only(session.participant)
            return await handler(session, message)

        for kind in kinds:
            HANDLERS[kind] = checked
        return handler

    return register


async def dispatch(session: Session, message: dict[str, Any]) -> bool:
    """Handle one message (a dict with a string ``type``); True when the session ends."""
    kind = message["type"]
    handler = HANDLERS.get(kind)
    if handler is None:
        raise ProtocolError("unknown-type", f"unknown message type '{kind[:40]}'")
    # an answer to the server's own offer is as frequent as the server makes offers
    # (participant.OFFER_SPACING): never refused for its rate, or the subscriber
    # connection would wait for it forever; any other answer is an error anyway
    if not (kind == "answer" and session.participant.awaits_answer()):
        refusal = session.rates.refusal(kind, time.monotonic())
        if refusal is not None:
            raise ProtocolError("rate-limited", refusal)
    return bool(await handler(session, message))


def chair_only(participant: Participant) -> None:
    if not participant.who.moderate:
        raise PermissionError("only a moderator (the chair) may do this")


# -- checks of a message's fields ---------------------------------------------------------
#: a publisher's offer: its own camera, microphone and screen (an answer to the server's
#: offer has one m-line per track the page receives: only the socket bounds it)
PUBLISHER_SDP_LIMIT = 200_000


def text_field(message: dict[str, Any], key: str, limit: int | None = None) -> str:
    """A non-empty string; at most ``limit`` characters (None: what the socket's
    ``max_message_bytes`` lets through: an SDP grows ~1.7 KB per track, and a province's
    chair receives a hundred cameras and 150 microphones)."""
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError("bad-message", f"'{key}' must be a non-empty string")
    if limit is not None and len(value) > limit:
        raise ProtocolError("bad-message", f"'{key}' is longer than {limit} characters")
    return value


def source_field(message: dict[str, Any], what: str = "'source'") -> str:
    source = message.get("source")
    if source not in SOURCES:
        raise ProtocolError("bad-message", f"{what} must be camera, microphone or screen")
    return str(source)


def profile_field(message: dict[str, Any]) -> str:
    profile = message.get("profile")
    if profile not in PROFILES:
        raise ProtocolError("bad-message", "'profile' must be high, low or audio")
    return str(profile)


def mute_fields(message: dict[str, Any]) -> tuple[str, bool]:
    source, muted = message.get("source"), message.get("muted")
    if source not in SOURCES or not isinstance(muted, bool):
        raise ProtocolError(
            "bad-message", f"{message['type']} needs 'source' and a boolean 'muted'"
        )
    return str(source), muted


def target(session: Session, message: dict[str, Any]) -> Participant | dict[str, Any]:
    """The participant a chair's message names: a session of this node, or the
    description of one on another node of the meeting."""
    target_id = message.get("participant")
    if isinstance(target_id, str):
        found = session.briefing.room.participants.get(target_id)
        if found is not None:
            return found
        remote = session.briefing.remote_member(target_id)
        if remote is not None:
            return remote
    raise ProtocolError("unknown-participant", "no such participant in the meeting")


def candidate_field(data: dict[str, Any]) -> RTCIceCandidate | None:
    """A browser's ``RTCIceCandidateInit``, checked beyond what aiortc and aioice check."""
    line = data.get("candidate")
    if isinstance(line, str) and len(line) > MAX_CANDIDATE_CHARS:
        raise ValueError("malformed ICE candidate: too long")
    try:
        candidate = ice_candidate_from_json(data)
    except AssertionError as exc:  # aiortc's candidate_from_sdp asserts on short lines
        raise ValueError("malformed ICE candidate") from exc
    if candidate is None:
        return None
    problem = None
    if candidate.protocol.lower() not in ("udp", "tcp"):
        problem = "transport must be udp or tcp"
    elif not 1 <= candidate.port <= 65535:
        problem = "port must be 1-65535"
    elif not 1 <= candidate.component <= 256:
        problem = "component must be 1-256"
    elif not 0 <= candidate.priority < 2**32:
        problem = "priority must be a 32-bit unsigned integer"
    elif candidate.type not in ("host", "srflx", "prflx", "relay"):
        problem = "type must be host, srflx, prflx or relay"
    elif not _candidate_host(candidate.ip):
        problem = "address must be an IP address or an mDNS .local name"
    elif candidate.relatedPort is not None and not 0 <= candidate.relatedPort <= 65535:
        problem = "rport must be 0-65535"
    if problem is not None:
        raise ValueError(f"malformed ICE candidate: {problem}")
    return candidate


def _candidate_host(host: str) -> bool:
    if host.endswith(".local"):  # browsers hide their addresses behind mDNS names
        return 6 < len(host) <= 255
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- media: negotiation and what a page receives ---------------------------------------------
@handles("offer")
async def offer(session: Session, message: dict[str, Any]) -> None:
    if message.get("pc", "publisher") != "publisher":
        raise ProtocolError("bad-message", "clients offer only on the publisher connection")
    sdp = text_field(message, "sdp", limit=PUBLISHER_SDP_LIMIT)
    tracks = message.get("tracks") or {}
    if not isinstance(tracks, dict) or not all(
        isinstance(k, str) and v in SOURCES for k, v in tracks.items()
    ):
        raise ProtocolError("bad-message", "'tracks' maps mid to camera, microphone or screen")
    if not sdp.startswith("v=0"):
        raise ProtocolError("bad-request", "the offer is not an SDP offer")
    if "\nm=" not in sdp:
        raise ProtocolError("bad-request", "the offer sends no audio or video")
    if session.participant.restarts_ice(sdp):
        # an ICE restart gathers new sockets: limited as `restart-ice` is
        refusal = session.rates.refusal("restart-ice", time.monotonic())
        if refusal is not None:
            raise ProtocolError("rate-limited", refusal)
    answer = await session.participant.publisher_offer(sdp, tracks)
    await session.send({"type": "answer", "pc": "publisher", "sdp": answer})


@handles("answer")
async def answer(session: Session, message: dict[str, Any]) -> None:
    if message.get("pc") != "subscriber":
        raise ProtocolError("bad-message", "clients answer only on the subscriber connection")
    session.participant.subscriber_answer(text_field(message, "sdp"))


@handles("restart-ice")
async def restart_ice(session: Session, message: dict[str, Any]) -> None:
    if message.get("pc") != "subscriber":
        raise ProtocolError(
            "bad-message",
            "only the subscriber connection is restarted on request; the publisher "
            "connection restarts with an offer that has new ICE credentials",
        )
    session.participant.restart_subscriber_ice()


@handles("candidate")
async def candidate(session: Session, message: dict[str, Any]) -> None:
    which = message.get("pc")
    if which not in ("publisher", "subscriber"):
        raise ProtocolError("bad-message", "'pc' must be publisher or subscriber")
    data = message.get("candidate")
    if not isinstance(data, dict):
        raise ProtocolError("bad-message", "'candidate' must be an object")
    parsed = candidate_field(data)
    if parsed is None:
        return
    participant = session.participant
    pc = participant.publisher_pc if which == "publisher" else participant.subscriber_pc
    if pc is not None:
        transceivers = pc.getTransceivers()
        if parsed.sdpMid is not None:
            known = any(t.mid == parsed.sdpMid for t in transceivers)
        else:
            known = 0 <= (parsed.sdpMLineIndex or 0) < len(transceivers)
        if not known:
            raise ValueError(
                f"the candidate's sdpMid/sdpMLineIndex names no media section of the {which}"
            )
    await participant.add_candidate(which, parsed)


@handles("subscribe", "unsubscribe")
async def subscribe(session: Session, message: dict[str, Any]) -> None:
    ids = message.get("publications")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ProtocolError("bad-message", "'publications' must be a list of ids")
    participant, room = session.participant, session.briefing.room
    unknown = []
    for publication_id in ids[:200]:
        if message["type"] == "subscribe":
            publication = room.find_publication(publication_id)
            if publication is None:
                unknown.append(publication_id)
            elif participant.audio_slots and publication.in_audio_slots:
                continue  # it comes in an audio slot while it is heard
            elif participant.subscribe(publication) is None:
                raise PermissionError("this token may not subscribe to that publication")
        elif not participant.unsubscribe(publication_id):
            publication = room.find_publication(publication_id)
            if not (participant.audio_slots and publication and publication.in_audio_slots):
                unknown.append(publication_id)
    if unknown:
        raise ProtocolError("unknown-publication", f"unknown publications: {unknown[:10]}")


@handles("view")
async def view(session: Session, message: dict[str, Any]) -> None:
    videos = message.get("videos")
    if (
        not isinstance(videos, dict)
        or len(videos) > 200
        or not all(isinstance(k, str) and v in VIEW_SIZES for k, v in videos.items())
    ):
        raise ProtocolError(
            "bad-message", "'videos' maps publication ids to large, medium or small"
        )
    session.briefing.room.bandwidth.set_view(session.participant, dict(videos))


@handles("profile")
async def profile(session: Session, message: dict[str, Any]) -> None:
    chosen = profile_field(message)
    if session.participant.profile != chosen:
        session.participant.profile = chosen
        session.briefing.changed()


@handles("unpublish")
async def unpublish(session: Session, message: dict[str, Any]) -> None:
    source = source_field(message)
    if not session.participant.unpublish(source):
        raise ProtocolError("unknown-publication", f"nothing published from {source}")


@handles("mute")
async def mute(session: Session, message: dict[str, Any]) -> None:
    source, muted = mute_fields(message)
    if not muted:
        await session.briefing.unmute(session.participant, source)  # a held point may not
    if not session.participant.set_muted(source, muted):
        raise ProtocolError("unknown-publication", f"nothing published from {source}")
    session.briefing.changed()


# -- the chair's actions on one participant -------------------------------------------------
@handles("mute-participant", chair=True)
async def mute_participant(session: Session, message: dict[str, Any]) -> None:
    source, muted = mute_fields(message)
    who = target(session, message)
    if isinstance(who, dict):  # on another node
        if source == "microphone":  # a hold, by identity: every node enforces it
            await session.briefing.hold(str(who.get("identity")), muted)
        else:
            elsewhere(session, who, {"action": "mute", "source": source, "muted": muted})
        return
    await session.briefing.mute(who, source, muted)


@handles("remove", chair=True)
async def remove(session: Session, message: dict[str, Any]) -> None:
    who = target(session, message)
    if who is session.participant:
        raise ProtocolError("bad-request", "use leave to leave the meeting")
    reason = message.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ProtocolError("bad-message", "'reason' must be a string")
    if isinstance(who, dict):
        elsewhere(session, who, {"action": "remove", "reason": reason})
        return
    await session.briefing.remove(who, reason)


@handles("give-floor", chair=True)
async def give_floor(session: Session, message: dict[str, Any]) -> None:
    await session.briefing.give_floor(target(session, message))


@handles("set-profile", chair=True)
async def set_profile(session: Session, message: dict[str, Any]) -> None:
    who = target(session, message)
    profile = profile_field(message)
    if isinstance(who, dict):
        elsewhere(session, who, {"action": "set-profile", "profile": profile})
        return
    await session.briefing.set_profile(who, profile, by=Chair.of(session.participant))


@handles("ask-unmute", chair=True)
async def ask_unmute(session: Session, message: dict[str, Any]) -> None:
    who = target(session, message)
    if isinstance(who, dict):
        if who.get("moderator") is True or who.get("publish") is not True:
            raise ProtocolError("bad-request", "only a point can be asked to unmute")
        elsewhere(session, who, {"action": "ask-unmute"})
        return
    await session.briefing.ask_unmute(who, by=Chair.of(session.participant))


def elsewhere(session: Session, member: dict[str, Any], command: dict[str, Any]) -> None:
    """A chair's command on a point of another node: that node carries it out."""
    session.briefing.command_elsewhere(str(member["id"]), command, Chair.of(session.participant))


# -- hands, consent, chat ---------------------------------------------------------------------
@handles("raise-hand", "lower-hand")
async def hand(session: Session, message: dict[str, Any]) -> None:
    participant = session.participant
    target_id = message.get("participant", participant.id)
    if message["type"] == "lower-hand" and target_id != participant.id:
        chair_only(participant)  # the chair lowers someone else's hand
        session.briefing.lower_hand(target(session, message))
    else:
        session.briefing.raise_hand(participant, message["type"] == "raise-hand")


@handles("unmute-decline")
async def unmute_decline(session: Session, message: dict[str, Any]) -> None:
    await session.briefing.decline_unmute(session.participant)


@handles("chat")
async def chat(session: Session, message: dict[str, Any]) -> None:
    text = message.get("text")
    if not isinstance(text, str):
        raise ProtocolError("bad-message", "chat needs a string 'text'")
    await session.briefing.chat_message(session.participant, text)


# -- the chair's actions on the meeting -------------------------------------------------------
@handles("take-floor", chair=True)
async def take_floor(session: Session, message: dict[str, Any]) -> None:
    await session.briefing.take_floor()


@handles("mute-all", chair=True)
async def mute_all(session: Session, message: dict[str, Any]) -> None:
    await session.briefing.mute_all()


@handles("release-all", chair=True)
async def release_all(session: Session, message: dict[str, Any]) -> None:
    await session.briefing.release_all()


@handles("lock", chair=True)
async def lock(session: Session, message: dict[str, Any]) -> None:
    locked = message.get("locked")
    if not isinstance(locked, bool):
        raise ProtocolError("bad-message", "lock needs a boolean 'locked'")
    session.briefing.set_lock(locked)


@handles("end-meeting", chair=True)
async def end_meeting(session: Session, message: dict[str, Any]) -> bool:
    logger.info("room %s: ended by %s", session.briefing.meeting_id, session.participant.id)
    await session.briefing.end()
    return True


@handles("record-start", "record-stop", chair=True)
async def record(session: Session, message: dict[str, Any]) -> None:
    participant, room = session.participant, session.briefing.room
    try:
        if message["type"] == "record-start":
            if room.recorded_by:  # (one recording of a meeting, wherever it is made)
                raise ProtocolError(
                    "already-recording", "the meeting is already being recorded (on another node)"
                )
            by = {"participant": participant.id, "identity": participant.who.identity}
            recording.start(room, started_by=by, scheduled=session.briefing.scheduled)
        elif recording.stop(room, f"stopped by {participant.id}") is None:
            if not room.recorded_by or session.briefing.share is None:
                raise ProtocolError("not-recording", "the meeting is not being recorded")
            session.briefing.stop_recording_elsewhere(Chair.of(participant))
    except recording.RecordingError as exc:
        raise ProtocolError(exc.code, exc.message) from None
    await session.briefing.broadcast(
        {"type": "recording", "recording": room.recording, "by": participant.id}
    )


@handles(*LOBBY_MESSAGES)
async def lobby(session: Session, message: dict[str, Any]) -> None:
    await lobby_message(session.participant, message)


# -- the session itself ----------------------------------------------------------------------
@handles("ping")
async def ping(session: Session, message: dict[str, Any]) -> None:
    await session.send({"type": "pong", "id": message.get("id")})


@handles("leave")
async def leave(session: Session, message: dict[str, Any]) -> bool:
    return True
