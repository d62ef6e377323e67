"""Pin the aiortc internals that conference/sfu/bridge.py relies on.

If an aiortc upgrade renames the hooked private method or changes how
transceivers are built, these tests fail before anything subtle breaks.
"""

from __future__ import annotations

import asyncio
import socket

import aioice.ice
import aiortc
from aiortc import RTCPeerConnection, RTCSessionDescription

from conference.sfu.bridge import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    announce_address,
    configure_ice_hosts,
    ice_candidate_from_json,
)
from conference.sfu.udp import PortRangeEventLoop


def test_pinned_aiortc_version():
    assert aiortc.__version__ == "1.16.0"
    assert hasattr(RTCPeerConnection, "_RTCPeerConnection__createTransceiver")


async def test_add_transceiver_uses_forwarding_parts():
    pc = ForwardingPeerConnection()
    transceiver = pc.addTransceiver("video", direction="sendonly")
    assert isinstance(transceiver.sender, ForwardingSender)
    assert isinstance(transceiver.receiver, ForwardingReceiver)
    # the receiver reports RTCP from the sender's SSRC, as aiortc does
    assert transceiver.receiver._rtcp_ssrc == transceiver.sender._ssrc
    await pc.close()


async def test_remote_offer_creates_forwarding_transceivers():
    configure_ice_hosts(["127.0.0.1"])
    client = RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    client.addTransceiver("audio", direction="sendonly")
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    server = ForwardingPeerConnection()
    await server.setRemoteDescription(
        RTCSessionDescription(sdp=client.localDescription.sdp, type="offer")
    )
    kinds = []
    for transceiver in server.getTransceivers():
        assert isinstance(transceiver.receiver, ForwardingReceiver)
        assert isinstance(transceiver.sender, ForwardingSender)
        kinds.append(transceiver.kind)
    assert kinds == ["audio", "video"]
    await server.setLocalDescription(await server.createAnswer())
    assert "127.0.0.1" in server.localDescription.sdp
    await client.close()
    await server.close()


def test_configure_ice_hosts_and_restore():
    original = (
        aioice.ice._conference_original_get_host_addresses
        if hasattr(aioice.ice, "_conference_original_get_host_addresses")
        else aioice.ice.get_host_addresses
    )
    configure_ice_hosts(["127.0.0.1", "::1"])
    assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
    configure_ice_hosts([])
    assert aioice.ice.get_host_addresses is original
    configure_ice_hosts(["127.0.0.1"])


def test_announce_address_adds_public_candidates():
    sdp = (
        "v=0\r\n"
        "a=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host\r\n"
        "a=candidate:def 1 udp 1694498815 1.2.3.4 40000 typ srflx raddr 10.0.0.5 rport 40000\r\n"
    )
    out = announce_address(sdp, "203.0.113.7")
    lines = out.split("\r\n")
    assert "a=candidate:pabc 1 udp 2130706430 203.0.113.7 40000 typ host" in lines
    assert sum("203.0.113.7" in line for line in lines) == 1  # srflx untouched
    assert announce_address(sdp, None) == sdp


def test_ice_candidate_from_browser_json():
    candidate = ice_candidate_from_json(
        {
            "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 54321 typ host generation 0",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
    )
    assert candidate is not None
    assert (candidate.ip, candidate.port, candidate.sdpMid) == ("127.0.0.1", 54321, "0")
    assert ice_candidate_from_json({"candidate": ""}) is None
    for bad in ({"candidate": 5}, {"candidate": "candidate:garbage"}):
        try:
            ice_candidate_from_json(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"accepted {bad}")


def test_port_range_loop_binds_inside_the_range():
    loop = PortRangeEventLoop()
    loop.port_range = (41500, 41502)
    try:

        async def bind_three() -> list[int]:
            ports = []
            transports = []
            for _ in range(3):
                transport, _protocol = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
                )
                transports.append(transport)
                ports.append(transport.get_extra_info("sockname")[1])
            try:
                await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
                )
            except OSError as exc:
                assert "no free UDP port" in str(exc)
            else:
                raise AssertionError("a fourth socket was bound in a range of three")
            for transport in transports:
                transport.close()
            return ports

        ports = loop.run_until_complete(bind_three())
        assert sorted(ports) == [41500, 41501, 41502]
    finally:
        loop.close()
    # sockets bound elsewhere are untouched
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.close()


def test_fast_protect_matches_pylibsrtp():
    from pylibsrtp import Policy, Session

    from conference.sfu.bridge import fast_protect
    from conference.sfu.rtpwire import build_rtp

    key = bytes(range(30))
    sender = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    reference = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    receiver = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    protect = fast_protect(sender)
    for seq in range(5):
        packet = build_rtp(96, False, seq, 1000 * seq, 1234, bytes([seq]) * (100 + seq))
        protected = protect(packet)
        assert protected == reference.protect(packet)
        assert receiver.unprotect(protected) == packet
