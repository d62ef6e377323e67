"""The relay between nodes (conference/sfu/relay.py): two real endpoints on 127.0.0.1.

The exporting side is a real `Publication` fed as a publisher's receiver feeds
it; the importing side a real `Publication` on a `RelayReceiver`, observed
through a tap (what the recorder uses; it counts as someone receiving).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from conference.sfu import relay
from conference.sfu.bridge import RtpPacket
from conference.sfu.publication import Publication
from conference.sfu.subscription import Subscription

from .test_layers import Sender

KEY = relay.relay_key("test-secret-" + "x" * 40)


class Publisher:
    """What stands for a publisher's receiver on the exporting node (not under test)."""

    def __init__(self, kind: str, rids: list[str] | None = None) -> None:
        self.kind = kind
        self.rids = rids or []
        self.sink: Any = None
        self.keyframe_requests: list[int] = []

    def request_keyframe(self, layer: int = 0) -> None:
        self.keyframe_requests.append(layer)


def rtp(
    seq: int, payload: bytes = b"\x10\x00\x00\x9d\x01\x2a", level: int | None = None
) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, payload=payload)
    packet.marker = seq % 2
    if level is not None:
        packet.extensions.audio_level = (True, level)
    return packet


async def until(check: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


class Pair:
    def __init__(self, origin: relay.RelayEndpoint, node: relay.RelayEndpoint) -> None:
        self.origin = origin
        self.node = node
        self.received: list[tuple[int, int, int, bytes, Any]] = []

    def link(
        self, kind: str = "video", rids: list[str] | None = None, tap: bool = True
    ) -> tuple[Any, ...]:
        """A publication on the origin, imported by the node (tapped there: received)."""
        source = Publisher(kind, rids)
        codec = "vp8" if kind == "video" else "opus"
        rate = 90000 if kind == "video" else 48000
        published = Publication("TR_a", "PA_a", "camera", source, codec, rate)
        stream = self.origin.export(published)
        receiver = self.node.import_stream(self.origin.address, stream, kind, source.rids)
        imported = Publication("TR_a", "PA_a", "camera", receiver, codec, rate)
        if tap:
            self.tap(imported)
        return source, published, receiver, imported

    def tap(self, imported: Publication) -> None:
        imported.taps.append(
            lambda _pub, p, _kf: self.received.append(
                (p.sequence_number, p.timestamp, p.marker, p.payload, p.extensions.audio_level)
            )
        )


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    origin, node = relay.RelayEndpoint(KEY), relay.RelayEndpoint(KEY)
    await origin.start("127.0.0.1")
    await node.start("127.0.0.1")
    try:
        yield Pair(origin, node)
    finally:
        origin.close()
        node.close()


async def test_a_video_flows_only_while_the_node_wants_it(pair: Pair) -> None:
    source, published, receiver, imported = pair.link("video", tap=False)
    pair.node.renew()
    published.on_rtp(rtp(1), False)
    await asyncio.sleep(0.2)
    assert not published.relays  # nobody receives it on the node: nothing asked, nothing sent

    pair.tap(imported)
    pair.node.want_now(receiver)
    await until(lambda: published.relays)
    for seq in range(2, 12):
        published.on_rtp(rtp(seq, b"vp8-%d" % seq), False)
    await until(lambda: len(pair.received) == 10)
    assert pair.received == [
        (seq, seq * 3000, seq % 2, b"vp8-%d" % seq, None) for seq in range(2, 12)
    ]
    assert imported.packets == 10
    # what the endpoint counts for /metrics: 10 datagrams, their headers and tags included
    sent, octets = pair.origin.sent[("video", "full")]  # (tapped: full mode)
    assert sent == 10 and octets == sum(
        relay.HEADER.size + relay.MEDIA_FIELDS.size + len(b"vp8-%d" % s) + relay.TAG_BYTES
        for s in range(2, 12)
    )

    # nobody receives it any more: the node drops it, the origin stops sending
    imported.taps.clear()
    pair.node.renew()
    await until(lambda: not published.relays)
    published.on_rtp(rtp(12), False)
    await asyncio.sleep(0.1)
    assert len(pair.received) == 10


async def test_audio_flows_with_its_levels_even_unsubscribed(pair: Pair) -> None:
    """Every microphone reaches every node of the meeting: its levels drive that node's
    active speaker, as on a single node."""
    levels: list[tuple[str, int]] = []
    source, published, receiver, _ = pair.link("audio", tap=False)
    receiver.sink._on_audio_level = lambda who, level: levels.append((who, level))
    pair.node.renew()
    await until(lambda: published.relays)
    for seq in range(1, 6):
        published.on_rtp(rtp(seq, b"opus%d" % seq, level=seq), False)
    await until(lambda: len(levels) == 5)
    assert levels == [("PA_a", seq) for seq in range(1, 6)]


async def test_keyframe_requests_and_sender_reports_cross_nodes(pair: Pair) -> None:
    source, published, receiver, imported = pair.link("video", ["q", "h"])
    pair.node.want_now(receiver)
    await until(lambda: published.relays)
    imported.request_keyframe(1)
    await until(lambda: source.keyframe_requests == [1])
    published.on_sender_report(123 << 32, 4567, layer=1)
    await until(lambda: imported.layers[1].sender_report == (123 << 32, 4567))
    published.on_rtp(rtp(5), False, layer=0)
    await until(lambda: imported.layers[0].packets == 1)
    assert imported.layers[1].packets == 0  # layers stay layers


async def test_a_packet_lost_between_nodes_is_sent_again(pair: Pair) -> None:
    source, published, receiver, imported = pair.link("video")
    pair.node.want_now(receiver)
    await until(lambda: published.relays)
    transport = pair.origin.transport
    assert transport is not None
    send = transport.sendto
    lost: list[bytes] = []

    def lossy(data: bytes, address: Any = None) -> None:
        kind, _stream, _layer, body = relay.unseal(KEY, data)
        if kind == relay.MEDIA and body[:2] == b"\x00\x03" and not lost:
            lost.append(data)  # the first copy of packet 3 is lost
            return
        send(data, address)

    transport.sendto = lossy  # type: ignore[method-assign,assignment]
    for seq in range(1, 6):
        published.on_rtp(rtp(seq), False)
    await until(lambda: len(pair.received) == 5)
    assert lost and [r[0] for r in pair.received] == [1, 2, 4, 5, 3]
    assert receiver.nacks_sent == 1
    assert pair.origin.exports[receiver.stream].retransmitted == 1


async def test_forged_and_stale_datagrams_are_dropped(pair: Pair) -> None:
    source, published, receiver, imported = pair.link("video")
    other_key = relay.relay_key("another-secret-" + "y" * 40)
    assert pair.node.transport is not None
    body = relay.demand_body(pair.node.address)
    # a WANT under another key, and a genuine one from a minute ago, steer nothing
    pair.node.transport.sendto(
        relay.seal(other_key, relay.WANT, receiver.stream, 0, body), pair.origin.address
    )
    stale = relay.demand_body(pair.node.address, when=time.time() - 60)
    pair.node.send_to(pair.origin.address, relay.WANT, receiver.stream, 0, stale)
    await until(lambda: pair.origin.dropped == 2)
    assert not published.relays

    pair.node.want_now(receiver)
    await until(lambda: published.relays)
    # media under another key is not forwarded
    forged = relay.seal(other_key, relay.MEDIA, receiver.stream, 0, relay.media_body(rtp(9), False))
    assert pair.origin.transport is not None
    pair.origin.transport.sendto(forged, pair.node.address)
    await until(lambda: pair.node.dropped == 1)
    assert pair.received == []
    with pytest.raises(relay.RelayFormatError):
        relay.unseal(KEY, forged)
    with pytest.raises(relay.RelayFormatError):
        relay.unseal(KEY, b"CR\x01")


async def test_a_lease_without_renewal_ends(pair: Pair) -> None:
    source, published, receiver, imported = pair.link("video")
    pair.node.want_now(receiver)
    await until(lambda: published.relays)
    export = pair.origin.exports[receiver.stream]
    assert list(export.leases) == [pair.node.address]
    pair.origin.tick(time.monotonic() + relay.LEASE + 1)  # the node went silent (died)
    assert not export.leases and not published.relays


# -- gated relays: a microphone the exporting room's audio gate holds back -------------------
class MarkedSender(Sender):
    """A subscription's sender on the importing node (not under test): what it sends,
    with the marker bit."""

    def __init__(self) -> None:
        super().__init__()
        self.codec = RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
        )
        self.payload_type = 111
        self.marked: list[tuple[int, bool, bytes]] = []

    def send_media(
        self, marker: bool, seq: int, timestamp: int, block: bytes, payload: bytes
    ) -> None:
        self.marked.append((seq, marker, payload))

    emit = send_media  # what the fan-out calls


def voice(seq: int, level: int) -> RtpPacket:
    """A microphone's packet (no marker of its own) with its audio level."""
    packet = RtpPacket(
        payload_type=111, sequence_number=seq, timestamp=seq * 960, payload=b"opus%d" % seq
    )
    packet.extensions.audio_level = (level < 127, level)
    return packet


SOUND, SILENCE = 20, 127


class Meeting:
    """A microphone on the origin, its room's gate open while it carries sound (the
    verdict is what `Room._admit_audio` gives; the relay is under test), imported by
    node G (a subscriber there, no recording: gated mode) and node R (recording it: a tap,
    full mode)."""

    def __init__(self, origin: relay.RelayEndpoint, g: relay.RelayEndpoint, r: relay.RelayEndpoint):
        self.origin, self.g, self.r = origin, g, r
        self.published = Publication(
            "TR_m", "PA_m", "microphone", Publisher("audio"), "opus", 48000
        )
        self.published.gate = lambda _pub, level: level is not None and level < 70
        stream = origin.export(self.published)
        self.export = origin.exports[stream]
        self.receiver_g = g.import_stream(origin.address, stream, "audio", [])
        self.imported_g = Publication("TR_m", "PA_m", "microphone", self.receiver_g, "opus", 48000)
        self.sender = MarkedSender()
        subscription = Subscription("SU_g", "PA_g", self.sender, "audio")  # type: ignore[arg-type]
        subscription.switch_to(self.imported_g)
        self.receiver_r = r.import_stream(origin.address, stream, "audio", [])
        self.imported_r = Publication("TR_m", "PA_m", "microphone", self.receiver_r, "opus", 48000)
        self.recorded: list[int] = []
        self.imported_r.taps.append(lambda _p, p, _kf: self.recorded.append(p.sequence_number))

    async def ready(self) -> None:
        self.g.want_now(self.receiver_g)
        self.r.want_now(self.receiver_r)
        await until(lambda: len(self.export.leases) == 2 and self.export.full == {self.r.address})

    def send(self, seqs: range, level: int) -> None:
        for seq in seqs:
            self.published.on_rtp(voice(seq, level), False)


@pytest.fixture
async def meeting() -> AsyncIterator[Meeting]:
    endpoints = [relay.RelayEndpoint(KEY) for _ in range(3)]
    for endpoint in endpoints:
        await endpoint.start("127.0.0.1")
    try:
        yield Meeting(*endpoints)
    finally:
        for endpoint in endpoints:
            endpoint.close()


async def test_a_held_back_microphone_reaches_only_the_node_that_records_it(
    meeting: Meeting,
) -> None:
    await meeting.ready()
    meeting.send(range(1, 6), SOUND)
    meeting.send(range(6, 16), SILENCE)  # the origin's gate holds these back
    meeting.send(range(16, 21), SOUND)
    await until(lambda: len(meeting.recorded) == 20 and len(meeting.sender.marked) == 10)
    # the recording node got every packet; node G only the open ones
    assert meeting.recorded == list(range(1, 21))
    assert meeting.imported_g.packets == 10
    # G's subscriber: one numbering without a gap, a talkspurt marked where it resumed
    seqs = [seq for seq, _, _ in meeting.sender.marked]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(10)]
    assert [marker for _, marker, _ in meeting.sender.marked] == [False] * 5 + [True] + [False] * 4
    assert meeting.sender.marked[5][2] == b"opus16"
    await asyncio.sleep(3 * relay.TICK)  # time for any NACK retry
    assert meeting.receiver_g.nacks_sent == 0 and meeting.receiver_g.gaps_skipped == 1
    assert meeting.export.retransmitted == 0
    # what the origin counts: 10 withheld from G; 10 datagrams to G, 20 to R
    assert meeting.origin.withheld == 10
    assert meeting.origin.sent[("audio", "gated")][0] == 10
    assert meeting.origin.sent[("audio", "full")][0] == 20


async def test_a_real_loss_between_open_packets_is_still_nacked_and_repaired(
    meeting: Meeting,
) -> None:
    await meeting.ready()
    transport = meeting.origin.transport
    assert transport is not None
    send = transport.sendto
    lost: list[Any] = []

    def lossy(data: bytes, address: Any = None) -> None:
        kind, _stream, _layer, body = relay.unseal(KEY, data)
        seq = int.from_bytes(body[:2], "big")
        if kind == relay.MEDIA and address == meeting.g.address and seq == 18 and not lost:
            lost.append(seq)  # G's first copy of packet 18 is lost
            return
        send(data, address)

    transport.sendto = lossy  # type: ignore[method-assign,assignment]
    meeting.send(range(1, 6), SOUND)
    meeting.send(range(6, 16), SILENCE)
    meeting.send(range(16, 21), SOUND)
    await until(lambda: len(meeting.sender.marked) == 10)
    assert lost == [18]
    assert meeting.receiver_g.nacks_sent == 1  # 18, not the held-back 6..15
    assert meeting.export.retransmitted == 1  # to G, who asked; R had it
    # the repair came late, under the number the subscriber expected for it
    payloads = [payload for _, _, payload in meeting.sender.marked]
    assert payloads[-3:] == [b"opus19", b"opus20", b"opus18"]
    seqs = sorted(seq for seq, _, _ in meeting.sender.marked)
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(10)]
    assert meeting.recorded == list(range(1, 21))


async def test_an_importer_that_starts_recording_during_a_held_back_run_gets_the_rest(
    meeting: Meeting,
) -> None:
    """G starts recording while the microphone is held back, then stops: the mode
    follows (its WANT says so), and neither switch looks like loss."""
    await meeting.ready()
    meeting.send(range(1, 6), SOUND)
    meeting.send(range(6, 11), SILENCE)
    await until(lambda: meeting.imported_g.packets == 5)
    recorded_g: list[int] = []
    meeting.imported_g.taps.append(lambda _p, p, _kf: recorded_g.append(p.sequence_number))
    await until(lambda: meeting.g.address in meeting.export.full)  # within a tick
    meeting.send(range(11, 16), SILENCE)  # still held back here: now sent to G as well
    await until(lambda: recorded_g == list(range(11, 16)))
    meeting.imported_g.taps.clear()
    await until(lambda: meeting.g.address not in meeting.export.full)
    meeting.send(range(16, 21), SILENCE)
    meeting.send(range(21, 26), SOUND)
    await until(lambda: meeting.imported_g.packets == 15)
    await asyncio.sleep(3 * relay.TICK)
    assert meeting.receiver_g.nacks_sent == 0 and meeting.receiver_g.gaps_skipped == 2
    assert meeting.recorded == list(range(1, 26))
    # G's subscriber (no gate on G in this test) got what reached G, in one numbering
    payloads = [payload for _, _, payload in meeting.sender.marked]
    expected = [*range(1, 6), *range(11, 16), *range(21, 26)]
    assert payloads == [b"opus%d" % seq for seq in expected]
    seqs = [seq for seq, _, _ in meeting.sender.marked]
    assert seqs == [(seqs[0] + n) & 0xFFFF for n in range(15)]
