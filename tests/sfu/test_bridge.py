"""Pin the aiortc internals that conference/sfu/bridge.py relies on.

If an aiortc upgrade renames the hooked private method or changes how
transceivers are built, these tests fail before anything subtle breaks.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aioice.ice
import aiortc
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from conference.sfu import sysdtls
from conference.sfu.bridge import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    RtpPacket,
    announce_address,
    configure_ice_hosts,
    ice_candidate_from_json,
)
from conference.sfu.udp import PortRangeEventLoop


def test_pinned_aiortc_version():
    assert aiortc.__version__ == "1.16.0"
    assert hasattr(RTCPeerConnection, "_RTCPeerConnection__createTransceiver")


async def test_add_transceiver_uses_forwarding_parts():
    import inspect

    import aiortc.rtcpeerconnection
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    # aiortc builds the receiver from its module's global, which bridge swaps for the call
    source = inspect.getsource(RTCPeerConnection._RTCPeerConnection__createTransceiver)
    assert "receiver=RTCRtpReceiver(kind, dtlsTransport)" in source
    pc = ForwardingPeerConnection()
    transceiver = pc.addTransceiver("video", direction="sendonly")
    assert isinstance(transceiver.sender, ForwardingSender)
    assert type(transceiver.receiver) is ForwardingReceiver
    # the receiver reports RTCP from the sender's SSRC, as aiortc does
    assert transceiver.receiver._rtcp_ssrc == transceiver.sender._ssrc
    # the stock receiver class is back for anyone else
    assert aiortc.rtcpeerconnection.RTCRtpReceiver is RTCRtpReceiver
    stock = RTCPeerConnection()
    assert type(stock.addTransceiver("audio").receiver) is RTCRtpReceiver
    await stock.close()
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


def test_ice_sockets_keep_the_large_receive_buffer():
    """aioice shrinks SO_RCVBUF to 256 KiB after binding a host candidate; the bridge
    makes it keep the event loop's size (a chair's socket dropped datagrams at 512 KiB)."""
    from aioice.ice import Connection

    from conference.sfu.udp import RECEIVE_BUFFER

    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    expected = 2 * min(RECEIVE_BUFFER, rmem_max)  # the kernel doubles what it grants
    loop = PortRangeEventLoop()
    try:

        async def gather() -> list[int]:
            connection = Connection(ice_controlling=True)
            await connection.gather_candidates()
            sizes = [
                protocol.transport.get_extra_info("socket").getsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF
                )
                for protocol in connection._protocols
            ]
            await connection.close()
            return sizes

        sizes = loop.run_until_complete(gather())
    finally:
        loop.close()
    assert sizes and all(size == expected for size in sizes), (sizes, expected)
    assert expected > 2 * 262144 or rmem_max <= 262144


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


def test_protect_into_and_fast_unprotect_match_pylibsrtp():
    """The fan-out writes each copy into the SRTP buffer and protects it there; the
    ingress unprotects without pylibsrtp's wrapper: byte for byte what pylibsrtp
    gives, and a tampered or replayed packet is refused."""
    import pylibsrtp
    from pylibsrtp import Policy, Session

    from conference.sfu.bridge import fast_unprotect, protect_into
    from conference.sfu.rtpwire import build_rtp_with_block, extension_block

    key = bytes(range(30))
    write = protect_into(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
    assert write is not None
    reference = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    receiver = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    unprotect = fast_unprotect(receiver)
    block = extension_block(((1, b"0"), (3, b"\x01\x02\x03")))
    for seq, (marker, ext) in enumerate([(True, block), (False, b""), (False, block)] * 3):
        payload = bytes([seq]) * (100 + 97 * seq)
        packet = build_rtp_with_block(96, marker, seq, 3000 * seq, 1234, payload, ext)
        protected = bytes(write(0x80 | 96 if marker else 96, seq, 3000 * seq, 1234, ext, payload))
        assert protected == reference.protect(packet)
        assert unprotect(protected) == packet
        with pytest.raises(pylibsrtp.Error):
            unprotect(protected)  # a replay
    tampered = bytearray(reference.protect(build_rtp_with_block(96, False, 50, 0, 1234, b"x", b"")))
    tampered[-1] ^= 1
    with pytest.raises(pylibsrtp.Error):
        unprotect(bytes(tampered))
    with pytest.raises(pylibsrtp.Error):
        write(96, 51, 0, 1234, b"", bytes(70000))  # longer than any datagram


def test_reception_statistics_match_aiortc(monkeypatch):
    """The ingress's statistics (what receiver reports carry) are aiortc's, on a stream
    with loss, reordering, duplicates and wrap-around."""
    import random

    from aiortc.rtcrtpreceiver import StreamStatistics

    from conference.sfu.bridge import ReceptionStatistics

    rng = random.Random(3)
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ours, theirs = ReceptionStatistics(90000), StreamStatistics(90000)
    seq, timestamp = 65000, 123456
    for _ in range(3000):
        step = rng.choice([1, 1, 1, 1, 2, 5, 0, -1, -3])
        seq = (seq + step) & 0xFFFF
        timestamp = (timestamp + rng.choice([0, 0, 3000])) & 0xFFFFFFFF
        clock[0] += rng.random() * 0.02
        packet = RtpPacket(sequence_number=seq, timestamp=timestamp)
        ours.add(packet)
        theirs.add(packet)
        assert (ours.max_seq, ours.cycles, ours.packets_received, ours.jitter) == (
            theirs.max_seq,
            theirs.cycles,
            theirs.packets_received,
            theirs.jitter,
        )
        if rng.random() < 0.05:
            assert ours.fraction_lost == theirs.fraction_lost
            assert ours.packets_lost == theirs.packets_lost
    assert ours.cycles >= 1 << 16 and ours.jitter > 0


# -- client-side hooks (used by the load tester's simulated points) ---------------------


def _stock_sender(track_or_kind):
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpsender import RTCRtpSender

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    return RTCRtpSender(track_or_kind, dtls)


def test_client_hook_internals_are_still_there():
    """aiortc is pinned; an upgrade that changes these breaks the load tester's publishers."""
    import inspect

    from aiortc.rtcrtpsender import RTCEncodedFrame, RTCRtpSender

    assert callable(RTCRtpSender._send_keyframe)
    assert "self._send_keyframe()" in inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    run_rtp = inspect.getsource(RTCRtpSender._run_rtp)
    assert "await self._next_encoded_frame(codec)" in run_rtp
    assert "enc_frame.audio_level" in run_rtp
    assert "audio_level" in inspect.signature(RTCEncodedFrame.__init__).parameters
    assert "self.estimate_bandwidth" in inspect.getsource(ForwardingReceiver.handle_rtp)


async def test_honour_keyframe_requests_calls_back_on_pli_and_fir():
    from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

    from conference.sfu.bridge import honour_keyframe_requests

    sender = _stock_sender("video")
    calls = []
    honour_keyframe_requests(sender, lambda: calls.append(1))
    for fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
        await sender._handle_rtcp_packet(
            RtcpPsfbPacket(fmt=fmt, ssrc=1234, media_ssrc=sender._ssrc)
        )
    assert calls == [1, 1]
    # and aiortc's own flag for its encoder is still set
    assert sender._RTCRtpSender__force_keyframe is True


async def test_attach_audio_levels_labels_pre_encoded_opus():
    from fractions import Fraction

    import av
    from aiortc import MediaStreamTrack
    from aiortc.codecs import get_capabilities
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from conference.sfu.bridge import attach_audio_levels

    class OpusPackets(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.pts = 0

        async def recv(self) -> av.Packet:
            packet = av.Packet(b"\xf8\xff\xfe")  # an Opus packet (20 ms, silence)
            packet.pts = self.pts
            packet.time_base = Fraction(1, 48000)
            self.pts += 960
            return packet

    sender = _stock_sender(OpusPackets())
    opus = next(c for c in get_capabilities("audio").codecs if c.name == "opus")
    codec = RTCRtpCodecParameters(
        mimeType=opus.mimeType, clockRate=opus.clockRate, channels=2, payloadType=111
    )
    # without the hook, aiortc leaves the level of a pre-encoded packet unset
    frame = await sender._next_encoded_frame(codec)
    assert frame is not None and frame.audio_level is None
    levels = iter([30, 127])
    attach_audio_levels(sender, lambda: next(levels))
    frame = await sender._next_encoded_frame(codec)
    assert frame.audio_level == -30 and frame.payloads == [b"\xf8\xff\xfe"]
    frame = await sender._next_encoded_frame(codec)
    assert frame.audio_level == -127 and frame.timestamp == 1920


async def test_light_receiver_switches_off_remb():
    from conference.sfu.bridge import light_receiver

    pc = ForwardingPeerConnection()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    assert receiver.estimate_bandwidth and receiver._remb is None  # made on first packet
    light_receiver(receiver)
    assert not receiver.estimate_bandwidth
    await pc.close()


def _estimator_inputs(seed: int, count: int) -> list[tuple[int, int, int]]:
    """(arrival ms, abs-send-time, size) of a paced ~500 kbps video stream with jitter."""
    import random

    rng = random.Random(seed)
    out = []
    send = 0.0
    for i in range(count):
        send += rng.choice((0.0, 0.0, 33.3)) if i % 3 else 33.3  # frames of 1-3 packets
        send += rng.random() * 2
        arrival = int(send + 20 + rng.random() * (30 if 2000 < i < 2600 else 4))
        out.append((arrival, int(send * 262.144) & 0xFFFFFF, rng.randint(300, 1200)))
    out.sort()
    return out


def test_sliding_rate_counter_matches_aiortc():
    import random

    from aiortc.rate import RateCounter

    from conference.sfu.bridge import SlidingRateCounter

    rng = random.Random(7)
    ours, theirs = SlidingRateCounter(1000, 8000), RateCounter(1000, 8000)
    now = 1000
    for i in range(5000):
        now += rng.choice((0, 1, 3, 20, 40, 300, 1500)) if i % 500 else 0
        if i % 1700 == 1699:
            ours.reset()
            theirs.reset()
        assert ours.rate(now) == theirs.rate(now)
        size = rng.randint(1, 1500)
        ours.add(size, now)
        theirs.add(size, now)
        assert ours.rate(now) == theirs.rate(now)


def test_bitrate_estimator_gives_aiortc_remb():
    """Same REMB values, at the same packets, as aiortc's own estimator (with a delay spike)."""
    from aiortc.rate import RemoteBitrateEstimator

    from conference.sfu.bridge import bitrate_estimator

    ours, theirs = bitrate_estimator(), RemoteBitrateEstimator()
    results = []
    for arrival, abs_send, size in _estimator_inputs(3, 6000):
        a = ours.add(arrival_time_ms=arrival, abs_send_time=abs_send, payload_size=size, ssrc=9)
        b = theirs.add(arrival_time_ms=arrival, abs_send_time=abs_send, payload_size=size, ssrc=9)
        assert a == b
        if a is not None:
            results.append(a[0])
    assert len(results) > 50 and len(set(results)) > 10  # it really estimated


# -- the publisher-facing feedback of ForwardingReceiver ---------------------------------


def _feedback_receiver():
    """A video ForwardingReceiver on an unconnected transport, recording its RTCP."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    receiver = ForwardingReceiver("video", dtls)
    receiver._codecs = {
        96: RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    }
    receiver._set_rtcp_ssrc(1111)
    sent = []

    def send_rtcp(data: bytes) -> None:
        from aiortc.rtp import RtcpPacket

        sent.extend(RtcpPacket.parse(data))

    receiver.send_rtcp = send_rtcp
    return receiver, sent


def _video_packet(seq: int, abs_send_time: int | None = None):
    from aiortc.rtp import RtpPacket

    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=4242)
    packet.payload = b"\x10" + bytes(900)
    packet.extensions.abs_send_time = abs_send_time
    return packet


def _congested_inputs(count: int) -> list[tuple[int, int, int]]:
    """(arrival ms, abs-send-time, size): 30 fps, two packets a frame, and a
    queue building up for ~5 s (the estimator sees overuse and updates its
    estimate on almost every packet)."""
    import random

    rng = random.Random(1)
    out = []
    send, delay = 0.0, 20.0
    for i in range(count):
        send += 33.3 if i % 2 == 0 else 0.5
        if 200 < i < 500:
            delay += 0.8
        elif i >= 500:
            delay = max(20.0, delay - 2)
        out.append((int(send + delay + rng.random() * 3), int(send * 262.144) & 0xFFFFFF, 1000))
    return out


async def test_remb_goes_out_five_times_a_second_not_per_estimate():
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket

    from conference.sfu.bridge import bitrate_estimator

    inputs = _congested_inputs(1200)  # 20 s
    reference = bitrate_estimator()
    estimates = sum(
        reference.add(arrival_time_ms=a, abs_send_time=t, payload_size=n, ssrc=4242) is not None
        for a, t, n in inputs
    )
    receiver, sent = _feedback_receiver()
    for seq, (arrival, abs_send, _) in enumerate(inputs):
        await receiver._handle_rtp_packet(_video_packet(seq, abs_send), arrival)
    rembs = [p for p in sent if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP]
    assert rembs == sent  # no loss, so nothing but REMB
    assert estimates > 250  # aiortc's estimator had a new value for a quarter of the packets
    assert 20 <= len(rembs) <= 150  # REMB: every 200 ms (100 in 20 s), or at once on a drop
    assert receiver.estimated_bitrate is not None


async def test_nack_retries_while_the_rtcp_clock_idles():
    from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket

    from conference.sfu.bridge import rtcp_clock

    receiver, sent = _feedback_receiver()
    clock = rtcp_clock()
    clock.add(receiver)
    try:
        await receiver._handle_rtp_packet(_video_packet(1), 0)
        await asyncio.sleep(0.1)  # nothing missing: no NACK timer runs
        assert not clock.nacking
        await receiver._handle_rtp_packet(_video_packet(4), 0)  # 2 and 3 missing
        assert clock.nacking == {receiver}
        await asyncio.sleep(0.35)
    finally:
        clock.remove(receiver)
    nacks = [p for p in sent if isinstance(p, RtcpRtpfbPacket) and p.fmt == RTCP_RTPFB_NACK]
    # at once, then every 50 ms, three retries (NackTracker defaults)
    assert [sorted(p.lost) for p in nacks] == [[2, 3]] * 4
    assert not clock.nacking  # given up: the retries stopped


async def test_consent_checks_wait_for_a_late_answer():
    """aioice's consent check (the only request without retransmissions) survives a
    peer that answers after 1.2 s; a connectivity check keeps aioice's own schedule."""
    import inspect

    from aioice import stun
    from aioice.ice import Connection, StunProtocol

    from conference.sfu import bridge

    source = inspect.getsource(Connection.query_consent)
    assert "retransmissions=0" in source and "failures >= CONSENT_FAILURES" in source
    assert StunProtocol.request._conference_patient
    assert aioice.ice.CONSENT_FAILURES == bridge.CONSENT_FAILURES == 4
    bridge.patient_consent_checks()  # idempotent
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(None), local_addr=("127.0.0.1", 0)
    )

    async def answer_late() -> int:
        data, addr = await loop.sock_recvfrom(peer, 2048)
        first = loop.time()
        await asyncio.sleep(1.2)
        request = stun.parse_message(data)
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        peer.sendto(bytes(response), addr)
        resent = 0
        while loop.time() - first < 1.6:
            try:
                await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 0.1)
                resent += 1
            except TimeoutError:
                pass
        return resent

    try:
        answering = asyncio.ensure_future(answer_late())
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        response, _ = await protocol.request(request, peer.getsockname(), retransmissions=0)
        assert response.transaction_id == request.transaction_id
        assert await answering == 1  # resent once at 0.5 s, answered before 1.5 s
    finally:
        transport.close()
        peer.close()


async def test_opus_fec_and_dtx_and_simulcast_extensions_are_negotiated() -> None:
    """The server's SDP asks senders for Opus FEC and DTX, and accepts the RID,
    repaired-RID and transport-wide sequence number extensions on video."""
    from conference.sfu.bridge import ForwardingPeerConnection
    from conference.sfu.simulcast import REPAIRED_RID_URI, RID_URI
    from conference.sfu.twcc import TWCC_URI

    pc = ForwardingPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        offer = await pc.createOffer()
        assert "useinbandfec=1" in offer.sdp and "usedtx=1" in offer.sdp
        video = offer.sdp.split("m=video")[1]
        for uri in (RID_URI, REPAIRED_RID_URI, TWCC_URI):
            assert uri in video
    finally:
        await pc.close()


def test_transport_cc_feedback_is_added_only_where_negotiated() -> None:
    from conference.sfu.bridge import accept_transport_cc
    from conference.sfu.twcc import TWCC_URI

    answer = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n"
        f"a=extmap:3 {TWCC_URI}\r\n"
    )
    accepted = accept_transport_cc(answer)
    audio, video = accepted.split("m=video")
    assert "transport-cc" not in audio
    assert "a=rtcp-fb:96 transport-cc" in video and "a=rtcp-fb:97" not in video
    assert accepted.endswith("\r\n") and accept_transport_cc(accepted) == accepted


async def test_rtx_copies_of_packets_already_here_are_not_forwarded():
    """libwebrtc probes its uplink by sending old packets again on RTX (padding):
    only a retransmission that fills a hole reaches the subscribers, or every
    subscriber of the layer would get the publisher's probes (a weak viewer's
    link flooded whenever the publisher probes)."""
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtp import RtpPacket

    from conference.sfu.rtpwire import build_rtx

    receiver, _ = _feedback_receiver()
    receiver._codecs[97] = RTCRtpCodecParameters(
        mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
    )
    receiver._rtx_ssrc[5555] = 4242
    forwarded: list[tuple[int, bool]] = []

    class Sink:
        def on_rtp(self, packet, repaired, layer=0):
            forwarded.append((packet.sequence_number, repaired))

        def on_sender_report(self, *args):
            pass

        def on_bye(self):
            pass

    receiver.sink = Sink()
    receiver._enabled = True

    def rtx(seq: int, original: int) -> RtpPacket:
        return RtpPacket.parse(
            build_rtx(97, seq, original * 3000, 5555, False, original, b"\x10" + bytes(900))
        )

    for seq in (1, 2, 4):
        await receiver._handle_rtp_packet(_video_packet(seq), 0)
    await receiver._handle_rtp_packet(rtx(100, 2), 0)  # padding: 2 is here already
    await receiver._handle_rtp_packet(rtx(101, 3), 0)  # the repair of the lost 3
    await receiver._handle_rtp_packet(rtx(102, 3), 0)  # and a late copy of it
    assert forwarded == [(1, False), (2, False), (4, False), (3, True)]
    assert receiver.duplicates == 2


async def test_red_from_a_publisher_is_unwrapped_and_fills_a_lost_packet():
    """A publisher that sends RED: the server forwards plain Opus frames, and a
    packet lost on the way in comes back from the next packet's redundant block."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtp import RtpPacket

    from conference.sfu import red

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    receiver = ForwardingReceiver("audio", dtls)
    receiver._codecs = {
        63: RTCRtpCodecParameters(
            mimeType="audio/red", clockRate=48000, channels=2, payloadType=63
        ),
        111: RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
        ),
    }
    forwarded: list[tuple[int, int, int, bytes]] = []

    class Sink:
        def on_rtp(self, packet, repaired, layer=0):
            forwarded.append(
                (packet.sequence_number, packet.timestamp, packet.payload_type, packet.payload)
            )

    receiver.sink = Sink()

    def red_packet(seq: int) -> RtpPacket:
        frame = f"frame{seq}".encode()
        previous = (960, f"frame{seq - 1}".encode()) if seq > 1 else None
        payload = red.build(111, frame, previous)
        return RtpPacket(
            payload_type=63, sequence_number=seq, timestamp=seq * 960, ssrc=7, payload=payload
        )

    for seq in (1, 2, 4, 3):  # 3 is lost, then arrives late
        await receiver._handle_rtp_packet(red_packet(seq), 0)
    await receiver._handle_rtp_packet(
        RtpPacket(payload_type=63, sequence_number=5, timestamp=4800, ssrc=7, payload=b"\x80"), 0
    )
    assert forwarded == [
        (1, 960, 111, b"frame1"),
        (2, 1920, 111, b"frame2"),
        (3, 2880, 111, b"frame3"),  # rebuilt from packet 4's redundant block
        (4, 3840, 111, b"frame4"),
    ]
    assert receiver.red_recovered == 1 and receiver.red_malformed == 1


async def test_closing_during_ice_leaves_no_unretrieved_task_error():
    """A participant leaving (or the server stopping) while aiortc's connection task
    starts ICE: the task ends quietly instead of asyncio logging a traceback; on an
    open connection the error still shows."""
    from aiortc.exceptions import InvalidStateError

    async def connect(close_meanwhile: bool) -> None:
        pc = ForwardingPeerConnection()
        transceiver = pc.addTransceiver("audio")
        ice = transceiver.receiver.transport.transport
        started = asyncio.Event()

        async def start(parameters):
            started.set()
            await asyncio.sleep(0.05)
            raise InvalidStateError("RTCIceTransport is closed")

        ice.iceGatherer.getLocalCandidates = lambda: [object()]
        ice.start = start
        pc._RTCPeerConnection__remoteIce[transceiver] = object()
        task = asyncio.ensure_future(pc._RTCPeerConnection__connect())
        await started.wait()
        if close_meanwhile:
            await pc.close()
        try:
            await task
        finally:
            await pc.close()

    await connect(close_meanwhile=True)  # no exception
    try:
        await connect(close_meanwhile=False)
    except InvalidStateError:
        pass
    else:
        raise AssertionError("an open connection's ICE failure was swallowed")


async def test_run_now_finishes_what_does_not_wait_and_hands_on_what_waits(caplog):
    from conference.sfu.bridge import run_now

    done: list[object] = []

    async def at_once() -> None:
        done.append("now")

    run_now(at_once())
    assert done == ["now"]  # no task, no loop turn

    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    async def waits() -> None:
        done.append(await future)
        await asyncio.sleep(0)  # a bare yield after the resume
        done.append("after")

    run_now(waits())
    assert done == ["now"]
    future.set_result("resumed")
    for _ in range(5):
        await asyncio.sleep(0)
    assert done == ["now", "resumed", "after"]

    async def fails() -> None:
        raise RuntimeError("bad packet")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("bad later")

    run_now(fails())
    run_now(fails_later())
    for _ in range(5):
        await asyncio.sleep(0)
    failures = [r for r in caplog.records if r.getMessage() == "a packet handler failed"]
    assert [str(r.exc_info[1]) for r in failures] == ["bad packet", "bad later"]


async def test_srtp_arrives_without_aiortc_receive_task():
    """After DTLS, RTP reaches the receiver from aioice's data_received directly; only
    the handshake goes through aiortc's queue and receive task."""
    from aiortc.mediastreams import AudioStreamTrack

    sender_pc = RTCPeerConnection()
    receiver_pc = ForwardingPeerConnection()
    sender_pc.addTrack(AudioStreamTrack())
    slow: list[int] = []
    try:
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        transceiver = receiver_pc.getTransceivers()[0]
        dtls = transceiver.receiver.transport
        ice = dtls.transport
        stock_recv = ice._recv

        async def counted_recv() -> bytes:
            data = await stock_recv()
            if 127 < data[0] < 192:
                slow.append(len(data))
            return data

        ice._recv = counted_recv
        await sender_pc.setRemoteDescription(receiver_pc.localDescription)
        assert ice._connection._conference_fast_ingress
        receiver = transceiver.receiver
        deadline = asyncio.get_running_loop().time() + 10
        while receiver.packets_received < 60:
            assert asyncio.get_running_loop().time() < deadline, receiver.packets_received
            await asyncio.sleep(0.1)
        assert len(slow) <= 5, slow  # at most what arrived while the handshake finished
        assert dtls._RTCDtlsTransport__rx_packets >= receiver.packets_received
        # the stream's layer is known: its packets are read without MID from now on
        assert receiver._layer_ssrc[0] in dtls._conference_settled
        await receiver.stop()
        assert not dtls._conference_settled
    finally:
        await sender_pc.close()
        await receiver_pc.close()


def test_media_is_unprotected_in_place_on_the_servers_loop():
    """On the server's event loop (udp.py's transport) RTP and RTCP go from the read
    buffer into the SRTP session and are parsed there: aioice's data_received sees only
    what came before DTLS finished; the receiver gets every packet and the sender
    report."""
    from aiortc.mediastreams import AudioStreamTrack

    loop = PortRangeEventLoop()

    async def run() -> tuple[int, int, list[int], bool]:
        sender_pc = RTCPeerConnection()
        receiver_pc = ForwardingPeerConnection()
        sender_pc.addTrack(AudioStreamTrack())
        handed: list[int] = []
        reports: list[int] = []
        try:
            await sender_pc.setLocalDescription(await sender_pc.createOffer())
            await receiver_pc.setRemoteDescription(sender_pc.localDescription)
            await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
            receiver = receiver_pc.getTransceivers()[0].receiver
            await sender_pc.setRemoteDescription(receiver_pc.localDescription)
            connection = receiver.transport.transport._connection
            deadline = loop.time() + 15
            while not getattr(connection, "_conference_fast_ingress", False):
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            stock = connection.data_received

            def counted(data: bytes, component: int) -> None:
                if 127 < data[0] < 192:
                    handed.append(len(data))
                stock(data, component)

            connection.data_received = counted

            class Sink:
                def on_rtp(self, *args: object) -> None:
                    pass

                def on_sender_report(self, ntp: int, rtp: int, layer: int = 0) -> None:
                    reports.append(rtp)

                def on_bye(self) -> None:
                    pass

            receiver.sink = Sink()
            while receiver.packets_received < 100 or not reports:
                assert loop.time() < deadline, (receiver.packets_received, reports)
                await asyncio.sleep(0.1)
            hooked = all(p.transport.media is not None for p in connection._protocols)
            return receiver.packets_received, len(reports), handed, hooked
        finally:
            await sender_pc.close()
            await receiver_pc.close()

    try:
        received, sender_reports, handed, hooked = loop.run_until_complete(run())
    finally:
        loop.close()
    assert hooked and received >= 100 and sender_reports >= 1
    assert len(handed) <= 5, handed  # at most what arrived while DTLS finished


async def test_media_datagrams_are_not_parsed_as_stun(monkeypatch):
    """RTP/RTCP (first byte 128-191) go to the connection without a STUN parse;
    STUN (first two bits zero) is still parsed."""
    from aioice import stun
    from aioice.ice import StunProtocol

    from conference.sfu import bridge

    assert StunProtocol.datagram_received._conference_media_first
    bridge.media_datagrams_skip_stun()  # idempotent

    class Receiver:
        def __init__(self) -> None:
            self.data: list[tuple[bytes, int]] = []

        def data_received(self, data: bytes, component: int) -> None:
            self.data.append((data, component))

    class Candidate:
        component = 1

    receiver = Receiver()
    protocol = StunProtocol(receiver)
    protocol.local_candidate = Candidate()
    parsed: list[bytes] = []
    stock_parse = stun.parse_message

    def counting_parse(data: bytes) -> stun.Message:
        parsed.append(data)
        return stock_parse(data)

    monkeypatch.setattr(stun, "parse_message", counting_parse)
    rtp = b"\x80\x60" + bytes(30)
    rtcp = b"\x81\xc9" + bytes(30)
    dtls = b"\x16\xfe\xfd" + bytes(30)
    for data in (rtp, rtcp, dtls):
        protocol.datagram_received(data, ("127.0.0.1", 5000))
    assert receiver.data == [(rtp, 1), (rtcp, 1), (dtls, 1)]
    assert parsed == [dtls]  # only what could be STUN was tried as STUN
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
    protocol.datagram_received(bytes(request), ("127.0.0.1", 5000))
    assert parsed[-1] == bytes(request) and len(receiver.data) == 3  # STUN is not media


def _extension_map():
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

    from conference.sfu.bridge import LeanExtensionsMap

    uris = [
        "urn:ietf:params:rtp-hdrext:sdes:mid",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "urn:ietf:params:rtp-hdrext:toffset",
    ]
    parameters = RTCRtpParameters(
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=i + 1, uri=uri) for i, uri in enumerate(uris)
        ]
    )
    extension_map = LeanExtensionsMap()
    extension_map.configure(parameters)
    return extension_map


def _random_packet(rng) -> bytes:
    """An RTP packet as publishers send them: CSRCs, one- or two-byte extension blocks
    with the negotiated extensions (and unknown ones), padding."""
    from conference.sfu.rtpwire import build_rtp

    values = {
        1: lambda: rng.choice([b"0", b"1", b"video"]),
        2: lambda: rng.choice([b"q", b"h", b"f"]),
        3: lambda: rng.choice([b"q", b"f"]),
        4: lambda: rng.randbytes(3),
        5: lambda: rng.randbytes(1),
        6: lambda: rng.randbytes(2),
        7: lambda: rng.randbytes(3),
        9: lambda: rng.randbytes(rng.randint(1, 16)),  # not negotiated: skipped
    }
    chosen = rng.sample(sorted(values), rng.randint(0, len(values)))
    extensions = tuple((x_id, values[x_id]()) for x_id in chosen)
    if rng.random() < 0.2:
        extensions += ((200, rng.randbytes(rng.randint(0, 20))),)  # forces two-byte form
    data = bytearray(
        build_rtp(
            rng.randint(0, 127),
            rng.random() < 0.5,
            rng.randint(0, 0xFFFF),
            rng.randint(0, 0xFFFFFFFF),
            rng.randint(0, 0xFFFFFFFF),
            rng.randbytes(rng.randint(0, 1200)),
            extensions,
        )
    )
    count = rng.choice([0, 0, 0, 1, 3])
    if count:  # insert CSRCs after the fixed header
        data[0] |= count
        data[12:12] = rng.randbytes(4 * count)
    if rng.random() < 0.2:
        padding = rng.randint(1, 40)
        data[0] |= 0x20
        data += bytes(padding - 1) + bytes([padding])
    return bytes(data)


def _fields(packet):
    return (
        packet.version,
        packet.marker,
        packet.payload_type,
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
        packet.csrc,
        packet.extensions,
        packet.payload,
        packet.padding_size,
    )


def test_parse_rtp_gives_what_aiortc_parses():
    """The ingress parser returns aiortc's RtpPacket with the same fields and header
    extensions, on packets of every shape and on every truncation of them."""
    import random

    from conference.sfu.bridge import parse_rtp

    extension_map = _extension_map()
    rng = random.Random(7)
    parsed = refused = 0
    for _ in range(3000):
        data = _random_packet(rng)
        ours = parse_rtp(data, extension_map.table)
        assert type(ours) is RtpPacket
        assert _fields(ours) == _fields(RtpPacket.parse(data, extension_map))
        in_place = parse_rtp(memoryview(bytearray(data)), extension_map.table)  # from a buffer
        assert _fields(in_place) == _fields(ours) and type(in_place.payload) is bytes
        assert ours.extensions.mid is None or isinstance(ours.extensions.mid, str)
        parsed += 1
        for cut in sorted({rng.randint(0, len(data)) for _ in range(3)}):
            try:
                theirs = RtpPacket.parse(data[:cut], extension_map)
            except ValueError:
                with pytest.raises(ValueError):
                    parse_rtp(data[:cut], extension_map.table)
                refused += 1
            else:
                assert _fields(parse_rtp(data[:cut], extension_map.table)) == _fields(theirs)
    assert parsed == 3000 and refused > 1000


def test_parse_rtp_of_a_settled_stream_skips_mid_and_rids():
    """Once a stream's layer is known its packets are read with the lean table: the
    same packet, its MID and RIDs left None; other SSRCs are still read in full."""
    import random

    from conference.sfu.bridge import parse_rtp

    extension_map = _extension_map()
    assert set(extension_map.lean) == set(extension_map.table) - {1, 2, 3}
    rng = random.Random(11)
    for _ in range(500):
        data = _random_packet(rng)
        ssrc = int.from_bytes(data[8:12], "big")
        full = parse_rtp(data, extension_map.table)
        lean = parse_rtp(data, extension_map.table, extension_map.lean, {ssrc})
        other = parse_rtp(data, extension_map.table, extension_map.lean, {ssrc ^ 1})
        assert _fields(other) == _fields(full)
        for name in ("mid", "rtp_stream_id", "repaired_rtp_stream_id"):
            setattr(full.extensions, name, None)
        assert _fields(lean) == _fields(full)


def test_parse_rtp_with_learnt_layouts_reads_what_the_full_parse_reads():
    """A settled stream's blocks are read at the places its last blocks had their
    elements, when the structural bytes match: the same packet as the element-by-element
    parse, whether the shape stays, changes now and then, or never repeats; damaged
    packets are refused the same way."""
    import random

    from conference.sfu.bridge import parse_rtp

    extension_map = _extension_map()
    table, lean = extension_map.table, extension_map.lean
    rng = random.Random(17)
    layouts: dict = {}
    from conference.sfu.rtpwire import build_rtp

    usual = (  # as browsers send them: MID, TWCC, abs-send-time, level, toffset
        ((1, b"0"), (6, b"\x01\x02"), (4, b"\x03\x04\x05")),
        ((1, b"1"), (5, b"\x85"), (6, b"\x00\x07"), (7, b"\x00\x00\x09")),
    )
    shapes = [build_rtp(96, False, 1, 2, 3 + i, bytes(50), x) for i, x in enumerate(usual)]
    shapes += [_random_packet(rng) for _ in range(6)]
    for _ in range(4000):
        shape = rng.choice(shapes[:2] if rng.random() < 0.8 else shapes)
        data = bytearray(shape)
        ssrc = int.from_bytes(data[8:12], "big")
        for i in range(12, min(len(data), 40)):  # values change, the shape may not
            if rng.random() < 0.3:
                data[i] = rng.randrange(256)
        data = bytes(data[: rng.randint(12, len(data))] if rng.random() < 0.1 else data)
        try:
            reference = parse_rtp(data, table, lean, {ssrc})
        except ValueError:
            with pytest.raises(ValueError):
                parse_rtp(data, table, lean, {ssrc}, layouts)
            continue
        assert _fields(parse_rtp(data, table, lean, {ssrc}, layouts)) == _fields(reference)
    assert layouts and all(len(known) <= 4 for known in layouts.values())


def test_parse_rtp_refuses_what_is_not_rtp():
    from conference.sfu.bridge import parse_rtp

    table = _extension_map().table
    header = bytes([0x80, 96, 0, 1]) + bytes(8)
    for data, reason in (
        (header[:11], "less than 12"),
        (bytes([0x40]) + header[1:], "invalid version"),
        (bytes([0x82]) + header[1:] + bytes(4), "truncated CSRC"),
        (bytes([0x90]) + header[1:] + b"\xbe\xde", "truncated extension profile"),
        (bytes([0x90]) + header[1:] + b"\xbe\xde\x00\x02\x10", "truncated extension value"),
        (bytes([0x90]) + header[1:] + b"\xbe\xde\x00\x01\x13\x00\x00\x00", "one-byte"),
        (bytes([0x90]) + header[1:] + b"\x10\x00\x00\x01\x00\x00\x05\x05", "two-byte"),
        (bytes([0xA0]) + header[1:] + b"\x05", "padding length"),
        (bytes([0xA0]) + header[1:] + b"\x00", "padding length"),
        (bytes([0x90]) + header[1:] + b"\xbe\xde\x00\x01\x10\xff\x00\x00", "utf-8"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_rtp(data, table)
    # RFC 8285: ID 15 ends the one-byte elements (aiortc reads on)
    data = bytes([0x90]) + header[1:] + b"\xbe\xde\x00\x01\xf0\x51\x07\x00" + b"payload"
    packet = parse_rtp(data, table)
    assert packet.extensions.audio_level is None and packet.payload == b"payload"


# -- DTLS on the system's OpenSSL (FFmpeg's default P-224 certificate) --------------------

needs_system_openssl = pytest.mark.skipif(
    sysdtls.load() is None, reason=f"no usable libssl.so.3: {sysdtls.unavailable_reason()}"
)


def test_system_dtls_context_is_aiortcs_plus_the_groups():
    """SystemDtlsCertificate sets up its context as aiortc's RTCCertificate does (same
    calls, same cipher list), plus the groups; RTCDtlsTransport makes its connection
    with ``SSL.Connection(context)``, which bridge routes by the context's type."""
    import ast
    import inspect
    import textwrap

    import aiortc.rtcdtlstransport as rtcdtlstransport
    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
    from OpenSSL import SSL

    from conference.sfu import bridge

    def calls(function) -> list[str]:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        return [
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "ctx"
        ]

    theirs = calls(RTCCertificate._create_ssl_context)
    assert theirs == [
        "set_options",
        "set_verify",
        "use_certificate",
        "use_privatekey",
        "set_cipher_list",
        "set_tlsext_use_srtp",
    ]
    assert calls(bridge.SystemDtlsCertificate._create_ssl_context) == [*theirs, "set_groups"]
    source = inspect.getsource(RTCCertificate._create_ssl_context)
    assert repr(bridge.DTLS_CIPHERS)[2:-1] in source.replace('"\n            b"', "")
    assert "SSL.Connection(" in inspect.getsource(RTCDtlsTransport.start)
    assert isinstance(rtcdtlstransport.SSL, bridge._EitherOpenSsl)
    bridge.dtls_on_either_openssl()  # idempotent
    assert rtcdtlstransport.SSL.WantReadError is SSL.WantReadError
    assert rtcdtlstransport.SSL.Error is SSL.Error
    stock = RTCCertificate.generateCertificate()._create_ssl_context(rtcdtlstransport.SRTP_PROFILES)
    assert type(rtcdtlstransport.SSL.Connection(stock)) is SSL.Connection


async def _connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> str:
    """Offer/answer between two local peers; the answerer's connection state at the end."""
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)
    deadline = asyncio.get_running_loop().time() + 10
    while answerer.connectionState not in ("connected", "failed", "closed"):
        assert asyncio.get_running_loop().time() < deadline, answerer.connectionState
        await asyncio.sleep(0.05)
    return answerer.connectionState


async def _packets(receiver: ForwardingReceiver, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while receiver.packets_received < count:
        assert asyncio.get_running_loop().time() < deadline, receiver.packets_received
        await asyncio.sleep(0.05)


@needs_system_openssl
@pytest.mark.parametrize("server_offers", [False, True])
async def test_system_dtls_carries_media_in_both_dtls_roles(server_offers):
    """A ForwardingPeerConnection with system_dtls does its handshake on the system's
    OpenSSL with a stock aiortc peer, as DTLS client (it answers: a=setup:active) and
    as DTLS server (it offers), and SRTP flows on the keys it exported."""
    from aiortc.mediastreams import AudioStreamTrack

    peer = RTCPeerConnection()
    server = ForwardingPeerConnection(system_dtls=True)
    try:
        if server_offers:
            server.addTransceiver("audio", direction="recvonly")
            await server.setLocalDescription(await server.createOffer())
            await peer.setRemoteDescription(server.localDescription)
            peer.addTrack(AudioStreamTrack())
            await peer.setLocalDescription(await peer.createAnswer())
            await server.setRemoteDescription(peer.localDescription)
        else:
            peer.addTrack(AudioStreamTrack())
            await peer.setLocalDescription(await peer.createOffer())
            await server.setRemoteDescription(peer.localDescription)
            await server.setLocalDescription(await server.createAnswer())
            await peer.setRemoteDescription(server.localDescription)
        transceiver = server.getTransceivers()[0]
        dtls = transceiver.receiver.transport
        await _packets(transceiver.receiver, 25)
        assert isinstance(dtls._ssl, sysdtls.Connection)
        assert dtls._role == ("server" if server_offers else "client")
        assert type(peer.getTransceivers()[0].sender.transport._ssl).__module__ == "OpenSSL.SSL"
    finally:
        await peer.close()
        await server.close()


@needs_system_openssl
async def test_a_p224_peer_connects_only_with_system_dtls():
    """An encoder whose DTLS certificate is ECDSA P-224 (FFmpeg's default; here a stock
    aiortc sender given such a certificate): the server connects to it and receives
    its media with system_dtls, and fails the handshake without it."""
    from aiortc.mediastreams import AudioStreamTrack
    from aiortc.rtcdtlstransport import generate_certificate
    from cryptography.hazmat.primitives.asymmetric import ec

    from conference.sfu.bridge import SystemDtlsCertificate

    key = ec.generate_private_key(ec.SECP224R1())
    p224 = SystemDtlsCertificate(key=key, cert=generate_certificate(key))
    for system_dtls in (True, False):
        encoder = RTCPeerConnection()
        encoder._RTCPeerConnection__certificates = [p224]
        encoder.addTrack(AudioStreamTrack())
        server = ForwardingPeerConnection(system_dtls=system_dtls)
        try:
            # the encoder offers, the server answers a=setup:active: it is the DTLS
            # client and checks the encoder's signature by its P-224 key (FFmpeg's case)
            state = await _connect(encoder, server)
            if system_dtls:
                assert state == "connected"
                await _packets(server.getTransceivers()[0].receiver, 25)
            else:
                assert state == "failed"
        finally:
            await encoder.close()
            await server.close()


async def test_without_the_system_openssl_whip_keeps_the_stock_dtls(monkeypatch, caplog):
    """Where libssl.so.3 cannot be used, system_dtls falls back to aiortc's own
    certificate (pyOpenSSL) and says so once, not per connection."""
    from aiortc.rtcdtlstransport import RTCCertificate

    from conference.sfu import bridge

    monkeypatch.setattr(sysdtls, "_tried", True)
    monkeypatch.setattr(sysdtls, "_loaded", None)
    monkeypatch.setattr(sysdtls, "_reason", "OSError: no libssl.so.3")
    monkeypatch.setattr(bridge, "_system_dtls_refused", False)
    assert bridge.system_dtls() is None
    connections = [ForwardingPeerConnection(system_dtls=True) for _ in range(2)]
    try:
        for pc in connections:
            (certificate,) = pc._RTCPeerConnection__certificates
            assert type(certificate) is RTCCertificate
        warnings = [r.getMessage() for r in caplog.records if r.name == bridge.logger.name]
        assert len(warnings) == 1 and "no libssl.so.3" in warnings[0], warnings
    finally:
        for pc in connections:
            await pc.close()
