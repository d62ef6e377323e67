"""Fuzz the recorder's depacketizer (conference/recording/depacketize.py).

One input is either a single payload given to every parser (VP8 payload descriptor,
VP8 keyframe header, H.264 aggregation and fragmentation units, SPS), compared with the
SFU's own VP8 descriptor and keyframe parsers (conference/sfu/vp8.py, keyframe.py), or a
stream of packets (sequence numbers moving back and forth, lost, repeated; timestamps;
marker bits; time passing) given to a `VideoAssembler` (VP8 or H.264) and an
`AudioSequencer`.  Nothing may raise, and:

* `vp8_payload` refuses exactly the descriptors `parse_descriptor` refuses, and strips
  exactly ``size`` bytes; the keyframe detector agrees on where the VP8 header starts;
* H.264 access units come out as Annex B (a start code first), sizes are positive;
* the assembler releases non-empty frames, a keyframe first (and first after every
  loss), with
  timestamps of packets it was given, and buffers at most ``MAX_BUFFERED`` packets;
* the audio sequencer never releases an older packet after a newer one;
* `Unwrapper` keeps every value congruent to its input and within half a period.
"""

from __future__ import annotations

import atheris
import common

with common.instrumented():
    from conference.recording.depacketize import (
        MAX_BUFFERED,
        AudioSequencer,
        Unwrapper,
        VideoAssembler,
        h264_annexb,
        h264_frame_size,
        h264_sps_size,
        vp8_keyframe_size,
        vp8_payload,
    )
    from conference.sfu.keyframe import is_frame_start, is_keyframe
    from conference.sfu.vp8 import parse_descriptor

START_CODE = b"\x00\x00\x00\x01"


class Assembler(VideoAssembler):
    """Notes, at every loss, the number of the frame released next (a keyframe)."""

    def __init__(self, codec: str, max_wait: float) -> None:
        super().__init__(codec, max_wait)
        self.keyframes_due = {1}

    def _declare_loss(self, drop_oldest: bool = False) -> None:
        super()._declare_loss(drop_oldest)
        self.keyframes_due.add(self.frames + 1)


def check_payload(payload: bytes) -> None:
    parsed = vp8_payload(payload)
    descriptor = parse_descriptor(payload)
    assert (parsed is None) == (descriptor is None), (payload[:8], parsed, descriptor)
    if parsed is not None and descriptor is not None:
        data, starts = parsed
        assert data == payload[descriptor.size :]
        assert starts == (descriptor.start_of_partition and descriptor.partition_id == 0)
        assert is_frame_start("vp8", payload) == (starts and bool(data))
        assert is_keyframe("vp8", payload) == (starts and bool(data) and not data[0] & 1)
        size = vp8_keyframe_size(data)
        assert size is None or (0 <= size[0] < 1 << 14 and 0 <= size[1] < 1 << 14)
    else:
        assert not is_keyframe("vp8", payload) and not is_frame_start("vp8", payload)
    is_keyframe("h264", payload)
    is_frame_start("h264", payload)
    size = h264_sps_size(payload)
    assert size is None or (size[0] > 0 and size[1] > 0), size
    # the payload as one or several RTP payloads of an access unit
    for payloads in ([payload], [p for p in payload.split(b"\xff\xfe") if p]):
        unit = h264_annexb(payloads)
        if unit is not None:
            data, idr = unit
            assert data.startswith(START_CODE) and isinstance(idr, bool)
            size = h264_frame_size(data)
            assert size is None or (size[0] > 0 and size[1] > 0)


def check_stream(fdp: atheris.FuzzedDataProvider) -> None:
    codec = "vp8" if fdp.ConsumeBool() else "h264"
    assembler = Assembler(codec, max_wait=fdp.ConsumeIntInRange(0, 3) / 2)
    audio = AudioSequencer()
    seq = fdp.ConsumeIntInRange(0, 0xFFFF)
    ts = fdp.ConsumeIntInRange(0, 0xFFFFFFFF)
    now = 0.0
    pushed: set[int] = set()
    unwrap = Unwrapper(32)
    audio_seq = Unwrapper(16)
    last_audio: int | None = None
    for _ in range(300):
        if fdp.remaining_bytes() == 0:
            break
        step = fdp.ConsumeIntInRange(0, 15)
        if step == 15:  # time passes: frames waiting for a repair are given up
            now += fdp.ConsumeIntInRange(0, 40) / 10
            frames = assembler.poll(now)
        else:
            seq = (seq + (step - 3 if step < 12 else fdp.ConsumeIntInRange(-5000, 5000))) & 0xFFFF
            if fdp.ConsumeIntInRange(0, 3) == 0:
                ts = (ts + fdp.ConsumeIntInRange(-3000, 90000)) & 0xFFFFFFFF
            marker = fdp.ConsumeBool()
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
            pushed.add(unwrap(ts))
            frames = assembler.push(seq, ts, marker, payload, now)
            got = audio.push(seq, ts, payload)
            position = audio_seq(seq)
            if got is not None:
                assert got.data == payload
                assert last_audio is None or position > last_audio, "audio went back"
                last_audio = position
        assert len(assembler._buffer) <= MAX_BUFFERED
        first_number = assembler.frames - len(frames) + 1
        for number, frame in enumerate(frames, first_number):
            assert frame.data, "an empty frame was released"
            assert frame.timestamp in pushed, "a frame with a timestamp never given"
            if number in assembler.keyframes_due:
                assert frame.keyframe, "the first frame after a loss is not a keyframe"
            if codec == "h264":
                assert frame.data.startswith(START_CODE)


def check_unwrapper(fdp: atheris.FuzzedDataProvider) -> None:
    bits = 16 if fdp.ConsumeBool() else 32
    unwrap = Unwrapper(bits)
    mod = 1 << bits
    highest: int | None = None
    for _ in range(100):
        if fdp.remaining_bytes() == 0:
            break
        value = fdp.ConsumeIntInRange(0, mod - 1)
        extended = unwrap(value)
        assert extended % mod == value
        if highest is not None:
            assert -(mod >> 1) <= extended - highest < mod >> 1, (highest, value, extended)
        highest = extended if highest is None else max(highest, extended)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, rest = data[0] % 4, data[1:]
    if kind <= 1:
        check_payload(rest)
    elif kind == 2:
        check_stream(atheris.FuzzedDataProvider(rest))
    else:
        check_unwrapper(atheris.FuzzedDataProvider(rest))


SEEDS = [
    # VP8: descriptor with a 15-bit PictureID, TL0PICIDX, TID; a keyframe header of 640x480
    b"\x00\x90\xe0\x80\x01\x02\x20" + b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01",
    b"\x01\x10\x00",
    # H.264: STAP-A with an SPS (640x480 baseline) and a PPS, an FU-A start and end
    b"\x00\x18\x00\x0b\x67\x42\xc0\x1e\xda\x02\x80\xf6\x84\x00\x00\x00\x04\x68\xce\x3c\x80",
    b"\x01\x7c\x85\xaa\xbb\xff\xfe\x7c\x45\xcc",
    b"\x02\x01\x01\x00\x10\x00\x00\x00\x00\x00\x00\x0c" + b"\x05\x00\x01\x0a\x10\x00\x9d" * 8,
    b"\x02\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x0c" + b"\x04\x00\x01\x05\x65\x88\x84" * 8,
    b"\x03\x00" + bytes(range(0, 200, 3)),
]

if __name__ == "__main__":
    common.run("depacketize", test_one_input, SEEDS)
