"""WebSocket signaling: ``/ws/meetings/{meeting_id}``, protocol version 1.

See docs/PROTOCOL.md for the messages.  The handler authenticates the first
message (or an ``Authorization: Bearer`` header), joins the room, then maps
each message to a participant operation.  Every bad message gets an ``error``
message; the connection is closed (with a reason) only when continuing makes
no sense (bad token, removed, too many errors).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiortc import RTCIceCandidate

from .access import AccessError, authenticate
from .appkeys import ICE_SERVERS, ICE_SERVERS_JSON, ROOMS, SETTINGS
from .lobby import LOBBY_MESSAGES
from .lobby import gate as lobby_gate
from .lobby import handle_message as lobby_message
from .lobby import joined as lobby_joined
from .recording import recorder as recording
from .sfu.bandwidth import VIEW_SIZES
from .sfu.bridge import ice_candidate_from_json
from .sfu.participant import NegotiationError, Participant
from .sfu.publication import SOURCES
from .sfu.room import MAX_REASON_CHARS, RoomError, printable_text

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
JOIN_TIMEOUT = 10.0
MAX_ERRORS = 20
MAX_CANDIDATE_CHARS = 1024

# WebSocket close codes (4000-4999 are ours, mirroring HTTP statuses)
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_FULL = 4429
CLOSE_REPLACED = 4409
CLOSE_REMOVED = 4410
CLOSE_LOCKED = 4423
# join refusals of the room other than full: meeting locked, meeting ended
ROOM_CLOSE_CODES = {"room-locked": CLOSE_LOCKED, "meeting-ended": CLOSE_REMOVED}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    meeting_id = request.match_info["meeting_id"]
    where = _printable(meeting_id[:128])  # for the log: the URL is not checked yet
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=settings.max_message_bytes)
    await ws.prepare(request)
    send_lock = asyncio.Lock()
    removed = asyncio.Event()
    removed_reason = "removed"

    async def send(message: dict[str, Any]) -> None:
        if ws.closed:
            return
        async with send_lock:
            await ws.send_str(json.dumps(message, ensure_ascii=False))

    async def disconnect(code: int, why: str) -> None:
        """The room dropped this participant (replaced, removed, timeout, shutdown)."""
        nonlocal removed_reason
        removed_reason = why
        removed.set()
        await hang_up()

    # -- join ----------------------------------------------------------------------
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        first = await asyncio.wait_for(ws.receive(), JOIN_TIMEOUT)
    except TimeoutError:
        await ws.close(code=CLOSE_BAD_REQUEST, message=b"join expected")
        return ws
    if first.type != WSMsgType.TEXT:
        if first.type == WSMsgType.ERROR:
            logger.info("ws %s: refused: %s", where, first.data)
        await ws.close(code=CLOSE_BAD_REQUEST, message=b"join expected")
        return ws
    try:
        join = _parse(first.data)
        if join.get("type") != "join":
            raise ProtocolError("join-expected", "the first message must be a join")
        version = join.get("version", PROTOCOL_VERSION)
        if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
            raise ProtocolError("unsupported-version", f"protocol version {PROTOCOL_VERSION} only")
        if isinstance(join.get("token"), str):
            token = join["token"]
    except ProtocolError as exc:
        logger.info("ws %s: refused: %s", where, exc.message)
        await send(_error(exc.code, exc.message))
        await ws.close(code=CLOSE_BAD_REQUEST, message=exc.message.encode()[:120])
        return ws
    try:
        who = await authenticate(app, token, meeting_id)
        verdict = await lobby_gate(app, ws, token or "", who, meeting_id, send)  # may wait
    except AccessError as exc:
        logger.info("ws %s: refused: %s", where, exc.message)
        await send(_error(exc.code, exc.message))
        # 4401, 4403, 4404 (a meeting policy may refuse an unknown meeting)... and 4503
        # when the meetings database is unavailable
        code = 4000 + exc.status if 400 <= exc.status < 600 else CLOSE_UNAUTHORIZED
        await ws.close(code=code, message=exc.message.encode()[:120])
        return ws
    if verdict is None:  # left the lobby
        return ws

    registry = app[ROOMS]
    try:
        room = registry.get_or_create(meeting_id)
        participant = Participant(
            room,
            who,
            "websocket",
            signal=send,
            ice_servers=app[ICE_SERVERS],
            auto_subscribe=join.get("autoSubscribe", True) is not False,
            red=join.get("red") is True,
        )
        await room.join(participant)
    except RoomError as exc:
        logger.info("ws %s: refused: %s", where, exc.message)
        await send(_error(exc.code, exc.message))
        code = ROOM_CLOSE_CODES.get(exc.code, CLOSE_FULL)
        await ws.close(code=code, message=exc.message.encode()[:120])
        return ws

    await send(
        {
            "type": "joined",
            "version": PROTOCOL_VERSION,
            "participant": participant.describe()
            | {
                "grants": {
                    "publish": who.publish,
                    "subscribe": who.subscribe,
                    "moderate": who.moderate,
                }
            },
            "iceServers": app[ICE_SERVERS_JSON],
            "room": room.state(),
            "chat": list(room.chat),
        }
    )
    await lobby_joined(app, participant, verdict, join)  # the chair starts the meeting

    # -- session -------------------------------------------------------------------
    async def hang_up() -> None:
        if ws.closed:
            return
        if not removed.is_set():
            await ws.close()
            return
        logger.info("ws %s: %s closed: %s", where, participant.id, _printable(removed_reason))
        code = {
            "replaced": CLOSE_REPLACED,
            "server-shutdown": WSCloseCode.GOING_AWAY,
        }.get(removed_reason, CLOSE_REMOVED)
        await ws.close(code=code, message=removed_reason.encode()[:120])

    participant.disconnect = disconnect
    errors = 0
    reason = "left"
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                # aiohttp already closed the socket (1009 when over max_message_bytes)
                too_big = getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG
                reason = "message-too-big" if too_big else "websocket-error"
                logger.info("ws %s: %s: %s", where, participant.id, msg.data)
                break
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            refusal: tuple[str, str] | None = None
            kind = None
            if msg.type == WSMsgType.BINARY:
                refusal = "bad-message", "binary messages are not accepted"
            else:
                kind = _kind(msg.data)
                try:
                    message = _parse(msg.data)
                    done = await _dispatch(participant, message, send)
                    if done:
                        break
                except ProtocolError as exc:
                    refusal = exc.code, exc.message
                except RoomError as exc:
                    refusal = exc.code, exc.message
                except (NegotiationError, ValueError) as exc:
                    refusal = "bad-request", str(exc)[:300]
                except PermissionError as exc:
                    refusal = "forbidden", str(exc)
            if refusal is not None:
                errors += 1
                logger.info(
                    "ws %s: %s: refused %s: %s: %s",
                    where,
                    participant.id,
                    _printable((kind or "?")[:40]),
                    refusal[0],
                    _printable(refusal[1]),
                )
                await send(_error(*refusal, request=kind))
            if errors > MAX_ERRORS:
                reason = "too-many-errors"
                await ws.close(code=CLOSE_BAD_REQUEST, message=b"too many errors")
                break
            if participant.closed:
                break
    finally:
        if removed.is_set():
            reason = removed_reason
        await room.leave(participant.id, reason)
        if not ws.closed:
            await hang_up()
    return ws


def _printable(text: str) -> str:
    """``text`` safe for a one-line log record (no newlines or control characters)."""
    return text.encode("unicode_escape").decode("ascii")


def _parse(data: str) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ProtocolError("bad-json", "the message is not valid JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad-message", "a message is a JSON object with a string 'type'")
    return message


def _kind(data: str) -> str | None:
    try:
        message = json.loads(data)
    except ValueError:
        return None
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) else None


def _candidate(data: dict[str, Any]) -> RTCIceCandidate | None:
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


def _str(message: dict[str, Any], key: str, limit: int = 200_000) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError("bad-message", f"'{key}' must be a non-empty string")
    return value


# chair actions on one participant (``participant``: its id)
CHAIR_TARGETED = ("mute-participant", "remove", "give-floor", "ask-unmute", "set-profile")
#: link profiles (the page's names): the highest layer a point receives and sends
PROFILES = ("high", "low", "audio")


def _moderator(participant: Participant) -> None:
    if not participant.who.moderate:
        raise PermissionError("only a moderator (the chair) may do this")


async def _dispatch(participant: Participant, message: dict[str, Any], send: Any) -> bool:
    """Handle one message; True when the participant leaves."""
    kind = message["type"]
    room = participant.room
    if kind == "offer":
        if message.get("pc", "publisher") != "publisher":
            raise ProtocolError("bad-message", "clients offer only on the publisher connection")
        sdp = _str(message, "sdp")
        tracks = message.get("tracks") or {}
        if not isinstance(tracks, dict) or not all(
            isinstance(k, str) and v in SOURCES for k, v in tracks.items()
        ):
            raise ProtocolError("bad-message", "'tracks' maps mid to camera, microphone or screen")
        if not sdp.startswith("v=0"):
            raise ProtocolError("bad-request", "the offer is not an SDP offer")
        if "\nm=" not in sdp:
            raise ProtocolError("bad-request", "the offer sends no audio or video")
        answer = await participant.publisher_offer(sdp, tracks)
        await send({"type": "answer", "pc": "publisher", "sdp": answer})
    elif kind == "answer":
        if message.get("pc") != "subscriber":
            raise ProtocolError("bad-message", "clients answer only on the subscriber connection")
        participant.subscriber_answer(_str(message, "sdp"))
    elif kind == "candidate":
        which = message.get("pc")
        if which not in ("publisher", "subscriber"):
            raise ProtocolError("bad-message", "'pc' must be publisher or subscriber")
        candidate = message.get("candidate")
        if not isinstance(candidate, dict):
            raise ProtocolError("bad-message", "'candidate' must be an object")
        parsed = _candidate(candidate)
        pc = participant.publisher_pc if which == "publisher" else participant.subscriber_pc
        if parsed is not None and pc is not None:
            transceivers = pc.getTransceivers()
            if parsed.sdpMid is not None:
                known = any(t.mid == parsed.sdpMid for t in transceivers)
            else:
                known = 0 <= (parsed.sdpMLineIndex or 0) < len(transceivers)
            if not known:
                raise ValueError(
                    f"the candidate's sdpMid/sdpMLineIndex names no media section of the {which}"
                )
        if parsed is not None:
            await participant.add_candidate(which, parsed)
    elif kind == "subscribe" or kind == "unsubscribe":
        ids = message.get("publications")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("bad-message", "'publications' must be a list of ids")
        unknown = []
        for publication_id in ids[:200]:
            if kind == "subscribe":
                publication = room.find_publication(publication_id)
                if publication is None:
                    unknown.append(publication_id)
                elif participant.subscribe(publication) is None:
                    raise PermissionError("this token may not subscribe to that publication")
            elif not participant.unsubscribe(publication_id):
                unknown.append(publication_id)
        if unknown:
            raise ProtocolError("unknown-publication", f"unknown publications: {unknown[:10]}")
    elif kind == "view":
        videos = message.get("videos")
        if (
            not isinstance(videos, dict)
            or len(videos) > 200
            or not all(isinstance(k, str) and v in VIEW_SIZES for k, v in videos.items())
        ):
            raise ProtocolError(
                "bad-message", "'videos' maps publication ids to large, medium or small"
            )
        room.bandwidth.set_view(participant, dict(videos))
    elif kind == "profile":
        profile = message.get("profile")
        if profile not in PROFILES:
            raise ProtocolError("bad-message", "'profile' must be high, low or audio")
        if participant.profile != profile:
            participant.profile = profile
            room.schedule_broadcast()
    elif kind == "unpublish":
        source = message.get("source")
        if source not in SOURCES:
            raise ProtocolError("bad-message", "'source' must be camera, microphone or screen")
        if not participant.unpublish(source):
            raise ProtocolError("unknown-publication", f"nothing published from {source}")
    elif kind == "mute":
        source = message.get("source")
        muted = message.get("muted")
        if source not in SOURCES or not isinstance(muted, bool):
            raise ProtocolError("bad-message", "mute needs 'source' and a boolean 'muted'")
        identity = participant.who.identity
        held = any(p.source == source and p.blocked for p in participant.publications.values())
        if source == "microphone" and not muted and held:
            # a point held by the chair speaks again only if asked (it consents
            # by unmuting) or given the floor
            if identity not in room.invited and room.floor != identity:
                raise ProtocolError(
                    "muted-by-moderator",
                    "the chair has muted your microphone: raise your hand to ask to speak",
                )
            await room.hold(identity, False)
        if not participant.set_muted(source, muted):
            raise ProtocolError("unknown-publication", f"nothing published from {source}")
        room.schedule_broadcast()
    elif kind in CHAIR_TARGETED:
        _moderator(participant)
        target_id = message.get("participant")
        target = room.participants.get(target_id) if isinstance(target_id, str) else None
        if target is None:
            raise ProtocolError("unknown-participant", "no such participant in the meeting")
        if kind == "remove":
            if target is participant:
                raise ProtocolError("bad-request", "use leave to leave the meeting")
            why = message.get("reason")
            if why is not None and not isinstance(why, str):
                raise ProtocolError("bad-message", "'reason' must be a string")
            text = printable_text(why, MAX_REASON_CHARS, multiline=False) if why else None
            await room.remove(target.id, message=text)
        elif kind == "give-floor":
            if not target.who.publish:
                raise ProtocolError(
                    "bad-request", "this participant cannot speak (no publish grant)"
                )
            await room.give_floor(target)
        elif kind == "set-profile":
            profile = message.get("profile")
            if profile not in PROFILES:
                raise ProtocolError("bad-message", "'profile' must be high, low or audio")
            target.profile = profile
            await target.send({"type": "profile", "profile": profile, "by": participant.id})
            room.schedule_broadcast()
        elif kind == "ask-unmute":
            if target.who.moderate or not target.who.publish:
                raise ProtocolError("bad-request", "only a point can be asked to unmute")
            room.invited.add(target.who.identity)
            await target.send(
                {
                    "type": "unmute-request",
                    "by": participant.id,
                    "name": participant.who.name,
                }
            )
        else:
            source = message.get("source")
            muted = message.get("muted")
            if source not in SOURCES or not isinstance(muted, bool):
                raise ProtocolError(
                    "bad-message", "mute-participant needs 'source' and a boolean 'muted'"
                )
            if not room.block(target.id, source, muted):
                raise ProtocolError("unknown-publication", f"nothing published from {source}")
            await target.send({"type": "muted-by-moderator", "source": source, "muted": muted})
    elif kind in ("raise-hand", "lower-hand"):
        target_id = message.get("participant", participant.id)
        if kind == "lower-hand" and target_id != participant.id:
            # the chair lowers someone else's hand
            _moderator(participant)
            target = room.participants.get(target_id) if isinstance(target_id, str) else None
            if target is None:
                raise ProtocolError("unknown-participant", "no such participant in the meeting")
            if not room.raise_hand(target.who.identity, False):
                raise ProtocolError("bad-request", "this participant has not raised a hand")
        elif not participant.who.publish:
            raise PermissionError("this token may not speak in the meeting")
        else:
            room.raise_hand(participant.who.identity, kind == "raise-hand")
    elif kind == "unmute-decline":
        room.invited.discard(participant.who.identity)
        for other in list(room.participants.values()):
            if other.who.moderate:
                await other.send({"type": "unmute-declined", "participant": participant.id})
    elif kind == "chat":
        text = message.get("text")
        if not isinstance(text, str):
            raise ProtocolError("bad-message", "chat needs a string 'text'")
        await room.broadcast(room.add_chat(participant, text))
    elif kind in ("take-floor", "mute-all", "lock", "end-meeting"):
        _moderator(participant)
        if kind == "take-floor":
            if room.floor is None:
                raise ProtocolError("bad-request", "nobody has the floor")
            await room.take_floor()
        elif kind == "mute-all":
            await room.mute_all()
        elif kind == "lock":
            locked = message.get("locked")
            if not isinstance(locked, bool):
                raise ProtocolError("bad-message", "lock needs a boolean 'locked'")
            room.locked = locked
            room.schedule_broadcast()
        else:
            logger.info("room %s: ended by %s", room.meeting_id, participant.id)
            await room.end()
            return True
    elif kind in ("record-start", "record-stop"):
        _moderator(participant)
        try:
            if kind == "record-start":
                by = {"participant": participant.id, "identity": participant.who.identity}
                recording.start(room, started_by=by)
            elif recording.stop(room, f"stopped by {participant.id}") is None:
                raise ProtocolError("not-recording", "the meeting is not being recorded")
        except recording.RecordingError as exc:
            raise ProtocolError(exc.code, exc.message) from None
        await room.broadcast(
            {"type": "recording", "recording": room.recording, "by": participant.id}
        )
    elif kind in LOBBY_MESSAGES:
        await lobby_message(participant, message)
    elif kind == "ping":
        await send({"type": "pong", "id": message.get("id")})
    elif kind == "leave":
        return True
    else:
        raise ProtocolError("unknown-type", f"unknown message type '{kind[:40]}'")
    return False
