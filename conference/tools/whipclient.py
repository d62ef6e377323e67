"""Minimal WHIP and WHEP clients (RFC 9725 and its egress twin) on aiortc.

Used by the tests, the benchmarks and the load tester as an independent
encoder/viewer that speaks only HTTP + SDP, like OBS, FFmpeg or a radio box.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from ..sfu.bridge import ForwardingPeerConnection


class WhipError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


@dataclass
class WhipSession:
    pc: RTCPeerConnection
    location: str
    token: str
    tracks: dict[str, Any] = field(default_factory=dict)  # kind -> received track (WHEP)

    async def delete(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(
                self.location, headers={"Authorization": f"Bearer {self.token}"}
            ) as response:
                status = response.status
        await self.pc.close()
        return status


async def exchange(
    url: str,
    token: str,
    pc: RTCPeerConnection,
    offer_sdp: Callable[[str], str] = lambda sdp: sdp,
    answer_sdp: Callable[[str], Awaitable[str]] | None = None,
) -> str:
    """POST our offer (through ``offer_sdp``), apply the answer (through
    ``answer_sdp``); returns the session's URL.  Raises :class:`WhipError`."""
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url,
            data=offer_sdp(pc.localDescription.sdp).encode(),
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
        ) as response:
            body = await response.text()
            if response.status != 201:
                await pc.close()
                raise WhipError(response.status, body)
            location = urljoin(url, response.headers["Location"])
    if answer_sdp is not None:
        body = await answer_sdp(body)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return location


async def whip_publish(url: str, token: str, tracks: list[MediaStreamTrack]) -> WhipSession:
    """Publish ``tracks`` to ``url`` (``.../whip/{meeting}``)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")
    location = await exchange(url, token, pc)
    return WhipSession(pc, location, token)


async def whep_watch(
    url: str, token: str, decode: bool = True, headers_only: bool = False
) -> WhipSession:
    """Watch ``url`` (``.../whep/{meeting}[/{participant}]``): audio and video.
    ``headers_only`` (not decoding): received RTP may be read from its headers, for
    receivers given a header sink (the load tester's lean viewers)."""
    pc: RTCPeerConnection = (
        RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if decode
        else ForwardingPeerConnection([], headers_only=headers_only)
    )
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    location = await exchange(url, token, pc)
    session = WhipSession(pc, location, token)
    for transceiver in pc.getTransceivers():
        session.tracks[transceiver.kind] = transceiver.receiver.track
    return session
