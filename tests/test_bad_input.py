"""Hostile and malformed input on every entry point of a real server process.

Each case must get a 4xx status or a protocol ``error`` message with a stable code
and text, must be logged without a traceback (the ``server`` fixture fails the test
when the log contains "Traceback" or the server does not exit 0 on SIGTERM), and
must leave the media of every other participant untouched
(`test_media_survives_a_barrage_of_bad_input`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import warnings
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import aioice
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcicetransport import candidate_to_aioice
from aiortc.sdp import SessionDescription

from conference.appkeys import MEETING_POLICY, REVOKED, ROOMS
from conference.realtime import whip
from conference.realtime.access import AccessError
from conference.realtime.ratelimit import DEFAULT
from conference.server import create_app
from conference.settings import Settings
from conference.tokens import Claims, Grants, create_token, verify_token
from conference.tools.client import Client
from conference.tools.testmedia import BarcodeVideoTrack

from .conftest import SECRET, ServerProcess
from .mediacheck import increasing, video_numbers, wait_track, wait_tracks

TEXT = aiohttp.WSMsgType.TEXT
CLOSED_TYPES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
OTHER_KEY = "another-secret-" + "y" * 40
MAX_MESSAGE_BYTES = Settings().max_message_bytes

GARBAGE_SDP = "v=0\r\nthis is not an SDP\r\nm=video what\r\na=rtpmap:xx\r\n"
NO_MEDIA_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def _cand(line: str, **extra: Any) -> dict[str, Any]:
    return {"candidate": "candidate:" + line, "sdpMid": "0"} | extra


MALFORMED = "malformed ICE candidate"
NO_SECTION = "the candidate's sdpMid/sdpMLineIndex names no media section of the publisher"
# (RTCIceCandidateInit, error message) on a publisher connection with one m-line, mid "0"
HOSTILE_CANDIDATES: list[tuple[dict[str, Any], str]] = [
    (_cand("1 1 udp 2122260223 999.1.1.1 9 typ host"), f"{MALFORMED}: address must be"),
    (_cand("1 1 udp 2122260223 example.com 9 typ host"), f"{MALFORMED}: address must be"),
    (_cand("1 1 udp 2122260223 ::ffff:zz 9 typ host"), f"{MALFORMED}: address must be"),
    (_cand("1 1 udp 2122260223 127.0.0.1 99999 typ host"), f"{MALFORMED}: port must be 1-65535"),
    (_cand("1 1 udp 2122260223 127.0.0.1 -1 typ host"), f"{MALFORMED}: port must be 1-65535"),
    (_cand("1 1 udp 2122260223 127.0.0.1 9 typ weird"), f"{MALFORMED}: type must be"),
    (_cand("1 1 sctp 2122260223 127.0.0.1 9 typ host"), f"{MALFORMED}: transport must be"),
    (_cand("1 0 udp 2122260223 127.0.0.1 9 typ host"), f"{MALFORMED}: component must be"),
    (_cand(f"1 1 udp {2**40} 127.0.0.1 9 typ host"), f"{MALFORMED}: priority must be"),
    (_cand("1 1 udp 1 127.0.0.1 9 typ srflx raddr 1.2.3.4 rport 70000"), f"{MALFORMED}: rport"),
    (_cand("1 1 udp 1 127.0.0.1 9 typ srflx raddr x rport y"), MALFORMED),
    (_cand("1 1 udp 1 127.0.0.1 nine typ host"), MALFORMED),
    (_cand("1 1 udp 1 127.0.0.1"), MALFORMED),
    (_cand("1 " * 5000), f"{MALFORMED}: too long"),
    (_cand("1 1 udp 2122260223 127.0.0.1 9 typ host", sdpMid="nope"), NO_SECTION),
    (
        {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host", "sdpMLineIndex": 7},
        NO_SECTION,
    ),
]


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(server: ServerProcess, **kwargs: Any) -> dict[str, Any]:
    token = server.token(**kwargs)
    return jwt.decode(token, options={"verify_signature": False})


def alg_none_token(server: ServerProcess) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_payload(server)).encode())
    return f"{header}.{body}."


def other_key_token(server: ServerProcess) -> str:
    return jwt.encode(_payload(server), OTHER_KEY, algorithm="HS256")


def hs512_token(server: ServerProcess) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test secret is short for HS512
        return jwt.encode(_payload(server), server.secret.encode(), algorithm="HS512")


def signed(server: ServerProcess, payload: dict[str, Any]) -> str:
    return jwt.encode(payload, server.secret.encode(), algorithm="HS256")


def without(server: ServerProcess, claim: str) -> str:
    payload = _payload(server)
    del payload[claim]
    return signed(server, payload)


def expired_token(server: ServerProcess) -> str:
    return server.token(now=datetime.now(UTC) - timedelta(hours=2), ttl=timedelta(hours=1))


def future_token(server: ServerProcess) -> str:
    return server.token(not_before=datetime.now(UTC) + timedelta(hours=1), ttl=timedelta(hours=2))


# (name, token factory, error code, message, HTTP status)
BAD_TOKENS: list[tuple[str, Any, str, str, int]] = [
    ("none", lambda s: None, "unauthorized", "a token is required", 401),
    ("garbage", lambda s: "not-a-token", "malformed", "token is not a JWT", 401),
    ("garbage-dots", lambda s: "a.b.c", "malformed", "token is not a valid JWT", 401),
    ("expired", expired_token, "expired", "token has expired", 401),
    ("not-yet-valid", future_token, "not-yet-valid", "token is not valid yet", 401),
    ("alg-none", alg_none_token, "bad-signature", "token algorithm is not accepted", 401),
    ("other-key", other_key_token, "bad-signature", "token signature is invalid", 401),
    ("hs512", hs512_token, "bad-signature", "token algorithm is not accepted", 401),
    (
        "role-admin",
        lambda s: signed(s, _payload(s) | {"role": "admin"}),
        "invalid-claims",
        "token claim 'role' is missing or invalid",
        401,
    ),
    (
        "grants-str",
        lambda s: signed(s, _payload(s) | {"grants": {"publish": "yes"}}),
        "invalid-claims",
        "token claim 'grants' is missing or invalid",
        401,
    ),
    (
        "no-exp",
        lambda s: without(s, "exp"),
        "invalid-claims",
        "token lacks the 'exp' claim",
        401,
    ),
    (
        "no-meeting",
        lambda s: without(s, "meeting"),
        "invalid-claims",
        "token claim 'meeting' is missing or invalid",
        401,
    ),
    (
        "payload-not-json",
        lambda s: jwt.api_jws.encode(b"not json", s.secret.encode(), algorithm="HS256"),
        "invalid-claims",
        "token claims are invalid",
        401,
    ),
    (
        "wrong-meeting",
        lambda s: s.token(meeting="other-meeting"),
        "wrong-meeting",
        "token is for another meeting",
        403,
    ),
]
TOKEN_IDS = [case[0] for case in BAD_TOKENS]


def ws_url(server: ServerProcess, meeting: str = "m1") -> str:
    return server.url.replace("http", "ws", 1) + f"/ws/meetings/{meeting}"


async def receive_json(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0
) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == TEXT, (msg.type, msg.data, msg.extra, ws.close_code)
    data = json.loads(msg.data)
    assert isinstance(data, dict)
    return data


#: the last room state each socket received while `reply` skipped it (for `_room`)
_LAST_ROOM: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


async def reply(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    """The next message that is not a room-state broadcast."""
    while True:
        message = await receive_json(ws, timeout)
        if message["type"] == "room":
            _LAST_ROOM[ws] = message
        if message["type"] not in ("room", "speaker"):
            return message


async def closed_with(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0
) -> tuple[int, str]:
    """Wait for the server to close; (close code, reason). Skips pending text messages."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type in CLOSED_TYPES:
            assert ws.close_code is not None
            return ws.close_code, msg.extra or ""
        assert msg.type == TEXT, (msg.type, msg.data)


async def refused(
    http: aiohttp.ClientSession, server: ServerProcess, first: str | bytes, meeting: str = "m1"
) -> tuple[dict[str, Any] | None, int, str]:
    """Send ``first`` as the first message; (error message or None, close code, reason)."""
    async with http.ws_connect(ws_url(server, meeting)) as ws:
        if isinstance(first, bytes):
            await ws.send_bytes(first)
        else:
            await ws.send_str(first)
        msg = await ws.receive(timeout=10)
        error = json.loads(msg.data) if msg.type == TEXT else None
        code, reason = await closed_with(ws) if error is not None else (ws.close_code, msg.extra)
        assert code is not None
        return error, code, reason or ""


def join_message(token: str | None, **extra: Any) -> str:
    message: dict[str, Any] = {"type": "join", "version": 1, "autoSubscribe": False}
    if token is not None:
        message["token"] = token
    return json.dumps(message | extra)


async def join(
    http: aiohttp.ClientSession, server: ServerProcess, token: str, meeting: str = "m1"
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(ws_url(server, meeting))
    await ws.send_str(join_message(token))
    joined = await receive_json(ws)
    assert joined["type"] == "joined", joined
    return ws


async def ping_pong(ws: aiohttp.ClientWebSocketResponse, ping_id: str = "alive") -> None:
    await ws.send_json({"type": "ping", "id": ping_id})
    assert await reply(ws) == {"type": "pong", "id": ping_id}


async def expect_error(
    ws: aiohttp.ClientWebSocketResponse, code: str, message: str, request: str | None = None
) -> dict[str, Any]:
    error = await reply(ws)
    assert error["type"] == "error", error
    assert error["code"] == code, error
    assert error["message"].startswith(message), error
    if request is not None:
        assert error.get("request") == request, error
    return error


async def make_offer(*kinds: str, direction: str = "sendonly") -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer (host candidates on 127.0.0.1); the caller closes the pc."""
    pc = RTCPeerConnection()
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


async def post_sdp(
    http: aiohttp.ClientSession,
    url: str,
    token: str | None,
    body: str | bytes,
    content_type: str = "application/sdp",
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    data = body.encode() if isinstance(body, str) else body
    headers = auth(token) | {"Content-Type": content_type}
    async with http.post(url, data=data, headers=headers) as response:
        text = await response.text()
        try:
            payload = json.loads(text) if response.content_type == "application/json" else {}
        except ValueError:
            payload = {"raw": text}
        return response.status, payload, response


async def wait_log(server: ServerProcess, text: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log()[-2000:]}"
        await asyncio.sleep(0.05)


async def health(http: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    async with http.get(server.url + "/healthz") as response:
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result


async def wait_participants(
    http: aiohttp.ClientSession, server: ServerProcess, count: int, timeout: float
) -> float:
    """Seconds until /healthz reports ``count`` participants."""
    start = time.monotonic()
    while True:
        current = (await health(http, server))["participants"]
        if current == count:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{current} participants, expected {count}"
        await asyncio.sleep(0.25)


async def _room(
    ws: aiohttp.ClientWebSocketResponse, until: Any, timeout: float = 10.0
) -> dict[str, Any]:
    """The first room state on ``ws`` for which ``until(room)`` holds: the latest one
    `reply` skipped, or the next broadcasts (asks with pings to flush; returns once its
    ping is answered, so that no pong is left for the next `reply`)."""
    room: dict[str, Any] = _LAST_ROOM.get(ws, {})
    if room and until(room):
        return room
    found: dict[str, Any] | None = None
    await ws.send_json({"type": "ping", "id": "room"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await receive_json(ws)
        if message["type"] == "room":
            room = message
            if found is None and until(room):
                found = room
        if message["type"] == "pong" and message.get("id") == "room":
            if found is not None:
                return found
            await asyncio.sleep(0.1)
            await ws.send_json({"type": "ping", "id": "room"})
    raise AssertionError(f"no room state as expected; the last: {room}")


def _mine(room: dict[str, Any], identity: str = "pt:p1") -> list[dict[str, Any]]:
    return [p for p in room.get("participants", []) if p["identity"] == identity]


# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "factory", "code", "message", "status"), BAD_TOKENS, ids=TOKEN_IDS
)
async def test_bad_token(http, server, name, factory, code, message, status):
    """On the WebSocket join, and on every WHIP/WHEP endpoint."""
    error, close_code, reason = await refused(http, server, join_message(factory(server)))
    assert error == {"type": "error", "code": code, "message": message}
    assert close_code == 4400 + status % 100
    assert reason == message
    assert f"ws m1: refused: {message}" in server.log()

    token = factory(server)
    pc, offer = await make_offer("video")
    await pc.close()
    for url in ("/whip/m1", "/whep/m1", "/whep/m1/p2"):
        got, body, response = await post_sdp(http, server.url + url, token, offer)
        assert got == status, (url, got, body)
        assert body == {"error": code, "message": message}, url
        if status == 401:
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="conference"'
    async with http.delete(server.url + "/whip/m1/PA_x", headers=auth(token)) as response:
        assert response.status == status
        assert await response.json() == {"error": code, "message": message}
    log = server.log()
    for line in ("POST /whip/m1", "POST /whep/m1", "POST /whep/m1/p2", "DELETE /whip/m1/PA_x"):
        assert f"{line}: refused {status}: " in log, line
    assert message in log
    assert (await health(http, server))["participants"] == 0


async def test_bad_authorization_headers(http, server):
    pc, offer = await make_offer("video")
    await pc.close()
    token = server.token()
    for header in (f"Basic {token}", "Bearer", "Bearer    ", token):
        headers = {"Authorization": header, "Content-Type": "application/sdp"}
        async with http.post(server.url + "/whip/m1", data=offer, headers=headers) as response:
            assert response.status == 401, header
            assert await response.json() == {
                "error": "unauthorized",
                "message": "a token is required",
            }


async def test_token_in_header_but_bad_token_in_join_is_refused(http, server):
    # the join message's token wins over the header: a forged one is not rescued by a good header
    headers = auth(server.token())
    async with http.ws_connect(ws_url(server), headers=headers) as ws:
        await ws.send_str(join_message(alg_none_token(server)))
        assert await receive_json(ws) == {
            "type": "error",
            "code": "bad-signature",
            "message": "token algorithm is not accepted",
        }
        assert await closed_with(ws) == (4401, "token algorithm is not accepted")


async def test_replayed_token_replaces_the_earlier_session(http, server):
    token = server.token(identity="xa1")
    first = await join(http, server, token)
    second = await join(http, server, token)
    try:
        leave = await reply(first)
        assert leave == {"type": "leave", "reason": "replaced"}
        assert await closed_with(first) == (4409, "replaced")
        await ping_pong(second)
        assert (await health(http, server))["participants"] == 1
    finally:
        await first.close()
        await second.close()


async def test_server_shutdown_closes_sessions_cleanly(http, server):
    """Not bad input: the hang-up on removal also covers SIGTERM (exit 0, no traceback)."""
    ws = await join(http, server, server.token())
    messages: list[dict[str, Any]] = []

    async def read_until_closed() -> tuple[int, str]:
        while True:
            msg = await ws.receive(timeout=20)
            if msg.type in CLOSED_TYPES:
                assert ws.close_code is not None
                return ws.close_code, msg.extra or ""
            messages.append(json.loads(msg.data))

    reader = asyncio.ensure_future(read_until_closed())
    await asyncio.sleep(0.2)
    assert await asyncio.to_thread(server.stop) == 0
    code, reason = await asyncio.wait_for(reader, 10)
    assert {"type": "leave", "reason": "server-shutdown"} in messages
    assert (code, reason) == (1001, "server-shutdown")


class KnownMeetings:
    """A meeting policy like the one scheduling will bring: only m1 exists."""

    async def admit(self, claims: Claims) -> None:
        if claims.meeting != "m1":
            raise AccessError("unknown-meeting", "no such meeting", 404)


@pytest.fixture
async def in_process(
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[tuple[web.Application, str]]:
    """The application in this process, to reach what has no API yet (revocation, policy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)  # server.py uses str keys
        app = create_app(Settings(token_secret=SECRET, tls="off"))
        app[MEETING_POLICY] = KnownMeetings()
    caplog.set_level(logging.INFO, logger="conference")
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield app, str(test_server.make_url("")).rstrip("/")
    finally:
        await test_server.close()
    records = caplog.get_records("call") + caplog.get_records("teardown")
    assert not [r for r in records if r.exc_info], "a refusal logged a traceback"
    assert any("refused" in r.getMessage() for r in records)


def _token(meeting: str = "m1", identity: str = "p1", role: str = "point") -> str:
    return create_token(SECRET, meeting=meeting, identity=identity, name=identity, role=role)


async def _refusals(
    http: aiohttp.ClientSession, url: str, meeting: str, token: str
) -> list[tuple[Any, ...]]:
    """What the WebSocket join and WHIP/WHEP answer to ``token`` (in-process server)."""
    results: list[tuple[Any, ...]] = []
    async with http.ws_connect(url.replace("http", "ws", 1) + f"/ws/meetings/{meeting}") as ws:
        await ws.send_str(join_message(token))
        results.append(("ws", await receive_json(ws), await closed_with(ws)))
    pc, offer = await make_offer("video")
    await pc.close()
    for path in (f"/whip/{meeting}", f"/whep/{meeting}", f"/whep/{meeting}/p2"):
        status, body, _ = await post_sdp(http, url + path, token, offer)
        results.append((path, status, body))
    return results


async def test_revoked_token_is_refused(http, in_process):
    # Nothing fills the revocation list yet (no API, CLI or moderation message to remove a
    # participant): revoke directly, as that feature will, and check every entry point.
    app, url = in_process
    token = _token()
    claims = verify_token(SECRET, token)
    app[REVOKED].revoke(claims.token_id, claims.expires_at)
    error = {"error": "revoked", "message": "this token was revoked"}
    assert await _refusals(http, url, "m1", token) == [
        (
            "ws",
            {"type": "error", "code": "revoked", "message": "this token was revoked"},
            (4401, "this token was revoked"),
        ),
        ("/whip/m1", 401, error),
        ("/whep/m1", 401, error),
        ("/whep/m1/p2", 401, error),
    ]
    assert not app[ROOMS].rooms
    # another token of the same participant is still accepted
    async with http.ws_connect(url.replace("http", "ws", 1) + "/ws/meetings/m1") as ws:
        await ws.send_str(join_message(_token()))
        assert (await receive_json(ws))["type"] == "joined"


async def test_unknown_meeting_refused_by_the_meeting_policy(http, in_process):
    app, url = in_process
    error = {"error": "unknown-meeting", "message": "no such meeting"}
    assert await _refusals(http, url, "ghost", _token("ghost")) == [
        (
            "ws",
            {"type": "error", "code": "unknown-meeting", "message": "no such meeting"},
            (4404, "no such meeting"),
        ),
        ("/whip/ghost", 404, error),
        ("/whep/ghost", 404, error),
        ("/whep/ghost/p2", 404, error),
    ]
    assert not app[ROOMS].rooms


def test_json_errors_for_any_refusal_status():
    # a meeting policy may refuse with any status: never a KeyError (500 with a traceback)
    for status, expected in ((404, 404), (410, 410), (425, 400), (429, 429), (599, 500)):
        exc = whip._http(status, "closed", "the meeting has ended")
        assert exc.status == expected
        assert exc.content_type == "application/json"
        assert json.loads(exc.text or "") == {
            "error": "closed",
            "message": "the meeting has ended",
        }


# --- the first message -------------------------------------------------------------------------


BAD_FIRST_MESSAGES: list[tuple[str, str, str]] = [
    ("this is not json", "bad-json", "the message is not valid JSON"),
    ('{"type": "join", ', "bad-json", "the message is not valid JSON"),
    # nested past Python's recursion limit: json.loads raised RecursionError (a traceback)
    ("[" * 5000 + "]" * 5000, "bad-json", "the message is not valid JSON"),
    (
        '{"type": "join", "x": ' + "[" * 65 + "]" * 65 + "}",
        "bad-json",
        "the message is not valid JSON",
    ),
    ("[1, 2, 3]", "bad-message", "a message is a JSON object with a string 'type'"),
    ('{"type": 7}', "bad-message", "a message is a JSON object with a string 'type'"),
    ('{"version": 1}', "bad-message", "a message is a JSON object with a string 'type'"),
    ('{"type": "ping"}', "join-expected", "the first message must be a join"),
    ('{"type": "offer", "sdp": "v=0"}', "join-expected", "the first message must be a join"),
    ('{"type": "join", "version": 2}', "unsupported-version", "protocol version 1 only"),
    ('{"type": "join", "version": "1"}', "unsupported-version", "protocol version 1 only"),
    ('{"type": "join", "version": true}', "unsupported-version", "protocol version 1 only"),
    ('{"type": "join", "version": 1.5}', "unsupported-version", "protocol version 1 only"),
    (
        '{"type": "join", "resume": 5}',
        "bad-message",
        "'resume' is true or the secret 'joined' gave",
    ),
    (
        '{"type": "join", "resume": ""}',
        "bad-message",
        "'resume' is true or the secret 'joined' gave",
    ),
    (
        '{"type": "join", "resume": "' + "s" * 101 + '"}',
        "bad-message",
        "'resume' is not a secret this server gave",
    ),
]


async def test_bad_first_message(http, server):
    for first, code, message in BAD_FIRST_MESSAGES:
        error, close_code, reason = await refused(http, server, first)
        assert error == {"type": "error", "code": code, "message": message}, first
        assert (close_code, reason) == (4400, message), first
        await wait_log(server, f"ws m1: refused: {message}")
    error, close_code, reason = await refused(http, server, b"\x00\x01binary")
    assert error is None
    assert (close_code, reason) == (4400, "join expected")
    error, close_code, _ = await refused(http, server, join_message("x" * (MAX_MESSAGE_BYTES + 10)))
    assert error is None
    assert close_code == 1009
    await wait_log(server, "ws m1: refused: Message size")
    assert (await health(http, server))["participants"] == 0


# --- messages after the join -------------------------------------------------------------------


async def test_unknown_and_malformed_messages_keep_the_connection(http, server):
    cases: list[tuple[str, str, str, str | None]] = [
        (
            '{"type": "kick", "participant": "PA_x"}',
            "unknown-type",
            "unknown message type 'kick'",
            "kick",
        ),
        (
            '{"type": "' + "z" * 500 + '"}',
            "unknown-type",
            "unknown message type '" + "z" * 40 + "'",
            "z" * 500,
        ),
        (
            json.dumps({"type": "x\n2099-01-01 ERROR forged\r\nFORGED line"}),
            "unknown-type",
            "unknown message type 'x\n2099-01-01 ERROR forged\r\nFORGED line'",
            "x\n2099-01-01 ERROR forged\r\nFORGED line",
        ),
        ("{not json", "bad-json", "the message is not valid JSON", None),
        ("", "bad-json", "the message is not valid JSON", None),
        ("[" * 5000 + "]" * 5000, "bad-json", "the message is not valid JSON", None),
        (
            '{"type": "chat", "text": "hi", "x": ' + "{" * 5000 + "}" * 5000 + "}",
            "bad-json",
            "the message is not valid JSON",
            None,
        ),
        ("[]", "bad-message", "a message is a JSON object with a string 'type'", None),
        ('{"type": null}', "bad-message", "a message is a JSON object with a string 'type'", None),
        ('{"type": "join", "version": 1}', "unknown-type", "unknown message type 'join'", "join"),
        (
            '{"type": "offer", "pc": "subscriber", "sdp": "v=0"}',
            "bad-message",
            "clients offer only on the publisher connection",
            "offer",
        ),
        ('{"type": "offer"}', "bad-message", "'sdp' must be a non-empty string", "offer"),
        ('{"type": "offer", "sdp": 5}', "bad-message", "'sdp' must be a non-empty string", "offer"),
        (
            '{"type": "offer", "sdp": "v=0", "tracks": {"0": "hologram"}}',
            "bad-message",
            "'tracks' maps mid to camera, microphone or screen",
            "offer",
        ),
        (
            '{"type": "offer", "sdp": "v=0", "tracks": [1]}',
            "bad-message",
            "'tracks' maps mid to camera, microphone or screen",
            "offer",
        ),
        (
            '{"type": "answer", "pc": "publisher", "sdp": "v=0"}',
            "bad-message",
            "clients answer only on the subscriber connection",
            "answer",
        ),
        (
            '{"type": "answer", "pc": "subscriber", "sdp": "v=0"}',
            "bad-request",
            "no subscriber offer is waiting for an answer",
            "answer",
        ),
        (
            '{"type": "restart-ice", "pc": "publisher"}',
            "bad-message",
            "only the subscriber connection is restarted on request; the publisher "
            "connection restarts with an offer that has new ICE credentials",
            "restart-ice",
        ),
        (
            '{"type": "restart-ice", "pc": "subscriber"}',
            "bad-request",
            "no subscriber connection",
            "restart-ice",
        ),
        (
            '{"type": "candidate", "pc": "both"}',
            "bad-message",
            "'pc' must be publisher or subscriber",
            "candidate",
        ),
        (
            '{"type": "candidate", "pc": "publisher", "candidate": "x"}',
            "bad-message",
            "'candidate' must be an object",
            "candidate",
        ),
        (
            '{"type": "candidate", "pc": "publisher", "candidate": {"candidate": 5}}',
            "bad-request",
            "candidate must be a string",
            "candidate",
        ),
        (
            '{"type": "candidate", "pc": "publisher", "candidate": {"candidate": "candidate:garbage"}}',
            "bad-request",
            "malformed ICE candidate",
            "candidate",
        ),
        (
            '{"type": "candidate", "pc": "subscriber", "candidate": {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "0"}}',
            "bad-request",
            "no subscriber connection",
            "candidate",
        ),
        (
            '{"type": "subscribe", "publications": "TR_x"}',
            "bad-message",
            "'publications' must be a list of ids",
            "subscribe",
        ),
        (
            '{"type": "subscribe", "publications": [1]}',
            "bad-message",
            "'publications' must be a list of ids",
            "subscribe",
        ),
        (
            '{"type": "subscribe", "publications": ["TR_nope"]}',
            "unknown-publication",
            "unknown publications: ['TR_nope']",
            "subscribe",
        ),
        (
            '{"type": "unsubscribe", "publications": ["TR_nope"]}',
            "unknown-publication",
            "unknown publications: ['TR_nope']",
            "unsubscribe",
        ),
        (
            '{"type": "unpublish", "source": "camera"}',
            "unknown-publication",
            "nothing published from camera",
            "unpublish",
        ),
        (
            '{"type": "unpublish", "source": "hologram"}',
            "bad-message",
            "'source' must be camera, microphone or screen",
            "unpublish",
        ),
        (
            '{"type": "mute", "source": "microphone", "muted": "yes"}',
            "bad-message",
            "mute needs 'source' and a boolean 'muted'",
            "mute",
        ),
        (
            '{"type": "mute", "source": "microphone", "muted": true}',
            "unknown-publication",
            "nothing published from microphone",
            "mute",
        ),
    ]
    # MAX_ERRORS (20) errors close a connection: a fresh one every 15 cases
    for start in range(0, len(cases), 15):
        ws = await join(http, server, server.token())
        try:
            for data, code, message, request in cases[start : start + 15]:
                await ws.send_str(data)
                error = await expect_error(ws, code, message, request)
                assert set(error) <= {"type", "code", "message", "request"}, error
                await ping_pong(ws, data[:20])
            await ws.send_bytes(b"\x00binary")
            await expect_error(ws, "bad-message", "binary messages are not accepted")
            await ping_pong(ws)
        finally:
            await ws.close()
    log = server.log()
    assert "refused kick: unknown-type: unknown message type 'kick'" in log
    assert "refused offer: bad-message: 'sdp' must be a non-empty string" in log
    assert "refused ?: bad-message: binary messages are not accepted" in log
    # a message cannot forge log records
    lines = log.splitlines()
    assert not any(line.startswith(("FORGED", "2099-")) for line in lines), log


async def test_too_many_errors_close_the_connection(http, server):
    ws = await join(http, server, server.token())
    for i in range(21):
        await ws.send_json({"type": f"nope{i}"})
    for i in range(21):
        await expect_error(ws, "unknown-type", f"unknown message type 'nope{i}'", f"nope{i}")
    assert await closed_with(ws) == (4400, "too many errors")
    await wait_participants(http, server, 0, 5)
    assert "left (too-many-errors)" in server.log()


async def test_every_message_type_is_rate_limited(http, server):
    """Issue 14 item 12: 50 unsolicited `unmute-decline` all reached the chair.  Every
    type now has a rate (conference/realtime/ratelimit.py): the chair gets at most
    DEFAULT of them, the sender `rate-limited` errors, and the flood closes its
    session like any stream of bad messages (4400)."""
    chair = await join(http, server, server.token(identity="huyen", role="chair"))
    point = await join(http, server, server.token(identity="xa-spam"))
    try:
        for _ in range(50):
            await point.send_json({"type": "unmute-decline"})
        errors = 0
        while True:
            msg = await point.receive(timeout=10)
            if msg.type in CLOSED_TYPES:
                break
            message = json.loads(msg.data)
            if message.get("type") == "error":
                assert message["code"] == "rate-limited", message
                assert message["message"] == f"at most {DEFAULT} 'unmute-decline' messages in 10 s"
                errors += 1
        assert point.close_code == 4400 and errors == 21  # MAX_ERRORS (20) + 1
        # what reached the chair: everything before the answer to this ping
        await chair.send_json({"type": "ping", "id": "count"})
        declined = 0
        while True:
            message = await receive_json(chair)
            if message["type"] == "pong" and message.get("id") == "count":
                break
            declined += message["type"] == "unmute-declined"
        assert 1 <= declined <= DEFAULT, declined
    finally:
        await chair.close()
        await point.close()
    assert "refused unmute-decline: rate-limited" in server.log()


async def test_oversize_message_closes_with_1009(http, server):
    ws = await join(http, server, server.token())
    other = await join(http, server, server.token(identity="p2"))
    try:
        await ping_pong(ws)
        await ws.send_str(json.dumps({"type": "ping", "pad": "x" * MAX_MESSAGE_BYTES}))
        code, _ = await closed_with(ws)
        assert code == 1009
        await wait_participants(http, server, 1, 5)
        assert "left (message-too-big)" in server.log()
        # a message just below the limit is fine, for the other participant
        pad = "x" * (MAX_MESSAGE_BYTES - 100)
        await other.send_str(json.dumps({"type": "ping", "id": "big", "pad": pad}))
        assert await reply(other) == {"type": "pong", "id": "big"}
    finally:
        await ws.close()
        await other.close()


async def test_garbage_and_empty_sdp_offers_keep_the_connection(http, server):
    ws = await join(http, server, server.token())
    try:
        await ws.send_json({"type": "offer", "pc": "publisher", "sdp": GARBAGE_SDP})
        await expect_error(ws, "bad-request", "cannot apply offer", "offer")
        await ping_pong(ws)
        await ws.send_json({"type": "offer", "sdp": NO_MEDIA_SDP})
        await expect_error(ws, "bad-request", "the offer sends no audio or video", "offer")
        await ping_pong(ws)
        await ws.send_json({"type": "offer", "sdp": "x" * 60000})
        await expect_error(ws, "bad-request", "the offer is not an SDP offer", "offer")
        await ws.send_json({"type": "offer", "sdp": "v=0\r\nm=" + "z" * 60000})
        await expect_error(ws, "bad-request", "cannot apply offer", "offer")
        # a good offer afterwards is answered
        pc, offer = await make_offer("video")
        try:
            await ws.send_json(
                {"type": "offer", "pc": "publisher", "sdp": offer, "tracks": {"0": "camera"}}
            )
            answer = await reply(ws)
            assert answer["type"] == "answer" and answer["pc"] == "publisher", answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            # a garbage re-offer does not break the existing publication
            await ws.send_json({"type": "offer", "pc": "publisher", "sdp": GARBAGE_SDP})
            await expect_error(ws, "bad-request", "cannot apply offer", "offer")
            await ping_pong(ws)
            room = await _room(ws, lambda r: bool(_mine(r)) and bool(_mine(r)[0]["publications"]))
            mine = _mine(room)
            assert [pub["source"] for pub in mine[0]["publications"]] == ["camera"], room
        finally:
            await pc.close()
    finally:
        await ws.close()


async def test_hostile_ice_candidates(http, server):
    ws = await join(http, server, server.token())
    await ws.send_json(
        {
            "type": "candidate",
            "pc": "publisher",
            "candidate": _cand("1 1 udp 1 127.0.0.1 9 typ host"),
        }
    )
    await expect_error(ws, "bad-request", "no publisher connection", "candidate")
    pc, offer = await make_offer("video")
    try:
        await ws.send_json({"type": "offer", "sdp": offer, "tracks": {"0": "camera"}})
        answer = await reply(ws)
        assert answer["type"] == "answer", answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        for candidate, message in HOSTILE_CANDIDATES:
            await ws.send_json({"type": "candidate", "pc": "publisher", "candidate": candidate})
            await expect_error(ws, "bad-request", message, "candidate")
        # well-formed candidates are still accepted (an mDNS name, end-of-candidates)
        for candidate in (
            _cand("1 1 udp 2122260223 3f0c2a8e-7b1d.local 9 typ host"),
            _cand("2 1 udp 1 192.0.2.1 9 typ srflx raddr 0.0.0.0 rport 0"),
            {"candidate": "", "sdpMid": "0"},
        ):
            await ws.send_json({"type": "candidate", "pc": "publisher", "candidate": candidate})
            await ping_pong(ws, "candidate")
    finally:
        await pc.close()
        await ws.close()


async def test_viewer_may_not_publish(http, server):
    token = server.token(identity="viewer1", role="viewer")
    ws = await join(http, server, token)
    pc, offer = await make_offer("video", "audio")
    try:
        await ws.send_json({"type": "offer", "pc": "publisher", "sdp": offer})
        await expect_error(ws, "forbidden", "this token may not publish", "offer")
        await ping_pong(ws)
        status, body, _ = await post_sdp(http, server.url + "/whip/m1", token, offer)
        assert status == 403
        assert body == {"error": "forbidden", "message": "this token may not publish"}
        assert (await health(http, server))["participants"] == 1
        # a point whose token lacks the publish grant is refused the same way
        muted = server.token(identity="p9", grants=Grants(subscribe=True))
        status, body, _ = await post_sdp(http, server.url + "/whip/m1", muted, offer)
        assert status == 403
        assert body == {"error": "forbidden", "message": "this token may not publish"}
    finally:
        await pc.close()
        await ws.close()
    log = server.log()
    assert "refused offer: forbidden: this token may not publish" in log
    assert "POST /whip/m1: refused 403: " in log


async def test_point_may_not_moderate_by_deleting_sessions(http, server):
    pc, offer = await make_offer("video")
    await pc.close()
    owner = server.token(identity="encoder")
    status, _, response = await post_sdp(http, server.url + "/whip/m1", owner, offer)
    assert status == 201
    location = response.headers["Location"]
    assert location.startswith("/whip/m1/PA_")
    ws = await join(http, server, server.token(identity="p2"))
    try:
        other = auth(server.token(identity="intruder"))
        async with http.delete(server.url + location, headers=other) as response:
            assert response.status == 403
            assert await response.json() == {
                "error": "forbidden",
                "message": "this session belongs to someone else",
            }
        # nor through the WHEP path, nor remove a WebSocket participant
        whep_location = location.replace("/whip/", "/whep/")
        async with http.delete(server.url + whep_location, headers=other) as response:
            assert response.status == 403
        joined_id = next(
            p["id"]
            for p in (await _room(ws, lambda r: bool(_mine(r, "pt:p2"))))["participants"]
            if p["identity"] == "pt:p2"
        )
        async with http.delete(server.url + f"/whip/m1/{joined_id}", headers=other) as response:
            assert response.status == 403
        await ping_pong(ws)
        assert (await health(http, server))["participants"] == 2
        # the owner may end its own session, and a chair (moderate grant) anyone's
        async with http.delete(server.url + location, headers=auth(owner)) as response:
            assert response.status == 200
        await wait_participants(http, server, 1, 5)
        chair = auth(server.token(identity="chair", role="chair"))
        async with http.delete(server.url + f"/whip/m1/{joined_id}", headers=chair) as response:
            assert response.status == 200
        assert await reply(ws) == {"type": "leave", "reason": "deleted"}
        assert await closed_with(ws) == (4410, "deleted")
        await wait_participants(http, server, 0, 5)
    finally:
        await ws.close()


# --- WHIP / WHEP -------------------------------------------------------------------------------


async def test_whip_bad_requests(http, server):
    token = server.token(identity="encoder")
    url = server.url + "/whip/m1"
    pc, offer = await make_offer("video", "audio")
    await pc.close()

    status, body, _ = await post_sdp(http, url, token, offer, content_type="text/plain")
    assert status == 415
    assert body == {"error": "unsupported-media-type", "message": "send an application/sdp offer"}

    status, body, _ = await post_sdp(http, url, token, offer, content_type="application/json")
    assert status == 415

    status, body, _ = await post_sdp(http, url, token, "")
    assert status == 400
    assert body == {"error": "bad-sdp", "message": "the body is not an SDP offer"}

    status, body, _ = await post_sdp(http, url, token, "hello, I am an offer")
    assert status == 400
    assert body == {"error": "bad-sdp", "message": "the body is not an SDP offer"}

    status, body, _ = await post_sdp(http, url, token, b"v=0\r\n\xff\xfe\xfd")
    assert status == 400
    assert body == {"error": "bad-sdp", "message": "the offer is not UTF-8"}

    status, body, _ = await post_sdp(http, url, token, GARBAGE_SDP)
    assert status == 400
    assert body["error"] == "bad-sdp"
    assert body["message"].startswith("cannot apply offer"), body

    status, body, _ = await post_sdp(http, url, token, NO_MEDIA_SDP)
    assert status == 400
    assert body == {"error": "bad-sdp", "message": "the offer sends no audio or video"}

    recv_pc, recv_offer = await make_offer("video", direction="recvonly")
    await recv_pc.close()
    status, body, _ = await post_sdp(http, url, token, recv_offer)
    assert status == 400
    assert body == {"error": "bad-sdp", "message": "the offer sends no audio or video"}

    huge = "v=0\r\n" + "a=x-padding:" + "x" * 200_000 + "\r\n"
    status, body, _ = await post_sdp(http, url, token, huge)
    assert status == 413
    assert body == {
        "error": "request-entity-too-large",
        "message": "the offer is larger than 65536 bytes",
    }

    assert (await health(http, server))["participants"] == 0
    assert "whip m1: bad offer" in server.log()


async def test_whip_huge_chunked_body(http, server):
    token = server.token(identity="encoder")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"v=0\r\n"
        for _ in range(100):
            await asyncio.sleep(0.005)
            yield b"a=x-padding:" + b"x" * 4096 + b"\r\n"

    headers = auth(token) | {"Content-Type": "application/sdp"}
    async with http.post(server.url + "/whip/m1", data=chunks(), headers=headers) as response:
        assert response.status == 413
        body = await response.json()
        assert body["error"] == "request-entity-too-large", body
    assert (await health(http, server))["participants"] == 0


async def test_whip_offer_sent_slowly_is_read_whole(http, server):
    """Not bad input, but the guard against it must not truncate a slow client's offer."""
    pc, offer = await make_offer("video", "audio")
    await pc.close()
    token = server.token(identity="slow")

    async def chunks() -> AsyncIterator[bytes]:
        data = offer.encode()
        for start in range(0, len(data), 200):
            await asyncio.sleep(0.01)
            yield data[start : start + 200]

    headers = auth(token) | {"Content-Type": "application/sdp"}
    async with http.post(server.url + "/whip/m1", data=chunks(), headers=headers) as response:
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
    async with http.delete(server.url + location, headers=auth(token)) as response:
        assert response.status == 200


async def test_whip_session_errors(http, server):
    token = server.token(identity="encoder")
    headers = auth(token)
    async with http.delete(server.url + "/whip/m1/PA_unknown", headers=headers) as response:
        assert response.status == 404
        assert await response.json() == {"error": "not-found", "message": "no such session"}
    async with http.delete(
        server.url + "/whep/nowhere/PA_unknown", headers=auth(server.token(meeting="nowhere"))
    ) as response:
        assert response.status == 404
        assert await response.json() == {"error": "not-found", "message": "no such session"}
    for path in ("/whip/m1/PA_unknown", "/whep/m1/PA_unknown"):
        async with http.patch(
            server.url + path,
            data="a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
            headers=headers | {"Content-Type": "application/trickle-ice-sdpfrag"},
        ) as response:
            assert response.status == 405
            assert response.headers["Allow"] == "DELETE"
            assert await response.json() == {
                "error": "trickle-unsupported",
                "message": "trickle ICE is not supported",
            }
    async with http.get(server.url + "/whip/m1", headers=headers) as response:
        assert response.status == 405
        body = await response.json()
        assert body == {"error": "method-not-allowed", "message": "Method Not Allowed"}
    async with http.post(server.url + "/whip", headers=headers) as response:
        assert response.status == 404
        assert await response.json() == {"error": "not-found", "message": "Not Found"}


async def test_whep_bad_requests(http, server):
    token = server.token(identity="radio", role="viewer")
    pc, offer = await make_offer("video", "audio", direction="recvonly")
    await pc.close()

    status, body, _ = await post_sdp(http, server.url + "/whep/m1", token, offer)
    assert status == 404
    assert body == {"error": "not-found", "message": "the meeting is not live"}
    status, body, _ = await post_sdp(http, server.url + "/whep/m1/PA_nobody", token, offer)
    assert status == 404
    assert body == {"error": "not-found", "message": "the meeting is not live"}

    ws = await join(http, server, server.token(identity="p1"))
    try:
        status, body, _ = await post_sdp(http, server.url + "/whep/m1/PA_nobody", token, offer)
        assert status == 404
        assert body == {"error": "not-found", "message": "no such participant in the meeting"}

        status, body, _ = await post_sdp(http, server.url + "/whep/m1", token, offer, "text/plain")
        assert status == 415
        assert body == {
            "error": "unsupported-media-type",
            "message": "send an application/sdp offer",
        }

        status, body, _ = await post_sdp(http, server.url + "/whep/m1/p1", token, GARBAGE_SDP)
        assert status == 400
        assert body["error"] == "bad-sdp"
        assert body["message"].startswith("cannot apply offer"), body

        status, body, _ = await post_sdp(http, server.url + "/whep/m1", token, NO_MEDIA_SDP)
        assert status == 400
        assert body == {"error": "bad-sdp", "message": "the offer receives no audio or video"}

        no_subscribe = server.token(identity="p5", grants=Grants(publish=True))
        status, body, _ = await post_sdp(http, server.url + "/whep/m1", no_subscribe, offer)
        assert status == 403
        assert body == {"error": "forbidden", "message": "this token may not subscribe"}

        await ping_pong(ws)
        await wait_participants(http, server, 1, 5)
    finally:
        await ws.close()
    await wait_participants(http, server, 0, 5)
    assert (await health(http, server))["rooms"] == 0


# --- a client that never connects its media ----------------------------------------------------


async def ice_only_whip(
    http: aiohttp.ClientSession, server: ServerProcess, token: str
) -> tuple[aioice.Connection, str]:
    """WHIP-publish with a bare ICE agent: ICE connects, DTLS never starts on our side."""
    connection = aioice.Connection(ice_controlling=True, components=1)
    await connection.gather_candidates()
    pc, offer = await make_offer("video")
    await pc.close()
    lines = []
    for line in offer.splitlines():
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        if line.startswith("a=ice-ufrag:"):
            line = f"a=ice-ufrag:{connection.local_username}"
        elif line.startswith("a=ice-pwd:"):
            line = f"a=ice-pwd:{connection.local_password}"
            lines.append(line)
            lines += [f"a=candidate:{c.to_sdp()}" for c in connection.local_candidates]
            line = "a=end-of-candidates"
        lines.append(line)
    status, _, response = await post_sdp(
        http, server.url + "/whip/m1", token, "\r\n".join(lines) + "\r\n"
    )
    assert status == 201
    answer = SessionDescription.parse(await response.text())
    media = answer.media[0]
    assert media.ice is not None
    connection.remote_username = media.ice.usernameFragment
    connection.remote_password = media.ice.password
    for candidate in media.ice_candidates:
        await connection.add_remote_candidate(candidate_to_aioice(candidate))
    await connection.add_remote_candidate(None)
    await asyncio.wait_for(connection.connect(), 10)  # ICE completes; no DTLS from us
    return connection, response.headers["Location"]


@pytest.mark.slow
async def test_client_that_never_completes_ice_or_dtls_is_removed(http, server):
    """Offer, then never finish ICE (a WHIP encoder, a WebSocket client) or DTLS (a bare ICE
    agent): the room watchdog removes all three after CONNECT_TIMEOUT (20 s)."""
    pc, offer = await make_offer("video")
    await pc.close()  # nobody will ever answer the server's connectivity checks
    encoder = server.token("m1", "enc")
    status, _, response = await post_sdp(http, server.url + "/whip/m1", encoder, offer)
    assert status == 201
    ws = await join(http, server, server.token(identity="silent"))
    pc2, offer2 = await make_offer("video")
    await pc2.close()
    await ws.send_json({"type": "offer", "sdp": offer2, "tracks": {"0": "camera"}})
    assert (await reply(ws))["type"] == "answer"
    ice_only, ice_location = await ice_only_whip(http, server, server.token("m1", "ice-only"))
    assert (await health(http, server))["participants"] == 3

    async def read_until_closed() -> tuple[list[dict[str, Any]], int, str]:
        # reading also answers the server's heartbeat pings
        messages: list[dict[str, Any]] = []
        while True:
            msg = await ws.receive(timeout=30)
            if msg.type in CLOSED_TYPES:
                assert ws.close_code is not None
                return messages, ws.close_code, msg.extra or ""
            messages.append(json.loads(msg.data))

    reader = asyncio.ensure_future(read_until_closed())
    try:
        elapsed = await wait_participants(http, server, 0, 26)
        assert 19 < elapsed < 26
        messages, code, reason = await asyncio.wait_for(reader, 10)
    finally:
        reader.cancel()
        await ice_only.close()
    leave = [m for m in messages if m["type"] == "leave"]
    assert leave == [{"type": "leave", "reason": "connection-timeout"}], messages
    assert (code, reason) == (4410, "connection-timeout")
    await ws.close()
    log = server.log()
    assert log.count("left (connection-timeout)") == 3, log
    for location, token in ((response.headers["Location"], encoder), (ice_location, encoder)):
        async with http.delete(server.url + location, headers=auth(token)) as gone:
            assert gone.status == 404


# --- other participants' media is untouched ----------------------------------------------------


async def _barrage(
    http: aiohttp.ClientSession, server: ServerProcess, chair_id: str, tag: str
) -> int:
    """Every kind of bad input against meeting m1; returns how many were refused."""
    refused_count = 0
    pc, offer = await make_offer("video", "audio")
    await pc.close()
    whip = server.url + "/whip/m1"
    for _, factory, code, message, status in BAD_TOKENS:
        error, close_code, _ = await refused(http, server, join_message(factory(server)))
        assert error is not None and error["code"] == code
        got, problem, _ = await post_sdp(http, whip, factory(server), offer)
        assert (got, problem["message"]) == (status, message)
        refused_count += 2
    for first in ("not json", '{"type": "ping"}', '{"type": "join", "version": 9}'):
        error, close_code, _ = await refused(http, server, first)
        assert close_code == 4400
        refused_count += 1
    ws = await join(http, server, server.token(identity=f"hostile{tag}"))
    try:
        for data in (
            "{broken",
            '{"type": "kick", "participant": "' + chair_id + '"}',
            '{"type": "offer", "sdp": "' + GARBAGE_SDP.replace("\r\n", "\\r\\n") + '"}',
            '{"type": "offer", "sdp": "' + NO_MEDIA_SDP.replace("\r\n", "\\r\\n") + '"}',
            '{"type": "subscribe", "publications": ["TR_x"]}',
            '{"type": "unpublish", "source": "camera"}',
            '{"type": "answer", "pc": "subscriber", "sdp": "v=0"}',
        ):
            await ws.send_str(data)
            assert (await reply(ws))["type"] == "error"
            refused_count += 1
        await ping_pong(ws)
        await ws.send_str("x" * (MAX_MESSAGE_BYTES + 1))
        assert (await closed_with(ws))[0] == 1009
        refused_count += 1
    finally:
        await ws.close()
    viewer = await join(http, server, server.token(identity=f"v1{tag}", role="viewer"))
    try:
        await viewer.send_json({"type": "offer", "sdp": offer})
        assert (await reply(viewer))["code"] == "forbidden"
        refused_count += 1
    finally:
        await viewer.close()
    viewer_token = server.token(identity=f"v2{tag}", role="viewer")
    got, _, _ = await post_sdp(http, whip, viewer_token, offer)
    assert got == 403
    refused_count += 1
    token = server.token(identity=f"enc{tag}")
    for body, content_type, expected in (
        (offer, "text/plain", 415),
        ("", "application/sdp", 400),
        (GARBAGE_SDP, "application/sdp", 400),
        (NO_MEDIA_SDP, "application/sdp", 400),
        ("v=0\r\n" + "x" * 100_000, "application/sdp", 413),
    ):
        got, _, _ = await post_sdp(http, whip, token, body, content_type)
        assert got == expected, (got, body[:40])
        refused_count += 1
    for method, path, expected in (
        ("DELETE", f"/whip/m1/{chair_id}", 403),
        ("DELETE", f"/whep/m1/{chair_id}", 403),
        ("DELETE", "/whip/m1/PA_nobody", 404),
        ("PATCH", f"/whip/m1/{chair_id}", 405),
    ):
        async with http.request(method, server.url + path, headers=auth(token)) as response:
            assert response.status == expected, (method, path)
            refused_count += 1
    recv_pc, recv_offer = await make_offer("video", "audio", direction="recvonly")
    await recv_pc.close()
    for path, body, expected in (
        ("/whep/m1/PA_nobody", recv_offer, 404),
        ("/whep/not-live", recv_offer, 404),
        ("/whep/m1", GARBAGE_SDP, 400),
    ):
        meeting = path.split("/")[2]
        got, _, _ = await post_sdp(
            http, server.url + path, server.token(meeting, f"radio{tag}"), body
        )
        assert got == expected, path
        refused_count += 1
    return refused_count


@pytest.mark.media  # decodes video and counts frames in real time
async def test_media_survives_a_barrage_of_bad_input(http, server):
    chair = Client(server.url, "m1", server.token(identity="chair", role="chair"))
    await chair.connect()
    video = BarcodeVideoTrack(320, 240, fps=15)
    await chair.publish({"camera": video})
    viewer = Client(server.url, "m1", server.token(identity="xa1"))
    await viewer.connect()
    try:
        await wait_tracks(viewer, 1)
        track = await wait_track(viewer, chair.id, "camera")
        before = await video_numbers(track, 2.0)
        stop = asyncio.Event()

        async def barrages() -> tuple[int, int]:
            """Two barrages at a time, round after round, until the window closes."""
            rounds = refused = 0
            while not stop.is_set() or rounds < 2:
                counts = await asyncio.gather(
                    *(_barrage(http, server, chair.id, f"{rounds}{x}") for x in "ab")
                )
                refused += sum(counts)
                rounds += 1
            return rounds, refused

        task = asyncio.ensure_future(barrages())
        during = await video_numbers(track, 6.0)
        stop.set()
        rounds, refused_count = await asyncio.wait_for(task, 30)
        # keep reading while the barrage's leftovers are cleaned up
        after = await video_numbers(track, 2.0)
        assert rounds >= 2 and refused_count > 40 * rounds, (rounds, refused_count)
        for numbers in (before, during, after):
            decoded = [n for n in numbers if n is not None]
            assert len(decoded) >= 10, numbers
        everything = before + during + after
        assert increasing(everything), everything
        decoded = [n for n in everything if n is not None]
        # no long freeze: 10 s at 15 fps, allow some loss
        assert len(decoded) >= 100, len(decoded)
        assert max(decoded) > video.frames_sent - 30
        assert chair.errors == [] and viewer.errors == [], (chair.errors, viewer.errors)
        assert chair.left_reason is None and viewer.left_reason is None
        identities = {p["identity"] for p in viewer.room["participants"]}
        assert identities == {"u:chair", "pt:xa1"}, identities
    finally:
        await viewer.leave()
        await chair.leave()


def _simulcast(offer: str, rids: str, declared: str, repaired: bool = True) -> str:
    """``offer`` (one aiortc video m-line) turned into a simulcast offer."""
    extra = [
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        *(
            ["a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"]
            if repaired
            else []
        ),
        *(f"a=rid:{rid} send" for rid in declared.split()),
        f"a=simulcast:send {rids}",
    ]
    # aiortc's own offer lists the RID extensions already (the server's bridge adds them)
    lines = [line for line in offer.split("\r\n") if "rtp-stream-id" not in line]
    at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:"))
    return "\r\n".join(lines[: at + 1] + extra + lines[at + 1 :])


async def test_malformed_simulcast_offers_keep_the_connection(http, server):
    ws = await join(http, server, server.token())
    pc, offer = await make_offer("video")
    try:
        for sdp, message in (
            (_simulcast(offer, "q;h;z", "q h f"), "bad simulcast offer: simulcast names rid 'z'"),
            (
                _simulcast(offer, "a;b;c;d", "a b c d"),
                "bad simulcast offer: 4 simulcast layers (at most 3)",
            ),
            (
                _simulcast(offer, "q;h;f", "q h f", repaired=False),
                "bad simulcast offer: simulcast with RTX needs the repaired-rtp-stream-id",
            ),
        ):
            await ws.send_json({"type": "offer", "pc": "publisher", "sdp": sdp})
            await expect_error(ws, "bad-request", message, "offer")
            await ping_pong(ws)
        # a good simulcast offer is answered with the layers received
        good = _simulcast(offer, "q;h;f", "q h f")
        await ws.send_json({"type": "offer", "sdp": good, "tracks": {"0": "camera"}})
        answer = await reply(ws)
        assert answer["type"] == "answer", answer
        assert "a=simulcast:recv q;h;f" in answer["sdp"] and "a=rid:f recv" in answer["sdp"]
        room = await _room(ws, lambda r: bool(_mine(r)) and bool(_mine(r)[0]["publications"]))
        mine = _mine(room)
        assert mine[0]["publications"][0]["layers"] == ["q", "h", "f"], room
        # the layers of a published m-line cannot change in a re-offer
        await ws.send_json({"type": "offer", "sdp": _simulcast(offer, "q;h", "q h")})
        await expect_error(ws, "bad-request", "the simulcast layers of an m-line cannot change")
        await ping_pong(ws)
    finally:
        await pc.close()
        await ws.close()


async def test_bad_view_and_profile_messages(http, server):
    ws = await join(http, server, server.token())
    try:
        for message, text in (
            ({"type": "view", "videos": ["TR_x"]}, "'videos' maps publication ids"),
            ({"type": "view", "videos": {"TR_x": "huge"}}, "'videos' maps publication ids"),
            ({"type": "profile", "profile": "ultra"}, "'profile' must be high, low or audio"),
            (
                {"type": "set-profile", "participant": "PA_x", "profile": "low"},
                "only a moderator (the chair)",
            ),
        ):
            await ws.send_json(message)
            error = await reply(ws)
            assert error["type"] == "error" and error["message"].startswith(text), error
            await ping_pong(ws)
        await ws.send_json({"type": "view", "videos": {"TR_x": "small"}})  # unknown ids: fine
        await ws.send_json({"type": "profile", "profile": "low"})
        room = await _room(ws, lambda r: [p.get("profile") for p in _mine(r)] == ["low"])
        assert [p["profile"] for p in room["participants"] if p["identity"] == "pt:p1"] == ["low"]
    finally:
        await ws.close()


async def test_malformed_http_requests_get_400_and_no_traceback(server):
    """Issue 14 item 14: a malformed request (a scanner, a TLS hello on the plain port)
    gets its 400; the log has no traceback and no error line (aiohttp wrote both): one
    DEBUG line, shown only at log_level DEBUG."""
    payloads = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /\x01\x02 HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
    ]
    for payload in payloads:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(payload)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.") and b" 400 " in status, (payload, status)
        writer.close()
    await asyncio.sleep(0.3)
    log = server.log()
    assert "Error handling request" not in log, log[-2000:]
