"""Fuzz simulcast handling: the offer's RID layers and the VP8 id rewriting on a switch.

* `simulcast.parse_offer` (conference/sfu/simulcast.py) on any SDP text raises nothing but
  `SimulcastError`; the layers it returns are 1..MAX_LAYERS valid, distinct RIDs, and
  `accept_in_answer` adds exactly one ``a=simulcast:recv`` line per accepted m-line;
* `vp8.Vp8Rewriter` (conference/sfu/vp8.py), given a stream of VP8 payloads from
  several sources with ``switch`` calls between them: never raises, never changes a
  payload's length or anything but its PictureID and TL0PICIDX, returns a malformed
  descriptor as is, keeps each source's ids at a fixed offset, and continues the ids
  of the previous source after a switch (``last + 1``, 15-bit PictureIDs and TL0PICIDX).
"""

from __future__ import annotations

import re

import atheris
import common

with common.instrumented():
    from conference.sfu.simulcast import MAX_LAYERS, SimulcastError, accept_in_answer, parse_offer
    from conference.sfu.vp8 import Vp8Rewriter, parse_descriptor

_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


def check_offer(text: str) -> None:
    try:
        layers = parse_offer(text)
    except SimulcastError:
        return
    for rids in layers.values():
        assert 1 <= len(rids) <= MAX_LAYERS and len(set(rids)) == len(rids), rids
        assert all(_RID.match(rid) for rid in rids), rids
    answer = "\r\n".join(
        ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
        + [f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{mid}" for mid in layers]
    )
    accepted = accept_in_answer(answer, layers)
    assert accepted.count("a=simulcast:recv ") == len(layers), accepted


def check_rewriter(fdp: atheris.FuzzedDataProvider) -> None:
    rewriter = Vp8Rewriter()
    pid_last: int | None = None  # highest PictureID emitted (15-bit streams only)
    tl0_last: int | None = None
    only_15 = True
    pid_offset: int | None = None  # of the current source, once fixed
    pid_bits = 0
    tl0_offset: int | None = None
    pid_switched = tl0_switched = False
    for _ in range(200):
        if fdp.remaining_bytes() == 0:
            break
        if fdp.ConsumeIntInRange(0, 7) == 0:
            rewriter.switch()
            pid_offset = tl0_offset = None
            pid_switched = tl0_switched = True
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
        out = rewriter.rewrite(payload)
        assert len(out) == len(payload)
        before = parse_descriptor(payload)
        if before is None:
            assert out == payload, "a malformed descriptor was changed"
            continue
        after = parse_descriptor(out)
        assert after is not None and out[after.size :] == payload[before.size :]
        for name in ("picture_id_bits", "temporal_id", "key_idx", "start_of_partition"):
            assert getattr(after, name) == getattr(before, name), name
        assert after.partition_id == before.partition_id and after.size == before.size
        if before.picture_id is not None and after.picture_id is not None:
            bits = before.picture_id_bits
            mask = (1 << bits) - 1
            only_15 = only_15 and bits == 15
            if pid_switched and only_15 and pid_last is not None:
                assert after.picture_id == (pid_last + 1) & 0x7FFF, "PictureID not continued"
            pid_switched = False
            offset = (after.picture_id - before.picture_id) & mask
            if pid_offset is not None:  # known to pid_bits bits
                common_mask = (1 << min(bits, pid_bits)) - 1
                assert offset & common_mask == pid_offset & common_mask, "PictureID offset"
            if pid_offset is None or bits > pid_bits:
                pid_offset, pid_bits = offset, bits
            if bits == 15 and (
                pid_last is None or (after.picture_id - pid_last - 1) & 0x7FFF < 0x3FFF
            ):
                pid_last = after.picture_id
        if before.tl0picidx is not None and after.tl0picidx is not None:
            if tl0_switched and tl0_last is not None:
                assert after.tl0picidx == (tl0_last + 1) & 0xFF, "TL0PICIDX not continued"
            tl0_switched = False
            offset = (after.tl0picidx - before.tl0picidx) & 0xFF
            if tl0_offset is None:
                tl0_offset = offset
            assert offset == tl0_offset, "TL0PICIDX offset changed within a source"
            if tl0_last is None or (after.tl0picidx - tl0_last - 1) & 0xFF < 0x7F:
                tl0_last = after.tl0picidx


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        check_offer(data[1:].decode("utf-8", "replace"))
    else:
        check_rewriter(atheris.FuzzedDataProvider(data[1:]))


OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n"
    "a=rtpmap:97 rtx/90000\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
    "a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n"
    "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send f;h;~q\r\n"
)
SEEDS = [
    b"\x01" + OFFER.encode(),
    b"\x01" + OFFER.replace("f;h;~q", "a,b;q").encode(),
    b"\x00" + b"\x05\x90\xe0\x80\x01\x07\x20\x00" + b"\x05\x90\xe0\x80\x02\x07\x20\x00" * 4,
    b"\x00\x00\x06\x90\xc0\x05\x03\x00\x01\x07\x90\xc0\xff\x05\x9d",
]

if __name__ == "__main__":
    common.run("simulcast", test_one_input, SEEDS)
