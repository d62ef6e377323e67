"""Fuzz the WebSocket signaling messages of a joined session, without a network.

The path is the server's own (conference/realtime/signaling.py ``serve``): the text of a
WebSocket message goes through `signaling._kind` and `signaling._parse` (depth-limited
JSON, conference/core/jsontext.py) to `messages.dispatch` and the message's handler
(conference/realtime/messages.py), which calls the chair's rules of a real `Briefing`
(conference/realtime/briefing.py) on a real `Room` with real `Participant` objects: a
chair, a point publishing a microphone and a camera, a viewer, and a point on another node
of the meeting.  Only the calls that would open network connections (an offer, an answer, an
ICE candidate reaching the peer connection, the subscriber connection's renegotiation)
are replaced; ICE candidates are still checked by `messages.candidate_field`, and a
``subscribe`` still adds a real transceiver (one DTLS certificate serves every peer
connection, for speed).

One input is up to 16 messages separated by NUL bytes (JSON text holds none); the first
byte of each picks its sender.  A crash is any exception other than those ``serve``
answers with an ``error`` message (ProtocolError, RoomError, NegotiationError,
ValueError, PermissionError), or an exception in a task the messages started.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import common
from aiortc import RTCCertificate

with common.instrumented():
    from conference.core.identity import Identity
    from conference.realtime import signaling
    from conference.realtime.briefing import Briefing, Briefings
    from conference.realtime.messages import ProtocolError, Session, dispatch
    from conference.sfu.bridge import ForwardingReceiver
    from conference.sfu.participant import NegotiationError, Participant
    from conference.sfu.publication import Publication
    from conference.sfu.room import RoomError, RoomRegistry

REFUSALS = (ProtocolError, RoomError, NegotiationError, ValueError, PermissionError)
MAX_MESSAGES = 16
REMOTE = {"id": "PA_remote", "identity": "point:xa-b", "name": "Xã B", "publish": True}

logging.disable(logging.CRITICAL)  # the handlers log every refusal
# a subscription makes a subscriber peer connection: one certificate serves them all
_CERTIFICATE = RTCCertificate.generateCertificate()
RTCCertificate.generateCertificate = classmethod(lambda cls: _CERTIFICATE)  # type: ignore[assignment]
loop = asyncio.new_event_loop()
task_errors: list[dict[str, Any]] = []
loop.set_exception_handler(lambda _loop, context: task_errors.append(context))


async def _offer(sdp: str, sources: dict[str, str] | None = None) -> str:
    return "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def _answer(sdp: str) -> None:
    return None


async def _candidate(which: str, candidate: Any) -> None:
    return None


async def _negotiate() -> None:
    return None  # the subscriber's offer: ICE gathering would open sockets


async def _join(briefing: Briefing, identity: str, chair: bool, publish: bool) -> Session:
    async def signal(message: dict[str, Any]) -> None:
        return None

    who = Identity(
        identity=identity,
        name=f"UBND {identity}",
        role="chair" if chair else "point",
        publish=publish,
        moderate=chair,
    )
    participant = Participant(briefing.room, who, "websocket", signal=signal, auto_subscribe=False)
    participant._negotiate = _negotiate  # type: ignore[method-assign]
    participant.publisher_offer = _offer  # type: ignore[method-assign]
    participant.subscriber_answer = _answer  # type: ignore[method-assign]
    participant.add_candidate = _candidate  # type: ignore[method-assign]

    async def disconnect(reason: str) -> None:
        return None

    participant.disconnect = disconnect
    await briefing.room.join(participant)
    for source in ("microphone", "camera") if publish else ():
        kind = "audio" if source == "microphone" else "video"
        receiver = ForwardingReceiver(kind, None)  # type: ignore[arg-type]  # no connection
        codec, rate = ("opus", 48000) if kind == "audio" else ("vp8", 90000)
        publication = Publication(
            f"PU_{identity}_{source}", participant.id, source, receiver, codec, rate
        )
        participant.publications[publication.id] = publication
        briefing.room.publication_added(publication)
    return Session(participant, briefing, signal)


async def _session(data: bytes) -> None:
    registry = RoomRegistry(max_rooms=2, max_participants=10)
    briefings = Briefings(registry)
    try:
        briefing = briefings.open("m1")
        briefing.share = lambda event: None  # the meeting spans two nodes
        briefing.room.remote_members = {"node-2": [dict(REMOTE)]}
        sessions = [
            await _join(briefing, "chair", chair=True, publish=True),
            await _join(briefing, "point:xa-a", chair=False, publish=True),
            await _join(briefing, "viewer", chair=False, publish=False),
        ]
        gone: set[int] = set()
        for chunk in data.split(b"\x00")[:MAX_MESSAGES]:
            if not chunk:
                continue
            sender = chunk[0] % len(sessions)
            if sender in gone:
                continue
            try:
                text = chunk[1:].decode("utf-8")  # aiohttp refuses a TEXT frame that is not
            except UnicodeDecodeError:
                continue
            session = sessions[sender]
            signaling._kind(text)
            try:
                if await dispatch(session, signaling._parse(text)):
                    gone.add(sender)
            except REFUSALS:
                pass
            if session.participant.closed:
                gone.add(sender)
        for _ in range(3):  # let the tasks the messages started run
            await asyncio.sleep(0)
    finally:
        await registry.close()


def test_one_input(data: bytes) -> None:
    task_errors.clear()
    loop.run_until_complete(_session(data))
    if task_errors:
        context = task_errors[0]
        raise RuntimeError(f"a task failed: {context.get('message')}") from context.get("exception")


def _message(sender: int, text: str) -> bytes:
    return bytes([sender]) + text.encode()


SEEDS = [
    b"\x00".join(
        [
            _message(
                0,
                '{"type":"mute-participant","participant":"PA_remote","source":"microphone","muted":true}',
            ),
            _message(1, '{"type":"raise-hand"}'),
            _message(0, '{"type":"give-floor","participant":"PA_remote"}'),
            _message(1, '{"type":"chat","text":"Xin chào"}'),
            _message(0, '{"type":"lock","locked":true}'),
            _message(0, '{"type":"mute-all"}'),
            _message(1, '{"type":"mute","source":"microphone","muted":false}'),
        ]
    ),
    _message(
        1,
        '{"type":"candidate","pc":"publisher","candidate":{"candidate":'
        '"candidate:1 1 udp 2122260223 192.168.1.5 54400 typ host","sdpMid":"0"}}',
    ),
    _message(
        1,
        '{"type":"offer","sdp":"v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n",'
        '"tracks":{"0":"microphone"}}',
    ),
    _message(2, '{"type":"view","videos":{"PU_point:xa-a_camera":"large"}}')
    + b"\x00"
    + _message(2, '{"type":"subscribe","publications":["PU_chair_microphone","x"]}'),
    _message(0, '{"type":"set-profile","participant":"PA_remote","profile":"low"}')
    + b"\x00"
    + _message(0, '{"type":"remove","participant":"PA_remote","reason":"x"}')
    + b"\x00"
    + _message(0, '{"type":"end-meeting"}'),
    _message(1, '{"type":"ping","id":[[[[[[[[1]]]]]]]]}'),
    _message(0, '{"type":"admit","identity":"point:xa-c"}')
    + b"\x00"
    + _message(0, '{"type":"record-start"}'),
]

if __name__ == "__main__":
    common.run("signaling", test_one_input, SEEDS)
