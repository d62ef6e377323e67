"""Simulcast in SDP: reading a publisher's RID layers, answering them."""

from __future__ import annotations

import pytest

from conference.sfu.simulcast import (
    MAX_LAYERS,
    REPAIRED_RID_URI,
    RID_URI,
    SimulcastError,
    accept_in_answer,
    parse_offer,
)

AUDIO = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n"


def video(
    mid: str = "1",
    rids: str = "q;h;f",
    declared: str = "q h f",
    rtx: bool = True,
    rid_ext: bool = True,
    repaired_ext: bool = True,
    direction: str = "send",
) -> str:
    lines = ["m=video 9 UDP/TLS/RTP/SAVPF 96 97", f"a=mid:{mid}", "a=rtpmap:96 VP8/90000"]
    if rtx:
        lines += ["a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96"]
    if rid_ext:
        lines.append(f"a=extmap:4 {RID_URI}")
    if repaired_ext:
        lines.append(f"a=extmap:5 {REPAIRED_RID_URI}")
    lines += [f"a=rid:{rid} {direction}" for rid in declared.split()]
    if rids:
        lines.append(f"a=simulcast:send {rids}")
    return "\r\n".join(lines) + "\r\n"


def offer(*sections: str) -> str:
    return "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + "".join(sections)


def test_layers_of_a_browser_offer_lowest_first() -> None:
    assert parse_offer(offer(AUDIO, video())) == {"1": ["q", "h", "f"]}


def test_q_h_f_are_ordered_by_quality_whatever_the_listing() -> None:
    assert parse_offer(offer(video(rids="f;h;q"))) == {"1": ["q", "h", "f"]}


def test_other_names_keep_the_listing_order() -> None:
    layers = parse_offer(offer(video(rids="lo;mid;hi", declared="hi mid lo")))
    assert layers == {"1": ["lo", "mid", "hi"]}


def test_alternatives_and_paused_streams() -> None:
    layers = parse_offer(offer(video(rids="~q;h,x;f", declared="q h f x")))
    assert layers == {"1": ["q", "h", "f"]}


def test_no_simulcast_no_layers() -> None:
    assert parse_offer(offer(AUDIO, video(rids="", declared=""))) == {}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (video(rids="q;h;z"), "without an a=rid line"),
        (video(rids="a;b;c;d", declared="a b c d"), "layers (at most 3)"),
        (video(rid_ext=False), "rtp-stream-id"),
        (video(repaired_ext=False), "repaired-rtp-stream-id"),
        (video(rids="q;q", declared="q"), "twice"),
        (video(direction="recv"), "not a send stream"),
        (video(rids="q;h", declared="q h!"), "invalid rid"),
        (video(rids="q;;h"), "empty simulcast stream"),
        (AUDIO + "a=rid:q send\r\na=simulcast:send q\r\n", "video only"),
    ],
)
def test_malformed_simulcast_is_refused_with_a_reason(section: str, message: str) -> None:
    with pytest.raises(SimulcastError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_offer(offer(section))


def test_repaired_rid_is_needed_only_with_rtx() -> None:
    assert parse_offer(offer(video(rtx=False, repaired_ext=False))) == {"1": ["q", "h", "f"]}


def test_receive_simulcast_is_not_a_publisher_offer() -> None:
    with pytest.raises(SimulcastError, match="only 'a=simulcast:send'"):
        parse_offer(offer(video().replace("simulcast:send", "simulcast:recv")))


def test_max_layers_is_three() -> None:
    assert MAX_LAYERS == 3


def test_answer_receives_the_layers_on_their_m_line() -> None:
    answer = offer(AUDIO, "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendrecv\r\n")
    accepted = accept_in_answer(answer, {"1": ["q", "h", "f"]})
    lines = accepted.split("\r\n")
    at = lines.index("a=mid:1")
    assert lines[at + 1 : at + 5] == [
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
    ]
    assert "a=rid" not in accepted.split("m=video")[0]  # the audio m-line is untouched
    assert accepted.endswith("\r\n")


def test_answer_without_layers_is_unchanged() -> None:
    answer = offer(AUDIO)
    assert accept_in_answer(answer, {}) == answer
    assert accept_in_answer(answer, {"7": ["q"]}) == answer  # a rejected m-line
