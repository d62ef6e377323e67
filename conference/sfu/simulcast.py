"""Simulcast in SDP: which m-lines send RID layers, and the answer that accepts them.

A browser publishing simulcast (RFC 8853) offers one video m-line with several
RTP streams, each named by a RID (RFC 8851)::

    a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
    a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
    a=rid:q send
    a=rid:h send
    a=rid:f send
    a=simulcast:send q;h;f

aiortc parses neither ``a=rid`` nor ``a=simulcast``: its answer would decline
simulcast and the browser would send only its first layer.  :func:`parse_offer`
reads the layers of each m-line (validating what a client may get wrong), and
:func:`accept_in_answer` adds the matching ``a=rid:... recv`` and
``a=simulcast:recv`` lines to aiortc's answer.  The packets of each layer then
carry the RID header extension (and their retransmissions the repaired-RID
one) until the server has seen their SSRC, which is how the receiver tells the
layers apart (:class:`conference.sfu.bridge.ForwardingReceiver`).

Layer order: index 0 is the lowest quality.  The RIDs ``q``, ``h`` and ``f``
(quarter, half, full: LiveKit's and this project's page's names) are ordered
so in any listing; otherwise the order of ``a=simulcast`` is taken as lowest
first, which is the order of ``sendEncodings`` the browser was given.
Alternatives (``a,b``) keep their first choice and a paused stream (``~a``)
is accepted as a layer that starts later.
"""

from __future__ import annotations

import re

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"

#: at most this many layers per m-line (more gains nothing and costs the publisher)
MAX_LAYERS = 3

_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_KNOWN_ORDER = {"q": 0, "h": 1, "f": 2}


class SimulcastError(ValueError):
    """An offer's simulcast description is malformed or unsupported."""


def _sections(sdp: str) -> list[list[str]]:
    """The SDP split into sections: the session part, then one per m-line."""
    sections: list[list[str]] = [[]]
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            sections.append([])
        if line:
            sections[-1].append(line)
    return sections


def _layers_of(section: list[str]) -> tuple[str | None, list[str]]:
    """(mid, RIDs lowest first) of one m-section; RIDs empty without simulcast."""
    mid: str | None = None
    declared: dict[str, str] = {}
    streams: list[str] | None = None
    extensions: set[str] = set()
    rtx = False
    kind = section[0][2:].split(" ", 1)[0] if section else ""
    for line in section:
        if line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=rid:"):
            parts = line[6:].split()
            if len(parts) < 2 or parts[1] not in ("send", "recv"):
                raise SimulcastError(f"malformed rid line: {line[:80]!r}")
            if not _RID.match(parts[0]):
                raise SimulcastError(f"invalid rid {parts[0][:20]!r}")
            declared[parts[0]] = parts[1]
        elif line.startswith("a=simulcast:"):
            value = line[12:].split()
            if len(value) < 2 or value[0] != "send":
                raise SimulcastError("only 'a=simulcast:send' is accepted from a publisher")
            streams = []
            for group in value[1].split(";"):
                first = group.split(",")[0].lstrip("~")
                if not first:
                    raise SimulcastError("empty simulcast stream")
                streams.append(first)
        elif line.startswith("a=extmap:"):
            parts = line.split()
            if len(parts) >= 2:
                extensions.add(parts[1])
        elif line.startswith("a=rtpmap:") and " rtx/" in line.lower():
            rtx = True
    if streams is None:
        return mid, []
    if kind != "video":
        raise SimulcastError("simulcast is accepted on video only")
    for rid in streams:
        if rid not in declared:
            raise SimulcastError(f"simulcast names rid {rid[:20]!r} without an a=rid line")
        if declared[rid] != "send":
            raise SimulcastError(f"rid {rid[:20]!r} is not a send stream")
        if not _RID.match(rid):
            raise SimulcastError(f"invalid rid {rid[:20]!r}")
    if len(set(streams)) != len(streams):
        raise SimulcastError("a rid is listed twice")
    if len(streams) > MAX_LAYERS:
        raise SimulcastError(f"{len(streams)} simulcast layers (at most {MAX_LAYERS})")
    if RID_URI not in extensions:
        raise SimulcastError("simulcast without the rtp-stream-id header extension")
    if rtx and REPAIRED_RID_URI not in extensions:
        raise SimulcastError("simulcast with RTX needs the repaired-rtp-stream-id header extension")
    if set(streams) <= set(_KNOWN_ORDER):
        streams.sort(key=_KNOWN_ORDER.__getitem__)
    return mid, streams


def parse_offer(sdp: str) -> dict[str, list[str]]:
    """MID -> RIDs (lowest first) of every m-line of ``sdp`` that sends simulcast.

    Raises :class:`SimulcastError` with a message for the client when a
    simulcast description is malformed: an unknown or repeated RID, more than
    :data:`MAX_LAYERS` layers, simulcast on audio, or a missing RID (or, with
    RTX, repaired-RID) header extension.
    """
    layers: dict[str, list[str]] = {}
    for section in _sections(sdp)[1:]:
        mid, rids = _layers_of(section)
        if rids:
            if mid is None:
                raise SimulcastError("simulcast on an m-line without a=mid")
            layers[mid] = rids
    return layers


def accept_in_answer(answer: str, layers: dict[str, list[str]]) -> str:
    """``answer`` with each m-line of ``layers`` receiving those RIDs.

    The RIDs are written in their order of quality, lowest first, which is
    also what the browser's answer parser expects to match its offer's RIDs
    (it matches by name).  An m-line of ``layers`` missing from the answer
    (rejected) is left out.
    """
    if not layers:
        return answer
    out: list[str] = []
    for line in answer.split("\r\n"):
        out.append(line)
        if line.startswith("a=mid:"):
            rids = layers.get(line[6:].strip())
            if rids:
                out.extend(f"a=rid:{rid} recv" for rid in rids)
                out.append("a=simulcast:recv " + ";".join(rids))
    return "\r\n".join(out)
