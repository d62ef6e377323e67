"""Simulcast layers through Publication and Subscription: one layer per subscriber,
switches on a keyframe of the target layer with continuous sequence numbers,
timestamps and VP8 picture IDs, and per-layer keyframe requests.

The sender is a recording stand-in for the subscriber's transport (the thing under
test is the publication/subscription pair, not aiortc)."""

from __future__ import annotations

import struct
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from conference.sfu.bridge import RtpPacket
from conference.sfu.publication import Publication
from conference.sfu.subscription import Subscription
from conference.sfu.vp8 import parse_descriptor


class Receiver:
    kind = "video"

    def __init__(self, rids: list[str]) -> None:
        self.rids = rids
        self.sink: Any = None
        self.keyframes: list[int] = []

    def request_keyframe(self, layer: int = 0) -> None:
        self.keyframes.append(layer)


class Sender:
    """Records what a subscription sends (decoded back from the wire format)."""

    def __init__(self) -> None:
        self._started = True
        self.started = True
        self.payload_type = 96
        self.rtx_payload_type = None
        self.red_block_pt: int | None = None
        self._ssrc = 1234
        self._rtx_ssrc = 5678
        self.codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
        self.extension_ids: dict[str, int] = {}
        self.mid = "0"
        self.last_seq = 100
        self.last_ts = 5000
        self.last_time: float | None = None
        self.rtx_seq = 0
        self.feedback: Any = None
        self.on_ready: Any = None
        self.sent: list[tuple[int, int, bytes]] = []

    def send_rtp(self, data: bytes, payload_size: int) -> None:
        seq, ts = struct.unpack_from("!HI", data, 2)
        self.sent.append((seq, ts, data[-payload_size:]))

    def send_media(
        self, marker: int, seq: int, timestamp: int, block: bytes, payload: bytes
    ) -> None:
        self.sent.append((seq, timestamp, payload))

    emit = send_media  # what the fan-out calls (ForwardingSender: bound to a pair)


def vp8(picture_id: int, keyframe: bool, start: bool = True) -> bytes:
    """A VP8 payload: descriptor with a 15-bit picture ID, then a frame header."""
    descriptor = bytes([0x90 if start else 0x80, 0x80]) + struct.pack("!H", 0x8000 | picture_id)
    header = bytes([0x00 if keyframe else 0x01, 0, 0]) if start else b"\x00"
    return descriptor + header + b"x" * 20


def packet(seq: int, ts: int, payload: bytes) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, ssrc=1, payload=payload)


def setup() -> tuple[Publication, Receiver, Subscription, Sender]:
    receiver = Receiver(["q", "h", "f"])
    publication = Publication("TR_a", "PA_a", "camera", receiver, "VP8", 90000)  # type: ignore[arg-type]
    sender = Sender()
    subscription = Subscription("SU_a", "PA_b", sender, "video")  # type: ignore[arg-type]
    return publication, receiver, subscription, sender


def feed(publication: Publication, layer: int, seq: int, ts: int, payload: bytes) -> None:
    publication.on_rtp(packet(seq, ts, payload), False, layer)


def test_one_layer_forwarded_and_switch_on_its_keyframe() -> None:
    publication, receiver, subscription, sender = setup()
    subscription.max_layer = 0
    subscription.switch_to(publication)
    assert subscription.pending is publication and subscription.pending_layer == 0
    assert receiver.keyframes == [0]  # a keyframe asked of the wanted layer only
    feed(publication, 0, 10, 1000, vp8(7, keyframe=True))
    feed(publication, 1, 500, 90000, vp8(300, keyframe=True))  # another layer: ignored
    feed(publication, 0, 11, 4000, vp8(8, keyframe=False))
    assert [s[0] for s in sender.sent] == [101, 102]
    assert subscription.layer == 0 and subscription.source is publication
    # the allocator lifts it to layer 1: forwarding of layer 0 goes on until layer 1's keyframe
    subscription.max_layer = 1
    publication.layers[1].packets = 1
    publication.layers[1].last_packet = publication.layers[0].last_packet
    subscription.update_layer()
    assert subscription.pending_layer == 1 and 1 in receiver.keyframes
    feed(publication, 1, 501, 93000, vp8(301, keyframe=False))  # not a keyframe: waits
    feed(publication, 0, 12, 7000, vp8(9, keyframe=False))  # still layer 0
    feed(publication, 1, 502, 96000, vp8(302, keyframe=True))  # switch here
    feed(publication, 0, 13, 10000, vp8(10, keyframe=False))  # old layer: no longer
    feed(publication, 1, 503, 99000, vp8(303, keyframe=False))
    seqs = [s[0] for s in sender.sent]
    assert seqs == [101, 102, 103, 104, 105]  # continuous across the switch
    assert subscription.layer == 1 and subscription.switches == 1
    ids = [parse_descriptor(s[2]).picture_id for s in sender.sent]  # type: ignore[union-attr]
    assert ids == [7, 8, 9, 10, 11]  # picture IDs continue too
    timestamps = [s[1] for s in sender.sent]
    assert timestamps[3] > timestamps[2] and timestamps[4] - timestamps[3] == 3000
    assert publication.layers[0].subscriptions == set()
    assert publication.layers[1].subscriptions == {subscription}


def test_suspend_and_resume() -> None:
    publication, receiver, subscription, sender = setup()
    subscription.max_layer = 0
    subscription.switch_to(publication)
    feed(publication, 0, 10, 1000, vp8(7, keyframe=True))
    subscription.suspend(True)
    assert all(not layer.subscriptions for layer in publication.layers)
    feed(publication, 0, 11, 4000, vp8(8, keyframe=True))
    assert len(sender.sent) == 1  # nothing while paused
    subscription.suspend(False)
    feed(publication, 0, 12, 7000, vp8(9, keyframe=False))  # waits for a keyframe
    feed(publication, 0, 13, 10000, vp8(10, keyframe=True))
    assert [s[0] for s in sender.sent] == [101, 102]


def test_top_layer_by_default_and_fallback_to_a_live_layer() -> None:
    publication, receiver, subscription, sender = setup()
    subscription.switch_to(publication)
    assert subscription.pending_layer == 2  # nothing live yet: the wanted (top) layer
    feed(publication, 0, 10, 1000, vp8(1, keyframe=False))
    subscription.update_layer()
    assert subscription.pending_layer == 0  # the top layer is not sent: the best live one
    feed(publication, 0, 11, 4000, vp8(2, keyframe=True))
    assert subscription.layer == 0 and len(sender.sent) == 1


def test_per_layer_keyframe_throttle() -> None:
    publication, receiver, subscription, sender = setup()
    assert publication.request_keyframe(0) and publication.request_keyframe(2)
    assert not publication.request_keyframe(0)  # throttled per layer
    assert receiver.keyframes == [0, 2]
    assert publication.describe()["layers"] == ["q", "h", "f"]


def test_kept_keyframe_starts_a_new_subscriber_at_once() -> None:
    publication, receiver, first, first_sender = setup()
    layer = publication.layers[0]
    layer.keep_keyframes = True
    first.max_layer = 0
    first.switch_to(publication)
    feed(publication, 0, 10, 1000, vp8(7, keyframe=True))
    feed(publication, 0, 11, 1000, vp8(7, keyframe=False, start=False))  # same frame
    feed(publication, 0, 12, 4000, vp8(8, keyframe=False))
    feed(publication, 0, 13, 7000, vp8(9, keyframe=False))
    assert layer.gop is not None and len(layer.gop) == 4
    # a new subscriber gets the kept frames at once, 1 ms apart, then the live ones
    sender = Sender()
    late = Subscription("SU_b", "PA_c", sender, "video")  # type: ignore[arg-type]
    late.max_layer = 0
    late.switch_to(publication)
    assert late.source is publication and late.replays == 1
    assert [s[0] for s in sender.sent] == [101, 102, 103, 104]
    timestamps = [s[1] for s in sender.sent]
    assert timestamps[1] == timestamps[0] and timestamps[3] - timestamps[2] == 90
    feed(publication, 0, 14, 10000, vp8(10, keyframe=False))
    assert sender.sent[-1][0] == 105 and sender.sent[-1][1] - timestamps[3] == 3000
    assert len(first_sender.sent) == 5  # the first subscriber saw nothing of it
    # a new keyframe starts a new group; a group too long is dropped
    feed(publication, 0, 15, 13000, vp8(11, keyframe=True))
    assert len(layer.gop) == 1
    for n in range(4001):
        feed(publication, 0, (16 + n) & 0xFFFF, 16000 + n, vp8(12, keyframe=False))
    assert layer.gop is None


def test_unanswered_keyframe_requests_start_keeping_keyframes() -> None:
    receiver = Receiver([])  # one layer: a browser's simulcast is never flagged
    publication = Publication("TR_b", "PA_a", "camera", receiver, "VP8", 90000)  # type: ignore[arg-type]
    publication.request_keyframe(0)
    asked = publication.layers[0].keyframe_asked
    assert asked is not None
    publication.note_slow_keyframes(asked + 2.0)
    assert not publication.layers[0].keep_keyframes
    publication.note_slow_keyframes(asked + 4.0)
    assert publication.layers[0].keep_keyframes
    feed(publication, 0, 1, 0, vp8(1, keyframe=True))
    assert publication.layers[0].keyframe_asked is None


def test_layer_rates_price_a_fresh_upper_layer_at_least_at_its_nominal_rate() -> None:
    """An upper layer dynacast just switched on is priced at no less than its nominal
    rate until it has been sent for PEAK_WINDOW seconds; the lowest layer (a screen
    share's only one) always at what it measures."""
    from conference.sfu.bandwidth import NOMINAL_RATES, layer_rates
    from conference.sfu.publication import PEAK_WINDOW

    publication, _, _, _ = setup()
    start = 100.0
    for index, rate in enumerate((120_000.0, 200_000.0, 600_000.0)):
        layer = publication.layers[index]
        layer.packets, layer.last_packet, layer.live_since = 1, start, start
        layer.bitrate = rate
        layer._peaks.append((start, rate))
    fresh = layer_rates(publication, start + 1.0)
    assert fresh == [120_000.0, NOMINAL_RATES[3][1], NOMINAL_RATES[3][2]]
    settled = start + PEAK_WINDOW
    for layer in publication.layers:
        layer.last_packet = settled
        layer._peaks.append((settled, layer.bitrate))
    assert layer_rates(publication, settled) == [120_000.0, 200_000.0, 600_000.0]
    screen = Publication("TR_s", "PA_a", "screen", Receiver([]), "VP8", 90000)  # type: ignore[arg-type]
    only = screen.layers[0]
    only.packets, only.last_packet, only.live_since, only.bitrate = 1, start, start, 90_000.0
    only._peaks.append((start, 90_000.0))
    assert layer_rates(screen, start + 1.0) == [90_000.0]  # not the 1 Mbit/s nominal
