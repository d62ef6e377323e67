"""WHIP (RFC 9725) ingest and WHEP egress.

* ``POST /whip/{meeting_id}``: an encoder (OBS, FFmpeg, GStreamer, a hardware
  box) publishes into the meeting; ``DELETE`` on the returned ``Location``
  leaves.
* ``POST /whep/{meeting_id}/{participant}``: watch one participant (by
  participant ID or identity).
* ``POST /whep/{meeting_id}``: watch the meeting's program feed.

Trickle ICE (``PATCH``) is not supported: the server's answer carries all its
candidates, and ``PATCH`` answers 405 as RFC 9725 allows.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..appkeys import BRIEFINGS, ICE_SERVERS, ICE_SERVERS_JSON, LIVE_ELSEWHERE, ROOMS, SETTINGS
from ..core.identity import Identity
from ..sfu.participant import NegotiationError, Participant
from ..sfu.room import Room, RoomError
from ..turn import client_ice_servers, ice_server_links
from .access import AccessError, authenticate
from .lobby import direct as lobby_direct

logger = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _logged(handler: Handler) -> Handler:
    """Log every refusal (4xx) of ``handler`` on one line, without a traceback."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                logger.info(
                    "%s %s: refused %d: %s", request.method, _path(request), exc.status, exc.text
                )
            raise
        if response.status >= 400:
            logger.info("%s %s: refused %d", request.method, _path(request), response.status)
        return response

    return wrapper


def _path(request: web.Request) -> str:
    """The request path as sent (percent-encoded): safe for a one-line log record."""
    return request.rel_url.raw_path[:300]


def _problem(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


async def _read_offer(request: web.Request) -> str:
    if request.content_type != "application/sdp":
        raise web.HTTPUnsupportedMediaType(
            text='{"error": "unsupported-media-type", "message": "send an application/sdp offer"}',
            content_type="application/json",
        )
    too_large = _http(
        413, "request-entity-too-large", f"the offer is larger than {MAX_SDP_BYTES} bytes"
    )
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise too_large
    # read() returns what has arrived so far: loop to EOF (or past the limit)
    body = bytearray()
    while len(body) <= MAX_SDP_BYTES:
        chunk = await request.content.read(MAX_SDP_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > MAX_SDP_BYTES:
        raise too_large
    try:
        sdp = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise web.HTTPBadRequest(
            text='{"error": "bad-sdp", "message": "the offer is not UTF-8"}',
            content_type="application/json",
        ) from exc
    if not sdp.startswith("v=0"):
        raise web.HTTPBadRequest(
            text='{"error": "bad-sdp", "message": "the body is not an SDP offer"}',
            content_type="application/json",
        )
    return sdp


async def _identity(request: web.Request, meeting_id: str) -> Identity:
    try:
        who = await authenticate(request.app, _bearer(request), meeting_id)
        await lobby_direct(request.app, _bearer(request), meeting_id)  # no lobby for WHIP
        return who
    except AccessError as exc:
        headers = {"WWW-Authenticate": 'Bearer realm="conference"'} if exc.status == 401 else {}
        raise _http(exc.status, exc.code, exc.message, headers) from exc


_ERROR_CLASSES: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    410: web.HTTPGone,
    429: web.HTTPTooManyRequests,
    500: web.HTTPInternalServerError,
    503: web.HTTPServiceUnavailable,
}


def _http(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """A JSON error.  Never fails on an unexpected ``status`` (a meeting policy may refuse
    with any code): it falls back to 400 or 500."""
    text = json.dumps({"error": code, "message": message}, ensure_ascii=False)
    if status == 413:
        return web.HTTPRequestEntityTooLarge(
            MAX_SDP_BYTES, text=text, content_type="application/json", headers=headers
        )
    cls = _ERROR_CLASSES.get(status) or _ERROR_CLASSES[500 if status >= 500 else 400]
    return cls(text=text, content_type="application/json", headers=headers)


def _answer(
    request: web.Request, kind: str, room: Room, participant: Participant, sdp: str
) -> web.Response:
    location = f"/{kind}/{room.meeting_id}/{participant.id}"
    # RFC 9725, section 4.6: STUN as configured, and this session's own TURN credential
    servers = client_ice_servers(
        request.app[SETTINGS], request.app[ICE_SERVERS_JSON], participant.id
    )
    links = ice_server_links(servers)
    headers = {"Location": location, "ETag": f'"{participant.id}"'}
    if links:
        headers["Link"] = ", ".join(links)
    return web.Response(
        status=201, body=sdp.encode(), content_type="application/sdp", headers=headers
    )


async def _cleanup(room: Room, participant: Participant | None) -> None:
    if participant is not None:
        await room.leave(participant.id, "negotiation-failed")
    elif not room.participants:
        await room.close()


@_logged
async def whip_post(request: web.Request) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    who = await _identity(request, meeting_id)
    if not who.publish:
        raise _http(403, "forbidden", "this token may not publish")
    sdp = await _read_offer(request)
    try:
        room = request.app[BRIEFINGS].open(meeting_id).room
    except RoomError as exc:
        raise _http(503, exc.code, exc.message) from exc
    participant = Participant(
        room,
        who,
        "whip",
        ice_servers=request.app[ICE_SERVERS],
        auto_subscribe=False,
        system_dtls=request.app[SETTINGS].whip_system_dtls,
    )
    try:
        await room.join(participant)
    except RoomError as exc:
        await _cleanup(room, None)
        raise _http(503, exc.code, exc.message) from exc
    try:
        answer = await participant.publisher_offer(sdp)
    except NegotiationError as exc:
        logger.info("whip %s: bad offer: %r", meeting_id, str(exc))
        await _cleanup(room, participant)
        raise _http(400, "bad-sdp", str(exc)[:300]) from exc
    if not participant.publications:
        await _cleanup(room, participant)
        raise _http(400, "bad-sdp", "the offer sends no audio or video")
    return _answer(request, "whip", room, participant, answer)


@_logged
async def session_delete(request: web.Request) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    who = await _identity(request, meeting_id)
    room = request.app[ROOMS].get(meeting_id)
    participant = room.participants.get(request.match_info["participant_id"]) if room else None
    if room is None or participant is None:
        raise _http(404, "not-found", "no such session")
    if participant.who.identity != who.identity and not who.moderate:
        raise _http(403, "forbidden", "this session belongs to someone else")
    await room.leave(participant.id, "deleted")
    return web.Response(status=200)


@_logged
async def session_patch(request: web.Request) -> web.StreamResponse:
    return _problem(405, "trickle-unsupported", "trickle ICE is not supported", Allow="DELETE")


@_logged
async def whep_post(request: web.Request) -> web.StreamResponse:
    meeting_id = request.match_info["meeting_id"]
    target_id = request.match_info.get("participant_id")
    who = await _identity(request, meeting_id)
    if not who.subscribe:
        raise _http(403, "forbidden", "this token may not subscribe")
    sdp = await _read_offer(request)
    room = request.app[ROOMS].get(meeting_id)
    if room is None and LIVE_ELSEWHERE in request.app:
        if await request.app[LIVE_ELSEWHERE](meeting_id):  # live on another node: watch here
            try:
                room = request.app[ROOMS].get_or_create(meeting_id)
            except RoomError as exc:
                raise _http(503, exc.code, exc.message) from exc
    if room is None:
        raise _http(404, "not-found", "the meeting is not live")
    target = room.get(target_id) if target_id else None
    if target_id and target is None:
        await _cleanup(room, None)  # opened here for this viewer: closed again if empty
        raise _http(404, "not-found", "no such participant in the meeting")
    viewer = Participant(
        room, who, "whep", ice_servers=request.app[ICE_SERVERS], auto_subscribe=False
    )
    try:
        await room.join(viewer)
    except RoomError as exc:
        await _cleanup(room, None)
        raise _http(503, exc.code, exc.message) from exc
    codec = room.video_codec
    if target is not None:
        video = next((p for p in target.publications.values() if p.kind == "video"), None)
        if video is not None:
            codec = video.codec_name
    try:
        answer, subscriptions = await viewer.viewer_offer(sdp, codec)
    except NegotiationError as exc:
        logger.info("whep %s: bad offer: %r", meeting_id, str(exc))
        await _cleanup(room, viewer)
        raise _http(400, "bad-sdp", str(exc)[:300]) from exc
    if not subscriptions:
        await _cleanup(room, viewer)
        raise _http(400, "bad-sdp", "the offer receives no audio or video")
    for subscription in subscriptions:
        if target is None:
            room.program.add(subscription)
        else:
            order = ("microphone",) if subscription.kind == "audio" else ("camera", "screen")
            for source in order:
                publication = next(
                    (p for p in target.publications.values() if p.source == source), None
                )
                if publication is not None:
                    subscription.switch_to(publication)
                    break
    return _answer(request, "whep", room, viewer, answer)
