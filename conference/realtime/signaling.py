"""WebSocket signaling: ``/ws/meetings/{meeting_id}``, protocol version 1.

See docs/PROTOCOL.md for the messages.  The handler authenticates the first
message (or an ``Authorization: Bearer`` header), joins the room, then hands
each message to its handler (conference/realtime/messages.py).  Every bad message gets an ``error``
message; the connection is closed (with a reason) only when continuing makes
no sense (bad token, removed, too many errors).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..appkeys import BRIEFINGS, ICE_SERVERS, ICE_SERVERS_JSON, SETTINGS
from ..core import jsontext
from ..core.identity import Identity
from ..sfu.participant import NegotiationError, Participant
from ..sfu.room import RoomError
from ..turn import client_ice_servers
from .access import AccessError, authenticate
from .lobby import gate as lobby_gate
from .lobby import joined as lobby_joined
from .messages import ProtocolError, Session, dispatch

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
JOIN_TIMEOUT = 10.0
MAX_ERRORS = 20

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
MAX_RESUME_CHARS = 100

#: the sessions a new WebSocket may take over (`join` with ``resume``), by their secret:
#: participants of this process that joined with ``resume: true``
_RESUMABLE: dict[str, Participant] = {}


def _rights(who: Identity) -> tuple[str, str, bool, bool, bool, bool]:
    return (who.identity, who.role, who.publish, who.subscribe, who.moderate, who.record)


def _resumable(secret: object, room: Any, who: Identity) -> Participant | None:
    """The session ``secret`` names, if it is still in ``room`` and is ``who``'s with the
    same rights (the token of the new socket must be for the same participant, and a
    token with other rights makes an ordinary join, which replaces the session with
    those rights); its secret is used up (the resumed session gets a new one)."""
    if not isinstance(secret, str):
        return None
    participant = _RESUMABLE.get(secret)
    if (
        participant is None
        or participant.closed
        or participant.room is not room
        or _rights(participant.who) != _rights(who)
        or room.participants.get(participant.id) is not participant
    ):
        return None
    del _RESUMABLE[secret]
    return participant


async def _joined(
    app: web.Application,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    participant: Participant,
    who: Identity,
    briefing: Any,
    secret: str | None,
    resumed: bool,
) -> None:
    """Tell the page it is in: ``joined`` (its grants, ICE servers, the room and chat;
    in slots mode whom each audio slot carries: ``audio-slot`` messages follow)."""
    slots = briefing.room.slot_holders(participant) if participant.audio_slots else None
    participant.slots_told = True
    await send(
        {
            "type": "joined",
            "version": PROTOCOL_VERSION,
            # a resumed session: the same participant, peer connections and publications
            "resumed": resumed,
            # to resume this session if the socket drops (only if asked for: resume true)
            **({"resume": secret} if secret is not None else {}),
            "participant": participant.describe()
            | {
                "grants": {
                    "publish": who.publish,
                    "subscribe": who.subscribe,
                    "moderate": who.moderate,
                }
            },
            # STUN as configured, and this session's own expiring TURN credential
            "iceServers": client_ice_servers(app[SETTINGS], app[ICE_SERVERS_JSON], participant.id),
            "room": briefing.state(),
            "chat": list(briefing.chat),
            **({"audioSlots": slots} if slots is not None else {}),
        }
    )


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=settings.max_message_bytes)
    await ws.prepare(request)
    try:
        return await _session(request, ws)
    except asyncio.CancelledError:
        # the server stops (conference/server.py cancels what has not closed in time):
        # a socket not joined yet (no join sent, waiting in the lobby) hears why, as a
        # joined one does, instead of a dropped connection
        if not ws.closed:
            try:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server-shutdown")
            except Exception:  # the client is gone: nothing to tell
                pass
        raise


async def _session(request: web.Request, ws: web.WebSocketResponse) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    meeting_id = request.match_info["meeting_id"]
    where = _printable(meeting_id[:128])  # for the log: the URL is not checked yet
    send_lock = asyncio.Lock()
    removed = asyncio.Event()
    removed_reason = "removed"

    async def send(message: dict[str, Any]) -> None:
        if ws.closed:
            return
        async with send_lock:
            await ws.send_str(jsontext.dumps(message))

    serving: asyncio.Task[str] | None = None  # the session's message loop

    async def disconnect(why: str) -> None:
        """The room dropped this participant (replaced, removed, timeout, shutdown).

        The WebSocket is closed by its handler's own task, never from here: aiohttp
        closing a socket that another task reads from can drop the connection before
        the client has read the close frame (it sees 1006, not the reason).  This
        stops the message loop; the handler then says why and closes.  It does not
        wait for that (the close handshake waits on the client).
        """
        nonlocal removed_reason
        if removed.is_set():
            return
        removed_reason = why
        removed.set()
        if serving is not None and serving is not asyncio.current_task():
            serving.cancel()

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
        resume = join.get("resume", False)
        if not (isinstance(resume, bool) or isinstance(resume, str) and resume):
            raise ProtocolError("bad-message", "'resume' is true or the secret 'joined' gave")
        if isinstance(resume, str) and len(resume) > MAX_RESUME_CHARS:
            raise ProtocolError("bad-message", "'resume' is not a secret this server gave")
    except ProtocolError as exc:
        logger.info("ws %s: refused: %s", where, exc.message)
        await send(_error(exc.code, exc.message))
        await ws.close(code=CLOSE_BAD_REQUEST, message=exc.message.encode()[:120])
        return ws
    try:
        who = await authenticate(app, token, meeting_id)
        verdict = await lobby_gate(
            app, ws, token or "", who, meeting_id, send, address=request.remote
        )  # may wait
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

    try:
        briefing = app[BRIEFINGS].open(meeting_id)
        room = briefing.room
        resumed = _resumable(resume, room, who)
        if resumed is not None:
            # the page's socket dropped (a network change) and it came back in time:
            # this socket takes the session over, with its peer connections and place
            participant = resumed
            participant.who = who  # this socket's token (its expiry, what a removal revokes)
            previous = participant.disconnect
            participant.signal = send
            participant.disconnect = disconnect
            if previous is not None:
                await previous("resumed")  # the old socket's handler stops, no leave
            logger.info("ws %s: %s resumed on a new connection", where, participant.id)
        else:
            participant = Participant(
                room,
                who,
                "websocket",
                signal=send,
                ice_servers=app[ICE_SERVERS],
                auto_subscribe=join.get("autoSubscribe", True) is not False,
                red=join.get("red") is True,
                audio_slots=join.get("audioSlots") is True,
            )
            participant.disconnect = disconnect
            await room.join(participant)
    except RoomError as exc:
        logger.info("ws %s: refused: %s", where, exc.message)
        await send(_error(exc.code, exc.message))
        code = ROOM_CLOSE_CODES.get(exc.code, CLOSE_FULL)
        await ws.close(code=code, message=exc.message.encode()[:120])
        return ws

    secret: str | None = None
    if resume is not False and settings.resume_timeout > 0:
        secret = secrets.token_urlsafe(18)
        _RESUMABLE[secret] = participant
    try:
        await _joined(app, send, participant, who, briefing, secret, resumed is not None)
        await lobby_joined(app, participant, verdict, join)  # the chair starts the meeting
    except BaseException:
        # the socket died before `joined` reached it: no handler owns this session any
        # more (a resumed one's old handler has stopped without a leave)
        if secret is not None:
            _RESUMABLE.pop(secret, None)
        await asyncio.shield(room.leave(participant.id, "left"))
        raise
    if resumed is not None:
        participant.resumed()  # an offer the old socket may have lost is made again

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
            "resumed": CLOSE_REPLACED,  # another socket took this session over
            "server-shutdown": WSCloseCode.GOING_AWAY,
        }.get(removed_reason, CLOSE_REMOVED)
        await ws.close(code=code, message=removed_reason.encode()[:120])

    session = Session(participant, briefing, send)
    dropped = False  # the socket closed under the session (no leave, not removed)

    async def serve() -> str:
        """Handle the participant's messages until it leaves; returns why it left."""
        nonlocal dropped
        errors = 0
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                # aiohttp already closed the socket (1009 when over max_message_bytes)
                too_big = getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG
                logger.info("ws %s: %s: %s", where, participant.id, msg.data)
                dropped = not too_big
                return "message-too-big" if too_big else "websocket-error"
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
                    if await dispatch(session, message):
                        return "left"
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
                await ws.close(code=CLOSE_BAD_REQUEST, message=b"too many errors")
                return "too-many-errors"
            if participant.closed or removed.is_set():
                break
        else:
            dropped = True
        return "left"

    serving = asyncio.ensure_future(serve())
    reason = "left"
    try:
        reason = await asyncio.shield(serving)
    except asyncio.CancelledError:
        if not serving.cancelled():  # the handler itself is cancelled (server shutdown)
            serving.cancel()
            raise
    finally:
        if not removed.is_set() and dropped and secret is not None and not participant.closed:
            # keep the session for the page to resume (its network changed): others see
            # no leave and no join; a removal, the room's end or a failed peer
            # connection meanwhile ends it as always
            logger.info(
                "ws %s: %s: connection lost, kept %d s for a resume",
                where,
                participant.id,
                settings.resume_timeout,
            )
            try:
                await asyncio.wait_for(removed.wait(), settings.resume_timeout)
            except TimeoutError:
                pass
        if removed.is_set():
            reason = removed_reason
        if secret is not None and _RESUMABLE.get(secret) is participant:
            del _RESUMABLE[secret]
        if reason != "resumed":
            await room.leave(participant.id, reason)
        if not ws.closed:
            await hang_up()
    return ws


def _printable(text: str) -> str:
    """``text`` safe for a one-line log record (no newlines or control characters)."""
    return text.encode("unicode_escape").decode("ascii")


def _parse(data: str) -> dict[str, Any]:
    try:
        message = jsontext.loads(data)
    except ValueError as exc:
        raise ProtocolError("bad-json", "the message is not valid JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad-message", "a message is a JSON object with a string 'type'")
    return message


def _kind(data: str) -> str | None:
    try:
        message = jsontext.loads(data)
    except ValueError:
        return None
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) else None
