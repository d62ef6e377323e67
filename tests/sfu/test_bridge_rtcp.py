"""RTCP without aiortc's objects and coroutines (conference/sfu/bridge.py):
`handle_rtcp` does what aiortc's parse-route-await does, `DirectWire` and `RtcpClock`
send the periodic reports of real connections."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
from aiortc.rtcdtlstransport import RtpRouter
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    pack_remb_fci,
)

from conference.sfu.bridge import (
    RTCP_DATAGRAM,
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    ReceptionStatistics,
    TransportReports,
    handle_rtcp,
    rtcp_clock,
)

POOL = [0x1000 + i for i in range(8)]  # SSRCs the packets name
SENDERS = POOL[:3]  # ours: what the router sends
RECEIVERS = POOL[3:6]  # ours: what the router receives (POOL[5] is an RTX stream)


class Sink:
    def __init__(self, log: list[tuple[Any, ...]], name: int) -> None:
        self.log, self.name = log, name

    def on_rtp(self, *args: Any) -> None:
        pass

    def on_sender_report(self, ntp: int, rtp: int, layer: int = 0) -> None:
        self.log.append(("sr", self.name, ntp, rtp, layer))

    def on_bye(self) -> None:
        self.log.append(("bye", self.name))


class Feedback:
    def __init__(self, log: list[tuple[Any, ...]], name: int) -> None:
        self.log, self.name = log, name

    def on_nack(self, lost: list[int]) -> None:
        self.log.append(("nack", self.name, tuple(lost)))

    def on_picture_loss(self) -> None:
        self.log.append(("pli", self.name))

    def on_remb(self, bitrate: int) -> None:
        self.log.append(("remb", self.name, bitrate))

    def sender_report(self) -> tuple[int, int] | None:
        return (5 << 32, 1234)


def _world(dtls: RTCDtlsTransport) -> tuple[RtpRouter, list[tuple[Any, ...]], list[Any]]:
    router = RtpRouter()
    log: list[tuple[Any, ...]] = []
    parts: list[Any] = []
    for ssrc in SENDERS:
        sender = ForwardingSender("video", dtls, ssrc, ssrc + 100)
        sender.feedback = Feedback(log, ssrc)
        sender._last_sr = (0xABCD, time.time() - 0.05)  # a report with this LSR gives an RTT
        router.senders[ssrc] = sender
        parts.append(sender)
    receiver = ForwardingReceiver("video", dtls)
    receiver.sink = Sink(log, 1)
    receiver._ssrc_layer = {RECEIVERS[0]: 0, RECEIVERS[1]: 1}
    receiver._rtx_ssrc = {RECEIVERS[2]: RECEIVERS[0]}
    for ssrc in RECEIVERS:
        router.ssrc_table[ssrc] = receiver
    parts.append(receiver)
    return router, log, parts


def _state(parts: list[Any]) -> list[Any]:
    out: list[Any] = []
    for part in parts:
        if isinstance(part, ForwardingSender):
            out.append(
                (
                    part.fraction_lost,
                    part.report_expected,
                    part.report_lost,
                    part._report_mark,
                    part.rtt is not None,
                    part.remote_bitrate,
                    part.nacks_received,
                    part.last_feedback > 0,
                )
            )
        else:
            out.append(({k: v[0] for k, v in part._lsr.items()}, part.last_packet_time > 0))
    return out


def _ssrc(rng: random.Random) -> int:
    return rng.choice(POOL)


def _report(rng: random.Random) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(
        ssrc=_ssrc(rng),
        fraction_lost=rng.randrange(256),
        packets_lost=rng.randrange(-100, 5000),
        highest_sequence=rng.randrange(1 << 32),
        jitter=rng.randrange(1000),
        lsr=rng.choice([0, 0xABCD, rng.randrange(1 << 32)]),
        dlsr=rng.choice([0, 655, rng.randrange(1 << 20)]),
    )


def _packet(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        info = RtcpSenderInfo(rng.randrange(1 << 64), rng.randrange(1 << 32), 5, 500)
        reports = [_report(rng) for _ in range(rng.randrange(3))]
        return bytes(RtcpSrPacket(ssrc=_ssrc(rng), sender_info=info, reports=reports))
    if kind == 1:
        return bytes(RtcpRrPacket(ssrc=_ssrc(rng), reports=[_report(rng) for _ in range(3)]))
    if kind == 2:
        return bytes(RtcpByePacket(sources=[_ssrc(rng) for _ in range(rng.randrange(1, 4))]))
    if kind == 3:
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=_ssrc(rng), media_ssrc=_ssrc(rng))
        nack.lost = sorted(rng.sample(range(1000), rng.randrange(1, 30)))
        return bytes(nack)
    if kind == 4:  # transport-cc feedback (fmt 15): routed, not acted upon
        twcc = RtcpRtpfbPacket(fmt=15, ssrc=_ssrc(rng), media_ssrc=_ssrc(rng))
        return bytes(twcc) + bytes(8)
    if kind in (5, 6):
        fmt = RTCP_PSFB_PLI if kind == 5 else RTCP_PSFB_FIR
        return bytes(RtcpPsfbPacket(fmt=fmt, ssrc=_ssrc(rng), media_ssrc=_ssrc(rng)))
    if kind == 7:
        ssrcs = [_ssrc(rng) for _ in range(rng.randrange(1, 4))]
        fci = pack_remb_fci(rng.randrange(10**7), ssrcs)
        return bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=_ssrc(rng), media_ssrc=0, fci=fci))
    if kind == 8:
        chunk = RtcpSourceInfo(ssrc=_ssrc(rng), items=[(1, b"cname-%d" % rng.randrange(99))])
        return bytes(RtcpSdesPacket(chunks=[chunk]))
    return b"\x80\xcc\x00\x01" + bytes(4)  # an APP packet: nobody's


def _datagrams(rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = b"".join(_packet(rng) for _ in range(rng.randrange(1, 5)))
        mutation = rng.randrange(6)
        if mutation == 0:
            data = data[: rng.randrange(1, len(data))]  # truncated
        elif mutation == 1:
            changed = bytearray(data)
            changed[rng.randrange(min(len(data), 12))] = rng.randrange(256)
            data = bytes(changed)  # a header byte changed: version, padding, count, length
        out.append(data)
    return out


async def test_handle_rtcp_does_what_aiortc_does() -> None:
    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    rng = random.Random(2026)
    handled = 0
    for data in _datagrams(rng, 3000):
        stock_router, stock_log, stock_parts = _world(dtls)
        fast_router, fast_log, fast_parts = _world(dtls)
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            packets = []
        except Exception:  # aiortc fails otherwise: its task would log it; not compared
            continue
        for packet in packets:
            for recipient in stock_router.route_rtcp(packet):
                await recipient._handle_rtcp_packet(packet)
        assert handle_rtcp(data, fast_router)
        assert sorted(fast_log) == sorted(stock_log), data.hex()
        assert _state(fast_parts) == _state(stock_parts), data.hex()
        handled += bool(stock_log)
    assert handled > 500  # the packets really reached the senders and receivers


async def test_handle_rtcp_leaves_foreign_recipients_to_aiortc() -> None:
    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    router, log, _ = _world(dtls)

    class Stock:
        pass

    router.senders[POOL[7]] = Stock()
    pli = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=POOL[0]))
    assert handle_rtcp(pli, router) and log == [("pli", POOL[0])]
    foreign = bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=POOL[7]))
    assert not handle_rtcp(pli + foreign, router)  # nothing done: all of it goes to aiortc
    assert log == [("pli", POOL[0])]


@pytest.mark.parametrize("shared", [False, True], ids=["per-stream", "per-transport"])
async def test_reports_of_connected_forwarding_parts_go_out_on_one_clock(shared: bool) -> None:
    """A ForwardingSender's sender reports (with its CNAME) and the ForwardingReceiver's
    receiver reports and NACKs cross a real ICE/DTLS/SRTP connection: the receiver learns
    the publisher's clock, the sender the subscriber's loss and the round trip.  With
    ``shared`` the receiving side is a load tester's lean point (``headers_only``): its
    receiver reports go out per transport (`TransportReports`, on the same clock)."""
    sending = ForwardingPeerConnection()
    receiving = ForwardingPeerConnection(headers_only=shared)
    log: list[tuple[Any, ...]] = []
    try:
        transceiver = sending.addTransceiver("video", direction="sendonly")
        await sending.setLocalDescription(await sending.createOffer())
        await receiving.setRemoteDescription(sending.localDescription)
        await receiving.setLocalDescription(await receiving.createAnswer())
        await sending.setRemoteDescription(receiving.localDescription)
        sender = transceiver.sender
        assert isinstance(sender, ForwardingSender)
        sender.feedback = Feedback(log, 0)
        receiver = receiving.getTransceivers()[0].receiver
        receiver.sink = Sink(log, 1)
        deadline = time.monotonic() + 10
        while not sender.started or sender._nominated.get(1) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # DTLS done on both sides
        clock = rtcp_clock()
        assert sender._rtcp_clock is clock and receiver._rtcp_clock is clock
        assert receiver.shared_reports is shared
        reports = list(receiving._reports.values())
        assert [r._rtcp_clock for r in reports] == ([clock] if shared else [])
        codec: RTCRtpCodecParameters = sender.codec
        for seq in range(40):
            if seq != 17:  # one lost: the receiver reports it
                sender.send_media(False, seq, 3000 * seq, b"", b"\x10" + bytes(300))
            await asyncio.sleep(0.01)
        while sender.rtt is None or not any(entry[0] == "sr" for entry in log):
            assert time.monotonic() < deadline + 10, (sender.rtt, log)
            for seq in range(40, 42):
                sender.send_media(False, seq, 3000 * seq, b"", b"\x10" + bytes(300))
            await asyncio.sleep(0.1)
        assert codec.name == "VP8"
        assert ("sr", 1, 5 << 32, 1234, 0) in log
        assert sender._report_mark is not None and sender._report_mark[0] == 1  # 17 lost
        assert ("nack", 0, (17,)) in log  # the receiver's NACK, at once
        assert 0 <= sender.rtt < 0.5
    finally:
        await sending.close()
        await receiving.close()
    assert sender._rtcp_clock is None and receiver._rtcp_clock is None
    assert all(r._rtcp_clock is None for r in reports)


def test_a_transport_s_reports_on_200_streams_fit_srtcp_datagrams() -> None:
    """A load tester's chair receiving 100 cameras and 100 microphones reports on 200
    streams: 4.8 kB of report blocks, split into datagrams that SRTCP protects (one
    compound packet was refused: "packet is too long"), each starting with a report,
    the sender reports and the CNAME in the first, every stream reported once."""
    from pylibsrtp import Policy, Session

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    router = RtpRouter()
    for ssrc in (7, 8):
        sender = ForwardingSender("video", dtls, ssrc, ssrc + 100)
        sender.feedback = Feedback([], ssrc)
        sender.packets_sent = 10
        sender._cname = "chair"
        router.senders[ssrc] = sender
    streams = list(range(5000, 5200))
    for ssrc in streams:
        receiver = ForwardingReceiver("video", dtls)
        receiver._rtcp_ssrc = 99
        receiver._streams[ssrc] = stats = ReceptionStatistics(90000)
        for seq in range(10):
            stats.add_header(seq, 3000 * seq, time.monotonic())
        router.receivers.add(receiver)
    dtls._rtp_router = router
    datagrams = TransportReports(dtls).compounds()
    policy = Policy(key=bytes(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)
    session = Session(policy)
    reported: list[int] = []
    for index, data in enumerate(datagrams):
        assert len(data) <= RTCP_DATAGRAM
        session.protect_rtcp(data)  # refused above what one datagram holds
        packets = RtcpPacket.parse(data)
        assert isinstance(packets[0], RtcpSrPacket | RtcpRrPacket)
        kinds = {type(packet) for packet in packets}
        assert (RtcpSrPacket in kinds and RtcpSdesPacket in kinds) == (index == 0)
        for packet in packets:
            if isinstance(packet, RtcpSrPacket | RtcpRrPacket):
                reported += [block.ssrc for block in packet.reports]
    assert sorted(reported) == streams
    # 7 receiver reports (6 of 31 blocks, 752 bytes: two do not fit in 1,200, then 14)
    assert len(datagrams) == 6
