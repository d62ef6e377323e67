"""RED (RFC 2198) audio: the pure packing rules, and the publication/subscription pair
that gives RED to the subscribers that asked for it and plain Opus to the others."""

from __future__ import annotations

from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from conference.sfu import red
from conference.sfu.publication import Publication
from conference.sfu.subscription import Subscription

from .test_layers import Sender, packet


def test_build_and_parse_round_trip() -> None:
    data = red.build(111, b"primary", (960, b"previous"))
    # one 4-byte header (F=1, PT 111, offset 960, length 8), the primary's 1-byte header
    assert int.from_bytes(data[:4], "big") == (0x80 | 111) << 24 | 960 << 10 | 8
    assert data[4] == 111 and data[5:] == b"previousprimary"
    assert red.parse(data) == (111, [(111, 960, b"previous")], b"primary")


def test_build_leaves_out_what_a_block_cannot_hold() -> None:
    # no previous frame, a DTX gap longer than 14 bits of timestamp, a frame too long
    for previous in (None, (red.MAX_OFFSET + 1, b"x"), (960, b"x" * (red.MAX_LENGTH + 1))):
        assert red.build(111, b"now", previous) == bytes([111]) + b"now"
    assert red.parse(bytes([111]) + b"now") == (111, [], b"now")


def test_parse_refuses_malformed_payloads() -> None:
    header = ((0x80 | 111) << 24 | 960 << 10 | 50).to_bytes(4, "big")
    for payload in (b"", b"\x80\x00", header + bytes([111]) + b"short", header):
        assert red.parse(payload) is None


class AudioReceiver:
    kind = "audio"
    rids: list[str] = []

    def __init__(self) -> None:
        self.sink: Any = None


def opus_sender(red_pt: int | None) -> Sender:
    sender = Sender()
    sender.codec = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    sender.payload_type = 63 if red_pt is not None else 111
    sender.red_block_pt = red_pt
    return sender


def test_red_subscribers_get_the_frame_before_and_the_others_plain_opus() -> None:
    publication = Publication("TR_m", "PA_a", "microphone", AudioReceiver(), "opus", 48000)  # type: ignore[arg-type]
    senders = {"red": opus_sender(111), "red2": opus_sender(111), "plain": opus_sender(None)}
    for name, sender in senders.items():
        subscription = Subscription(f"SU_{name}", "PA_b", sender, "audio")  # type: ignore[arg-type]
        subscription.switch_to(publication)
    for seq, ts, frame in ((10, 0, b"one"), (11, 960, b"two"), (12, 1920, b"three")):
        publication.on_rtp(packet(seq, ts, frame), False, 0)
    plain = [s[2] for s in senders["plain"].sent]
    assert plain == [b"one", b"two", b"three"]
    for name in ("red", "red2"):
        sent = senders[name].sent
        frames = [red.parse(s[2]) for s in sent]
        assert frames[0] == (111, [], b"one")
        assert frames[1] == (111, [(111, 960, b"one")], b"two")
        assert frames[2] == (111, [(111, 960, b"two")], b"three")
